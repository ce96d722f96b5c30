//! `backfill`, `resume` and `runs`: runners, order, retries, gates, rollback, timeouts.

use std::time::Duration;

use crate::front::{CHAIN, chain};
use crate::util::{Project, code, scalar, stderr, stdout, wait_for};

fn backfill(project: &Project, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "backfill",
        "--start-date",
        "2024-03-01",
        "--end-date",
        "2024-03-31",
        "--yes",
    ];
    args.extend_from_slice(extra);
    project.run(&args)
}

#[tokio::test]
async fn sql_backfill_runs_in_dependency_order_and_completes() {
    let project = Project::new();
    chain(&project, "2024-03-31", "2024-03-10").await;
    let output = backfill(&project, &["--phases", "2,3", "--json", "--jobs", "3"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(summary["state"], "succeeded");
    let warehouse = project.sqlite("warehouse.db").await;
    // Every phase-3 task ran after every phase-2 task covering its window (lookback 2 days).
    let violations = scalar(
        &warehouse,
        "SELECT COUNT(*) FROM log three JOIN log two ON two.phase = 2 AND three.phase = 3
           AND two.e >= date(three.s, '-2 days') AND two.s <= three.e AND two.seq > three.seq",
    )
    .await;
    assert_eq!(violations, 0);
    // Only missing cells ran: phase 2 from the 11th, phase 3 everywhere.
    assert_eq!(
        scalar(
            &warehouse,
            "SELECT COUNT(*) FROM log WHERE phase = 2 AND s < '2024-03-11'"
        )
        .await,
        0
    );
    assert_eq!(scalar(&warehouse, "SELECT COUNT(*) FROM rolling").await, 26);
    // Status agrees; a second backfill has nothing to do.
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&project.run(&["status", "--json"]))).unwrap();
    for phase in status["phases"].as_array().unwrap() {
        assert_eq!(phase["complete"], 26, "{phase}");
    }
    assert_eq!(
        scalar(&warehouse, "SELECT COUNT(*) FROM log WHERE phase = 3").await,
        26
    );
    let again = backfill(&project, &["--phases", "2,3", "--json"]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert_eq!(
        scalar(&warehouse, "SELECT COUNT(*) FROM log WHERE phase = 3").await,
        26,
        "complete cells ran again"
    );
    // Events: one per completed cell.
    let state = project.sqlite(".gapless/state.db").await;
    assert_eq!(
        scalar(&state, "SELECT COUNT(*) FROM events WHERE phase = 3").await,
        26
    );
    assert_eq!(scalar(&state, "SELECT COUNT(*) FROM (SELECT phase, date FROM events GROUP BY phase, date HAVING COUNT(*) > 1)").await, 0);
    let runs = stdout(&project.run(&["runs"]));
    assert!(runs.contains("succeeded"), "{runs}");
}

/// A command phase whose runner is a script: `behaviour` decides what it does.
fn command_pipeline(project: &Project, behaviour: &str, extra: &str) {
    project.script("bin/work.sh", &format!("#!/bin/sh\nset -e\necho \"$GAPLESS_START $GAPLESS_ATTEMPT_TOKEN\" >> runs.log\n{behaviour}\n"));
    project.script(
        "bin/undo.sh",
        "#!/bin/sh\necho \"$GAPLESS_START\" >> rollback.log\n",
    );
    project.script(
        "bin/count.sh",
        "#!/bin/sh\n# prints YYYY-MM-DD COUNT for each date with output files\nfor f in out/*; do [ -e \"$f\" ] || exit 0; echo \"$(basename \"$f\") $(wc -l < \"$f\")\"; done\n",
    );
    project.script("bin/count-downstream.sh", "#!/bin/sh\nfor f in down/*; do [ -e \"$f\" ] || exit 0; echo \"$(basename \"$f\") 1\"; done\n");
    project.script(
        "bin/down.sh",
        "#!/bin/sh\nmkdir -p down\necho x > \"down/$1\"\n",
    );
    project.write(
        "gapless.toml",
        &format!(
            r#"
[pipeline]
name = "commands"
start = "2024-03-01"

[[phase]]
id = 1
name = "work"
run.command = ["bin/work.sh", "{{date}}"]
check.command = ["bin/count.sh"]
expect.min = 3
rollback.command = ["bin/undo.sh"]
retries = 2
timeout = "2s"
{extra}

[[phase]]
id = 2
name = "downstream"
needs = [1]
run.command = ["bin/down.sh", "{{date}}"]
check.command = ["bin/count-downstream.sh"]
"#
        ),
    );
}

/// `backfill` of 2024-03-01 alone, on that day.
fn one_day(project: &Project) -> std::process::Command {
    let mut command = project.command(&[
        "backfill",
        "--start-date",
        "2024-03-01",
        "--end-date",
        "2024-03-01",
        "--yes",
    ]);
    command.env("GAPLESS_TODAY", "2024-03-01");
    command
}

fn run_two_days(project: &Project) -> std::process::Output {
    project
        .command(&[
            "backfill",
            "--start-date",
            "2024-03-01",
            "--end-date",
            "2024-03-02",
            "--yes",
        ])
        .env("GAPLESS_TODAY", "2024-03-02")
        .output()
        .unwrap()
}

#[test]
fn failing_twice_then_succeeding_is_retried() {
    let project = Project::new();
    std::fs::create_dir_all(project.path().join("out")).unwrap();
    // Fails on attempts 1 and 2 of each date (counted per date), then writes 3 rows.
    command_pipeline(
        &project,
        "n=$(grep -c \"^$1 \" runs.log)\nif [ \"$n\" -lt 3 ]; then echo \"attempt $n fails\" >&2; exit 1; fi\nprintf 'a\\nb\\nc\\n' > \"out/$1\"",
        "",
    );
    let output = run_two_days(&project);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let log = std::fs::read_to_string(project.path().join("runs.log")).unwrap();
    assert_eq!(log.lines().count(), 6, "{log}");
    // Every attempt got a new, larger fencing token.
    let tokens: Vec<i64> = log
        .lines()
        .filter(|l| l.starts_with("2024-03-01"))
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(tokens.windows(2).all(|w| w[1] > w[0]), "{tokens:?}");
    assert!(
        stderr(&output).contains("attempt 1 failed, retrying"),
        "{}",
        stderr(&output)
    );
    assert!(project.path().join("down/2024-03-02").exists());
}

#[test]
fn failing_always_rolls_back_and_blocks_downstream() {
    let project = Project::new();
    command_pipeline(&project, "echo boom >&2; exit 7", "");
    let output = run_two_days(&project);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert_eq!(
        std::fs::read_to_string(project.path().join("runs.log"))
            .unwrap()
            .lines()
            .count(),
        6
    );
    let rollbacks = std::fs::read_to_string(project.path().join("rollback.log")).unwrap();
    assert_eq!(rollbacks.lines().count(), 2, "{rollbacks}");
    assert!(
        !project.path().join("down").exists(),
        "downstream ran on top of failed cells"
    );
    let runs: serde_json::Value =
        serde_json::from_str(&stdout(&project.run(&["runs", "--json"]))).unwrap();
    let id = runs[0]["run"]["id"].as_str().unwrap().to_owned();
    let show = stdout(&project.run(&["runs", "show", &id]));
    assert!(
        show.contains("failed   phase 1 2024-03-01..2024-03-01"),
        "{show}"
    );
    assert!(
        show.contains("exited with status 7") || show.contains("status 7"),
        "{show}"
    );
    assert!(
        show.contains("blocked  phase 2 2024-03-01..2024-03-01"),
        "{show}"
    );
    assert!(show.contains("rolled back"), "{show}");
}

#[test]
fn exiting_zero_with_short_data_fails_the_gate_with_counts() {
    let project = Project::new();
    std::fs::create_dir_all(project.path().join("out")).unwrap();
    command_pipeline(&project, "printf 'a\\nb\\n' > \"out/$1\"", "");
    let output = run_two_days(&project);
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("2024-03-01: 2 of 3"),
        "{}",
        stderr(&output)
    );
    // A runner that exits 0 and writes nothing is a failure too.
    let project = Project::new();
    command_pipeline(&project, "true", "");
    let output = run_two_days(&project);
    assert_eq!(code(&output), 1);
    assert!(stderr(&output).contains("0 of 3"), "{}", stderr(&output));
}

