//! RELIABILITY.md T1/T5/T6 at CI size: kill -9 a backfill of 3 phases × 200 days at random
//! points 20 times, resume each time with two processes racing to resume. Every cell ends
//! complete and recorded once; no runner executes for a cell already recorded complete; no cell
//! runs twice at the same time (from the runners' own log); SQLite's integrity check passes
//! every time.

use std::time::Duration;

use crate::util::{Project, code, stderr};

/// Runs a command to its end on a thread of its own.
trait SpawnOutput {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<std::process::Output>;
}

impl SpawnOutput for std::process::Command {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<std::process::Output> {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::spawn(move || child.wait_with_output().unwrap())
    }
}

const RUNNER: &str = r#"#!/usr/bin/env python3
# Writes this cell's rows to the warehouse and one row per execution to the sink. Sleeps a
# little so kills land mid-task.
import os, random, sqlite3, sys, time
phase, start, end = sys.argv[1], sys.argv[2], sys.argv[3]
started = int(time.time() * 1000)
time.sleep(random.uniform(0.0, 0.03))
db = sqlite3.connect("warehouse.db", timeout=30)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO executions (phase, start, started_ms, ended_ms, token) VALUES (?, ?, ?, ?, ?)",
           (int(phase), start, started, int(time.time() * 1000), int(os.environ["GAPLESS_ATTEMPT_TOKEN"])))
db.execute("INSERT OR IGNORE INTO sink (phase, d) VALUES (?, ?)", (int(phase), start))
db.commit()
"#;

const PIPELINE: &str = r#"
[pipeline]
name = "crash"
start = "2023-01-01"

[warehouse]
url = "sqlite://warehouse.db"

[[phase]]
id = 1
name = "a"
run.command = ["python3", "runner.py", "{phase}", "{start}", "{end}"]
check.sql = "SELECT d, COUNT(*) FROM sink WHERE phase = 1 AND d BETWEEN :start AND :end GROUP BY d"
retries = 3

[[phase]]
id = 2
name = "b"
needs = [1]
run.command = ["python3", "runner.py", "{phase}", "{start}", "{end}"]
check.sql = "SELECT d, COUNT(*) FROM sink WHERE phase = 2 AND d BETWEEN :start AND :end GROUP BY d"
retries = 3

[[phase]]
id = 3
name = "c"
needs = [{ phase = 2, lookback_days = 3 }]
run.command = ["python3", "runner.py", "{phase}", "{start}", "{end}"]
check.sql = "SELECT d, COUNT(*) FROM sink WHERE phase = 3 AND d BETWEEN :start AND :end GROUP BY d"
retries = 3
"#;

#[tokio::test(flavor = "multi_thread")]
async fn kill_nine_twenty_times_then_resume() {
    let project = Project::new();
    setup(&project, "normal").await;
    let today = "2023-07-19"; // 200 days from 2023-01-01
    let mut kills = 0;
    let mut first = true;
    while kills < 20 {
        let args: Vec<&str> = if first {
            vec![
                "backfill",
                "--start-date",
                "2023-01-01",
                "--end-date",
                today,
                "--yes",
                "--jobs",
                "4",
                "-q",
            ]
        } else {
            vec!["resume", "--jobs", "4", "-q"]
        };
        // After the first backfill, two processes race to resume: one owns the run, the
        // other is refused (exit 2) while the owner lives.
        let racers = if first { 1 } else { 2 };
        let mut children: Vec<_> = (0..racers)
            .map(|_| {
                project
                    .command(&args)
                    .env("GAPLESS_TODAY", today)
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let wait = Duration::from_millis(fastrand::u64(150..900));
        tokio::time::sleep(wait).await;
        let mut finished = false;
        for child in &mut children {
            match child.try_wait().unwrap() {
                Some(status) => {
                    // Finished before the kill (nothing more to interrupt), or refused.
                    assert!(matches!(status.code(), Some(0 | 2)), "{status}");
                    finished |= status.code() == Some(0);
                }
                None => {
                    std::process::Command::new("kill")
                        .args(["-9", &child.id().to_string()])
                        .status()
                        .unwrap();
                    let _ = child.wait();
                    kills += 1;
                }
            }
        }
        if finished {
            break;
        }
        if !project.path().join(".gapless/state.db").exists() {
            first = true;
            continue;
        }
        let state = project.sqlite(".gapless/state.db").await;
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&state)
            .await
            .unwrap();
        assert_eq!(integrity, "ok", "after kill {kills}");
        // Killed before the run was recorded: start the backfill again, as a user would.
        let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs")
            .fetch_one(&state)
            .await
            .unwrap_or(0);
        first = runs == 0;
        state.close().await;
    }
    assert!(
        kills >= 5,
        "the backfill finished too fast to be killed ({kills} kills)"
    );
    // The last two resumes race to the end: one finishes the run, the other is refused while
    // it runs, or finds it succeeded.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            project
                .command(&["resume", "--jobs", "4"])
                .env("GAPLESS_TODAY", today)
                .spawn_output()
        })
        .collect();
    let outputs: Vec<_> = racers
        .into_iter()
        .map(|racer| racer.join().unwrap())
        .collect();
    for output in &outputs {
        assert!(matches!(code(output), 0 | 2), "{}", stderr(output));
        if code(output) == 2 {
            assert!(
                stderr(output).contains("is being executed by process"),
                "{}",
                stderr(output)
            );
        }
    }
    assert!(outputs.iter().any(|output| code(output) == 0));

    let executions = verify_exactly_once(&project, 600).await;
    // Re-executions happen only for cells in flight at a kill: at most kills × jobs of them.
    let reruns = executions - 600;
    assert!(
        reruns <= kills * 5,
        "{reruns} re-executions for {kills} kills"
    );
    eprintln!("{kills} kills, {executions} executions for 600 cells");
}

