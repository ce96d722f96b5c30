//! `check`, `status`, `plan`: the model seen from the command line.

use crate::util::{Project, code, exec, stderr, stdout};

pub(crate) const CHAIN: &str = r#"
[pipeline]
name = "chain"
start = "2024-03-01"
calendar.sql = "SELECT d FROM cal WHERE d BETWEEN :start AND :end"

[warehouse]
url = "sqlite://warehouse.db"
attach = { raw = "raw.db" }

[[phase]]
id = 1
name = "source"
check.sql = "SELECT d, COUNT(*) FROM raw.events WHERE d BETWEEN :start AND :end GROUP BY d"
expect.sql = "SELECT d, n FROM cal WHERE d BETWEEN :start AND :end"

[[phase]]
id = 2
name = "load"
needs = [1]
batch_days = 5
run.sql = """
DELETE FROM loaded WHERE d BETWEEN :start AND :end;
INSERT INTO loaded SELECT d, id FROM raw.events WHERE d BETWEEN :start AND :end;
INSERT INTO log (phase, s, e) VALUES (2, :start, :end)
"""
check.sql = "SELECT d, COUNT(*) FROM loaded WHERE d BETWEEN :start AND :end GROUP BY d"
expect.sql = "SELECT d, n FROM cal WHERE d BETWEEN :start AND :end"

[[phase]]
id = 3
name = "rolling"
needs = [{ phase = "load", lookback_days = 2 }]
run.sql = """
DELETE FROM rolling WHERE d BETWEEN :start AND :end;
INSERT INTO rolling SELECT c.d, (SELECT COUNT(*) FROM loaded l WHERE l.d BETWEEN date(c.d, '-2 days') AND c.d)
  FROM cal c WHERE c.d BETWEEN :start AND :end;
INSERT INTO log (phase, s, e) VALUES (3, :start, :end)
"""
check.sql = "SELECT d, COUNT(*) FROM rolling WHERE d BETWEEN :start AND :end GROUP BY d"
"#;

/// A warehouse where the calendar is every day of March 2024 but Sundays (3 rows expected a
/// day), the source holds data up to `source_until`, and phase 2 is loaded up to `loaded_until`.
pub(crate) async fn chain(project: &Project, source_until: &str, loaded_until: &str) {
    project.write("gapless.toml", CHAIN);
    let raw = project.sqlite("raw.db").await;
    exec(&raw, "CREATE TABLE events (d TEXT, id INTEGER)").await;
    let warehouse = project.sqlite("warehouse.db").await;
    exec(
        &warehouse,
        "CREATE TABLE cal (d TEXT PRIMARY KEY, n INTEGER);
         CREATE TABLE loaded (d TEXT, id INTEGER);
         CREATE TABLE rolling (d TEXT, n INTEGER);
         CREATE TABLE log (seq INTEGER PRIMARY KEY AUTOINCREMENT, phase INTEGER, s TEXT, e TEXT);
         WITH RECURSIVE days(d) AS (SELECT '2024-03-01' UNION ALL SELECT date(d, '+1 day') FROM days WHERE d < '2024-03-31')
         INSERT INTO cal SELECT d, 3 FROM days WHERE strftime('%w', d) <> '0';",
    )
    .await;
    let raw_path = project.path().join("raw.db");
    exec(
        &warehouse,
        &format!("ATTACH DATABASE '{}' AS raw", raw_path.display()),
    )
    .await;
    exec(
        &warehouse,
        &format!(
            "INSERT INTO raw.events SELECT d, k FROM cal, (SELECT 1 AS k UNION ALL SELECT 2 UNION ALL SELECT 3) WHERE d <= '{source_until}';
             INSERT INTO loaded SELECT d, id FROM raw.events WHERE d <= '{loaded_until}';"
        ),
    )
    .await;
    warehouse.close().await;
    raw.close().await;
}