/// A SQL phase's gate runs inside the runner's transaction: a load that falls short is never
/// committed, not even for a moment between attempts, and its counts are the error.
#[tokio::test]
async fn a_short_sql_load_never_commits() {
    let project = Project::new();
    project.write(
        "gapless.toml",
        r#"
[pipeline]
name = "short"
start = "2024-03-01"

[warehouse]
url = "sqlite://warehouse.db"

[[phase]]
id = 1
name = "load"
run.sql = """
INSERT INTO attempts (d) VALUES (:start);
INSERT INTO loaded (d, n) SELECT :start, value FROM (SELECT 1 AS value UNION ALL SELECT 2);
"""
check.sql = "SELECT d, COUNT(*) FROM loaded WHERE d BETWEEN :start AND :end GROUP BY d"
expect.sql = "SELECT d, games FROM schedule WHERE d BETWEEN :start AND :end"
rollback.sql = "INSERT INTO rollbacks (d) VALUES (:start)"
retries = 1
"#,
    );
    let warehouse = project.sqlite("warehouse.db").await;
    crate::util::exec(
        &warehouse,
        "PRAGMA journal_mode = WAL;
         CREATE TABLE schedule (d TEXT PRIMARY KEY, games INTEGER);
         INSERT INTO schedule VALUES ('2024-03-01', 3);
         CREATE TABLE loaded (d TEXT, n INTEGER);
         CREATE TABLE attempts (d TEXT);
         CREATE TABLE rollbacks (d TEXT);",
    )
    .await;
    let output = one_day(&project).output().unwrap();
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("2024-03-01: 2 of 3"),
        "{}",
        stderr(&output)
    );
    // Two attempts ran (one retry); neither the short rows nor the attempts' own marker rows
    // were ever committed; the rollback ran once, after the last attempt.
    assert_eq!(scalar(&warehouse, "SELECT COUNT(*) FROM loaded").await, 0);
    assert_eq!(scalar(&warehouse, "SELECT COUNT(*) FROM attempts").await, 0);
    assert_eq!(
        scalar(&warehouse, "SELECT COUNT(*) FROM rollbacks").await,
        1
    );
    let state = project.sqlite(".gapless/state.db").await;
    assert_eq!(
        scalar(&state, "SELECT attempt FROM tasks WHERE phase = 1").await,
        2
    );
}

