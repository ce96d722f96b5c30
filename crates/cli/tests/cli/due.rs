//! "Not yet due" is not a gap: `status` and `scan` at one minute past midnight.

use crate::util::{Project, code, exec, stderr, stdout};

/// Events land through the day; the daily roll-up of a date is due 6 hours after the date
/// ends (`due = "30h"`); the pipeline's default `due` is a day.
const DAILY: &str = r#"
[pipeline]
name = "daily"
start = "2024-03-28"

[warehouse]
url = "sqlite://warehouse.db"

[[phase]]
id = 1
name = "events"
check.sql = "SELECT d, COUNT(*) FROM events WHERE d BETWEEN :start AND :end GROUP BY d"
expect.min = 3

[[phase]]
id = 2
name = "rollup"
needs = [1]
due = "30h"
run.sql = "INSERT INTO rollup SELECT d, COUNT(*) FROM events WHERE d BETWEEN :start AND :end GROUP BY d"
check.sql = "SELECT d, COUNT(*) FROM rollup WHERE d BETWEEN :start AND :end GROUP BY d"
"#;

/// Events for the 28th and 29th, and a roll-up of the 28th only.
async fn daily(project: &Project) {
    project.write("gapless.toml", DAILY);
    let warehouse = project.sqlite("warehouse.db").await;
    exec(
        &warehouse,
        "CREATE TABLE events (d TEXT, id INTEGER);
         CREATE TABLE rollup (d TEXT, n INTEGER);
         INSERT INTO events VALUES ('2024-03-28', 1), ('2024-03-28', 2), ('2024-03-28', 3),
                                   ('2024-03-29', 1), ('2024-03-29', 2), ('2024-03-29', 3);
         INSERT INTO rollup VALUES ('2024-03-28', 3);",
    )
    .await;
    warehouse.close().await;
}

fn run_at(project: &Project, now: &str, args: &[&str]) -> std::process::Output {
    project
        .command(args)
        .env("GAPLESS_NOW", now)
        .output()
        .unwrap()
}

#[tokio::test]
async fn status_and_scan_at_one_minute_past_midnight_raise_no_false_alarm() {
    let project = Project::new();
    daily(&project).await;
    let now = "2024-03-30T00:01";

    let output = run_at(&project, now, &["status"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "pipeline daily · 2024-03-28..2024-03-30 (3 days) · today 2024-03-30

phase 1   events  complete 2 · partial 0 · missing 0 · blocked 0 · not due 1 · not expected 0
  complete  2024-03-28..2024-03-29  2 cells
  not_due   2024-03-30              1 cell, due 2024-03-31 00:00 UTC

phase 2   rollup  complete 1 · partial 0 · missing 0 · blocked 0 · not due 2 · not expected 0
  complete  2024-03-28              1 cell
  not_due   2024-03-29..2024-03-30  2 cells, the first due 2024-03-30 06:00 UTC
"
    );

    let output = run_at(&project, now, &["status", "--json"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["phases"][0]["not_due"], 1);
    assert_eq!(
        report["phases"][1]["not_due_cells"],
        serde_json::json!([
            { "date": "2024-03-29", "due_at": "2024-03-30T06:00:00Z" },
            { "date": "2024-03-30", "due_at": "2024-03-31T06:00:00Z" },
        ])
    );

    // Nothing is late yet: no gap recorded.
    let output = run_at(&project, now, &["scan", "--lookback", "30d"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "scanned 2024-03-28..2024-03-30: 0 gaps; ledger: 0 new, 0 still open, 0 closed\n"
    );
    let output = run_at(&project, now, &["gaps", "--status", "all", "--json"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "[]");

    // At 06:00 the roll-up of the 29th is due and missing: a gap, 0 days old.
    let output = run_at(&project, "2024-03-30T06:00", &["scan", "--lookback", "30d"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "scanned 2024-03-28..2024-03-30: 1 gap; ledger: 1 new, 0 still open, 0 closed
phase     dates       state    cells  rows    age (days)  upstream
2 rollup  2024-03-29  missing  1      0 of 1  0           1 events
"
    );

    // A backfill of today still runs what it can: the events of the 30th are not there yet,
    // so only the 29th's roll-up runs.
    let output = run_at(
        &project,
        now,
        &[
            "plan",
            "--start-date",
            "2024-03-29",
            "--end-date",
            "2024-03-30",
            "--phases",
            "2",
            "--json",
        ],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(plan["phases"][0]["cells"], 1, "{plan}");
    assert_eq!(plan["tasks"][0]["dates"], serde_json::json!(["2024-03-29"]));
}
