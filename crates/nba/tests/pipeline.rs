//! The example end to end on real SQLite in a temporary directory: phase-1 files, the phase-2
//! loader, the SQL of phases 3 to 6, and the pipeline file's own check and expect queries.
//!
//! gapless binds `:start` and `:end` by name; these tests turn them into `?1` and `?2`, which
//! SQLite binds the same way.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use gapless_nba::{League, PIPELINE_TOML, SeasonType, league, sql_files};
use sqlx::{AssertSqlSafe, SqliteConnection};

fn test_league() -> &'static League {
    static LEAGUE: OnceLock<League> = OnceLock::new();
    LEAGUE.get_or_init(|| league(42))
}

fn date(text: &str) -> NaiveDate {
    text.parse().expect("test dates are valid")
}

/// A phase of the pipeline file, as TOML.
fn phase(id: i64) -> toml::Value {
    let pipeline: toml::Table = toml::from_str(PIPELINE_TOML).expect("the pipeline file is TOML");
    pipeline["phase"]
        .as_array()
        .expect("phases")
        .iter()
        .find(|phase| phase["id"].as_integer() == Some(id))
        .cloned()
        .expect("the phase exists")
}

fn sql_text(phase: &toml::Value, key: &str) -> String {
    phase[key]["sql"]
        .as_str()
        .expect("an inline SQL text")
        .to_owned()
}

fn sql_file(phase: &toml::Value) -> &'static str {
    let path = phase["run"]["sql_file"].as_str().expect("a SQL runner");
    sql_files()
        .iter()
        .find(|(name, _)| *name == path)
        .map(|(_, text)| *text)
        .expect("the SQL file is shipped")
}

fn positional(sql: &str) -> String {
    sql.replace(":start", "?1").replace(":end", "?2")
}

/// Runs every `;`-separated statement of `sql` with `:start`/`:end` bound.
async fn run_sql(
    connection: &mut SqliteConnection,
    sql: &str,
    start: NaiveDate,
    end: NaiveDate,
) -> Result<()> {
    for statement in sql.split(';') {
        let has_code = statement
            .lines()
            .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with("--"));
        if !has_code {
            continue;
        }
        sqlx::query(AssertSqlSafe(positional(statement)))
            .bind(start.to_string())
            .bind(end.to_string())
            .execute(&mut *connection)
            .await
            .with_context(|| format!("running {statement}"))?;
    }
    Ok(())
}

/// Runs a `(date, count)` query and returns the counts by date.
async fn counts(
    connection: &mut SqliteConnection,
    sql: &str,
    start: NaiveDate,
    end: NaiveDate,
) -> Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(positional(sql)))
        .bind(start.to_string())
        .bind(end.to_string())
        .fetch_all(&mut *connection)
        .await
        .with_context(|| format!("running {sql}"))?;
    Ok(rows.into_iter().collect())
}

async fn count_rows(connection: &mut SqliteConnection, table: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(connection)
            .await?,
    )
}

fn rows_in(league: &League, start: NaiveDate, end: NaiveDate) -> usize {
    league
        .games()
        .filter(|game| (start..=end).contains(&game.game_date))
        .map(|game| game.players.len())
        .sum()
}

async fn prepared_warehouse(dir: &Path, start: NaiveDate, end: NaiveDate) -> Result<usize> {
    let league = test_league();
    let files = gapless_nba::write_raw_files(dir, league, Some((start, end)))?;
    gapless_nba::setup(dir, league).await?;
    Ok(files)
}

/// Resolves `sql_file` keys from the shipped SQL files.
struct ShippedFiles;

impl gapless_core::spec::FileSource for ShippedFiles {
    fn read(&self, relative_path: &str) -> Result<String, String> {
        sql_files()
            .iter()
            .find(|(path, _)| *path == relative_path)
            .map(|(_, text)| (*text).to_owned())
            .ok_or_else(|| format!("`{relative_path}` is not shipped"))
    }
}

#[test]
fn pipeline_file_is_valid() {
    let spec = gapless_core::spec::parse(PIPELINE_TOML, &ShippedFiles)
        .unwrap_or_else(|diagnostics| panic!("{diagnostics:#?}"));
    assert_eq!(spec.phases.len(), 6);
}

/// Resolves `sql_file` keys from the shipped BigQuery SQL files.
struct ShippedBigQueryFiles;

impl gapless_core::spec::FileSource for ShippedBigQueryFiles {
    fn read(&self, relative_path: &str) -> Result<String, String> {
        gapless_nba::bigquery_sql_files()
            .iter()
            .find(|(path, _)| *path == relative_path)
            .map(|(_, text)| (*text).to_owned())
            .ok_or_else(|| format!("`{relative_path}` is not shipped"))
    }
}

