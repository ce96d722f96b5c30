//! One scenario on SQLite and on PostgreSQL (warehouse and state store): a command runner, SQL
//! runners with a lookback phase and a self-dependent phase, and an HTTP runner against a real
//! HTTP server on loopback that fails once with 503 before succeeding. The order of execution is
//! checked from a log the runners write.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::{PgPool, SqlitePool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::util::{Project, code, stderr, stdout};

#[derive(Clone)]
enum Warehouse {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Warehouse {
    async fn exec(&self, sql: &str) {
        match self {
            Warehouse::Sqlite(pool) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(pool)
                    .await
                    .unwrap();
            }
            Warehouse::Postgres(pool) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
    }

    async fn scalar(&self, sql: &str) -> i64 {
        match self {
            Warehouse::Sqlite(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(pool)
                .await
                .unwrap(),
            Warehouse::Postgres(pool) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(pool)
                .await
                .unwrap(),
        }
    }

    /// `expr` minus `days` days, in this dialect.
    fn minus(&self, expr: &str, days: i64) -> String {
        match self {
            Warehouse::Sqlite(_) => format!("date({expr}, '-{days} days')"),
            Warehouse::Postgres(_) => format!("({expr} - {days})"),
        }
    }

    fn date_type(&self) -> &'static str {
        match self {
            Warehouse::Sqlite(_) => "TEXT",
            Warehouse::Postgres(_) => "DATE",
        }
    }
}

/// A loopback HTTP/1.1 server: `POST /start` with `{"start_date","end_date"}` writes one row per
/// date into `served`; the first request of all gets 503.
async fn http_server(warehouse: Warehouse) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&requests);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let warehouse = warehouse.clone();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0_u8; 4096];
                let body = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            assert!(head.starts_with("POST /start "), "{head}");
                            assert!(
                                head.to_ascii_lowercase().contains("idempotency-key:"),
                                "{head}"
                            );
                            break body.to_owned();
                        }
                    }
                };
                let number = counter.fetch_add(1, Ordering::SeqCst);
                let response = if number == 0 {
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy".to_owned()
                } else {
                    let request: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let (start, end) = (
                        request["start_date"].as_str().unwrap(),
                        request["end_date"].as_str().unwrap(),
                    );
                    warehouse
                        .exec(&format!(
                            "DELETE FROM served WHERE d BETWEEN '{start}' AND '{end}';
                             INSERT INTO served SELECT d FROM cal WHERE d BETWEEN '{start}' AND '{end}';
                             INSERT INTO log (phase, s, e) VALUES (5, '{start}', '{end}');"
                        ))
                        .await;
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_owned()
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (format!("http://{address}/start"), requests)
}

fn pipeline(warehouse: &Warehouse, url: &str, http: &str) -> String {
    format!(
        r#"
[pipeline]
name = "backends"
start = "2024-03-01"
calendar.sql = "SELECT d FROM cal WHERE d BETWEEN :start AND :end"

[warehouse]
url = "{url}"

[[phase]]
id = 1
name = "source"
check.sql = "SELECT d, COUNT(*) FROM events WHERE d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 2
name = "load"
needs = [1]
batch_days = 4
run.command = ["bin/load.sh", "{{start}}", "{{end}}"]
check.sql = "SELECT d, COUNT(*) FROM loaded WHERE d BETWEEN :start AND :end GROUP BY d"
expect.sql = "SELECT d, COUNT(*) FROM events WHERE d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 3
name = "rolling"
needs = [{{ phase = 2, lookback_days = 3 }}]
batch_days = 2
run.sql = """
DELETE FROM rolling WHERE d BETWEEN :start AND :end;
INSERT INTO rolling SELECT c.d, (SELECT COUNT(*) FROM loaded l WHERE l.d BETWEEN {minus3} AND c.d) FROM cal c WHERE c.d BETWEEN :start AND :end;
INSERT INTO log (phase, s, e) VALUES (3, :start, :end)
"""
check.sql = "SELECT d, COUNT(*) FROM rolling WHERE d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 4
name = "running_total"
needs = [3, {{ phase = 4, lookback_days = 1 }}]
run.sql = """
DELETE FROM totals WHERE d = :start;
INSERT INTO totals SELECT r.d, r.n + COALESCE((SELECT t.total FROM totals t WHERE t.d = {minus1}), 0) FROM rolling r WHERE r.d = :start;
INSERT INTO log (phase, s, e) VALUES (4, :start, :end)
"""
check.sql = "SELECT d, COUNT(*) FROM totals WHERE d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 5
name = "serve"
needs = [4]
batch_days = 7
retries = 2
run.http = {{ url = "{http}", body = '{{"start_date":"{{start}}","end_date":"{{end}}"}}' }}
check.sql = "SELECT d, COUNT(*) FROM served WHERE d BETWEEN :start AND :end GROUP BY d"
"#,
        minus3 = warehouse.minus("c.d", 3),
        minus1 = warehouse.minus("r.d", 1),
    )
}

