//! The example on BigQuery (`examples/nba/bigquery/`): the pipeline file and SQL in BigQuery's
//! dialect, and the SQL texts that create the datasets, fill `nba_reference` and load phase 2.
//!
//! This crate talks to no BigQuery: it returns SQL texts and rows ([`TableRows`]), which the
//! caller runs and binds through the warehouse (`gapless demo --warehouse bigquery`,
//! `gapless nba-load --warehouse-url …`). No value is ever pasted into SQL: dates of a load are
//! its `:start` and `:end`, and rows go as one `ARRAY<STRUCT<…>>` query parameter.

use std::path::Path;

use chrono::NaiveDate;

use crate::generate::{Game, League, PlayerLine};
use crate::load::read_games;
use crate::{LoadReport, NbaError, PROGRAM_PLACEHOLDER, toml_string};

/// `examples/nba/bigquery/gapless.toml`.
pub const BIGQUERY_PIPELINE_TOML: &str =
    include_str!("../../../examples/nba/bigquery/gapless.toml");

/// `examples/nba/bigquery/warehouse.sql`: the datasets and tables (replaced if present).
pub const BIGQUERY_WAREHOUSE_SQL: &str =
    include_str!("../../../examples/nba/bigquery/warehouse.sql");

/// The warehouse URL of [`BIGQUERY_PIPELINE_TOML`] (project `gapless-demo`).
pub const BIGQUERY_URL: &str = "bigquery://gapless-demo?location=US";

/// The SQL files of the BigQuery pipeline file, as (path relative to it, text).
pub fn bigquery_sql_files() -> &'static [(&'static str, &'static str)] {
    &[
        (
            "sql/phase3_analytics.sql",
            include_str!("../../../examples/nba/bigquery/sql/phase3_analytics.sql"),
        ),
        (
            "sql/phase4_precompute.sql",
            include_str!("../../../examples/nba/bigquery/sql/phase4_precompute.sql"),
        ),
        (
            "sql/phase5_predictions.sql",
            include_str!("../../../examples/nba/bigquery/sql/phase5_predictions.sql"),
        ),
        (
            "sql/phase6_grading.sql",
            include_str!("../../../examples/nba/bigquery/sql/phase6_grading.sql"),
        ),
    ]
}

/// Writes the BigQuery `gapless.toml`, `warehouse.sql` and `sql/` into `dir`, the phase-2
/// command's program replaced by `gapless_program` (see [`crate::write_example`]).
pub fn write_bigquery_example(dir: &Path, gapless_program: &str) -> Result<(), NbaError> {
    let replacement = format!(r#"[{}, "nba-load""#, toml_string(gapless_program));
    let pipeline = BIGQUERY_PIPELINE_TOML.replace(PROGRAM_PLACEHOLDER, &replacement);
    fs_err::create_dir_all(dir.join("sql"))?;
    fs_err::write(dir.join("gapless.toml"), pipeline)?;
    fs_err::write(dir.join("warehouse.sql"), BIGQUERY_WAREHOUSE_SQL)?;
    for (path, text) in bigquery_sql_files() {
        fs_err::write(dir.join(path), text)?;
    }
    Ok(())
}

/// Rows for one table, to be bound as a query parameter (never pasted into SQL): the table,
/// its fields with their BigQuery types, and each row's values as text (`None`: NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRows {
    /// `dataset.table`.
    pub table: &'static str,
    /// `(field, BigQuery type)`.
    pub fields: Vec<(&'static str, &'static str)>,
    /// The rows, values in field order.
    pub values: Vec<Vec<Option<String>>>,
}

/// The `DELETE` that empties `nba_reference`'s tables before [`bigquery_reference_rows`] fill
/// them again.
pub const BIGQUERY_REFERENCE_RESET: &str = "DELETE FROM nba_reference.teams WHERE TRUE;
DELETE FROM nba_reference.schedule WHERE TRUE;
DELETE FROM nba_reference.players WHERE TRUE;
DELETE FROM nba_reference.rosters WHERE TRUE";

/// Phase 2's first statement on BigQuery: the range it replaces.
pub const BIGQUERY_LOAD_DELETE: &str =
    "DELETE FROM nba_raw.bdl_player_boxscores WHERE game_date BETWEEN :start AND :end";

fn text(value: impl ToString) -> Option<String> {
    Some(value.to_string())
}

/// `nba_reference`'s rows (teams, schedule, players, rosters) from `league`.
pub fn bigquery_reference_rows(league: &League) -> Vec<TableRows> {
    let teams = TableRows {
        table: "nba_reference.teams",
        fields: vec![
            ("team", "STRING"),
            ("team_name", "STRING"),
            ("conference", "STRING"),
        ],
        values: league
            .teams
            .iter()
            .map(|team| {
                vec![
                    text(&team.abbreviation),
                    text(&team.name),
                    text(team.conference.as_str()),
                ]
            })
            .collect(),
    };
    let schedule = TableRows {
        table: "nba_reference.schedule",
        fields: vec![
            ("game_id", "STRING"),
            ("game_date", "DATE"),
            ("season_year", "INT64"),
            ("season_type", "STRING"),
            ("home_team", "STRING"),
            ("away_team", "STRING"),
        ],
        values: league
            .games()
            .map(|game| {
                vec![
                    text(&game.game_id),
                    text(game.game_date),
                    text(game.season_year),
                    text(game.season_type.as_str()),
                    text(&game.home_team),
                    text(&game.away_team),
                ]
            })
            .collect(),
    };
    let mut players = std::collections::BTreeMap::new();
    let mut rosters = Vec::new();
    for season in &league.seasons {
        for spot in &season.rosters {
            players
                .entry(spot.player_id)
                .or_insert_with(|| spot.player_name.clone());
            rosters.push(vec![
                text(season.season_year),
                text(&spot.team),
                text(spot.player_id),
            ]);
        }
    }
    vec![
        teams,
        schedule,
        TableRows {
            table: "nba_reference.players",
            fields: vec![("player_id", "INT64"), ("player_name", "STRING")],
            values: players
                .into_iter()
                .map(|(id, name)| vec![text(id), Some(name)])
                .collect(),
        },
        TableRows {
            table: "nba_reference.rosters",
            fields: vec![
                ("season_year", "INT64"),
                ("team", "STRING"),
                ("player_id", "INT64"),
            ],
            values: rosters,
        },
    ]
}

