//! The gated script (a runner validated inside its own transaction) on SQLite and PostgreSQL,
//! and SQLite SQL stopped by its timeout or by the caller dropping the future.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use gapless_connect::{Param, ScriptParams, Warehouse, WarehouseError};

use crate::support::jan;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A statement that runs for half a minute or more unless interrupted (a recursive CTE of
/// 3·10^8 rows; ~8·10^6 rows/s on a fast core): long past every wait below, short enough that
/// a broken interrupt fails the test instead of hanging it (the runtime waits for the blocking
/// job at shutdown).
const ENDLESS: &str = "INSERT INTO t (d, n) SELECT '2024-01-01', x FROM \
     (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000000) \
      SELECT x FROM c) WHERE x < 0";

fn params(start: u32, end: u32) -> ScriptParams {
    ScriptParams {
        start: jan(start),
        end: jan(end),
        date: None,
    }
}

fn counts(pairs: &[(u32, i64)]) -> BTreeMap<NaiveDate, i64> {
    pairs
        .iter()
        .map(|&(day, count)| (jan(day), count))
        .collect()
}

/// Passes when every date of the first probe has as many rows as the second probe says.
fn loaded_matches_source(
    observed: Vec<BTreeMap<NaiveDate, i64>>,
) -> Result<Vec<BTreeMap<NaiveDate, i64>>, String> {
    assert_eq!(observed.len(), 2, "one map per probe");
    if observed[0] == observed[1] {
        Ok(observed)
    } else {
        Err(format!(
            "loaded {:?}, source {:?}",
            observed[0], observed[1]
        ))
    }
}

/// The gated runner on any backend. `source` and `target` are schemas: on SQLite the source is
/// an ATTACHed file and the target the main database, on PostgreSQL both are a fresh schema.
pub(crate) async fn gated_scenario(
    warehouse: &Warehouse,
    source: &str,
    target: &str,
) -> anyhow::Result<()> {
    let sql = |text: &str| text.replace("{src}", source).replace("{dst}", target);
    warehouse
        .execute_script(
            &sql(
                "CREATE TABLE {src}.games (d DATE NOT NULL, n INTEGER NOT NULL);
                  CREATE TABLE {dst}.loaded (d DATE NOT NULL, n INTEGER NOT NULL);
                  INSERT INTO {src}.games VALUES
                    ('2024-01-01', 1), ('2024-01-01', 2), ('2024-01-01', 3),
                    ('2024-01-02', 4), ('2024-01-02', 5), ('2024-01-09', 6);",
            ),
            &params(1, 1),
        )
        .await?;
    let loaded =
        sql("SELECT d, COUNT(*) FROM {dst}.loaded WHERE d BETWEEN :start AND :end GROUP BY d");
    let expected =
        sql("SELECT d, COUNT(*) FROM {src}.games WHERE d BETWEEN :start AND :end GROUP BY d");
    let probes = [loaded.as_str(), expected.as_str()];

    // Counts suffice: the probes see the script's uncommitted rows, and the script commits.
    let runner = sql("DELETE FROM {dst}.loaded WHERE d BETWEEN :start AND :end;
         INSERT INTO {dst}.loaded SELECT d, n FROM {src}.games WHERE d BETWEEN :start AND :end");
    let verdict = warehouse
        .execute_script_gated(
            &runner,
            &params(1, 5),
            TIMEOUT,
            &probes,
            loaded_matches_source,
        )
        .await?;
    let observed = verdict.map_err(anyhow::Error::msg)?;
    // Only the range counts: 2024-01-09 is outside it.
    assert_eq!(observed, vec![counts(&[(1, 3), (2, 2)]); 2]);
    assert_eq!(
        warehouse.counts(&loaded, jan(1), jan(31)).await?,
        counts(&[(1, 3), (2, 2)])
    );

    // Short: a runner that drops a row. The gate rejects it and everything rolls back, its
    // DELETE included.
    let short = sql("DELETE FROM {dst}.loaded WHERE d BETWEEN :start AND :end;
         INSERT INTO {dst}.loaded SELECT d, n + 100 FROM {src}.games
           WHERE d BETWEEN :start AND :end AND n <> 2");
    let verdict = warehouse
        .execute_script_gated(&short, &params(1, 5), TIMEOUT, &probes, |observed| {
            loaded_matches_source(observed).map(drop)
        })
        .await?;
    let rejection = verdict.unwrap_err();
    assert!(rejection.contains("2024-01-01: 2"), "{rejection}");
    assert_eq!(
        warehouse.counts(&loaded, jan(1), jan(31)).await?,
        counts(&[(1, 3), (2, 2)])
    );
    assert_eq!(
        warehouse
            .scalar(&sql("SELECT COUNT(*) FROM {dst}.loaded WHERE n > 100"))
            .await?,
        0
    );

    // A probe that fails in the database rolls the script back and is named.
    let error = warehouse
        .execute_script_gated(
            &short,
            &params(1, 5),
            TIMEOUT,
            &[
                &loaded,
                &sql("SELECT d, COUNT(*) FROM {src}.no_such_table GROUP BY d"),
            ],
            |_| Ok::<_, ()>(()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, WarehouseError::Query { query, .. } if query.contains("no_such_table")),
        "{error:?}"
    );
    // A probe whose values are not counts: the same errors as `counts`, and a rollback.
    let error = warehouse
        .execute_script_gated(
            &short,
            &params(1, 5),
            TIMEOUT,
            &["SELECT '2024-01-01', 'many'"],
            |_| Ok::<_, ()>(()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, WarehouseError::BadCount { ref value, .. } if value == "many"),
        "{error:?}"
    );
    assert_eq!(
        warehouse
            .scalar(&sql("SELECT COUNT(*) FROM {dst}.loaded WHERE n > 100"))
            .await?,
        0
    );

    // A probe may not use `:date`, and a script statement that fails is named: both before
    // the gate, which never runs.
    let error = warehouse
        .execute_script_gated(
            &runner,
            &ScriptParams {
                date: Some(jan(1)),
                ..params(1, 5)
            },
            TIMEOUT,
            &[&sql(
                "SELECT d, COUNT(*) FROM {dst}.loaded WHERE d = :date GROUP BY d",
            )],
            |_| -> Result<(), ()> { panic!("the gate must not run") },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            WarehouseError::MissingParam {
                param: Param::Date,
                ..
            }
        ),
        "{error:?}"
    );
    let error = warehouse
        .execute_script_gated(
            &sql("DELETE FROM {dst}.loaded WHERE true; INSERT INTO {dst}.nope VALUES (1)"),
            &params(1, 5),
            TIMEOUT,
            &probes,
            |_| -> Result<(), ()> { panic!("the gate must not run") },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            WarehouseError::Statement {
                index: 2,
                total: 2,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        warehouse.counts(&loaded, jan(1), jan(31)).await?,
        counts(&[(1, 3), (2, 2)])
    );

    // No probes: the gate gets nothing and decides alone.
    let verdict = warehouse
        .execute_script_gated(&runner, &params(9, 9), TIMEOUT, &[], |observed| {
            if observed.is_empty() { Ok(7) } else { Err(()) }
        })
        .await?;
    assert_eq!(verdict, Ok(7));
    assert_eq!(
        warehouse.counts(&loaded, jan(1), jan(31)).await?,
        counts(&[(1, 3), (2, 2), (9, 1)])
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_gated_script_with_attached_schema() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("raw.db"), b"")?;
    let warehouse = Warehouse::connect(
        "sqlite://main.db",
        &[("raw".to_owned(), PathBuf::from("raw.db"))],
        dir.path(),
        TIMEOUT,
    )
    .await?;
    gated_scenario(&warehouse, "raw", "main").await?;
    warehouse.close().await;
    let error = warehouse.scalar("SELECT 1").await.unwrap_err();
    assert!(matches!(error, WarehouseError::Closed), "{error:?}");
    Ok(())
}

#[tokio::test]
async fn postgres_gated_script() -> anyhow::Result<()> {
    let Some(url) = gapless_testkit::pg_url() else {
        return Ok(());
    };
    let database = gapless_testkit::fresh_pg_database(&url).await?;
    let warehouse = Warehouse::connect(database.url(), &[], Path::new("."), TIMEOUT).await?;
    warehouse
        .execute_script("CREATE SCHEMA raw; CREATE SCHEMA mart", &params(1, 1))
        .await?;
    let result = gated_scenario(&warehouse, "raw", "mart").await;
    // The server's statement_timeout, set to the script's timeout, stops a slow probe: the
    // statement fails and the script is rolled back.
    let slow_probe = warehouse
        .execute_script_gated(
            "INSERT INTO mart.loaded VALUES ('2024-01-03', 1)",
            &params(1, 5),
            Duration::from_millis(300),
            &["SELECT NULL, pg_sleep(5)"],
            |_| Ok::<_, ()>(()),
        )
        .await;
    let after_slow = warehouse
        .scalar("SELECT COUNT(*) FROM mart.loaded WHERE d = '2024-01-03'")
        .await;
    warehouse.close().await;
    database.drop_db().await?;
    result?;
    let error = slow_probe.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert_eq!(after_slow?, 0);
    Ok(())
}

/// A WAL database with a table `t`, through the warehouse, plus its path for side connections.
async fn sqlite_file(dir: &Path, timeout: Duration) -> anyhow::Result<(Warehouse, PathBuf)> {
    let warehouse = Warehouse::connect("sqlite://w.db", &[], dir, timeout).await?;
    warehouse
        .execute_script(
            "CREATE TABLE t (d TEXT NOT NULL, n INTEGER NOT NULL)",
            &params(1, 1),
        )
        .await?;
    Ok((warehouse, dir.join("w.db")))
}

/// Whether some connection holds the write lock: `BEGIN IMMEDIATE` from a side connection
/// that does not wait fails with SQLITE_BUSY.
fn is_write_locked(path: &Path) -> bool {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection.busy_timeout(Duration::ZERO).unwrap();
    match connection.execute_batch("BEGIN IMMEDIATE") {
        Ok(()) => {
            connection.execute_batch("ROLLBACK").unwrap();
            false
        }
        Err(rusqlite::Error::SqliteFailure(error, _))
            if error.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            true
        }
        Err(error) => panic!("BEGIN IMMEDIATE failed: {error}"),
    }
}

/// Polls, for up to 5 s, until the write lock is `held` (or not).
async fn wait_for_write_lock(path: &Path, held: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_write_locked(path) != held {
        assert!(
            Instant::now() < deadline,
            "the write lock is still {}",
            if held { "free" } else { "held" }
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn sqlite_timeout_interrupts_and_rolls_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (warehouse, path) = sqlite_file(dir.path(), Duration::from_millis(300)).await?;
    // The rows a script changed, not the previous statement's count again after DDL.
    let affected = warehouse
        .execute_script(
            "INSERT INTO t VALUES ('2024-01-01', 1), ('2024-01-01', 2);
             CREATE INDEX t_d ON t (d)",
            &params(1, 1),
        )
        .await?;
    assert_eq!(affected, 2);

    let started = Instant::now();
    let error = warehouse
        .execute_script(
            &format!("INSERT INTO t VALUES ('2024-01-02', 3); {ENDLESS}"),
            &params(1, 1),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, WarehouseError::Timeout { .. }), "{error:?}");
    assert!(error.is_retryable());
    // Interrupted, not left running for the minutes it would take.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // When the timeout is reported, the transaction is gone: another connection can write at
    // once, without waiting for a lock.
    assert!(!is_write_locked(&path));
    assert_eq!(warehouse.scalar("SELECT COUNT(*) FROM t").await?, 2);
    // And the pool's connections write (each would fail to BEGIN if one were left in a
    // transaction): more calls than connections.
    for round in 0..6 {
        warehouse
            .execute_script("INSERT INTO t VALUES (:start, 9)", &params(3, 3))
            .await
            .map_err(|error| anyhow::anyhow!("write {round}: {error}"))?;
    }
    assert_eq!(
        warehouse
            .counts("SELECT d, COUNT(*) FROM t GROUP BY d", jan(1), jan(9))
            .await?,
        counts(&[(1, 2), (3, 6)])
    );

    // A probe of a gated script that runs past the timeout: interrupted, script rolled back.
    let error = warehouse
        .execute_script_gated(
            "INSERT INTO t VALUES ('2024-01-04', 1)",
            &params(1, 9),
            Duration::from_millis(300),
            &["SELECT '2024-01-04', COUNT(*) FROM \
               (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000000) \
                SELECT x FROM c)"],
            |_| Ok::<_, ()>(()),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, WarehouseError::Timeout { .. }), "{error:?}");
    assert!(!is_write_locked(&path));
    assert_eq!(
        warehouse
            .scalar("SELECT COUNT(*) FROM t WHERE d = '2024-01-04'")
            .await?,
        0
    );
    tokio::time::timeout(Duration::from_secs(5), warehouse.close()).await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_memory_timeout_keeps_the_database() -> anyhow::Result<()> {
    // One connection is the whole database: after an interrupted script it must still be
    // there, with no transaction open (BEGIN IMMEDIATE would fail inside one).
    let dir = tempfile::tempdir()?;
    let warehouse = Warehouse::connect(
        "sqlite::memory:",
        &[],
        dir.path(),
        Duration::from_millis(300),
    )
    .await?;
    warehouse
        .execute_script(
            "CREATE TABLE t (d TEXT NOT NULL, n INTEGER NOT NULL);
             INSERT INTO t VALUES ('2024-01-01', 1)",
            &params(1, 1),
        )
        .await?;
    let error = warehouse
        .execute_script(
            &format!("INSERT INTO t VALUES ('2024-01-02', 2); {ENDLESS}"),
            &params(1, 1),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, WarehouseError::Timeout { .. }), "{error:?}");
    warehouse
        .execute_script("INSERT INTO t VALUES ('2024-01-03', 3)", &params(1, 1))
        .await?;
    assert_eq!(warehouse.scalar("SELECT SUM(n) FROM t").await?, 4);

    // A gate that panics: the panic reaches the caller, the script is rolled back and the
    // database survives.
    let panicking = warehouse.clone();
    let task = tokio::spawn(async move {
        panicking
            .execute_script_gated(
                "INSERT INTO t VALUES ('2024-01-04', 4)",
                &params(1, 9),
                TIMEOUT,
                &[],
                |_| -> Result<(), ()> { panic!("gate bug") },
            )
            .await
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(warehouse.scalar("SELECT SUM(n) FROM t").await?, 4);
    warehouse
        .execute_script("INSERT INTO t VALUES ('2024-01-05', 5)", &params(1, 1))
        .await?;
    assert_eq!(warehouse.scalar("SELECT SUM(n) FROM t").await?, 9);
    Ok(())
}

#[tokio::test]
async fn sqlite_dropped_script_rolls_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (warehouse, path) = sqlite_file(dir.path(), TIMEOUT).await?;
    let long = format!("INSERT INTO t VALUES ('2024-01-01', 1); {ENDLESS}");
    let day = params(1, 1);

    // The plain script: dropped once its transaction holds the write lock.
    let script = warehouse.execute_script_with_timeout(&long, &day, Duration::from_secs(600));
    tokio::select! {
        result = script => panic!("the script ended: {result:?}"),
        () = wait_for_write_lock(&path, true) => {}
    }
    // The future is gone; the statement must stop long before its minutes are up.
    wait_for_write_lock(&path, false).await;
    assert_eq!(warehouse.scalar("SELECT COUNT(*) FROM t").await?, 0);

    // The gated script, the way the executor cancels it: a select that drops it.
    let gated = warehouse.execute_script_gated(
        &long,
        &day,
        Duration::from_secs(600),
        &["SELECT d, COUNT(*) FROM t GROUP BY d"],
        |_| Ok::<_, ()>(()),
    );
    tokio::select! {
        result = gated => panic!("the gated script ended: {result:?}"),
        () = wait_for_write_lock(&path, true) => {}
    }
    wait_for_write_lock(&path, false).await;
    assert_eq!(warehouse.scalar("SELECT COUNT(*) FROM t").await?, 0);

    // The pool is whole: writes work on every connection.
    for _ in 0..6 {
        warehouse
            .execute_script("INSERT INTO t VALUES (:start, 1)", &params(2, 2))
            .await?;
    }
    assert_eq!(warehouse.scalar("SELECT COUNT(*) FROM t").await?, 6);
    tokio::time::timeout(Duration::from_secs(5), warehouse.close()).await?;
    Ok(())
}

/// A statement that runs for a few hundred milliseconds (2·10^6 rows of a recursive CTE):
/// far past the inline budget of a millisecond, far short of any timeout here.
const SLOW: &str = "INSERT INTO t (d, n) SELECT '2024-01-01', x FROM \
     (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) \
      SELECT x FROM c) WHERE x < 0";

#[tokio::test]
async fn sqlite_a_script_past_the_inline_budget_runs_once_and_frees_the_thread()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (warehouse, _) = sqlite_file(dir.path(), TIMEOUT).await?;
    warehouse
        .execute_script("CREATE TABLE once (d TEXT PRIMARY KEY)", &params(1, 1))
        .await?;
    let script = format!("INSERT INTO once VALUES (:start); {SLOW}");
    for day in 1..=3 {
        // This test's runtime has one thread. A task that wakes 20 ms in runs while the script
        // is still going: the script left the thread after its budget.
        let ticked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let ticked = std::sync::Arc::clone(&ticked);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                ticked.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        // The gate sees the row once: the interrupted first attempt was rolled back (with the
        // primary key, a kept row would also fail the second attempt's insert).
        let gated = warehouse
            .execute_script_gated(
                &script,
                &params(day, day),
                TIMEOUT,
                &["SELECT d, COUNT(*) FROM once WHERE d BETWEEN :start AND :end GROUP BY d"],
                Ok::<_, ()>,
            )
            .await?;
        assert!(
            ticked.load(std::sync::atomic::Ordering::SeqCst),
            "day {day}: the script held the caller's thread to the end"
        );
        assert_eq!(gated, Ok(vec![counts(&[(day, 1)])]), "day {day}");
        ticker.await?;
    }
    assert_eq!(warehouse.scalar("SELECT COUNT(*) FROM once").await?, 3);
    tokio::time::timeout(Duration::from_secs(5), warehouse.close()).await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_a_script_waits_for_another_writers_lock() -> anyhow::Result<()> {
    // The inline attempt does not wait for a lock; the blocking thread does, up to the busy
    // timeout, so a lock held for a moment by another process delays the script, not fails it.
    let dir = tempfile::tempdir()?;
    let (warehouse, path) = sqlite_file(dir.path(), TIMEOUT).await?;
    let (held, released) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || -> rusqlite::Result<()> {
        let connection = rusqlite::Connection::open(&path)?;
        connection.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES ('2024-01-09', 9)")?;
        held.send(()).ok();
        std::thread::sleep(Duration::from_millis(300));
        connection.execute_batch("COMMIT")
    });
    released.recv()?;
    warehouse
        .execute_script("INSERT INTO t VALUES (:start, 1)", &params(2, 2))
        .await?;
    holder.join().expect("the lock holder panicked")?;
    assert_eq!(
        warehouse
            .counts("SELECT d, COUNT(*) FROM t GROUP BY d", jan(1), jan(9))
            .await?,
        counts(&[(2, 1), (9, 1)])
    );
    Ok(())
}