/// The pipeline on `warehouse`, with the state store at `state_url` (SQLite by default), run
/// with `--jobs jobs`: with one, completions are recorded apart while the next task runs
/// (ARCHITECTURE.md, "Pipelined completions"); with three, also alongside other tasks.
async fn scenario(
    project: &Project,
    warehouse: Warehouse,
    url: &str,
    state_url: Option<&str>,
    jobs: &str,
) {
    let date = warehouse.date_type();
    // Every day of 2024-03-01..20 is on the calendar (a self-dependency needs yesterday).
    warehouse
        .exec(
            &format!(
                "CREATE TABLE cal (d {date} PRIMARY KEY);
             CREATE TABLE events (d {date}, id BIGINT);
             CREATE TABLE loaded (d {date}, id BIGINT);
             CREATE TABLE rolling (d {date}, n BIGINT);
             CREATE TABLE totals (d {date}, total BIGINT);
             CREATE TABLE served (d {date});
             CREATE TABLE log (seq SERIAL_OR_AUTO, phase BIGINT, s {date}, e {date});"
            )
            .replace(
                "seq SERIAL_OR_AUTO",
                match warehouse {
                    Warehouse::Sqlite(_) => "seq INTEGER PRIMARY KEY AUTOINCREMENT",
                    Warehouse::Postgres(_) => "seq BIGSERIAL PRIMARY KEY",
                },
            ),
        )
        .await;
    for day in 1..=20 {
        let d = format!("2024-03-{day:02}");
        warehouse
            .exec(&format!(
                "INSERT INTO cal VALUES ('{d}'); INSERT INTO events VALUES ('{d}', 1), ('{d}', 2);"
            ))
            .await;
    }
    let (http, requests) = http_server(warehouse.clone()).await;
    project.write("gapless.toml", &pipeline(&warehouse, url, &http));
    let insert = match &warehouse {
        Warehouse::Sqlite(_) => "python3 - \"$1\" \"$2\" <<'PY'\nimport sqlite3, sys\ndb = sqlite3.connect('warehouse.db', timeout=30)\ns, e = sys.argv[1], sys.argv[2]\ndb.execute('DELETE FROM loaded WHERE d BETWEEN ? AND ?', (s, e))\ndb.execute('INSERT INTO loaded SELECT d, id FROM events WHERE d BETWEEN ? AND ?', (s, e))\ndb.execute('INSERT INTO log (phase, s, e) VALUES (2, ?, ?)', (s, e))\ndb.commit()\nPY".to_owned(),
        Warehouse::Postgres(_) => format!(
            "psql -q -v ON_ERROR_STOP=1 '{url}' -c \"BEGIN; DELETE FROM loaded WHERE d BETWEEN '$1' AND '$2'; INSERT INTO loaded SELECT d, id FROM events WHERE d BETWEEN '$1' AND '$2'; INSERT INTO log (phase, s, e) VALUES (2, '$1', '$2'); COMMIT;\""
        ),
    };
    project.script("bin/load.sh", &format!("#!/bin/sh\nset -e\n{insert}\n"));

    let mut command = project.command(&[
        "backfill",
        "--start-date",
        "2024-03-01",
        "--end-date",
        "2024-03-20",
        "--yes",
        "--jobs",
        jobs,
        "--json",
    ]);
    command.env("GAPLESS_TODAY", "2024-03-20");
    if let Some(state) = state_url {
        command.env("GAPLESS_STATE_URL", state);
    }
    let output = command.output().unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(summary["state"], "succeeded");

    for table in ["loaded", "rolling", "totals", "served"] {
        let rows = warehouse
            .scalar(&format!("SELECT COUNT(DISTINCT d) FROM {table}"))
            .await;
        assert_eq!(rows, 20, "{table}");
    }
    // Running totals are right only if day d ran after day d-1: rolling counts are 2,4,6,8,8,…
    let total = warehouse
        .scalar("SELECT total FROM totals WHERE d = '2024-03-20'")
        .await;
    assert_eq!(total, 2 + 4 + 6 + 8 * 17);
    // Order: every rolling task after the load tasks of its 3-day window; every HTTP task after
    // the running totals of its dates.
    let rolling_early = warehouse
        .scalar(&format!(
            "SELECT COUNT(*) FROM log r JOIN log l ON l.phase = 2 AND r.phase = 3
               AND l.e >= {} AND l.s <= r.e AND l.seq > r.seq",
            warehouse.minus("r.s", 3)
        ))
        .await;
    assert_eq!(rolling_early, 0);
    let serve_early = warehouse
        .scalar("SELECT COUNT(*) FROM log h JOIN log t ON t.phase = 4 AND h.phase = 5 AND t.s BETWEEN h.s AND h.e AND t.seq > h.seq")
        .await;
    assert_eq!(serve_early, 0);
    // Three HTTP tasks (batches of 7) and one 503 retried.
    assert_eq!(requests.load(Ordering::SeqCst), 4);
    // The status matrix agrees, on this backend.
    let mut command = project.command(&["status", "--json"]);
    command.env("GAPLESS_TODAY", "2024-03-20");
    if let Some(state) = state_url {
        command.env("GAPLESS_STATE_URL", state);
    }
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&command.output().unwrap())).unwrap();
    for phase in status["phases"].as_array().unwrap() {
        assert_eq!(phase["complete"], 20, "{phase}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_warehouse_and_store() {
    let project = Project::new();
    let pool = project.sqlite("warehouse.db").await;
    scenario(
        &project,
        Warehouse::Sqlite(pool),
        "sqlite://warehouse.db",
        None,
        "3",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_warehouse_and_store() {
    on_postgres("3").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_warehouse_and_store_one_job() {
    on_postgres("1").await;
}

async fn on_postgres(jobs: &str) {
    let Some(url) = gapless_testkit::pg_url() else {
        return;
    };
    let warehouse_db = gapless_testkit::fresh_pg_database(&url).await.unwrap();
    let state_db = gapless_testkit::fresh_pg_database(&url).await.unwrap();
    let pool = PgPool::connect(warehouse_db.url()).await.unwrap();
    let project = Project::new();
    scenario(
        &project,
        Warehouse::Postgres(pool.clone()),
        warehouse_db.url(),
        Some(state_db.url()),
        jobs,
    )
    .await;
    // The state store is PostgreSQL too: the run and its events are there.
    let state = PgPool::connect(state_db.url()).await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&state)
        .await
        .unwrap();
    assert_eq!(events, 80);
    state.close().await;
    pool.close().await;
    warehouse_db.drop_db().await.unwrap();
    state_db.drop_db().await.unwrap();
}