#[test]
fn hanging_runner_is_killed_with_its_process_group() {
    let project = Project::new();
    command_pipeline(
        &project,
        "sleep 300 &\necho $! > \"child-$1.pid\"\nsleep 300",
        "",
    );
    let started = std::time::Instant::now();
    let output = one_day(&project).output().unwrap();
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert!(stderr(&output).contains("timed out"), "{}", stderr(&output));
    assert!(started.elapsed() < Duration::from_secs(60));
    let pid: i32 = std::fs::read_to_string(project.path().join("child-2024-03-01.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        gapless_testkit::process_gone(&pid.to_string()),
        "the runner's child {pid} survived the timeout"
    );
}

#[tokio::test]
async fn resume_finishes_an_interrupted_run_without_rerunning_complete_tasks() {
    let project = Project::new();
    chain(&project, "2024-03-31", "2024-03-01").await;
    // Phase 3 sleeps (through a slow SQL) so the run is mid-way when interrupted.
    project.write(
        "gapless.toml",
        &CHAIN.replace("name = \"rolling\"", "name = \"rolling\"\nconcurrency = 1"),
    );
    let mut child = project
        .command(&[
            "backfill",
            "--start-date",
            "2024-03-01",
            "--end-date",
            "2024-03-31",
            "--phases",
            "2,3",
            "--yes",
            "--jobs",
            "1",
        ])
        .spawn()
        .unwrap();
    // Interrupt as soon as a few tasks are recorded.
    let state = project.path().join(".gapless/state.db");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if state.exists() {
            let pool = project.sqlite(".gapless/state.db").await;
            let done =
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM tasks WHERE state = 'complete'")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
            pool.close().await;
            if done >= 3 {
                break;
            }
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backfill never progressed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = nix_kill(child.id());
    let status = child.wait().unwrap();
    let pool = project.sqlite(".gapless/state.db").await;
    let complete_before: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM tasks WHERE state = 'complete'")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    let output = project.run(&["resume", "--json"]);
    assert_eq!(
        code(&output),
        0,
        "first exit {status:?}; {}",
        stderr(&output)
    );
    let warehouse = project.sqlite("warehouse.db").await;
    assert_eq!(scalar(&warehouse, "SELECT COUNT(*) FROM rolling").await, 26);
    // Tasks complete before the interruption ran exactly once.
    let pool = project.sqlite(".gapless/state.db").await;
    for id in complete_before {
        let attempts: i64 = sqlx::query_scalar("SELECT attempt FROM tasks WHERE id = ?")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(attempts, 1, "task {id} ran again");
    }
}

fn nix_kill(pid: u32) -> std::io::Result<std::process::ExitStatus> {
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
}

#[test]
fn ctrl_c_stops_cleanly_with_130_and_resume_finishes() {
    stops_cleanly_on("-INT");
}

/// SIGTERM is what systemd, Docker and Kubernetes send: the same clean stop as Ctrl-C.
#[test]
fn sigterm_stops_cleanly_with_130_and_resume_finishes() {
    stops_cleanly_on("-TERM");
}

/// `signal` (a `kill` option) stops a run whose runner hangs: exit 130, the runner's process
/// group killed, the run recorded `interrupted`, and `resume` finishes it.
fn stops_cleanly_on(signal: &str) {
    let project = Project::new();
    std::fs::create_dir_all(project.path().join("out")).unwrap();
    // The runner hangs (with a child) until the `fast` file exists.
    command_pipeline(
        &project,
        "if [ ! -e fast ]; then sleep 300 & echo $! > \"child-$1.pid\"; wait; fi\nprintf 'a\\nb\\nc\\n' > \"out/$1\"",
        "",
    );
    project.write(
        "gapless.toml",
        &std::fs::read_to_string(project.path().join("gapless.toml"))
            .unwrap()
            .replace("timeout = \"2s\"", "timeout = \"5m\""),
    );
    let mut child = one_day(&project).spawn().unwrap();
    let pid_file = project.path().join("child-2024-03-01.pid");
    wait_for(&pid_file, "the runner never started");
    std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "stopped by {signal}");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        gapless_testkit::process_gone(&pid),
        "the runner's child survived {signal}"
    );
    let runs: serde_json::Value =
        serde_json::from_str(&stdout(&project.run(&["runs", "--json"]))).unwrap();
    assert_eq!(runs[0]["run"]["state"], "interrupted");
    // Resume with a runner that no longer hangs.
    project.write("fast", "");
    let output = project
        .command(&["resume"])
        .env("GAPLESS_TODAY", "2024-03-01")
        .output()
        .unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let runs: serde_json::Value =
        serde_json::from_str(&stdout(&project.run(&["runs", "--json"]))).unwrap();
    assert_eq!(runs[0]["run"]["state"], "succeeded");
    assert!(project.path().join("down/2024-03-01").exists());
}

