//! `scan`, `gaps` and `report` in words: gaps as ranges of dates under a header, a phase with no
//! needs read as `source`, closed gaps saying how they closed, reports by month or by the
//! period `[report]` names.

use crate::util::{Project, code, exec, stderr, stdout};

const SHOP: &str = r#"
[pipeline]
name = "shop"
start = "2024-01-15"

[warehouse]
url = "sqlite://warehouse.db"

[[phase]]
id = 1
name = "events"
check.sql = "SELECT d, COUNT(*) FROM events WHERE d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 2
name = "daily"
needs = [1]
run.sql = """
DELETE FROM daily WHERE d BETWEEN :start AND :end;
INSERT INTO daily SELECT DISTINCT d FROM events WHERE d BETWEEN :start AND :end
"""
check.sql = "SELECT d, COUNT(*) FROM daily WHERE d BETWEEN :start AND :end GROUP BY d"
"#;

/// Events every day from 2024-01-15 to 2024-03-30 but 02-10 to 02-12 and 03-05 (two per day);
/// `daily` loaded through 03-20 wherever there are events, but for 03-01 and 03-02. Today is
/// 2024-03-31 (at noon): the 31st is not due yet.
async fn shop(project: &Project, report: &str) {
    project.write("gapless.toml", &format!("{SHOP}{report}"));
    let warehouse = project.sqlite("warehouse.db").await;
    exec(
        &warehouse,
        "CREATE TABLE events (d TEXT, id INTEGER);
         CREATE TABLE daily (d TEXT);
         WITH RECURSIVE days(d) AS (SELECT '2024-01-15' UNION ALL SELECT date(d, '+1 day') FROM days WHERE d < '2024-03-30')
         INSERT INTO events SELECT d, k FROM days, (SELECT 1 AS k UNION ALL SELECT 2)
           WHERE d NOT BETWEEN '2024-02-10' AND '2024-02-12' AND d <> '2024-03-05';
         INSERT INTO daily SELECT DISTINCT d FROM events
           WHERE d <= '2024-03-20' AND d NOT IN ('2024-03-01', '2024-03-02');",
    )
    .await;
    warehouse.close().await;
}

