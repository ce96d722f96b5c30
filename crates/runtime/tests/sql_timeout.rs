//! A SQL runner and its rollback run under their phase's `timeout`, not under the warehouse's
//! own timeout (the probe bound, `PROBE_TIMEOUT`): a long phase is not cut short by it, and a
//! short one stops its SQL.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gapless_connect::{ScriptParams, Warehouse, WarehouseError};
mod common;

use gapless_core::dates::parse_date;
use gapless_core::spec::{NoFiles, parse};
use gapless_runtime::context::{Context, PROBE_TIMEOUT};
use gapless_runtime::executor::{Execution, Options, Outcome, Quiet, execute};
use gapless_store::TaskRecord;
use tokio_util::sync::CancellationToken;

/// A statement SQLite needs a while for (counting to three million, one row at a time).
const SLOW: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c";
/// A statement that would run for hours.
const ENDLESS: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000000) SELECT count(*) FROM c";
/// The warehouse timeout the slow tests give their context in place of [`PROBE_TIMEOUT`]: far
/// shorter than [`SLOW`] takes, so a runner bound by it would be cut.
const SHORT_PROBE_TIMEOUT: Duration = Duration::from_millis(100);

fn pipeline(phase: &str) -> String {
    format!(
        r#"
[pipeline]
name = "limits"
start = "2024-01-01"

[warehouse]
url = "sqlite://warehouse.db"

[[phase]]
id = 1
name = "slow"
check.command = ["echo", "2024-01-01 1"]
{phase}
"#
    )
}

fn params() -> ScriptParams {
    let day = parse_date("2024-01-01").unwrap();
    ScriptParams {
        start: day,
        end: day,
        date: Some(day),
    }
}

async fn warehouse(dir: &Path, timeout: Duration) -> Warehouse {
    Warehouse::connect("sqlite://warehouse.db", &[], dir, timeout)
        .await
        .unwrap()
}

async fn rows(dir: &Path, table: &str) -> i64 {
    warehouse(dir, PROBE_TIMEOUT)
        .await
        .scalar(&format!("SELECT count(*) FROM {table}"))
        .await
        .unwrap()
}

/// Runs the one task of phase 1 on 2024-01-01 of `pipeline`, with the context's warehouse
/// timeout set to `probe_timeout`.
async fn execute_one(dir: &Path, pipeline: &str, probe_timeout: Duration) -> (Outcome, TaskRecord) {
    let spec = parse(pipeline, &NoFiles).unwrap();
    let today = parse_date("2024-01-01").unwrap();
    let mut context = Context::connect(
        spec,
        dir,
        dir.join("logs"),
        today.and_time(chrono::NaiveTime::MIN),
    )
    .await
    .unwrap();
    context.warehouse = Some(warehouse(dir, probe_timeout).await);
    context.probe_timeout = probe_timeout;
    let (store, run_id, task) = common::one_task_run(dir, &context.spec, today).await;
    let task_id = task.id;
    let tasks = vec![task];
    let execution = Execution {
        context: Arc::new(context),
        store: store.clone(),
        run_id,
        options: Options {
            jobs: 1,
            ..Options::default()
        },
        observer: Arc::new(Quiet),
        cancel: CancellationToken::new(),
    };
    let outcome = execute(execution, tasks).await.unwrap();
    let task = store.task(task_id).await.unwrap().unwrap();
    (outcome, task)
}

/// The premise of the tests below: [`SLOW`] outlasts [`SHORT_PROBE_TIMEOUT`], so a runner
/// that got the warehouse's timeout instead of its phase's would fail.
async fn assert_slow_outlasts_the_short_probe_timeout(dir: &Path) {
    let bounded = warehouse(dir, SHORT_PROBE_TIMEOUT).await;
    let cut = bounded
        .execute_script(&format!("INSERT INTO probe_bound {SLOW}"), &params())
        .await;
    assert!(
        matches!(cut, Err(WarehouseError::Timeout { .. })),
        "the slow statement finished within {SHORT_PROBE_TIMEOUT:?}: {cut:?}"
    );
}

async fn create_tables(dir: &Path, tables: &[&str]) {
    let setup: String = tables
        .iter()
        .map(|table| format!("CREATE TABLE {table} (n INTEGER);"))
        .collect();
    warehouse(dir, PROBE_TIMEOUT)
        .await
        .execute_script(&setup, &params())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sql_runner_gets_its_phase_timeout_not_the_warehouse_timeout() {
    let dir = tempfile::tempdir().unwrap();
    create_tables(dir.path(), &["probe_bound", "done"]).await;
    assert_slow_outlasts_the_short_probe_timeout(dir.path()).await;

    let (outcome, task) = execute_one(
        dir.path(),
        &pipeline(&format!(
            "run.sql = \"INSERT INTO done {SLOW}\"\ntimeout = \"60s\""
        )),
        SHORT_PROBE_TIMEOUT,
    )
    .await;
    assert_eq!(outcome.tasks_complete, 1, "{outcome:?}: {:?}", task.error);
    assert_eq!(rows(dir.path(), "done").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sql_runner_is_stopped_at_its_phase_timeout() {
    let dir = tempfile::tempdir().unwrap();
    create_tables(dir.path(), &["done"]).await;
    let started = Instant::now();
    let (outcome, task) = execute_one(
        dir.path(),
        &pipeline(&format!(
            "run.sql = \"INSERT INTO done {ENDLESS}\"\ntimeout = \"1s\""
        )),
        PROBE_TIMEOUT,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(outcome.tasks_failed, 1, "{outcome:?}");
    let error = task.error.unwrap_or_default();
    assert!(error.contains("timed out"), "{error}");
    // Stopped at its own 1 s, far from the probe bound (a loaded machine adds seconds, not
    // minutes).
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_eq!(rows(dir.path(), "done").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sql_rollback_gets_its_phase_timeout_not_the_warehouse_timeout() {
    let dir = tempfile::tempdir().unwrap();
    create_tables(dir.path(), &["probe_bound", "undone"]).await;
    assert_slow_outlasts_the_short_probe_timeout(dir.path()).await;

    let (outcome, task) = execute_one(
        dir.path(),
        &pipeline(&format!(
            "run.sql = \"INSERT INTO no_such_table VALUES (1)\"\nrollback.sql = \"INSERT INTO undone {SLOW}\"\ntimeout = \"60s\""
        )),
        SHORT_PROBE_TIMEOUT,
    )
    .await;
    assert_eq!(outcome.tasks_failed, 1, "{outcome:?}");
    let error = task.error.unwrap_or_default();
    assert!(!error.contains("rollback also failed"), "{error}");
    assert_eq!(rows(dir.path(), "undone").await, 1);
}