#[tokio::test]
async fn resume_runs_cells_whose_missing_upstream_was_filled_since() {
    let project = Project::new();
    chain(&project, "2024-03-20", "2024-03-10").await;
    // Phase 3 alone: from the 11th it is blocked behind phase 2, which is not in this run.
    let first = backfill(&project, &["--phases", "3", "--json"]);
    assert_eq!(code(&first), 1, "{}", stderr(&first));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&first)).unwrap();
    let run_id = summary["run_id"].as_str().unwrap().to_owned();
    let warehouse = project.sqlite("warehouse.db").await;
    assert_eq!(scalar(&warehouse, "SELECT COUNT(*) FROM rolling").await, 8);
    // Phase 2 gets filled by another run, up to where the source has data.
    let load = project.run(&[
        "backfill",
        "--start-date",
        "2024-03-01",
        "--end-date",
        "2024-03-20",
        "--phases",
        "2",
        "--yes",
    ]);
    assert_eq!(code(&load), 0, "{}", stderr(&load));
    // Resuming the first run releases what can run now; the 21st on stays blocked (no source).
    let resumed = project.run(&["resume", &run_id]);
    assert_eq!(code(&resumed), 1, "{}", stderr(&resumed));
    assert!(
        stderr(&resumed).contains("9 unblocked"),
        "{}",
        stderr(&resumed)
    );
    assert_eq!(scalar(&warehouse, "SELECT COUNT(*) FROM rolling").await, 17);
    let show = stdout(&project.run(&["runs", "show", &run_id]));
    assert!(
        show.contains("blocked  phase 3 2024-03-21..2024-03-21  phase 3 2024-03-21 blocked: phase 1 2024-03-21 missing"),
        "{show}"
    );
}