/// The ledger's wall-clock times (`2026-12-02 19:30`), which vary from run to run, as
/// `YYYY-MM-DD HH:MM` (same width, so columns stay aligned).
fn clock_free(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let candidate = bytes.get(i..i + 16).unwrap_or_default();
        let shape = b"dddd-dd-dd dd:dd";
        let matches = candidate.len() == 16
            && candidate.iter().zip(shape).all(|(c, s)| match s {
                b'd' => c.is_ascii_digit(),
                other => c == other,
            });
        if matches {
            out.push_str("YYYY-MM-DD HH:MM");
            i += 16;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[tokio::test]
async fn scan_and_gaps_show_ranges_under_a_header() {
    let project = Project::new();
    shop(&project, "").await;
    let output = project.run(&["scan", "--lookback", "90d"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert_eq!(stdout(&output), "scanned 2024-01-15..2024-03-31: 16 gaps in 4 ranges; ledger: 16 new, 0 still open, 0 closed
phase     dates                   state    cells  rows     age (days)  upstream
1 events  2024-02-10..2024-02-12  missing  3      0 of 3   47-49       source
1 events  2024-03-05              missing  1      0 of 1   25          source
2 daily   2024-03-01..2024-03-02  missing  2      0 of 2   28-29       1 events
2 daily   2024-03-21..2024-03-30  missing  10     0 of 10  0-9         1 events
");

    // JSON keeps one object per cell.
    let output = project.run(&["scan", "--lookback", "90d", "--json"]);
    let scan: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(scan["gaps"].as_array().unwrap().len(), 16);
    assert!(scan["gaps"][0]["phase_from"].is_null(), "{scan}");

    let output = project.run(&["gaps"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(
        clock_free(&stdout(&output)),
        "16 open gaps in 4 ranges
phase     dates                   status   cells  rows     age (days)  upstream  detected
1 events  2024-02-10..2024-02-12  pending  3      0 of 3   47-49       source    YYYY-MM-DD HH:MM
1 events  2024-03-05              pending  1      0 of 1   25          source    YYYY-MM-DD HH:MM
2 daily   2024-03-01..2024-03-02  pending  2      0 of 2   28-29       1 events  YYYY-MM-DD HH:MM
2 daily   2024-03-21..2024-03-30  pending  10     0 of 10  0-9         1 events  YYYY-MM-DD HH:MM
"
    );

    // Load the 1st: its gap closes, and says how.
    let warehouse = project.sqlite("warehouse.db").await;
    exec(&warehouse, "INSERT INTO daily VALUES ('2024-03-01')").await;
    warehouse.close().await;
    let output = project.run(&["scan", "--lookback", "90d"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert_eq!(stdout(&output), "scanned 2024-01-15..2024-03-31: 15 gaps in 4 ranges; ledger: 0 new, 15 still open, 1 closed
phase     dates                   state    cells  rows     age (days)  upstream
1 events  2024-02-10..2024-02-12  missing  3      0 of 3   47-49       source
1 events  2024-03-05              missing  1      0 of 1   25          source
2 daily   2024-03-02              missing  1      0 of 1   28          1 events
2 daily   2024-03-21..2024-03-30  missing  10     0 of 10  0-9         1 events
");
    let output = project.run(&["gaps", "--status", "complete"]);
    assert_eq!(clock_free(&stdout(&output)), "1 complete gap
phase    dates       status    cells  rows    age (days)  upstream  detected          closed
2 daily  2024-03-01  complete  1      0 of 1  29          1 events  YYYY-MM-DD HH:MM  cell complete YYYY-MM-DD HH:MM
");
    let output = project.run(&["gaps", "--status", "all"]);
    assert_eq!(clock_free(&stdout(&output)), "16 gaps in 5 ranges
phase     dates                   status    cells  rows     age (days)  upstream  detected          closed
1 events  2024-02-10..2024-02-12  pending   3      0 of 3   47-49       source    YYYY-MM-DD HH:MM  -
1 events  2024-03-05              pending   1      0 of 1   25          source    YYYY-MM-DD HH:MM  -
2 daily   2024-03-01              complete  1      0 of 1   29          1 events  YYYY-MM-DD HH:MM  cell complete YYYY-MM-DD HH:MM
2 daily   2024-03-02              pending   1      0 of 1   28          1 events  YYYY-MM-DD HH:MM  -
2 daily   2024-03-21..2024-03-30  pending   10     0 of 10  0-9         1 events  YYYY-MM-DD HH:MM  -
");
    let output = project.run(&["gaps", "--status", "all", "--json"]);
    let ledger: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(ledger.as_array().unwrap().len(), 16);
    let output = project.run(&["gaps", "--status", "failed"]);
    assert_eq!(stdout(&output), "no failed gaps in the ledger\n");
}

#[tokio::test]
async fn a_single_gap_reads_as_one_date_and_one_gap() {
    let project = Project::new();
    shop(&project, "").await;
    let warehouse = project.sqlite("warehouse.db").await;
    exec(
        &warehouse,
        "INSERT INTO events SELECT d, 1 FROM (SELECT '2024-02-10' AS d UNION ALL SELECT '2024-02-11' UNION ALL SELECT '2024-02-12');
         INSERT INTO daily SELECT DISTINCT d FROM events WHERE d > '2024-02-09';",
    )
    .await;
    warehouse.close().await;
    let output = project.run(&["scan", "--lookback", "90d"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "scanned 2024-01-15..2024-03-31: 1 gap; ledger: 1 new, 0 still open, 0 closed
phase     dates       state    cells  rows    age (days)  upstream
1 events  2024-03-05  missing  1      0 of 1  25          source
"
    );
}

#[tokio::test]
async fn report_groups_by_month_by_default() {
    let project = Project::new();
    shop(&project, "").await;
    let output = project.run(&["report"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "# Data completeness: shop

2024-01-15..2024-03-31 · as of 2024-03-31

| phase | month | expected | complete | partial | missing | blocked | rows / expected |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |
| 1 events | 2024-01 | 17 | 17 (100.0%) | 0 | 0 | 0 | 34 / 17 |
| 1 events | 2024-02 | 29 | 26 (89.7%) | 0 | 3 | 0 | 52 / 29 |
| 1 events | 2024-03 | 30 | 29 (96.7%) | 0 | 1 | 0 | 58 / 30 |
| 2 daily | 2024-01 | 17 | 17 (100.0%) | 0 | 0 | 0 | 17 / 17 |
| 2 daily | 2024-02 | 29 | 26 (89.7%) | 0 | 0 | 3 | 26 / 29 |
| 2 daily | 2024-03 | 30 | 17 (56.7%) | 0 | 12 | 1 | 17 / 30 |

## Open gaps

16 cells in 4 ranges.

| phase | state | dates | cells |
| --- | --- | --- | ---: |
| 1 events | missing | 2024-02-10..2024-02-12 | 3 |
| 1 events | missing | 2024-03-05 | 1 |
| 2 daily | missing | 2024-03-01..2024-03-02 | 2 |
| 2 daily | missing | 2024-03-21..2024-03-30 | 10 |

## Blocked

4 blocked cells wait for the cells they need; they fill in when the gaps upstream are healed.

| phase | dates | cells |
| --- | --- | ---: |
| 2 daily | 2024-02-10..2024-02-12 | 3 |
| 2 daily | 2024-03-05 | 1 |
"
    );
    let output = project.run(&["report", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["period"], "month");
    let periods: Vec<_> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| format!("{} {}", row["phase"], row["period"].as_str().unwrap()))
        .collect();
    assert_eq!(
        periods,
        [
            "1 2024-01",
            "1 2024-02",
            "1 2024-03",
            "2 2024-01",
            "2 2024-02",
            "2 2024-03"
        ]
    );
    assert!(report["rows"][0].get("season").is_none(), "{report}");
    assert!(
        report["gaps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|gap| gap["state"] != "blocked"),
        "{report}"
    );
    assert_eq!(report["blocked"].as_array().unwrap().len(), 2, "{report}");
}

#[tokio::test]
async fn report_groups_by_the_season_the_pipeline_file_names() {
    let project = Project::new();
    shop(
        &project,
        "\n[report]\nperiod = \"season\"\nseason_start = \"02-01\"\n",
    )
    .await;
    let output = project.run(&["report", "--format", "json"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["period"], "season");
    let rows: Vec<_> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            format!(
                "{} {} {} {}",
                row["phase"],
                row["period"].as_str().unwrap(),
                row["season"].as_str().unwrap(),
                row["expected_cells"]
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            "1 2023-24 2023-24 17",
            "1 2024-25 2024-25 59",
            "2 2023-24 2023-24 17",
            "2 2024-25 2024-25 59"
        ]
    );
    let output = project.run(&["report", "--format", "md"]);
    assert!(
        stdout(&output).contains("| phase | season | expected |"),
        "{}",
        stdout(&output)
    );
    let output = project.run(&["report", "--format", "html"]);
    assert!(
        stdout(&output).contains("<td>1 events</td><td>2023-24</td>"),
        "{}",
        stdout(&output)
    );
}