#[tokio::test]
async fn status_shows_states_and_totals() {
    let project = Project::new();
    chain(&project, "2024-03-20", "2024-03-10").await;
    let output = project.run(&["status", "--json"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let phase = |i: usize, key: &str| report["phases"][i][key].as_u64().unwrap();
    // Source: 26 calendar days in March (31 minus 5 Sundays), complete through the 20th.
    assert_eq!(phase(0, "complete"), 17);
    assert_eq!(phase(0, "missing"), 9);
    assert_eq!(phase(0, "not_expected"), 5);
    // Load: complete through the 10th (8 days), missing 11..20 (9), blocked after (9).
    assert_eq!(
        (
            phase(1, "complete"),
            phase(1, "missing"),
            phase(1, "blocked")
        ),
        (8, 9, 9)
    );
    let text = stdout(&project.run(&["status"]));
    assert!(text.contains("missing   2024-03-11..2024-03-20"), "{text}");
    assert!(text.contains("blocked   2024-03-21..2024-03-30"), "{text}");
}

#[tokio::test]
async fn plan_lists_tasks_skips_and_root_causes() {
    let project = Project::new();
    chain(&project, "2024-03-20", "2024-03-10").await;
    let output = project.run(&[
        "plan",
        "--start-date",
        "2024-03-01",
        "--end-date",
        "2024-03-31",
        "--phases",
        "load-rolling",
        "--json",
    ]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let load = &plan["phases"][0];
    assert_eq!(load["cells"], 9);
    assert_eq!(load["skipped_complete"], 8);
    // 11..20 without the Sunday 17th: batches of at most 5 days.
    for task in plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["phase"] == 2)
    {
        let dates = task["dates"].as_array().unwrap();
        assert!(dates.len() <= 5);
    }
    let text = stdout(&project.run(&[
        "plan",
        "--start-date",
        "2024-03-01",
        "--end-date",
        "2024-03-31",
        "--phases",
        "2,3",
    ]));
    assert!(
        text.contains(
            "phase 3 2024-03-21 blocked: phase 1 2024-03-21 missing and not in this backfill"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn check_reaches_everything() {
    let project = Project::new();
    chain(&project, "2024-03-20", "2024-03-10").await;
    let output = project.run(&["check"]);
    assert_eq!(code(&output), 0, "{}{}", stdout(&output), stderr(&output));
    assert!(stdout(&output).contains("every probe answered"));
    // A runner program that does not exist is found before anything runs.
    project.write(
        "gapless.toml",
        &crate::front::CHAIN.replace(
            "name = \"load\"",
            "name = \"load\"\nrollback.command = [\"bin/not-there\"]",
        ),
    );
    let output = project.run(&["check"]);
    assert_eq!(code(&output), 3);
    assert!(
        stdout(&output).contains("FAIL  phase 2 `load` rollback"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn broken_pipeline_file_exits_2_with_diagnostics() {
    let project = Project::new();
    project.write(
        "gapless.toml",
        "[pipeline]\nname = \"x\"\nstart = \"2024-01-01\"\n\n[[phase]]\nid = 1\nname = \"load\"\ncheck.command = [\"probe\"]\n\n[[phase]]\nid = 2\nname = \"use\"\nneeds = [\"lod\"]\ncheck.command = [\"probe\"]\n",
    );
    let output = project.run(&["status"]);
    assert_eq!(code(&output), 2);
    let err = stderr(&output);
    assert!(err.contains("--> gapless.toml:13:10"), "{err}");
    assert!(err.contains("hint: did you mean `load`?"), "{err}");
    // No pipeline file at all.
    let empty = Project::new();
    let output = empty.run(&[
        "plan",
        "--start-date",
        "2024-01-01",
        "--end-date",
        "2024-01-02",
    ]);
    assert_eq!(code(&output), 2);
    assert!(
        stderr(&output).contains("cannot read the pipeline file"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn bad_arguments_exit_2() {
    let project = Project::new();
    chain(&project, "2024-03-20", "2024-03-10").await;
    for args in [
        vec![
            "plan",
            "--start-date",
            "2024-03-31",
            "--end-date",
            "2024-03-01",
        ],
        vec![
            "plan",
            "--start-date",
            "2024-02-30",
            "--end-date",
            "2024-03-01",
        ],
        vec![
            "plan",
            "--start-date",
            "2024-03-01",
            "--end-date",
            "2024-03-02",
            "--phases",
            "lood",
        ],
        vec![
            "backfill",
            "--start-date",
            "2024-03-01; touch pwned",
            "--end-date",
            "2024-03-02",
        ],
    ] {
        let output = project.run(&args);
        assert_eq!(code(&output), 2, "{args:?}: {}", stderr(&output));
    }
    assert!(!project.path().join("pwned").exists());
    let output = project.run(&[
        "plan",
        "--start-date",
        "2024-03-01",
        "--end-date",
        "2024-03-02",
        "--phases",
        "lood",
    ]);
    assert!(
        stderr(&output).contains("did you mean `load`?"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn scan_records_gaps_in_the_ledger_and_closes_them_when_filled() {
    let project = Project::new();
    // Source through the 20th, load through the 10th, the rolling phase empty.
    chain(&project, "2024-03-20", "2024-03-10").await;
    let output = project.run(&["scan", "--lookback", "30d", "--json"]);
    assert_eq!(code(&output), 1, "gaps are open: {}", stderr(&output));
    let scan: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(scan["start_date"], "2024-03-01");
    let gaps = scan["gaps"].as_array().unwrap();
    let of = |phase: u64| -> Vec<String> {
        gaps.iter()
            .filter(|gap| gap["phase_to"] == phase)
            .map(|gap| gap["date"].as_str().unwrap().to_owned())
            .collect()
    };
    // Source: calendar days after the 20th (no Sundays: the 24th and 31st expect nothing).
    assert_eq!(
        of(1),
        [
            "2024-03-21",
            "2024-03-22",
            "2024-03-23",
            "2024-03-25",
            "2024-03-26",
            "2024-03-27",
            "2024-03-28",
            "2024-03-29",
            "2024-03-30"
        ]
    );
    // Load: present upstream, missing here: the 11th to the 20th but Sunday the 17th.
    assert_eq!(of(2).len(), 9);
    assert_eq!(of(2)[0], "2024-03-11");
    // Rolling: every date whose window of loads is complete, the 1st to the 9th (Sundays
    // expect nothing); from the 11th its window reaches missing loads: blocked.
    assert!(of(3).contains(&"2024-03-01".to_owned()), "{gaps:?}");
    assert!(
        !of(3).contains(&"2024-03-11".to_owned()),
        "blocked cells are not gaps"
    );
    let load = gaps.iter().find(|gap| gap["phase_to"] == 2).unwrap();
    assert_eq!(
        (
            &load["phase_from"],
            &load["found"],
            &load["expected"],
            &load["gap_age_days"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(0),
            &serde_json::json!(3),
            // Due since the 12th at 00:00 (a day after the 11th began): 19 whole days by
            // noon on the 31st.
            &serde_json::json!(19)
        )
    );
    assert_eq!(
        scan["ledger"]["opened"].as_u64().unwrap(),
        gaps.len() as u64
    );

    let ledger = |status: &str| -> Vec<serde_json::Value> {
        let output = project.run(&["gaps", "--status", status, "--json"]);
        assert_eq!(code(&output), 0, "{}", stderr(&output));
        serde_json::from_str(&stdout(&output)).unwrap()
    };
    let open = ledger("open");
    assert_eq!(open.len(), gaps.len());
    assert!(open.iter().all(|gap| gap["healing_status"] == "pending"));

    // Fill the load for the 11th to the 13th, then scan again: those three close, the rest are
    // found again (one row each), and the rolling phase's 11th to 13th, no longer blocked, open.
    let warehouse = project.sqlite("warehouse.db").await;
    exec(
        &warehouse,
        &format!(
            "ATTACH DATABASE '{}' AS raw",
            project.path().join("raw.db").display()
        ),
    )
    .await;
    exec(
        &warehouse,
        "INSERT INTO loaded SELECT d, id FROM raw.events WHERE d BETWEEN '2024-03-11' AND '2024-03-13'",
    )
    .await;
    warehouse.close().await;
    let output = project.run(&["scan", "--lookback", "30d", "--json"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let again: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(again["ledger"]["closed"], 3, "{again}");
    assert_eq!(again["ledger"]["opened"], 3, "{again}");
    assert_eq!(again["ledger"]["still_open"], gaps.len() - 3, "{again}");
    let closed = ledger("complete");
    let dates: Vec<_> = closed
        .iter()
        .map(|gap| gap["partition_date"].as_str().unwrap())
        .collect();
    assert_eq!(dates, ["2024-03-11", "2024-03-12", "2024-03-13"]);
    assert!(
        closed
            .iter()
            .all(|gap| gap["phase_to"] == 2 && !gap["healed_at"].is_null())
    );
    assert_eq!(ledger("open").len(), gaps.len());
    assert_eq!(ledger("all").len(), gaps.len() + 3);

    // The text forms, and a bad status.
    let text = stdout(&project.run(&["gaps"]));
    assert!(
        text.contains(
            "\n2 load     2024-03-14..2024-03-16  pending  3      0 of 9   14-16       1 source"
        ),
        "{text}"
    );
    let text = stdout(&project.run(&["scan", "--lookback", "30d"]));
    assert!(
        text.starts_with("scanned 2024-03-01..2024-03-31:"),
        "{text}"
    );
    assert!(
        text.contains("\n2 load     2024-03-14..2024-03-16  missing  3"),
        "{text}"
    );
    let output = project.run(&["gaps", "--status", "closed"]);
    assert_eq!(code(&output), 2);
    assert!(
        stderr(&output).contains("`closed` is not one of open, pending"),
        "{}",
        stderr(&output)
    );
    let output = project.run(&["scan", "--lookback", "12h"]);
    assert_eq!(code(&output), 2);
    assert!(
        stderr(&output).contains("--lookback: must be at least one day"),
        "{}",
        stderr(&output)
    );
}