/// `gapless backfill 2>&1 | head -1`: whoever reads the output goes away at once. The run still
/// finishes and is recorded as it ended, never left `running`.
#[test]
fn closed_output_never_leaves_a_run_running() {
    let project = Project::new();
    std::fs::create_dir_all(project.path().join("out")).unwrap();
    command_pipeline(&project, "printf 'a\\nb\\nc\\n' > \"out/$1\"", "");
    for json in [false, true] {
        let mut command = project.command(&[
            "backfill",
            "--start-date",
            "2024-03-01",
            "--end-date",
            "2024-03-03",
            "--yes",
            "--force",
        ]);
        if json {
            command.arg("--json");
        }
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        drop(child.stderr.take());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "--json {json}");
        let runs: serde_json::Value =
            serde_json::from_str(&stdout(&project.run(&["runs", "--json"]))).unwrap();
        assert_eq!(runs[0]["run"]["state"], "succeeded", "--json {json}");
    }
}

/// "Fix the cause, then `gapless resume`": the failed tasks and everything they blocked run
/// again, and `runs show` says beforehand what the resume will do.
#[test]
fn resume_after_a_fix_reruns_failed_tasks_and_what_they_blocked() {
    let project = Project::new();
    std::fs::create_dir_all(project.path().join("out")).unwrap();
    command_pipeline(
        &project,
        "if [ -e broken ]; then echo 'source unreachable' >&2; exit 3; fi\nprintf 'a\\nb\\nc\\n' > \"out/$1\"",
        "",
    );
    project.write("broken", "");
    let output = run_two_days(&project);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let runs: serde_json::Value =
        serde_json::from_str(&stdout(&project.run(&["runs", "--json"]))).unwrap();
    let run_id = runs[0]["run"]["id"].as_str().unwrap().to_owned();
    assert_eq!(runs[0]["run"]["state"], "failed");

    let show = project.run(&["runs", "show", &run_id]);
    assert!(
        stdout(&show).contains(
            "`gapless resume` would run 4 tasks: 2 failed (re-probed, then run again), \
             2 blocked behind those (run once they complete)"
        ),
        "{}",
        stdout(&show)
    );
    let show: serde_json::Value =
        serde_json::from_str(&stdout(&project.run(&["runs", "show", &run_id, "--json"]))).unwrap();
    assert_eq!(show["resume"]["retry_failed"], 2);
    assert_eq!(show["resume"]["after_failures"], 2);

    // Resuming without a fix fails the same way again, with a fresh set of retries.
    let log = || std::fs::read_to_string(project.path().join("runs.log")).unwrap();
    let before = log().lines().count();
    let output = project
        .command(&["resume"])
        .env("GAPLESS_TODAY", "2024-03-02")
        .output()
        .unwrap();
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert_eq!(
        log().lines().count(),
        before + 6,
        "3 attempts per failed day"
    );

    std::fs::remove_file(project.path().join("broken")).unwrap();
    let output = project
        .command(&["resume"])
        .env("GAPLESS_TODAY", "2024-03-02")
        .output()
        .unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("2 failed before"),
        "{}",
        stderr(&output)
    );
    let runs: serde_json::Value =
        serde_json::from_str(&stdout(&project.run(&["runs", "--json"]))).unwrap();
    assert_eq!(runs[0]["run"]["state"], "succeeded");
    assert!(project.path().join("down/2024-03-01").exists());
    assert!(project.path().join("down/2024-03-02").exists());
    let show = project.run(&["runs", "show", &run_id]);
    assert!(!stdout(&show).contains("would run"), "{}", stdout(&show));
}

