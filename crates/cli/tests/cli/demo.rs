//! `gapless demo` and `gapless report` on the NBA example: the original broken pipeline found,
//! planned, healed and validated, with the validation queries' numbers before and after.

use std::path::Path;
use std::process::Output;

use crate::util::{Project, code, stderr, stdout};

#[test]
fn demo_heals_the_original_gaps_and_reports() {
    let project = Project::new();
    let dir = project.path().join("nba");
    let output = project
        .command(&["demo", "--dir", dir.to_str().unwrap()])
        .env_remove("GAPLESS_TODAY")
        .output()
        .unwrap();
    let text = stdout(&output);
    assert_eq!(code(&output), 0, "{text}\n{}", stderr(&output));
    let (before, after) = text
        .split_once("gapless status after")
        .expect("the demo shows status after");
    // Before: the three playoffs stuck after phase 2, grading for 2024-25 holding one record.
    assert!(
        before.contains("missing   2022-04-16..2022-06-16"),
        "{before}"
    );
    assert!(
        before.contains("blocked   2023-04-15..2023-06-12"),
        "{before}"
    );
    assert!(
        before.contains("partial   2024-10-22              1 cell, 1 of"),
        "{before}"
    );
    let misses: Vec<&str> = before
        .lines()
        .filter(|l| l.trim_start().starts_with("MISS"))
        .collect();
    assert_eq!(misses.len(), 5, "{before}");
    assert!(
        misses
            .iter()
            .any(|l| l.contains("2024-25 graded predictions") && l.contains(" 1 of ")),
        "{misses:?}"
    );
    // Healing as the service does it: the 2024-25 grading by policy, the old playoffs alerted
    // (the alert printed), then healed by a person with --include-old.
    let (policy, rest) = text
        .split_once("the alert a person receives")
        .expect("the demo shows the alert");
    assert!(
        policy.contains("314 gaps; 208 to heal, 106 left for a person"),
        "{policy}"
    );
    assert!(policy.contains("healed 208 of 208 gaps"), "{policy}");
    assert!(
        rest.contains("gapless `nba-props`: 106 gaps need a person"),
        "{rest}"
    );
    assert!(
        rest.contains("heal with `gapless heal --include-old`"),
        "{rest}"
    );
    assert!(rest.contains("healed 106 of 106 gaps"), "{rest}");
    // After: every validation query matches, no gaps anywhere.
    let oks: Vec<&str> = after
        .lines()
        .filter(|l| l.trim_start().starts_with("ok "))
        .collect();
    assert_eq!(oks.len(), 5, "{after}");
    assert!(!after.contains("MISS"));
    assert!(after.contains("every validation query matches its expectation"));
    for phase in ["analytics", "precompute", "predictions", "grading"] {
        let line = after
            .lines()
            .find(|l| l.contains(phase) && l.contains("complete "))
            .unwrap();
        assert!(line.contains("partial 0 · missing 0 · blocked 0"), "{line}");
    }

    // The report over the healed example: every season complete, no open gaps.
    let report = example(
        &project,
        &dir.join("gapless.toml"),
        &["report", "--format", "json"],
    );
    assert_eq!(code(&report), 0, "{}", stderr(&report));
    let report: serde_json::Value = serde_json::from_str(&stdout(&report)).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6 * 4, "six phases × four seasons");
    for row in rows {
        assert_eq!(row["complete"], row["expected_cells"], "{row}");
        assert_eq!(row["rows"], row["expected_rows"], "{row}");
    }
    assert!(report["gaps"].as_array().unwrap().is_empty());
    let markdown = example(&project, &dir.join("gapless.toml"), &["report"]);
    assert!(
        stdout(&markdown).contains("| 6 grading | 2024-25 |"),
        "{}",
        stdout(&markdown)
    );
    // A second demo into the same directory refuses rather than mixing states.
    let again = project.run(&["demo", "--dir", dir.to_str().unwrap()]);
    assert_eq!(code(&again), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn report_shows_the_open_gaps_of_the_broken_example() {
    let project = Project::new();
    let dir = project.path().join("nba");
    let output = project
        .command(&["demo", "--dir", dir.to_str().unwrap(), "--no-backfill"])
        .env("GAPLESS_TODAY", "2025-07-01")
        .env_remove("CARGO")
        .output()
        .unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(stdout(&output).contains("stopped before the backfill"));
    // Its hints are commands to paste: `gapless` on the PATH, or through `cargo run` when the
    // demo itself ran that way.
    let hint = format!(
        "\n  gapless --pipeline {}/gapless.toml plan ",
        dir.display()
    );
    assert!(stdout(&output).contains(&hint), "{}", stdout(&output));
    let again = project.path().join("nba-again");
    let through_cargo = project
        .command(&["demo", "--dir", again.to_str().unwrap(), "--no-backfill"])
        .env("GAPLESS_TODAY", "2025-07-01")
        .env("CARGO", "cargo")
        .output()
        .unwrap();
    let hint = format!(
        "\n  cargo run --release -p gapless-cli -- --pipeline {}/gapless.toml plan ",
        again.display()
    );
    assert!(
        stdout(&through_cargo).contains(&hint),
        "{}",
        stdout(&through_cargo)
    );
    let pipeline = dir.join("gapless.toml");
    let report = example(&project, &pipeline, &["report", "--format", "json"]);
    assert_eq!(code(&report), 0, "{}", stderr(&report));
    let report: serde_json::Value = serde_json::from_str(&stdout(&report)).unwrap();
    let row = |phase: u64, season: &str| {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["phase"] == phase && r["season"] == season)
            .unwrap()
            .clone()
    };
    // Phase 3 of 2021-22 misses exactly the playoff dates; phase 6 of 2024-25 holds one record.
    assert!(row(3, "2021-22")["missing"].as_u64().unwrap() > 30);
    assert_eq!(row(3, "2021-22")["blocked"], 0);
    assert!(row(4, "2022-23")["blocked"].as_u64().unwrap() > 30);
    assert_eq!(row(6, "2024-25")["partial"], 1);
    assert_eq!(row(6, "2024-25")["rows"], 1);
    assert_eq!(
        row(2, "2023-24")["complete"],
        row(2, "2023-24")["expected_cells"]
    );
    let gaps = report["gaps"].as_array().unwrap();
    assert!(
        gaps.iter()
            .any(|g| g["phase"] == 3 && g["start"] == "2022-04-16" && g["state"] == "missing"),
        "{gaps:?}"
    );
    // The example's `[report] period = "season"` (July to June) names the rows; blocked cells
    // are listed apart from the gaps.
    assert_eq!(report["period"], "season");
    assert_eq!(row(3, "2021-22")["period"], "2021-22");
    assert!(gaps.iter().all(|g| g["state"] != "blocked"), "{gaps:?}");
    let blocked = report["blocked"].as_array().unwrap();
    assert!(
        blocked
            .iter()
            .any(|b| b["phase"] == 4 && b["state"] == "blocked"),
        "{blocked:?}"
    );
    let html = example(&project, &pipeline, &["report", "--format", "html"]);
    let html = stdout(&html);
    assert!(html.starts_with("<!doctype html>"));
    assert!(
        html.contains("<td>3 analytics</td><td>2021-22</td>"),
        "{html}"
    );
    // The plan over the broken example runs the gaps and nothing else.
    let plan = example(
        &project,
        &pipeline,
        &[
            "plan",
            "--start-date",
            "2021-10-19",
            "--end-date",
            "2025-06-22",
            "--phases",
            "3-6",
            "--json",
        ],
    );
    let plan: serde_json::Value = serde_json::from_str(&stdout(&plan)).unwrap();
    assert!(plan["blocked"].as_array().unwrap().is_empty());
    assert_eq!(
        plan["phases"][0]["cells"],
        row(3, "2021-22")["missing"].as_u64().unwrap()
            + row(3, "2022-23")["missing"].as_u64().unwrap()
            + row(3, "2023-24")["missing"].as_u64().unwrap()
    );

    // The original plan's P1 completion command: lose the 2024-25 season from phase 2 on, then
    // one command backfills it through phases 2-5 with every phase validated.
    for (file, table) in [
        ("nba/warehouse/nba_raw.db", "bdl_player_boxscores"),
        ("nba/warehouse/nba_analytics.db", "player_game_summary"),
        (
            "nba/warehouse/nba_precompute.db",
            "player_composite_factors",
        ),
        (
            "nba/warehouse/nba_predictions.db",
            "player_prop_predictions",
        ),
    ] {
        let pool = project.sqlite(file).await;
        crate::util::exec(
            &pool,
            &format!("DELETE FROM {table} WHERE game_date BETWEEN '2024-10-22' AND '2025-04-30'"),
        )
        .await;
        pool.close().await;
    }
    let p1 = example(
        &project,
        &pipeline,
        &[
            "--json",
            "backfill",
            "--start-date",
            "2024-10-22",
            "--end-date",
            "2025-04-30",
            "--phases",
            "2,3,4,5",
            "--yes",
        ],
    );
    assert_eq!(code(&p1), 0, "{}", stderr(&p1));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&p1)).unwrap();
    assert_eq!(summary["state"], "succeeded");
    let progress = summary["progress"].as_array().unwrap();
    assert_eq!(progress.len(), 4);
    for phase in progress {
        assert!(phase["complete"].as_i64().unwrap() > 150, "{phase}");
        assert_eq!(phase["complete"], phase["total"], "{phase}");
    }
    let status = example(
        &project,
        &pipeline,
        &[
            "status",
            "--start-date",
            "2024-10-22",
            "--end-date",
            "2025-04-30",
            "--phases",
            "2-5",
            "--json",
        ],
    );
    let status: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    for phase in status["phases"].as_array().unwrap() {
        assert_eq!(
            (
                phase["missing"].as_u64(),
                phase["partial"].as_u64(),
                phase["blocked"].as_u64()
            ),
            (Some(0), Some(0), Some(0)),
            "{phase}"
        );
    }
}