/// RELIABILITY.md T3: abort at each named step between durable writes (`GAPLESS_CRASH_AT`),
/// three times per step, resuming after each; then everything is complete exactly once, with
/// `--jobs 1` and with `--jobs 2`.
#[tokio::test(flavor = "multi_thread")]
async fn crash_point_matrix() {
    let mut fired = 0;
    for (point, jobs) in [
        "after-claim",
        "after-runner",
        "before-complete",
        "after-complete",
    ]
    .into_iter()
    .flat_map(|point| [(point, "1"), (point, "2")])
    {
        let project = Project::new();
        setup(&project, "full").await;
        let today = "2023-01-10"; // 3 phases × 10 days
        for (attempt, nth) in [1, 4, 9].into_iter().enumerate() {
            let args: Vec<&str> = if attempt == 0 {
                vec![
                    "backfill",
                    "--start-date",
                    "2023-01-01",
                    "--end-date",
                    today,
                    "--yes",
                    "--jobs",
                    jobs,
                    "-q",
                ]
            } else {
                vec!["resume", "--jobs", jobs, "-q"]
            };
            let output = project
                .command(&args)
                .env("GAPLESS_TODAY", today)
                .env("GAPLESS_CRASH_AT", format!("{point}:{nth}"))
                .output()
                .unwrap();
            assert!(
                output.status.code().is_none(),
                "{point}:{nth} did not crash: {}",
                stderr(&output)
            );
            assert!(
                stderr(&output).contains("crashing at"),
                "{}",
                stderr(&output)
            );
            fired += 1;
        }
        let output = project
            .command(&["resume", "--jobs", jobs])
            .env("GAPLESS_TODAY", today)
            .output()
            .unwrap();
        assert_eq!(
            code(&output),
            0,
            "{point} --jobs {jobs}: {}",
            stderr(&output)
        );

        verify_exactly_once(&project, 30).await;
    }
    assert_eq!(fired, 24, "every crash point fired three times per --jobs");
}

/// A fresh warehouse with the runner's sink (one row per cell, unique) and executions log.
/// `sync` is the state store's `[state] sync`: the kill -9 test runs the default (`normal`:
/// commits survive a process crash without an fsync each), the crash-point matrix `full`
/// (RELIABILITY.md T5's setting), so both modes are crash-tested.
async fn setup(project: &Project, sync: &str) {
    project.write(
        "gapless.toml",
        &format!("{PIPELINE}\n[state]\nsync = \"{sync}\"\n"),
    );
    project.write("runner.py", RUNNER);
    let warehouse = project.sqlite("warehouse.db").await;
    crate::util::exec(
        &warehouse,
        "PRAGMA journal_mode = WAL;
         CREATE TABLE sink (phase INTEGER, d TEXT, UNIQUE (phase, d));
         CREATE TABLE executions (phase INTEGER, start TEXT, started_ms INTEGER, ended_ms INTEGER,
                                  token INTEGER);",
    )
    .await;
    warehouse.close().await;
}

/// After the final resume: the state store is intact, every one of `cells` cells is complete and
/// recorded once (one event each), the sink holds each cell once, and no runner was spawned
/// for a cell already recorded complete: a task's final lease epoch is one above the claim that
/// completed it, so such an execution would carry a token at least that large. Returns how many
/// executions there were.
async fn verify_exactly_once(project: &Project, cells: i64) -> usize {
    let state = project.sqlite(".gapless/state.db").await;
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&state)
        .await
        .unwrap();
    assert_eq!(integrity, "ok");
    let complete: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM run_cells WHERE state = 'complete'")
            .fetch_one(&state)
            .await
            .unwrap();
    assert_eq!(complete, cells);
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&state)
        .await
        .unwrap();
    assert_eq!(events, cells, "a cell was recorded complete twice");
    let completions: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT phase, start_date, lease_epoch FROM tasks WHERE state = 'complete'")
            .fetch_all(&state)
            .await
            .unwrap();
    state.close().await;
    let warehouse = project.sqlite("warehouse.db").await;
    let sink: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sink")
        .fetch_one(&warehouse)
        .await
        .unwrap();
    assert_eq!(sink, cells);
    let executions: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT phase, start, token FROM executions")
            .fetch_all(&warehouse)
            .await
            .unwrap();
    // No cell ran twice at the same time, whoever ran it.
    let overlapping: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM executions a JOIN executions b \
         ON a.phase = b.phase AND a.start = b.start AND a.rowid < b.rowid \
         AND a.started_ms < b.ended_ms AND b.started_ms < a.ended_ms",
    )
    .fetch_one(&warehouse)
    .await
    .unwrap();
    warehouse.close().await;
    assert_eq!(overlapping, 0, "a cell ran twice at the same time");
    let completed: std::collections::HashMap<(i64, String), i64> = completions
        .into_iter()
        .map(|(p, d, epoch)| ((p, d), epoch))
        .collect();
    assert_eq!(completed.len(), usize::try_from(cells).unwrap());
    let late: Vec<_> = executions
        .iter()
        .filter(|(p, d, token)| {
            completed
                .get(&(*p, d.clone()))
                .is_none_or(|epoch| token >= epoch)
        })
        .collect();
    assert!(
        late.is_empty(),
        "runners executed for cells already recorded complete: {late:?}"
    );
    executions.len()
}
