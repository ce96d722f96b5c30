//! Phase 1: one JSON file per game, laid out like the scraper's bucket.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::NbaError;
use crate::generate::{Game, League};

/// Where the phase-1 file of `game` lives under `root`:
/// `root/gcs/boxscores/{YYYY-MM-DD}/{game_id}.json`.
pub fn raw_file_path(root: &Path, game: &Game) -> PathBuf {
    date_dir(root, game.game_date).join(format!("{}.json", game.game_id))
}

/// The directory holding one date's phase-1 files.
pub(crate) fn date_dir(root: &Path, date: NaiveDate) -> PathBuf {
    root.join("gcs")
        .join("boxscores")
        .join(date.format("%Y-%m-%d").to_string())
}

/// Writes the phase-1 file of every game in `range` (inclusive; all games when `None`) and
/// returns how many were written. Each file is written beside its final name and renamed into
/// place, so a probe counting `*.json` never sees half a file.
pub fn write_raw_files(
    root: &Path,
    league: &League,
    range: Option<(NaiveDate, NaiveDate)>,
) -> Result<usize, NbaError> {
    if let Some((start, end)) = range
        && start > end
    {
        return Err(NbaError::InvalidRange { start, end });
    }
    let in_range =
        |game: &&Game| range.is_none_or(|(start, end)| (start..=end).contains(&game.game_date));
    let mut written = 0;
    let mut current_dir = None;
    for game in league.games().filter(in_range) {
        let dir = date_dir(root, game.game_date);
        if current_dir.as_ref() != Some(&dir) {
            fs_err::create_dir_all(&dir)?;
            current_dir = Some(dir);
        }
        let path = raw_file_path(root, game);
        let partial = path.with_extension("json.partial");
        let json = serde_json::to_vec_pretty(game).map_err(|source| NbaError::Json {
            path: path.clone(),
            source,
        })?;
        fs_err::write(&partial, json)?;
        fs_err::rename(&partial, &path)?;
        written += 1;
    }
    Ok(written)
}