#[test]
fn bigquery_pipeline_file_is_valid_and_has_the_same_phases() {
    let sqlite = gapless_core::spec::parse(PIPELINE_TOML, &ShippedFiles)
        .unwrap_or_else(|diagnostics| panic!("{diagnostics:#?}"));
    let bigquery =
        gapless_core::spec::parse(gapless_nba::BIGQUERY_PIPELINE_TOML, &ShippedBigQueryFiles)
            .unwrap_or_else(|diagnostics| panic!("{diagnostics:#?}"));
    let shape = |spec: &gapless_core::spec::Spec| {
        spec.phases
            .iter()
            .map(|phase| {
                (
                    phase.id,
                    phase.name.clone(),
                    phase.needs.clone(),
                    phase.batch_days,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&bigquery), shape(&sqlite));
    let warehouse = bigquery.warehouse.expect("a warehouse");
    assert_eq!(warehouse.url, gapless_nba::BIGQUERY_URL);
    assert!(warehouse.maximum_bytes_billed.is_some());
}

#[tokio::test]
async fn loader_loads_a_range_and_reloading_replaces_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (start, end) = (date("2021-10-19"), date("2021-10-26"));
    let files = prepared_warehouse(dir.path(), start, end).await?;
    let games = test_league()
        .games()
        .filter(|game| (start..=end).contains(&game.game_date))
        .count();
    assert_eq!(files, games);
    let expected_rows = rows_in(test_league(), start, end);

    let report = gapless_nba::load_boxscores(dir.path(), start, end).await?;
    assert_eq!(
        (report.dates, report.games, report.rows),
        (8, games, expected_rows)
    );
    let mut connection = gapless_nba::connect(dir.path()).await?;
    let table = "nba_raw.bdl_player_boxscores";
    assert_eq!(
        count_rows(&mut connection, table).await?,
        expected_rows as i64
    );

    let again = gapless_nba::load_boxscores(dir.path(), start, end).await?;
    assert_eq!(again, report);
    assert_eq!(
        count_rows(&mut connection, table).await?,
        expected_rows as i64
    );

    // One date reloaded alone, after its files are gone: that date empties, others stay.
    let first_day = test_league().games().next().expect("a game");
    let first_day_rows: usize = rows_in(test_league(), start, start);
    fs_err::remove_dir_all(
        gapless_nba::raw_file_path(dir.path(), first_day)
            .parent()
            .expect("dir"),
    )?;
    let emptied = gapless_nba::load_boxscores(dir.path(), start, start).await?;
    assert_eq!((emptied.dates, emptied.rows), (0, 0));
    let left = count_rows(&mut connection, table).await?;
    assert_eq!(left, (expected_rows - first_day_rows) as i64);
    Ok(())
}

#[tokio::test]
async fn loader_rejects_a_reversed_range() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let error = gapless_nba::load_boxscores(dir.path(), date("2022-01-02"), date("2022-01-01"))
        .await
        .expect_err("reversed range");
    assert_eq!(
        error.to_string(),
        "start date 2022-01-02 is after end date 2022-01-01"
    );
    Ok(())
}

/// Phases 2 to 6 over a 61-day slice that spans the end of the 2021-22 regular season, the
/// play-in and the first playoff weeks: every phase's check equals its expectation on every
/// date, and re-running a phase changes nothing.
#[tokio::test]
async fn phases_meet_their_expectations_over_a_slice() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (start, end) = (date("2022-03-20"), date("2022-05-19"));
    prepared_warehouse(dir.path(), start, end).await?;
    let mut connection = gapless_nba::connect(dir.path()).await?;

    let calendar: Vec<String> = sqlx::query_scalar(AssertSqlSafe(
        PIPELINE_TOML
            .lines()
            .find_map(|line| line.strip_prefix("calendar.sql = "))
            .expect("a calendar query")
            .trim_matches('"')
            .to_owned(),
    ))
    .fetch_all(&mut connection)
    .await?;
    let game_days: std::collections::BTreeSet<String> = test_league()
        .games()
        .map(|game| game.game_date.to_string())
        .collect();
    assert_eq!(calendar.len(), game_days.len());

    // Phase 1: files per date == schedule per date.
    let scrape = phase(1);
    let expected = counts(&mut connection, &sql_text(&scrape, "expect"), start, end).await?;
    for (day, games) in &expected {
        let files = fs_err::read_dir(dir.path().join("gcs/boxscores").join(day))?.count();
        assert_eq!(files as i64, *games, "phase 1 on {day}");
    }
    assert!(
        expected.len() > 40,
        "{} game days in the slice",
        expected.len()
    );

    gapless_nba::load_boxscores(dir.path(), start, end).await?;
    for id in 2..=6 {
        let phase = phase(id);
        if id > 2 {
            run_sql(&mut connection, sql_file(&phase), start, end).await?;
        }
        let check = sql_text(&phase, "check");
        let expect = sql_text(&phase, "expect");
        let observed = counts(&mut connection, &check, start, end).await?;
        let wanted = counts(&mut connection, &expect, start, end).await?;
        assert_eq!(
            wanted.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>()
        );
        assert_eq!(observed, wanted, "phase {id}");
        if id > 2 {
            run_sql(&mut connection, sql_file(&phase), start, end).await?;
            let rerun = counts(&mut connection, &check, start, end).await?;
            assert_eq!(rerun, wanted, "phase {id} re-run");
        }
    }

    // Rollback empties a range; the runner fills it again.
    let grading = phase(6);
    let rollback = sql_text(&grading, "rollback");
    run_sql(&mut connection, &rollback, start, end).await?;
    assert!(
        counts(&mut connection, &sql_text(&grading, "check"), start, end)
            .await?
            .is_empty()
    );

    // Every season type of the slice reaches phase 6.
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT season_type FROM nba_predictions.player_prop_predictions ORDER BY 1",
    )
    .fetch_all(&mut connection)
    .await?;
    assert_eq!(types, ["play_in", "playoffs", "regular"]);
    Ok(())
}

