//! Phase 2: load phase-1 JSON files into `nba_raw.bdl_player_boxscores`.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use sqlx::{AssertSqlSafe, Connection, SqlSafeStr};

use crate::NbaError;
use crate::files::date_dir;
use crate::generate::Game;
use crate::warehouse::{ROWS_PER_INSERT, connect, insert_sql};

pub(crate) const COLUMNS: [&str; 20] = [
    "game_id",
    "game_date",
    "season_year",
    "season_type",
    "team",
    "opponent",
    "is_home",
    "player_id",
    "player_name",
    "is_starter",
    "minutes",
    "points",
    "rebounds",
    "assists",
    "fgm",
    "fga",
    "fg3m",
    "fg3a",
    "ftm",
    "fta",
];

/// What one [`load_boxscores`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    /// Dates in the range that had a file directory.
    pub dates: usize,
    /// Games (files) read.
    pub games: usize,
    /// Player rows written.
    pub rows: usize,
}

/// Loads the phase-1 files of every date in `[start, end]` under `dir/gcs/boxscores/` into
/// `nba_raw.bdl_player_boxscores` of the warehouse in `dir`. In one transaction it deletes the
/// range's rows and inserts the files' rows, so re-running a range replaces it (idempotent),
/// and a date whose files are gone ends up empty.
pub async fn load_boxscores(
    dir: &Path,
    start: NaiveDate,
    end: NaiveDate,
) -> Result<LoadReport, NbaError> {
    if start > end {
        return Err(NbaError::InvalidRange { start, end });
    }
    let root = dir.to_path_buf();
    let (dates, games) = tokio::task::spawn_blocking(move || read_games(&root, start, end))
        .await
        .map_err(NbaError::Task)??;

    let mut connection = connect(dir).await?;
    let mut transaction = connection.begin().await?;
    sqlx::query("DELETE FROM nba_raw.bdl_player_boxscores WHERE game_date BETWEEN ? AND ?")
        .bind(start.format("%Y-%m-%d").to_string())
        .bind(end.format("%Y-%m-%d").to_string())
        .execute(&mut *transaction)
        .await?;

    let rows: Vec<(&Game, &crate::generate::PlayerLine)> = games
        .iter()
        .flat_map(|game| game.players.iter().map(move |player| (game, player)))
        .collect();
    // Every full chunk reuses one statement text, which sqlx prepares once and caches.
    let full_chunk = AssertSqlSafe(insert_sql(
        "nba_raw.bdl_player_boxscores",
        &COLUMNS,
        ROWS_PER_INSERT,
    ))
    .into_sql_str();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let sql = if chunk.len() == ROWS_PER_INSERT {
            full_chunk.clone()
        } else {
            AssertSqlSafe(insert_sql(
                "nba_raw.bdl_player_boxscores",
                &COLUMNS,
                chunk.len(),
            ))
            .into_sql_str()
        };
        let mut query = sqlx::query(sql);
        for (game, player) in chunk {
            let is_home = player.team == game.home_team;
            let opponent = if is_home {
                &game.away_team
            } else {
                &game.home_team
            };
            query = query
                .bind(&game.game_id)
                .bind(game.game_date.format("%Y-%m-%d").to_string())
                .bind(game.season_year)
                .bind(game.season_type.as_str())
                .bind(&player.team)
                .bind(opponent)
                .bind(is_home)
                .bind(player.player_id)
                .bind(&player.player_name)
                .bind(player.is_starter)
                .bind(player.minutes)
                .bind(player.points)
                .bind(player.rebounds)
                .bind(player.assists)
                .bind(player.fgm)
                .bind(player.fga)
                .bind(player.fg3m)
                .bind(player.fg3a)
                .bind(player.ftm)
                .bind(player.fta);
        }
        query.execute(&mut *transaction).await?;
    }
    transaction.commit().await?;
    connection.close().await?;
    Ok(LoadReport {
        dates,
        games: games.len(),
        rows: rows.len(),
    })
}

/// Reads and parses every `*.json` file of the range, in date then file-name order.
pub(crate) fn read_games(
    root: &Path,
    start: NaiveDate,
    end: NaiveDate,
) -> Result<(usize, Vec<Game>), NbaError> {
    let mut dates = 0;
    let mut games = Vec::new();
    for date in start.iter_days().take_while(|date| *date <= end) {
        let dir = date_dir(root, date);
        if !dir.is_dir() {
            continue;
        }
        dates += 1;
        let mut paths: Vec<PathBuf> = fs_err::read_dir(&dir)?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<_, _>>()?;
        paths.retain(|path| {
            path.extension()
                .is_some_and(|extension| extension == "json")
        });
        paths.sort();
        for path in paths {
            let bytes = fs_err::read(&path)?;
            let game: Game = serde_json::from_slice(&bytes).map_err(|source| NbaError::Json {
                path: path.clone(),
                source,
            })?;
            if game.game_date != date {
                return Err(NbaError::MisplacedFile {
                    path,
                    game_date: game.game_date,
                });
            }
            games.push(game);
        }
    }
    Ok((dates, games))
}
