//! The order of claims and completions: a task is claimed only in (or after) the transaction
//! that records complete everything it needs, so it starts only on recorded, validated
//! upstream data; a task behind a failure or an interruption is never claimed; a completion
//! that lost its compare-and-set holds its dependents back.

use crate::util::{Project, code, scalar, stderr, stdout, wait_for};

/// Three phases, each needing the one before, with command runners. `bin/step.sh PHASE DATE`
/// writes the cell's row and logs the execution; phase 2 fails while `fail-two` exists and
/// hangs (with a child) while `hang-two` exists.
fn three_phases(project: &Project) {
    project.count_script();
    project.script(
        "bin/step.sh",
        "#!/bin/sh\nset -e\n\
         if [ \"$1\" = 2 ] && [ -e fail-two ]; then echo boom >&2; exit 7; fi\n\
         if [ \"$1\" = 2 ] && [ -e hang-two ]; then sleep 300 & echo $! > child.pid; wait; fi\n\
         mkdir -p \"out/$1\"\necho x > \"out/$1/$2\"\necho \"$1 $2\" >> runs.log\n",
    );
    let phase = |id: u32, needs: &str| {
        format!(
            "[[phase]]\nid = {id}\nname = \"p{id}\"\n{needs}\n\
             run.command = [\"bin/step.sh\", \"{id}\", \"{{date}}\"]\n\
             check.command = [\"bin/count.sh\", \"out/{id}\"]\nretries = 0\ntimeout = \"5m\"\n"
        )
    };
    project.write(
        "gapless.toml",
        &format!(
            "[pipeline]\nname = \"ahead\"\nstart = \"2024-03-01\"\n\n{}\n{}\n{}",
            phase(1, ""),
            phase(2, "needs = [1]"),
            phase(3, "needs = [2]"),
        ),
    );
}

/// `backfill` from 2024-03-01 through `end`, on `end`, one task at a time.
fn backfill_to(project: &Project, end: &str) -> std::process::Command {
    let mut command = project.command(&[
        "backfill",
        "--start-date",
        "2024-03-01",
        "--end-date",
        end,
        "--yes",
        "--jobs",
        "1",
    ]);
    command.env("GAPLESS_TODAY", end);
    command
}

/// Phase 3's task as stored: (state, attempt, whether it has a lease owner).
async fn third(project: &Project) -> (String, i64, bool) {
    let state = project.sqlite(".gapless/state.db").await;
    let row: (String, i64, Option<String>) =
        sqlx::query_as("SELECT state, attempt, lease_owner FROM tasks WHERE phase = 3")
            .fetch_one(&state)
            .await
            .unwrap();
    let running = scalar(&state, "SELECT COUNT(*) FROM tasks WHERE state = 'running'").await;
    state.close().await;
    assert_eq!(running, 0, "a task was left running: {row:?}");
    (row.0, row.1, row.2.is_some())
}

#[tokio::test]
async fn a_task_behind_a_failure_is_never_claimed() {
    let project = Project::new();
    three_phases(&project);
    project.write("fail-two", "");
    let output = backfill_to(&project, "2024-03-01").output().unwrap();
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    // Phase 2 failed, so phase 3 is blocked, and it was never claimed: no attempt, no lease.
    assert_eq!(third(&project).await, ("blocked".to_owned(), 0, false));
    let log = std::fs::read_to_string(project.path().join("runs.log")).unwrap();
    assert_eq!(log.lines().collect::<Vec<_>>(), ["1 2024-03-01"]);
}

#[tokio::test]
async fn a_task_waiting_on_an_interrupted_one_is_never_claimed() {
    let project = Project::new();
    three_phases(&project);
    project.write("hang-two", "");
    let mut child = backfill_to(&project, "2024-03-01").spawn().unwrap();
    let pid_file = project.path().join("child.pid");
    wait_for(&pid_file, "phase 2 never started");
    // While phase 2 runs, phase 3 waits unclaimed: it needs phase 2's recorded completion.
    let state = project.sqlite(".gapless/state.db").await;
    let claimed: (String, i64) = sqlx::query_as("SELECT state, attempt FROM tasks WHERE phase = 3")
        .fetch_one(&state)
        .await
        .unwrap();
    state.close().await;
    assert_eq!(claimed, ("pending".to_owned(), 0));
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_eq!(third(&project).await, ("pending".to_owned(), 0, false));

    std::fs::remove_file(project.path().join("hang-two")).unwrap();
    let output = project
        .command(&["resume", "--jobs", "1"])
        .env("GAPLESS_TODAY", "2024-03-01")
        .output()
        .unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let state = project.sqlite(".gapless/state.db").await;
    let attempts = scalar(&state, "SELECT attempt FROM tasks WHERE phase = 3").await;
    let complete = scalar(
        &state,
        "SELECT COUNT(*) FROM run_cells WHERE state = 'complete'",
    )
    .await;
    state.close().await;
    assert_eq!((attempts, complete), (1, 3));
}