/// Phase 4's features are computed over exactly the player's games in the 30 days before.
#[tokio::test]
async fn rolling_features_use_the_thirty_days_before() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (start, end) = (date("2021-12-01"), date("2022-01-31"));
    prepared_warehouse(dir.path(), start, end).await?;
    gapless_nba::load_boxscores(dir.path(), start, end).await?;
    let mut connection = gapless_nba::connect(dir.path()).await?;
    for id in 3..=4 {
        run_sql(&mut connection, sql_file(&phase(id)), start, end).await?;
    }

    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "EXPLAIN QUERY PLAN {}",
        positional(sql_file(&phase(4)).split(';').nth(1).expect("the INSERT"))
    )))
    .bind(start.to_string())
    .bind(end.to_string())
    .fetch_all(&mut connection)
    .await?;
    let plan: Vec<String> = plan.into_iter().map(|row| row.3).collect();
    assert!(
        plan.iter()
            .any(|step| step.contains("COVERING INDEX player_game_summary_by_player")),
        "{plan:#?}"
    );

    let mut by_player: BTreeMap<u32, Vec<(NaiveDate, u32)>> = BTreeMap::new();
    for game in test_league()
        .games()
        .filter(|game| (start..=end).contains(&game.game_date))
    {
        for line in &game.players {
            by_player
                .entry(line.player_id)
                .or_default()
                .push((game.game_date, line.points));
        }
    }
    let rows: Vec<(String, i64, i64, Option<f64>)> = sqlx::query_as(
        "SELECT game_date, player_id, games_last_30, points_avg_30 \
         FROM nba_precompute.player_composite_factors ORDER BY game_date, player_id",
    )
    .fetch_all(&mut connection)
    .await?;
    assert_eq!(rows.len(), rows_in(test_league(), start, end));
    for (day, player, games, average) in rows.iter().step_by(97) {
        let day = date(day);
        let window: Vec<u32> = by_player[&(*player as u32)]
            .iter()
            .filter(|(played, _)| *played < day && (day - *played).num_days() <= 30)
            .map(|(_, points)| *points)
            .collect();
        assert_eq!(*games, window.len() as i64, "{player} on {day}");
        let wanted = (!window.is_empty())
            .then(|| f64::from(window.iter().sum::<u32>()) / window.len() as f64);
        match (average, wanted) {
            (Some(got), Some(wanted)) => assert!((got - wanted).abs() < 0.001),
            (got, wanted) => assert_eq!(got.is_some(), wanted.is_some()),
        }
    }
    Ok(())
}

#[tokio::test]
async fn validations_run_and_compare() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (start, end) = (date("2022-04-16"), date("2022-04-30"));
    prepared_warehouse(dir.path(), start, end).await?;
    gapless_nba::load_boxscores(dir.path(), start, end).await?;
    let mut connection = gapless_nba::connect(dir.path()).await?;
    run_sql(&mut connection, sql_file(&phase(3)), start, end).await?;

    let results = gapless_nba::run_validations(dir.path()).await?;
    assert_eq!(results.len(), 5);
    let season = test_league().season(2021).expect("2021-22");
    let playoff_games = season
        .games
        .iter()
        .filter(|game| game.season_type == SeasonType::Playoffs)
        .count();
    let loaded = season
        .games
        .iter()
        .filter(|game| game.season_type == SeasonType::Playoffs && game.game_date <= end)
        .count();
    let first = &results[0];
    assert!(
        first
            .validation
            .label
            .starts_with("2021-22 playoff games in phase 3")
    );
    assert_eq!(
        (first.actual, first.expected),
        (loaded as i64, playoff_games as i64)
    );
    assert!(!first.is_passing());
    // Nothing graded yet and nothing predicted: 0 of 0 passes.
    assert!(results[4].is_passing());
    Ok(())
}
