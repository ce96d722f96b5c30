//! Warehouse conformance: one scenario, run on SQLite (always), PostgreSQL (when configured) and
//! BigQuery (the emulator, in `bigquery.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use gapless_connect::{
    DatabaseError, Dialect, Param, Prepared, SchemaChanges, ScriptParams, Warehouse, WarehouseError,
};

use crate::support::{jan, pg_url, unique_name};

const TIMEOUT: Duration = Duration::from_secs(20);

fn params(start: u32, end: u32) -> ScriptParams {
    ScriptParams {
        start: jan(start),
        end: jan(end),
        date: None,
    }
}

/// The scenario every backend must pass. `schema` is where the test table lives: an ATTACHed
/// database on SQLite, a fresh schema on PostgreSQL, a fresh dataset on BigQuery.
pub(crate) async fn scenario(warehouse: &Warehouse, schema: &str) -> anyhow::Result<()> {
    let sql = |text: &str| text.replace("{s}", schema);
    warehouse.ping().await?;

    warehouse
        .execute_script(
            &sql("CREATE TABLE {s}.t (game_date DATE NOT NULL, game_id INTEGER NOT NULL);"),
            &params(1, 1),
        )
        .await?;
    let inserted = warehouse
        .execute_script(
            &sql("INSERT INTO {s}.t VALUES ('2024-01-01', 1), ('2024-01-01', 2), ('2024-01-02', 3);
                  -- outside the range probed below; a comment with ; and :start
                  INSERT INTO {s}.t VALUES ('2023-12-31', 4), ('2024-01-10', 5);
                  INSERT INTO {s}.t VALUES ('2024-01-04', 6), ('2024-01-04', 7), ('2024-01-04', 8);"),
            &params(1, 1),
        )
        .await?;
    assert_eq!(inserted, 8);

    // One query for the whole range; dates without rows are absent.
    let expected: BTreeMap<_, _> = [(jan(1), 2), (jan(2), 1), (jan(4), 3)].into();
    let probe = sql(
        "SELECT game_date, COUNT(*) FROM {s}.t WHERE game_date BETWEEN :start AND :end GROUP BY game_date",
    );
    assert_eq!(warehouse.counts(&probe, jan(1), jan(5)).await?, expected);
    // Rows outside the range are ignored even when the query does not filter.
    let unfiltered = sql("SELECT game_date, COUNT(*) FROM {s}.t GROUP BY game_date");
    assert_eq!(
        warehouse.counts(&unfiltered, jan(1), jan(5)).await?,
        expected
    );
    // Duplicate dates are summed; an INT4 literal count is read.
    let per_row = sql("SELECT game_date, 1 FROM {s}.t");
    assert_eq!(warehouse.counts(&per_row, jan(1), jan(5)).await?, expected);
    // NUMERIC counts (PostgreSQL's SUM of BIGINT) are read.
    let numeric = sql("SELECT game_date, CAST(COUNT(*) AS NUMERIC) FROM {s}.t GROUP BY game_date");
    assert_eq!(warehouse.counts(&numeric, jan(1), jan(5)).await?, expected);
    // TIMESTAMP or date-time text in the date column: its date counts.
    let timestamps = match warehouse.dialect() {
        Dialect::Postgres => sql("SELECT game_date::timestamp, COUNT(*) FROM {s}.t GROUP BY 1"),
        Dialect::Sqlite => sql("SELECT game_date || ' 12:00:00', COUNT(*) FROM {s}.t GROUP BY 1"),
        Dialect::BigQuery => {
            sql("SELECT CAST(game_date AS TIMESTAMP), COUNT(*) FROM {s}.t GROUP BY 1")
        }
    };
    assert_eq!(
        warehouse.counts(&timestamps, jan(1), jan(5)).await?,
        expected
    );
    // Dates as text, :start twice.
    let text_dates = match warehouse.dialect() {
        Dialect::Postgres => sql(
            "SELECT to_char(game_date, 'YYYY-MM-DD'), COUNT(*) FROM {s}.t \
             WHERE game_date >= :start AND game_date >= :start GROUP BY 1",
        ),
        Dialect::Sqlite => sql("SELECT game_date, COUNT(*) FROM {s}.t \
             WHERE game_date >= :start AND game_date >= :start GROUP BY 1"),
        Dialect::BigQuery => sql("SELECT CAST(game_date AS STRING), COUNT(*) FROM {s}.t \
             WHERE game_date >= :start AND game_date >= :start GROUP BY 1"),
    };
    assert_eq!(
        warehouse.counts(&text_dates, jan(1), jan(5)).await?,
        expected
    );

    // A value that is not a date is an error naming it and the query.
    let error = warehouse
        .counts("SELECT 'not-a-date', 1", jan(1), jan(5))
        .await
        .unwrap_err();
    assert!(
        matches!(error, WarehouseError::BadDate { ref value, .. } if value == "not-a-date"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("not-a-date") && error.to_string().contains("SELECT"),
        "{error}"
    );
    let error = warehouse
        .counts("SELECT '2024-01-01', 'many'", jan(1), jan(5))
        .await
        .unwrap_err();
    assert!(
        matches!(error, WarehouseError::BadCount { ref value, .. } if value == "many"),
        "{error:?}"
    );
    let error = warehouse
        .counts("SELECT '2024-01-01', 1, 2", jan(1), jan(5))
        .await
        .unwrap_err();
    assert!(
        matches!(error, WarehouseError::Columns { found: 3, .. }),
        "{error:?}"
    );
    let error = warehouse
        .counts(
            &sql("SELECT game_date, COUNT(*) FROM {s}.t WHERE game_date = :date GROUP BY 1"),
            jan(1),
            jan(5),
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
        .counts("SELECT 1, 2; SELECT 3, 4", jan(1), jan(5))
        .await
        .unwrap_err();
    assert!(
        matches!(error, WarehouseError::NotOneStatement { found: 2, .. }),
        "{error:?}"
    );
    let error = warehouse
        .counts("SELECT :foo, 1", jan(1), jan(5))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("invalid sql"), "{error}");
    assert!(format!("{error:?}").contains("foo"), "{error:?}");

    // The SQL runner: DELETE + INSERT over the range, idempotent.
    let rerun = sql("DELETE FROM {s}.t WHERE game_date BETWEEN :start AND :end;
         INSERT INTO {s}.t (game_date, game_id) VALUES (:start, 100), (:end, 101), (:end, 102);");
    let first = warehouse.execute_script(&rerun, &params(2, 3)).await?;
    assert_eq!(first, 1 + 3);
    let after_first = warehouse.counts(&probe, jan(1), jan(5)).await?;
    let second = warehouse.execute_script(&rerun, &params(2, 3)).await?;
    assert_eq!(second, 3 + 3);
    let after_second = warehouse.counts(&probe, jan(1), jan(5)).await?;
    assert_eq!(after_first, after_second);
    let expected_after: BTreeMap<_, _> =
        [(jan(1), 2), (jan(2), 1), (jan(3), 2), (jan(4), 3)].into();
    assert_eq!(after_second, expected_after);

    // A failing statement rolls the whole script back and is named.
    let failing = sql("DELETE FROM {s}.t WHERE game_date BETWEEN :start AND :end;
         INSERT INTO {s}.no_such_table VALUES (1)");
    let error = warehouse
        .execute_script(&failing, &params(1, 5))
        .await
        .unwrap_err();
    match &error {
        WarehouseError::Statement {
            index,
            total,
            statement,
            ..
        } => {
            assert_eq!((*index, *total), (2, 2));
            assert!(statement.contains("no_such_table"), "{statement}");
        }
        other => panic!("expected a statement error, got {other:?}"),
    }
    assert!(error.to_string().contains("statement 2 of 2"), "{error}");
    assert_eq!(
        warehouse.counts(&probe, jan(1), jan(5)).await?,
        expected_after
    );

    // :date is bound when given, and refused before anything runs when not.
    let by_date = sql("DELETE FROM {s}.t WHERE game_date = :date");
    let error = warehouse
        .execute_script(&by_date, &params(1, 5))
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
    let deleted = warehouse
        .execute_script(
            &by_date,
            &ScriptParams {
                date: Some(jan(3)),
                ..params(1, 5)
            },
        )
        .await?;
    assert_eq!(deleted, 2);

    // The calendar query, with and without parameters.
    let expected_dates: BTreeSet<_> = [jan(1), jan(2), jan(4)].into();
    let calendar =
        sql("SELECT DISTINCT game_date FROM {s}.t WHERE game_date BETWEEN :start AND :end");
    assert_eq!(
        warehouse.dates(&calendar, jan(1), jan(5)).await?,
        expected_dates
    );
    let calendar = sql("SELECT game_date FROM {s}.t ORDER BY game_date");
    assert_eq!(
        warehouse.dates(&calendar, jan(1), jan(5)).await?,
        expected_dates
    );

    // One integer.
    assert_eq!(
        warehouse.scalar(&sql("SELECT COUNT(*) FROM {s}.t")).await?,
        8
    );
    assert_eq!(
        warehouse
            .scalar(&sql("SELECT SUM(game_id) FROM {s}.t WHERE game_id < 4"))
            .await?,
        3
    );
    let error = warehouse
        .scalar(&sql("SELECT game_id FROM {s}.t WHERE game_id < 0"))
        .await
        .unwrap_err();
    assert!(matches!(error, WarehouseError::NoRow { .. }), "{error:?}");
    let error = warehouse
        .scalar(&sql("SELECT COUNT(*) FROM {s}.t WHERE game_date >= :start"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            WarehouseError::MissingParam {
                param: Param::Start,
                ..
            }
        ),
        "{error:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_conformance() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // An empty file is a valid empty SQLite database.
    std::fs::create_dir(dir.path().join("warehouse"))?;
    std::fs::write(dir.path().join("warehouse/raw.db"), b"")?;
    let warehouse = Warehouse::connect(
        "sqlite://warehouse/main.db",
        &[("raw".to_owned(), PathBuf::from("warehouse/raw.db"))],
        dir.path(),
        TIMEOUT,
    )
    .await?;
    assert_eq!(warehouse.dialect(), Dialect::Sqlite);
    // The main file is created relative to the base directory.
    assert!(dir.path().join("warehouse/main.db").is_file());
    scenario(&warehouse, "raw").await?;
    warehouse.close().await;

    // The data went into the attached file: a fresh pool attaching it by absolute path sees it.
    let absolute = format!(
        "sqlite://{}",
        dir.path().join("warehouse/other.db").display()
    );
    let again = Warehouse::connect(
        &absolute,
        &[("raw".to_owned(), dir.path().join("warehouse/raw.db"))],
        std::path::Path::new("/nonexistent"),
        TIMEOUT,
    )
    .await?;
    assert_eq!(again.scalar("SELECT COUNT(*) FROM raw.t").await?, 8);
    again.close().await;
    Ok(())
}

#[tokio::test]
async fn postgres_conformance() -> anyhow::Result<()> {
    let Some(url) = pg_url() else { return Ok(()) };
    let warehouse = Warehouse::connect(&url, &[], std::path::Path::new("."), TIMEOUT).await?;
    assert_eq!(warehouse.dialect(), Dialect::Postgres);
    let schema = unique_name("gapless_connect_test");
    let no_params = params(1, 1);
    warehouse
        .execute_script(&format!("CREATE SCHEMA {schema}"), &no_params)
        .await?;
    let result = scenario(&warehouse, &schema).await;
    let timeout_result = warehouse
        .execute_script_with_timeout("SELECT pg_sleep(5)", &no_params, Duration::from_millis(300))
        .await;
    // With the server's timeout turned off, the client-side deadline ends the call, and the
    // connection, in an unknown state, is thrown away rather than returned (`close` below
    // would wait for it).
    let backstop_result = warehouse
        .execute_script_with_timeout(
            "SET LOCAL statement_timeout = 0; SELECT pg_sleep(10)",
            &no_params,
            Duration::from_millis(300),
        )
        .await;
    warehouse
        .execute_script(&format!("DROP SCHEMA {schema} CASCADE"), &no_params)
        .await?;
    warehouse.close().await;
    result?;
    // The server's statement_timeout ends it: the statement fails, worth a retry.
    let error = timeout_result.unwrap_err();
    assert!(
        matches!(error, WarehouseError::Statement { .. }),
        "{error:?}"
    );
    assert!(error.is_retryable(), "{error:?}");
    let error = backstop_result.unwrap_err();
    assert!(matches!(error, WarehouseError::Timeout { .. }), "{error:?}");
    assert!(error.is_retryable(), "{error:?}");
    Ok(())
}

#[tokio::test]
async fn sqlite_memory_and_connect_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let memory = Warehouse::connect("sqlite::memory:", &[], dir.path(), TIMEOUT).await?;
    // One connection for ever: a table created by one call is seen by the next.
    memory
        .execute_script(
            "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (41), (1)",
            &params(1, 1),
        )
        .await?;
    assert_eq!(memory.scalar("SELECT SUM(x) FROM t").await?, 42);

    // A query that outlives the timeout is interrupted and fails with Timeout; its connection
    // goes back to the pool and serves the next call.
    let slow = Warehouse::connect(
        "sqlite://slow.db",
        &[],
        dir.path(),
        Duration::from_millis(200),
    )
    .await?;
    let started = std::time::Instant::now();
    let error = slow
        .scalar(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000) \
             SELECT COUNT(*) FROM c",
        )
        .await
        .unwrap_err();
    assert!(matches!(error, WarehouseError::Timeout { .. }), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(slow.scalar("SELECT 7").await?, 7);
    tokio::time::timeout(Duration::from_secs(5), slow.close()).await?;

    let missing = Warehouse::connect(
        "sqlite::memory:",
        &[("raw".to_owned(), PathBuf::from("nope/raw.db"))],
        dir.path(),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(missing, WarehouseError::AttachmentMissing { ref name, .. } if name == "raw"));
    assert!(missing.to_string().contains("nope/raw.db"), "{missing}");
    assert!(!dir.path().join("nope").exists());

    std::fs::write(dir.path().join("x.db"), b"")?;
    for name in ["bad name", "1x", "x;DROP", "", "main", "TEMP"] {
        let error = Warehouse::connect(
            "sqlite::memory:",
            &[(name.to_owned(), PathBuf::from("x.db"))],
            dir.path(),
            TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, WarehouseError::InvalidAttachName { .. }),
            "{name}: {error:?}"
        );
    }
    let error = Warehouse::connect(
        "postgres://user:secret@127.0.0.1:1/db",
        &[("raw".to_owned(), PathBuf::from("x.db"))],
        dir.path(),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, WarehouseError::AttachUnsupported),
        "{error:?}"
    );
    let error = Warehouse::connect("mysql://x/y", &[], dir.path(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(error, WarehouseError::InvalidUrl { .. }),
        "{error:?}"
    );
    // Nothing listens on port 1: a connect error that hides the password.
    let error = Warehouse::connect(
        "postgres://user:secret@127.0.0.1:1/db",
        &[],
        dir.path(),
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    // The cause is the real one, not the pool's timeout.
    assert!(
        matches!(
            error,
            WarehouseError::Connect {
                source: DatabaseError::Postgres(sqlx::Error::Io(_)),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.to_string().contains("secret"), "{error}");
    assert!(error.is_retryable());

    // A main database that cannot be created fails at once, naming the URL.
    let started = std::time::Instant::now();
    let error = Warehouse::connect("sqlite://no/such/dir/main.db", &[], dir.path(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(error, WarehouseError::Connect { .. }), "{error:?}");
    assert!(error.to_string().contains("no/such/dir/main.db"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

/// Prepares `sql` against `changes` from `pipeline` (the SQL texts the pipeline holds).
pub(crate) async fn prepare(
    warehouse: &Warehouse,
    pipeline: &[&str],
    sql: &str,
) -> Result<Prepared, WarehouseError> {
    let mut changes = SchemaChanges::default();
    for text in pipeline {
        changes.scan(text, warehouse.dialect());
    }
    warehouse.prepare_script(sql, &changes).await
}

/// What `prepare_script` must find on SQLite and PostgreSQL, in schema `s` holding table `s.t`
/// (BigQuery's emulator dry-runs only queries: `bigquery.rs` has its own).
async fn prepare_scenario(warehouse: &Warehouse, s: &str) -> anyhow::Result<()> {
    let sql = |text: &str| text.replace("{s}", s);
    let ok = prepare(
        warehouse,
        &[],
        &sql("SELECT game_date, COUNT(*) FROM {s}.t WHERE game_date BETWEEN :start AND :end GROUP BY 1;
              INSERT INTO {s}.t VALUES (:date, 1)"),
    )
    .await?;
    assert_eq!(
        ok,
        Prepared {
            statements: 2,
            deferred: 0
        }
    );
    // Preparing ran nothing.
    assert_eq!(
        warehouse.scalar(&sql("SELECT COUNT(*) FROM {s}.t")).await?,
        0
    );

    let missing = prepare(
        warehouse,
        &[],
        &sql("DELETE FROM {s}.t; INSERT INTO {s}.tt SELECT * FROM {s}.t"),
    )
    .await
    .unwrap_err();
    let WarehouseError::Prepare {
        index,
        total,
        source,
        ..
    } = &missing
    else {
        panic!("{missing:?}");
    };
    assert_eq!((*index, *total), (2, 2));
    assert!(source.message().contains("tt"), "{}", source.message());
    assert!(!missing.is_retryable());

    let syntax = prepare(warehouse, &[], &sql("SELEC game_date FROM {s}.t"))
        .await
        .unwrap_err();
    let WarehouseError::Prepare { source, .. } = &syntax else {
        panic!("{syntax:?}");
    };
    assert!(source.message().contains("SELEC"), "{}", source.message());

    // A table the same script creates first, or another text of the pipeline creates, and a
    // column the pipeline adds: left to the run, not reported.
    let created = sql("CREATE TABLE {s}.made (game_date DATE);
         INSERT INTO {s}.made SELECT game_date FROM {s}.t");
    assert_eq!(
        prepare(warehouse, &[&created], &created).await?,
        Prepared {
            statements: 2,
            deferred: 1
        }
    );
    let altered = sql("ALTER TABLE {s}.t ADD COLUMN extra INTEGER");
    assert_eq!(
        prepare(
            warehouse,
            &[&created, &altered],
            &sql("SELECT m.game_date, COUNT(t.extra) FROM {s}.made m, {s}.t t GROUP BY 1"),
        )
        .await?,
        Prepared {
            statements: 1,
            deferred: 1
        }
    );
    // Dropped and created again in one script: the CREATE is not "already exists" (SQLite
    // checks it when preparing and the statement is left to the run; PostgreSQL only when
    // running).
    let recreated = prepare(
        warehouse,
        &[],
        &sql("DROP TABLE {s}.t; CREATE TABLE {s}.t (game_date DATE)"),
    )
    .await?;
    assert_eq!(recreated.statements, 2);
    assert_eq!(
        recreated.deferred,
        usize::from(warehouse.dialect() == Dialect::Sqlite)
    );
    // Without the DROP, SQLite's "already exists" is an error.
    if warehouse.dialect() == Dialect::Sqlite {
        let error = prepare(warehouse, &[], &sql("CREATE TABLE {s}.t (game_date DATE)"))
            .await
            .unwrap_err();
        assert!(matches!(error, WarehouseError::Prepare { .. }), "{error:?}");
    }
    // The same missing table, when nothing in the pipeline creates it, is an error.
    let error = prepare(warehouse, &[], &created).await.unwrap_err();
    assert!(
        matches!(error, WarehouseError::Prepare { index: 2, .. }),
        "{error:?}"
    );
    // Bad parameters are refused before the database sees the text.
    let error = prepare(warehouse, &[], "SELECT :nope").await.unwrap_err();
    assert!(matches!(error, WarehouseError::Sql { .. }), "{error:?}");
    Ok(())
}

#[tokio::test]
async fn sqlite_prepare_finds_errors_without_running() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("raw.db"), b"")?;
    let setup = Warehouse::connect(
        "sqlite://main.db",
        &[("raw".to_owned(), PathBuf::from("raw.db"))],
        dir.path(),
        TIMEOUT,
    )
    .await?;
    setup
        .execute_script(
            "CREATE TABLE raw.t (game_date DATE NOT NULL, game_id INTEGER NOT NULL)",
            &params(1, 1),
        )
        .await?;
    setup.close().await;
    let warehouse = Warehouse::open(
        "sqlite://main.db",
        &[("raw".to_owned(), PathBuf::from("raw.db"))],
        dir.path(),
        TIMEOUT,
    )
    .await?;
    prepare_scenario(&warehouse, "raw").await?;
    warehouse.close().await;
    Ok(())
}

#[tokio::test]
async fn postgres_prepare_finds_errors_without_running() -> anyhow::Result<()> {
    let Some(url) = pg_url() else { return Ok(()) };
    let warehouse = Warehouse::open(&url, &[], std::path::Path::new("."), TIMEOUT).await?;
    let schema = unique_name("gapless_prepare_test");
    warehouse
        .execute_script(
            &format!(
                "CREATE SCHEMA {schema};
                 CREATE TABLE {schema}.t (game_date DATE NOT NULL, game_id INTEGER NOT NULL)"
            ),
            &params(1, 1),
        )
        .await?;
    let result = prepare_scenario(&warehouse, &schema).await;
    warehouse
        .execute_script(&format!("DROP SCHEMA {schema} CASCADE"), &params(1, 1))
        .await?;
    warehouse.close().await;
    result
}

#[tokio::test]
async fn open_refuses_a_missing_sqlite_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let error = Warehouse::open("sqlite://warehuose.db", &[], dir.path(), TIMEOUT)
        .await
        .unwrap_err();
    let WarehouseError::DatabaseMissing { path } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(path, &dir.path().join("warehuose.db"));
    assert!(!path.exists());
    assert_eq!(
        error.to_string(),
        format!(
            "the SQLite warehouse `{}` does not exist (check `[warehouse] url`)",
            path.display()
        )
    );
    // `:memory:` has no file to miss.
    Warehouse::open("sqlite::memory:", &[], dir.path(), TIMEOUT)
        .await?
        .close()
        .await;
    Ok(())
}