/// A backfill whose only unfinished cells wait for source data that is not there yet says so,
/// on stdout, instead of reporting a failure; the exit code stays 1 (SPEC.md).
#[test]
fn cells_waiting_for_source_data_are_said_to_wait() {
    let project = Project::new();
    for day in ["2024-03-01", "2024-03-03"] {
        project.write(&format!("raw/{day}"), "x\n");
    }
    project.count_script();
    project.script(
        "bin/load.sh",
        "#!/bin/sh\nmkdir -p loaded\necho x > \"loaded/$1\"\n",
    );
    project.write(
        "gapless.toml",
        r#"
[pipeline]
name = "waits"
start = "2024-03-01"

[[phase]]
id = 1
name = "raw"
check.command = ["bin/count.sh", "raw"]

[[phase]]
id = 2
name = "loaded"
needs = [1]
run.command = ["bin/load.sh", "{date}"]
check.command = ["bin/count.sh", "loaded"]
"#,
    );
    let output = project
        .command(&[
            "backfill",
            "--start-date",
            "2024-03-01",
            "--end-date",
            "2024-03-05",
            "--yes",
        ])
        // Every date is due: the day after it (`due` defaults to a day).
        .env("GAPLESS_TODAY", "2024-03-06")
        .output()
        .unwrap();
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let line = stdout(&output);
    assert!(
        line.contains(
            "incomplete: 2 tasks complete, 3 cells wait for phase 1 `raw` data on \
             2024-03-02, 2024-03-04, 2024-03-05 in "
        ),
        "{line}"
    );
    assert!(!line.contains("failed"), "{line}");
}

/// `runs` counts every cell the request covers: the run's own, and those it skipped as
/// complete.
#[test]
fn runs_count_every_cell_the_request_covers() {
    let project = Project::new();
    std::fs::create_dir_all(project.path().join("out")).unwrap();
    command_pipeline(&project, "printf 'a\\nb\\nc\\n' > \"out/$1\"", "");
    project.write("out/2024-03-01", "a\nb\nc\n");
    let output = project
        .command(&[
            "backfill",
            "--start-date",
            "2024-03-01",
            "--end-date",
            "2024-03-03",
            "--yes",
        ])
        .env("GAPLESS_TODAY", "2024-03-04")
        .output()
        .unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let runs = stdout(&project.run(&["runs"]));
    assert!(
        runs.contains(
            "2024-03-01..2024-03-03 phases [1,2]  6 cells: 5 run and complete, 1 already complete"
        ),
        "{runs}"
    );
}