/// Phase 2 on BigQuery: the rows of the phase-1 files of `[start, end]` under `dir`, for
/// `nba_raw.bdl_player_boxscores`. Run [`BIGQUERY_LOAD_DELETE`] and insert them in one
/// transaction, so a reload replaces the range.
pub fn bigquery_load_rows(
    dir: &Path,
    start: NaiveDate,
    end: NaiveDate,
) -> Result<(LoadReport, TableRows), NbaError> {
    if start > end {
        return Err(NbaError::InvalidRange { start, end });
    }
    let (dates, games) = read_games(dir, start, end)?;
    let values: Vec<Vec<Option<String>>> = games
        .iter()
        .flat_map(|game| game.players.iter().map(move |player| row(game, player)))
        .collect();
    let types = [
        "STRING", "DATE", "INT64", "STRING", "STRING", "STRING", "INT64", "INT64", "STRING",
        "INT64", "INT64", "INT64", "INT64", "INT64", "INT64", "INT64", "INT64", "INT64", "INT64",
        "INT64",
    ];
    Ok((
        LoadReport {
            dates,
            games: games.len(),
            rows: values.len(),
        },
        TableRows {
            table: "nba_raw.bdl_player_boxscores",
            fields: crate::load::COLUMNS.into_iter().zip(types).collect(),
            values,
        },
    ))
}

/// One box-score row, in [`crate::load::COLUMNS`] order.
fn row(game: &Game, player: &PlayerLine) -> Vec<Option<String>> {
    let is_home = player.team == game.home_team;
    let opponent = if is_home {
        &game.away_team
    } else {
        &game.home_team
    };
    vec![
        text(&game.game_id),
        text(game.game_date),
        text(game.season_year),
        text(game.season_type.as_str()),
        text(&player.team),
        text(opponent),
        text(i32::from(is_home)),
        text(player.player_id),
        text(&player.player_name),
        text(i32::from(player.is_starter)),
        text(player.minutes),
        text(player.points),
        text(player.rebounds),
        text(player.assists),
        text(player.fgm),
        text(player.fga),
        text(player.fg3m),
        text(player.fg3a),
        text(player.ftm),
        text(player.fta),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_bigquery_example_matches_the_sqlite_one() {
        // The same phases, the same program placeholder, the same SQL files by name.
        assert_eq!(
            BIGQUERY_PIPELINE_TOML.matches(PROGRAM_PLACEHOLDER).count(),
            1
        );
        assert!(BIGQUERY_PIPELINE_TOML.contains(BIGQUERY_URL));
        fn names(files: &[(&'static str, &'static str)]) -> Vec<&'static str> {
            files.iter().map(|(name, _)| *name).collect()
        }
        assert_eq!(names(bigquery_sql_files()), names(crate::sql_files()));
        for (_, text) in bigquery_sql_files() {
            assert!(
                !text.contains("julianday") && !text.contains("REAL"),
                "{text}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        write_bigquery_example(dir.path(), "/opt/gapless").unwrap();
        let written = fs_err::read_to_string(dir.path().join("gapless.toml")).unwrap();
        assert!(written.contains(r#"run.command = ["/opt/gapless", "nba-load""#));
    }

    #[test]
    fn reference_and_load_rows() {
        let league = crate::league(2021);
        let tables = bigquery_reference_rows(&league);
        let schedule = tables
            .iter()
            .find(|rows| rows.table == "nba_reference.schedule")
            .unwrap();
        assert_eq!(schedule.values.len(), league.games().count());
        for rows in &tables {
            assert!(rows.values.iter().all(|row| row.len() == rows.fields.len()));
        }

        let dir = tempfile::tempdir().unwrap();
        crate::write_raw_files(dir.path(), &league, None).unwrap();
        let first = league.games().next().unwrap().game_date;
        let (report, rows) = bigquery_load_rows(dir.path(), first, first).unwrap();
        assert!(report.rows > 0 && report.games > 0);
        assert_eq!(rows.values.len(), report.rows);
        assert_eq!(rows.fields.len(), 20);
        assert_eq!(rows.fields[1], ("game_date", "DATE"));
        assert_eq!(
            rows.values[0][1].as_deref(),
            Some(first.to_string().as_str())
        );
        let error = bigquery_load_rows(dir.path(), first, first.pred_opt().unwrap()).unwrap_err();
        assert!(matches!(error, NbaError::InvalidRange { .. }));
    }
}