/// `gapless --pipeline PIPELINE ARGS…` on the example, with the demo's "today".
fn example(project: &Project, pipeline: &Path, args: &[&str]) -> Output {
    let pipeline = pipeline.to_str().unwrap();
    let mut all = vec!["--pipeline", pipeline];
    all.extend_from_slice(args);
    project
        .command(&all)
        .env("GAPLESS_TODAY", "2025-07-01")
        .output()
        .unwrap()
}

/// The same demo on the BigQuery emulator (`bqemulator`): the same gaps, the same policy split
/// and every validation query matching. Ignored by default: the emulator takes several minutes
/// over the demo's 131k rows (`cargo test -p gapless-cli --test cli -- --ignored bigquery`).
#[test]
#[ignore = "several minutes on the BigQuery emulator"]
fn demo_on_bigquery_heals_the_same_gaps() {
    let Some(emulator) = gapless_testkit::bigquery::BqEmulator::start() else {
        return;
    };
    let project = Project::new();
    let dir = project.path().join("nba");
    let host = emulator.endpoint();
    let output = project
        .command(&[
            "demo",
            "--warehouse",
            "bigquery",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .env_remove("GAPLESS_TODAY")
        .env("BIGQUERY_EMULATOR_HOST", host.trim_start_matches("http://"))
        .output()
        .unwrap();
    let text = stdout(&output);
    assert_eq!(code(&output), 0, "{text}\n{}", stderr(&output));
    let (before, after) = text
        .split_once("gapless status after")
        .expect("the demo shows status after");
    assert!(
        before.contains("missing   2022-04-16..2022-06-16"),
        "{before}"
    );
    assert!(
        before.contains("partial   2024-10-22              1 cell, 1 of"),
        "{before}"
    );
    let misses = before
        .lines()
        .filter(|l| l.trim_start().starts_with("MISS"))
        .count();
    assert_eq!(misses, 5, "{before}");
    assert!(
        text.contains("314 gaps; 208 to heal, 106 left for a person"),
        "{text}"
    );
    assert!(text.contains("healed 106 of 106 gaps"), "{text}");
    let oks = after
        .lines()
        .filter(|l| l.trim_start().starts_with("ok "))
        .count();
    assert_eq!(oks, 5, "{after}");
    assert!(after.contains("every validation query matches its expectation"));
    // The numbers SQLite reaches.
    for line in [
        "80 of 80",
        "88 of 88",
        "77 of 77",
        "106 of 106",
        "32562 of 32562",
    ] {
        assert!(after.contains(line), "{line}: {after}");
    }
    // The pipeline file written is the BigQuery variant.
    let pipeline = std::fs::read_to_string(dir.join("gapless.toml")).unwrap();
    assert!(pipeline.contains("bigquery://gapless-demo"), "{pipeline}");
}

#[test]
fn demo_on_bigquery_needs_the_emulator_host() {
    let project = Project::new();
    let output = project
        .command(&["demo", "--warehouse", "bigquery"])
        .env_remove("BIGQUERY_EMULATOR_HOST")
        .output()
        .unwrap();
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("set BIGQUERY_EMULATOR_HOST"),
        "{}",
        stderr(&output)
    );
}
