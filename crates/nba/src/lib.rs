//! The NBA example pipeline of gapless, on embedded SQLite with generated data.
//!
//! It reproduces the original six-phase system (see SPEC.md, "The NBA example"):
//!
//! 1. [`league`] generates four seasons (2021-22 to 2024-25) deterministically from a seed:
//!    real-shaped calendars, play-in, playoffs and player box scores.
//! 2. [`write_raw_files`] writes phase 1, one JSON file per game under
//!    `gcs/boxscores/{date}/`, standing in for the scraper's bucket.
//! 3. [`setup`] creates the warehouse (`warehouse/main.db` plus one attached SQLite file per
//!    schema) and fills `nba_reference`; [`load_boxscores`] is the phase-2 loader behind
//!    `gapless nba-load`.
//! 4. [`PIPELINE_TOML`] and [`sql_files`] are the pipeline file and the SQL of phases 3 to 6
//!    (`examples/nba/` in the repository); [`write_example`] writes them into a directory.
//! 5. [`validation_queries`] are the original plan's checks, as data.
//! 6. The same pipeline on BigQuery (`examples/nba/bigquery/`): [`write_bigquery_example`],
//!    the SQL that creates its datasets ([`BIGQUERY_WAREHOUSE_SQL`]), and the rows of the
//!    reference data ([`bigquery_reference_rows`]) and of phase 2 ([`bigquery_load_rows`]).
//!
//! This crate depends on no other gapless crate: the runtime drives it only through the
//! pipeline file, the `nba-load` command and SQL.

mod bigquery;
mod files;
mod generate;
mod load;
mod rng;
mod validate;
mod warehouse;

use std::path::{Path, PathBuf};

pub use bigquery::{
    BIGQUERY_LOAD_DELETE, BIGQUERY_PIPELINE_TOML, BIGQUERY_REFERENCE_RESET, BIGQUERY_URL,
    BIGQUERY_WAREHOUSE_SQL, TableRows, bigquery_load_rows, bigquery_reference_rows,
    bigquery_sql_files, write_bigquery_example,
};
pub use files::{raw_file_path, write_raw_files};
pub use generate::{
    Conference, Game, League, PlayerLine, RosterSpot, SEASON_YEARS, Season, SeasonCalendar,
    SeasonType, Series, Team, league,
};
pub use load::{LoadReport, load_boxscores};
pub use validate::{Validation, ValidationResult, run_validations, validation_queries};
pub use warehouse::{SCHEMAS, WAREHOUSE_SQL, connect, setup};

/// The example's `gapless.toml` (`examples/nba/gapless.toml`).
pub const PIPELINE_TOML: &str = include_str!("../../../examples/nba/gapless.toml");

/// The SQL files the pipeline file refers to, as (path relative to the pipeline file, text).
pub fn sql_files() -> &'static [(&'static str, &'static str)] {
    &[
        (
            "sql/phase3_analytics.sql",
            include_str!("../../../examples/nba/sql/phase3_analytics.sql"),
        ),
        (
            "sql/phase4_precompute.sql",
            include_str!("../../../examples/nba/sql/phase4_precompute.sql"),
        ),
        (
            "sql/phase5_predictions.sql",
            include_str!("../../../examples/nba/sql/phase5_predictions.sql"),
        ),
        (
            "sql/phase6_grading.sql",
            include_str!("../../../examples/nba/sql/phase6_grading.sql"),
        ),
    ]
}

/// The `gapless` program name in [`PIPELINE_TOML`]'s phase-2 command, which
/// [`write_example`] replaces.
const PROGRAM_PLACEHOLDER: &str = r#"["gapless", "nba-load""#;

/// Writes `gapless.toml`, `warehouse.sql` and `sql/` into `dir`, with the phase-2 command's
/// program replaced by `gapless_program` (e.g. the absolute path of the running binary, so the
/// demo does not depend on `PATH`).
pub fn write_example(dir: &Path, gapless_program: &str) -> Result<(), NbaError> {
    let replacement = format!(r#"[{}, "nba-load""#, toml_string(gapless_program));
    let pipeline = PIPELINE_TOML.replace(PROGRAM_PLACEHOLDER, &replacement);
    fs_err::create_dir_all(dir.join("sql"))?;
    fs_err::write(dir.join("gapless.toml"), pipeline)?;
    fs_err::write(dir.join("warehouse.sql"), WAREHOUSE_SQL)?;
    for (path, text) in sql_files() {
        fs_err::write(dir.join(path), text)?;
    }
    Ok(())
}

/// A TOML basic string holding `value`.
fn toml_string(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for character in value.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            control if control.is_control() => {
                quoted.push_str(&format!("\\u{:04X}", u32::from(control)));
            }
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

/// Errors of the generator's file writer, the loader and the warehouse helpers.
#[derive(Debug, thiserror::Error)]
pub enum NbaError {
    /// A file or directory could not be read or written (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A phase-1 file is not a valid game.
    #[error("invalid box-score file `{}`", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: serde_json::Error,
    },
    /// A phase-1 file sits in the directory of another date than its game's.
    #[error("box-score file `{}` holds a game of {game_date}", path.display())]
    MisplacedFile {
        /// The file.
        path: PathBuf,
        /// The date inside the file.
        game_date: chrono::NaiveDate,
    },
    /// The start date is after the end date.
    #[error("start date {start} is after end date {end}")]
    InvalidRange {
        /// First day.
        start: chrono::NaiveDate,
        /// Last day.
        end: chrono::NaiveDate,
    },
    /// A warehouse path is not UTF-8, so it cannot be given to SQLite's `ATTACH`.
    #[error("warehouse path `{}` is not valid UTF-8", path.display())]
    NonUtf8Path {
        /// The path.
        path: PathBuf,
    },
    /// The warehouse failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// A blocking task (file reading) panicked or was cancelled.
    #[error("file-reading task failed")]
    Task(#[source] tokio::task::JoinError),
}

#[cfg(test)]
mod tests {
    use super::{PIPELINE_TOML, PROGRAM_PLACEHOLDER, toml_string, write_example};

    #[test]
    fn toml_strings_escape() {
        assert_eq!(toml_string(r#"C:\bin\"g".exe"#), r#""C:\\bin\\\"g\".exe""#);
        assert_eq!(toml_string("a\u{1}"), r#""a\u0001""#);
    }

    #[test]
    fn write_example_replaces_the_program() -> anyhow::Result<()> {
        assert_eq!(PIPELINE_TOML.matches(PROGRAM_PLACEHOLDER).count(), 1);
        let dir = tempfile::tempdir()?;
        write_example(dir.path(), "/opt/my \"gapless\"/bin/gapless")?;
        let written = fs_err::read_to_string(dir.path().join("gapless.toml"))?;
        assert!(
            written.contains(r#"run.command = ["/opt/my \"gapless\"/bin/gapless", "nba-load""#)
        );
        assert!(dir.path().join("sql/phase4_precompute.sql").is_file());
        Ok(())
    }
}
