//! Checks that catch what they promise: `check` and pre-flight prepare every SQL text on the
//! warehouse without running it, a missing SQLite file is an error naming it, and a phase list
//! that names no phase lists the phases there are.

use crate::util::{Project, code, exec, stderr, stdout};

/// Three phases: a source, a load that creates its own table, and a summary over it.
const PIPELINE: &str = r#"
[pipeline]
name = "checks"
start = "2024-03-01"
calendar.sql = "SELECT d FROM cal WHERE d BETWEEN :start AND :end"

[warehouse]
url = "WAREHOUSE_URL"

[[phase]]
id = 1
name = "raw"
check.sql = "SELECT d, COUNT(*) FROM events WHERE d BETWEEN :start AND :end GROUP BY d"
expect.sql = "SELECT d, n FROM cal WHERE d BETWEEN :start AND :end"

[[phase]]
id = 2
name = "load"
needs = [1]
run.sql = """
CREATE TABLE IF NOT EXISTS loaded (d TEXT, id INTEGER);
DELETE FROM loaded WHERE d BETWEEN :start AND :end;
INSERT INTO loaded SELECT d, id FROM events WHERE d BETWEEN :start AND :end
"""
check.sql = "SELECT d, COUNT(*) FROM loaded WHERE d BETWEEN :start AND :end GROUP BY d"
rollback.sql = "DELETE FROM loaded WHERE d BETWEEN :start AND :end"

[[phase]]
id = 3
name = "analytics"
needs = [2]
run.sql = """
DELETE FROM summary WHERE d BETWEEN :start AND :end;
INSERT INTO summary SELECT d, COUNT(*) FROM loaded WHERE d BETWEEN :start AND :end GROUP BY d
"""
check.sql = "SELECT d, COUNT(*) FROM summary WHERE d BETWEEN :start AND :end GROUP BY d"
"#;

const TABLES: &str = "CREATE TABLE cal (d TEXT PRIMARY KEY, n INTEGER);
CREATE TABLE events (d TEXT, id INTEGER);
CREATE TABLE summary (d TEXT, n INTEGER)";

/// The pipeline on a SQLite warehouse with its tables (not `loaded`, which phase 2 creates),
/// `pipeline` edited by `edit`.
async fn sqlite_project(edit: impl Fn(&str) -> String) -> Project {
    let project = Project::new();
    project.write(
        "gapless.toml",
        &edit(&PIPELINE.replace("WAREHOUSE_URL", "sqlite://warehouse.db")),
    );
    let warehouse = project.sqlite("warehouse.db").await;
    exec(&warehouse, TABLES).await;
    warehouse.close().await;
    project
}

fn typo(pipeline: &str) -> String {
    pipeline.replace("COUNT(*) FROM summary WHERE", "COUNT(*) FROM sumary WHERE")
}