/// Each runner of a self-dependent phase checks, in the state store, that the day before is
/// recorded complete, and then holds the state store's write lock for half a second from a
/// detached process, so that recording its own completion takes that long. A scheduler that
/// started the next day before that record was committed would fail this deterministically.
/// An independent second phase runs beside it.
#[tokio::test]
async fn a_task_starts_only_after_what_it_needs_is_recorded_complete() {
    let project = Project::new();
    project.write(
        "check_before.py",
        r#"import datetime, sqlite3, sys
day = datetime.date.fromisoformat(sys.argv[1])
if day > datetime.date(2024, 3, 1):
    before = (day - datetime.timedelta(days=1)).isoformat()
    db = sqlite3.connect(".gapless/state.db")
    row = db.execute("SELECT state FROM run_cells WHERE phase = 1 AND date = ?", (before,)).fetchone()
    if row is None or row[0] != "complete":
        sys.exit(f"phase 1 {before} is not recorded complete ({row}) as {day} starts")
"#,
    );
    project.write(
        "hold.py",
        r#"import pathlib, sqlite3, sys, time
db = sqlite3.connect(".gapless/state.db", isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
pathlib.Path(sys.argv[1]).touch()
time.sleep(0.5)
db.execute("ROLLBACK")
"#,
    );
    project.script(
        "bin/chain.sh",
        "#!/bin/sh\nset -e\npython3 check_before.py \"$1\"\n\
         mkdir -p out/1\necho x > \"out/1/$1\"\n\
         setsid python3 hold.py \"locked-$1\" </dev/null >/dev/null 2>&1 &\n\
         while [ ! -e \"locked-$1\" ]; do sleep 0.01; done\n",
    );
    project.script(
        "bin/free.sh",
        "#!/bin/sh\nmkdir -p out/2\necho x > \"out/2/$1\"\n",
    );
    project.count_script();
    project.write(
        "gapless.toml",
        r#"
[pipeline]
name = "order"
start = "2024-03-01"

[[phase]]
id = 1
name = "chain"
needs = [{ phase = 1, lookback_days = 1 }]
run.command = ["bin/chain.sh", "{date}"]
check.command = ["bin/count.sh", "out/1"]
retries = 0

[[phase]]
id = 2
name = "free"
run.command = ["bin/free.sh", "{date}"]
check.command = ["bin/count.sh", "out/2"]
retries = 0
"#,
    );
    let output = backfill_to(&project, "2024-03-04").output().unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let state = project.sqlite(".gapless/state.db").await;
    let complete = scalar(
        &state,
        "SELECT COUNT(*) FROM run_cells WHERE state = 'complete'",
    )
    .await;
    let events = scalar(&state, "SELECT COUNT(*) FROM events").await;
    let attempts = scalar(&state, "SELECT SUM(attempt) FROM tasks").await;
    state.close().await;
    assert_eq!((complete, events, attempts), (8, 8, 8));
}

/// A completion can lose its compare-and-set (another node took the task over): its
/// dependents then never start, while independent tasks finish. Here the runner of phase 1 on
/// the 2nd plays the other node: it bumps its own task's lease epoch in the state store before
/// it exits.
#[tokio::test]
async fn a_fenced_completion_holds_back_its_dependents() {
    let project = Project::new();
    project.write(
        "take_over.py",
        r#"import sqlite3, sys
db = sqlite3.connect(".gapless/state.db", timeout=30)
db.execute("UPDATE tasks SET lease_epoch = lease_epoch + 1 WHERE phase = 1 AND start_date = ?", (sys.argv[1],))
db.commit()
"#,
    );
    project.script(
        "bin/one.sh",
        "#!/bin/sh\nset -e\nmkdir -p out/1\necho x > \"out/1/$1\"\necho \"1 $1\" >> runs.log\n\
         if [ \"$1\" = 2024-03-02 ]; then python3 take_over.py \"$1\"; fi\n",
    );
    project.script(
        "bin/two.sh",
        "#!/bin/sh\nset -e\nmkdir -p out/2\necho x > \"out/2/$1\"\necho \"2 $1\" >> runs.log\n",
    );
    project.count_script();
    project.write(
        "gapless.toml",
        r#"
[pipeline]
name = "fenced"
start = "2024-03-01"

[[phase]]
id = 1
name = "one"
run.command = ["bin/one.sh", "{date}"]
check.command = ["bin/count.sh", "out/1"]
retries = 0

[[phase]]
id = 2
name = "two"
needs = [1]
run.command = ["bin/two.sh", "{date}"]
check.command = ["bin/count.sh", "out/2"]
retries = 0
"#,
    );
    let output = backfill_to(&project, "2024-03-03").output().unwrap();
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert!(
        stdout(&output).contains("failed: 4 tasks complete, 2 not finished in "),
        "{}",
        stdout(&output)
    );
    let log = std::fs::read_to_string(project.path().join("runs.log")).unwrap();
    let mut ran: Vec<&str> = log.lines().collect();
    ran.sort_unstable();
    assert_eq!(
        ran,
        [
            "1 2024-03-01",
            "1 2024-03-02",
            "1 2024-03-03",
            "2 2024-03-01",
            "2 2024-03-03"
        ],
        "phase 2 ran on the 2nd although phase 1's completion there was fenced"
    );
    let state = project.sqlite(".gapless/state.db").await;
    let recorded = scalar(
        &state,
        "SELECT COUNT(*) FROM events WHERE phase = 1 AND date = '2024-03-02'",
    )
    .await;
    let complete = scalar(
        &state,
        "SELECT COUNT(*) FROM tasks WHERE state = 'complete'",
    )
    .await;
    state.close().await;
    assert_eq!((recorded, complete), (0, 4));
}
