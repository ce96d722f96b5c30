//! The original team's story on BigQuery (the `bqemulator` emulator): `gapless check`,
//! `status` and `backfill` against a `bigquery://` warehouse. Three years of six phases are
//! probed with one query per phase (counted in the emulator's request log), a gap of a week in
//! phases 4 to 6 shows and is healed by SQL runners in BigQuery transactions, and `check`
//! names the phase and key of a SQL text BigQuery rejects in its dry run.

use serde_json::Value;

use gapless_testkit::bigquery::BqEmulator;

use crate::util::{Project, code, stderr, stdout};

/// Six phases over `raw.games` (phase 1, observed) and `mart.p2` … `mart.p6`, each copied
/// from the one before by a SQL runner. `broken` replaces phase 5's check with one that
/// reads a column that does not exist.
fn pipeline(url: &str, broken: bool) -> String {
    let mut text = format!(
        "[pipeline]\nname = \"bq-story\"\nstart = \"2021-04-01\"\n\n[warehouse]\nurl = \"{url}\"\nmaximum_bytes_billed = 10000000000\n\n[state]\nurl = \"sqlite://state.db\"\n\n[[phase]]\nid = 1\nname = \"p1\"\ncheck.sql = \"SELECT d, COUNT(*) FROM raw.games WHERE d BETWEEN :start AND :end GROUP BY d\"\n"
    );
    for id in 2..=6 {
        let column = if broken && id == 5 {
            "no_such_column"
        } else {
            "d"
        };
        text.push_str(&format!(
            "\n[[phase]]\nid = {id}\nname = \"p{id}\"\nneeds = [{previous}]\ncheck.sql = \"SELECT {column}, COUNT(*) FROM mart.p{id} WHERE d BETWEEN :start AND :end GROUP BY 1\"\nrun.sql = \"\"\"\nDELETE FROM mart.p{id} WHERE d BETWEEN :start AND :end;\nINSERT INTO mart.p{id} SELECT d, n FROM {source} WHERE d BETWEEN :start AND :end\"\"\"\nbatch_days = 7\n",
            previous = id - 1,
            source = if id == 2 { "raw.games".to_owned() } else { format!("mart.p{}", id - 1) },
        ));
    }
    text
}

/// The emulator with three years of rows in every phase but a week of phases 4 to 6.
fn warehouse() -> Option<BqEmulator> {
    let emulator = BqEmulator::start()?;
    emulator.create_dataset("raw");
    emulator.create_dataset("mart");
    emulator.query(
        "CREATE TABLE raw.games AS SELECT d, 1 AS n \
         FROM UNNEST(GENERATE_DATE_ARRAY(DATE '2021-04-01', DATE '2024-03-31')) AS d",
    );
    for id in 2..=6 {
        emulator.query(&format!(
            "CREATE TABLE mart.p{id} AS SELECT d, n FROM raw.games{}",
            if id >= 4 {
                " WHERE d NOT BETWEEN DATE '2023-06-01' AND DATE '2023-06-07'"
            } else {
                ""
            }
        ));
    }
    Some(emulator)
}

fn phase(report: &Value, id: i64) -> &Value {
    report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|phase| phase["phase"] == id)
        .unwrap()
}

#[test]
fn bigquery_check_status_and_backfill() {
    let Some(emulator) = warehouse() else {
        return;
    };
    let project = Project::new();
    project.write("gapless.toml", &pipeline(&emulator.url(), false));

    // check: every SQL text dry-run, every probe answers.
    let output = project.run(&["--json", "check"]);
    assert_eq!(code(&output), 0, "{}{}", stdout(&output), stderr(&output));
    let checked: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(checked["problems"], Value::Array(Vec::new()), "{checked}");
    assert!(
        checked["bigquery"]["queries"].as_u64().unwrap() >= 11,
        "{checked}"
    );

    // status over three years: one query per phase, however many days.
    let before = emulator.queries();
    let output = project.run(&["--json", "status"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(emulator.queries() - before, 6, "{}", emulator.log_text());
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["bigquery"]["queries"], 6, "{report}");
    assert!(report["bigquery"]["bytes_processed"].is_u64(), "{report}");
    for id in 1..=3 {
        assert_eq!(phase(&report, id)["complete"], 1096, "phase {id}: {report}");
    }
    // The week is missing in phase 4, and its downstream phases wait for it.
    assert_eq!(phase(&report, 4)["missing"], 7, "{report}");
    for id in 5..=6 {
        assert_eq!(phase(&report, id)["blocked"], 7, "phase {id}: {report}");
    }

    // The week is healed by the SQL runners, and -v logs each query's bytes processed.
    let output = project.run(&[
        "-vv",
        "backfill",
        "--start-date",
        "2023-06-01",
        "--end-date",
        "2023-06-07",
        "--phases",
        "4-6",
    ]);
    assert_eq!(code(&output), 0, "{}{}", stdout(&output), stderr(&output));
    assert!(
        stderr(&output).contains("bytes_processed"),
        "{}",
        stderr(&output)
    );
    let output = project.run(&["--json", "status"]);
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    for id in 1..=6 {
        assert_eq!(phase(&report, id)["complete"], 1096, "phase {id}: {report}");
    }

    // A check that reads a missing column: named by phase and key, before anything runs.
    project.write("gapless.toml", &pipeline(&emulator.url(), true));
    let output = project.run(&["--json", "check"]);
    assert_ne!(code(&output), 0, "{}", stdout(&output));
    let checked: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let problems = checked["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{checked}");
    assert_eq!(
        problems[0]["subject"], "phase 5 `p5` check.sql",
        "{checked}"
    );
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_column"),
        "{checked}"
    );
}