#[tokio::test]
async fn a_clean_pipeline_checks_clean_though_a_runner_creates_a_table() {
    let project = sqlite_project(str::to_owned).await;
    let output = project.run(&["check"]);
    assert_eq!(
        stdout(&output),
        "gapless.toml: pipeline `checks` is valid (3 phases)
  ok    warehouse answers
  ok    8 SQL texts prepared (5 statements left to the run: they use a table or column the pipeline creates)
  ok    state store answers
  ok    probes not run: some read tables the pipeline has not created yet
"
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
}

#[tokio::test]
async fn check_names_the_phase_and_key_of_a_missing_table() {
    let project = sqlite_project(typo).await;
    let output = project.run(&["check"]);
    assert_eq!(
        stdout(&output),
        "gapless.toml: pipeline `checks` is valid (3 phases)
  ok    warehouse answers
  ok    7 SQL texts prepared (5 statements left to the run: they use a table or column the pipeline creates)
  ok    state store answers
  FAIL  phase 3 `analytics` check.sql: no such table: sumary
"
    );
    assert_eq!(code(&output), 3);
}

#[tokio::test]
async fn a_syntax_error_in_a_runner_stops_the_backfill_before_anything_runs() {
    let project = sqlite_project(|pipeline| {
        pipeline.replace("INSERT INTO summary SELECT", "INSERT INTO summary SELEC")
    })
    .await;
    let output = project.run(&["check"]);
    assert_eq!(
        stdout(&output),
        "gapless.toml: pipeline `checks` is valid (3 phases)
  ok    warehouse answers
  ok    7 SQL texts prepared (4 statements left to the run: they use a table or column the pipeline creates)
  ok    state store answers
  FAIL  phase 3 `analytics` run.sql: statement 2 of 2 (`INSERT INTO summary SELEC d, COUNT(*) FROM loaded WHERE d BETWEEN ?1 AND ?2 GROU…`): near \"SELEC\": syntax error
"
    );
    assert_eq!(code(&output), 3);
    let output = project.run(&[
        "backfill",
        "--start-date",
        "2024-03-01",
        "--end-date",
        "2024-03-02",
    ]);
    assert_eq!(
        stderr(&output),
        "error: pre-flight failed:
  phase 3 `analytics` run.sql: statement 2 of 2 (`INSERT INTO summary SELEC d, COUNT(*) FROM loaded WHERE d BETWEEN ?1 AND ?2 GROU…`): near \"SELEC\": syntax error
"
    );
    assert_eq!(code(&output), 3);
    // Nothing ran: phase 2's runner would have created `loaded`.
    let warehouse = project.sqlite("warehouse.db").await;
    let tables = crate::util::scalar(
        &warehouse,
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'loaded'",
    )
    .await;
    assert_eq!(tables, 0);
}

#[test]
fn a_missing_sqlite_warehouse_is_an_error_naming_it() {
    let project = Project::new();
    project.write(
        "gapless.toml",
        &PIPELINE.replace("WAREHOUSE_URL", "sqlite://warehuose.db"),
    );
    let dir = project.path().display().to_string();
    for args in [&["check"][..], &["status"], &["scan"]] {
        let output = project.run(args);
        assert_eq!(
            stderr(&output).replace(&dir, "<dir>"),
            "error: cannot reach the warehouse
  Caused by: cannot connect to the warehouse
  Caused by: the SQLite warehouse `<dir>/warehuose.db` does not exist (check `[warehouse] url`)
",
            "{args:?}"
        );
        assert_eq!(code(&output), 3, "{args:?}");
    }
    assert!(!project.path().join("warehuose.db").exists());
}

#[tokio::test]
async fn a_missing_attached_file_is_an_error_naming_it() {
    let project = sqlite_project(|pipeline| {
        pipeline.replace(
            "url = \"sqlite://warehouse.db\"",
            "url = \"sqlite://warehouse.db\"\nattach = { raw = \"raw/events.db\" }",
        )
    })
    .await;
    let dir = project.path().display().to_string();
    let output = project.run(&["check"]);
    assert_eq!(
        stderr(&output).replace(&dir, "<dir>"),
        "error: cannot reach the warehouse
  Caused by: cannot connect to the warehouse
  Caused by: attached database `raw` not found at `<dir>/raw/events.db`
"
    );
    assert_eq!(code(&output), 3);
    assert!(!project.path().join("raw/events.db").exists());
}

#[tokio::test]
async fn a_phase_list_naming_no_phase_lists_the_phases() {
    let project = sqlite_project(str::to_owned).await;
    for args in [
        &["status", "--phases", "7"][..],
        &[
            "plan",
            "--start-date",
            "2024-03-01",
            "--end-date",
            "2024-03-02",
            "--phases",
            "2,7",
        ],
    ] {
        let output = project.run(args);
        assert_eq!(
            stderr(&output),
            "error: --phases: `7` is not a phase; the phases are 1 `raw`, 2 `load`, 3 `analytics`\n",
            "{args:?}"
        );
        assert_eq!(code(&output), 2, "{args:?}");
    }
}

#[tokio::test]
async fn check_names_the_phase_and_key_of_a_missing_table_on_postgres() {
    let Some(url) = gapless_testkit::pg_url() else {
        return;
    };
    let database = gapless_testkit::fresh_pg_database(&url).await.unwrap();
    let pool = sqlx::PgPool::connect(database.url()).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE cal (d DATE PRIMARY KEY, n INTEGER);
         CREATE TABLE events (d DATE, id INTEGER);
         CREATE TABLE summary (d DATE, n INTEGER)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let project = Project::new();
    project.write(
        "gapless.toml",
        &typo(&PIPELINE.replace("WAREHOUSE_URL", database.url()))
            .replace("d TEXT, id INTEGER", "d DATE, id INTEGER"),
    );
    let output = project.run(&["check"]);
    assert_eq!(
        stdout(&output),
        "gapless.toml: pipeline `checks` is valid (3 phases)
  ok    warehouse answers
  ok    7 SQL texts prepared (5 statements left to the run: they use a table or column the pipeline creates)
  ok    state store answers
  FAIL  phase 3 `analytics` check.sql: relation \"sumary\" does not exist
"
    );
    assert_eq!(code(&output), 3);
    database.drop_db().await.unwrap();
}
