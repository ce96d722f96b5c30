//! One owner per run and one runner per cell (SPEC.md, Semantics 5 and 9), on SQLite and on
//! PostgreSQL, with real processes: a second `resume` of a run whose owner is alive is refused
//! and names the owner; after the owner is killed with SIGKILL, `resume` takes over at once;
//! two backfills over overlapping cells never run a cell twice at the same time; and the
//! fencing token a runner gets grows across runs, so a sink that keeps the highest token per
//! cell never rejects a later run's write.

use std::collections::HashMap;
use std::time::Duration;

use crate::util::{Project, code, stderr, wait_for};

/// The state store of a test: the default SQLite file, or a fresh PostgreSQL database.
struct State {
    url: Option<String>,
    db: Option<gapless_testkit::PgTestDb>,
}

impl State {
    async fn new(postgres: bool) -> Option<Self> {
        if !postgres {
            return Some(Self {
                url: None,
                db: None,
            });
        }
        let url = gapless_testkit::pg_url()?;
        let db = gapless_testkit::fresh_pg_database(&url).await.unwrap();
        Some(Self {
            url: Some(db.url().to_owned()),
            db: Some(db),
        })
    }

    fn command(&self, project: &Project, args: &[&str]) -> std::process::Command {
        let mut command = project.command(args);
        command.env("GAPLESS_TODAY", "2024-03-12");
        if let Some(url) = &self.url {
            command.env("GAPLESS_STATE_URL", url);
        }
        command
    }

    async fn close(self) {
        if let Some(db) = self.db {
            db.drop_db().await.unwrap();
        }
    }
}

/// One phase whose runner logs `start CELL T` and `end CELL T` (T in seconds), hangs with a
/// child while `hang` exists, then writes its output file.
fn logged_phase(project: &Project) {
    project.script(
        "bin/run.sh",
        "#!/bin/sh\nset -e\necho \"start $1 $(date +%s.%N)\" >> runs.log\n\
         if [ -e hang ]; then sleep 300 & echo $! > \"child-$1.pid\"; echo $$ > \"runner-$1.pid\"; wait; fi\n\
         sleep 0.2\nmkdir -p out\necho x > \"out/$1\"\necho \"end $1 $(date +%s.%N)\" >> runs.log\n",
    );
    project.count_script();
    project.write(
        "gapless.toml",
        r#"
[pipeline]
name = "owners"
start = "2024-03-01"

[[phase]]
id = 1
name = "work"
run.command = ["bin/run.sh", "{date}"]
check.command = ["bin/count.sh"]
retries = 0
"#,
    );
}

fn backfill<'a>(from: &'a str, to: &'a str) -> [&'a str; 8] {
    [
        "backfill",
        "--start-date",
        from,
        "--end-date",
        to,
        "--yes",
        "--jobs",
        "1",
    ]
}

async fn owned_run_is_not_resumed_twice(postgres: bool) {
    let Some(state) = State::new(postgres).await else {
        return;
    };
    let project = Project::new();
    logged_phase(&project);
    project.write("hang", "");
    let mut owner = state
        .command(&project, &backfill("2024-03-01", "2024-03-02"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child_pid = project.path().join("child-2024-03-01.pid");
    wait_for(&child_pid, "the runner never started");

    // The owner is alive: a second resume is refused and names it; it touches nothing.
    let refused = state.command(&project, &["resume"]).output().unwrap();
    assert_eq!(code(&refused), 2, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&format!("is being executed by process {}", owner.id())),
        "{}",
        stderr(&refused)
    );
    let runs: serde_json::Value = serde_json::from_str(&crate::util::stdout(
        &state
            .command(&project, &["runs", "--json"])
            .output()
            .unwrap(),
    ))
    .unwrap();
    let run_id = runs[0]["run"]["id"].as_str().unwrap().to_owned();
    let show = state
        .command(&project, &["runs", "show", &run_id])
        .output()
        .unwrap();
    assert!(
        crate::util::stdout(&show).contains(&format!("executed by process {} on ", owner.id())),
        "{}",
        crate::util::stdout(&show)
    );
    let sleeper = std::fs::read_to_string(&child_pid)
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        !gapless_testkit::process_gone(&sleeper),
        "the refused resume stopped the owner's runner"
    );

    // The owner dies without a word; its runners die with it (or the resume ends them), and
    // the resume takes the run over at once: its pid is gone, no need to wait for the lease.
    owner.kill().unwrap();
    owner.wait().unwrap();
    let runner = std::fs::read_to_string(project.path().join("runner-2024-03-01.pid"))
        .unwrap()
        .trim()
        .to_owned();
    std::fs::remove_file(project.path().join("hang")).unwrap();
    let resumed = state.command(&project, &["resume"]).output().unwrap();
    assert_eq!(code(&resumed), 0, "{}", stderr(&resumed));
    assert!(
        gapless_testkit::process_gone(&runner),
        "the dead owner's runner survived"
    );
    assert!(
        gapless_testkit::process_gone(&sleeper),
        "its child survived"
    );
    let log = std::fs::read_to_string(project.path().join("runs.log")).unwrap();
    let ends = log.lines().filter(|line| line.starts_with("end ")).count();
    assert_eq!(ends, 2, "{log}");
    state.close().await;
}

#[tokio::test]
async fn a_run_with_a_live_owner_is_not_resumed_twice_sqlite() {
    owned_run_is_not_resumed_twice(false).await;
}

#[tokio::test]
async fn a_run_with_a_live_owner_is_not_resumed_twice_postgres() {
    owned_run_is_not_resumed_twice(true).await;
}

/// `start`/`end` times per cell from the runners' log.
fn executions(project: &Project) -> HashMap<String, Vec<(f64, f64)>> {
    let log = std::fs::read_to_string(project.path().join("runs.log")).unwrap();
    let mut open: HashMap<String, Vec<f64>> = HashMap::new();
    let mut done: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    for line in log.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let (what, cell, at) = (
            parts[0],
            parts[1].to_owned(),
            parts[2].parse::<f64>().unwrap(),
        );
        match what {
            "start" => open.entry(cell).or_default().push(at),
            _ => {
                let started = open.get_mut(&cell).and_then(Vec::pop).unwrap();
                done.entry(cell).or_default().push((started, at));
            }
        }
    }
    assert!(
        open.values().all(Vec::is_empty),
        "a runner never ended: {log}"
    );
    done
}

async fn overlapping_backfills_never_run_a_cell_twice_at_once(postgres: bool) {
    let Some(state) = State::new(postgres).await else {
        return;
    };
    let project = Project::new();
    logged_phase(&project);
    // The state store must exist before two processes race to create it.
    let migrated = state.command(&project, &["migrate"]).output().unwrap();
    assert_eq!(code(&migrated), 0, "{}", stderr(&migrated));
    let first = state
        .command(&project, &backfill("2024-03-01", "2024-03-08"))
        .output();
    let second = state
        .command(&project, &backfill("2024-03-04", "2024-03-12"))
        .output();
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| first);
        std::thread::sleep(Duration::from_millis(300));
        let second = scope.spawn(|| second);
        (first.join().unwrap(), second.join().unwrap())
    });
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    let runs = executions(&project);
    assert_eq!(runs.len(), 12, "{runs:?}");
    for (cell, mut times) in runs {
        times.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in times.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "{cell} ran twice at the same time: {times:?}"
            );
        }
    }
    state.close().await;
}

#[tokio::test]
async fn overlapping_backfills_never_run_a_cell_twice_at_once_sqlite() {
    overlapping_backfills_never_run_a_cell_twice_at_once(false).await;
}

#[tokio::test]
async fn overlapping_backfills_never_run_a_cell_twice_at_once_postgres() {
    overlapping_backfills_never_run_a_cell_twice_at_once(true).await;
}

/// A sink that keeps the highest `GAPLESS_ATTEMPT_TOKEN` per `GAPLESS_CELL_KEY` and rejects
/// (exit 1) a write with a token not above it: what a runner does for exactly-once effects.
#[tokio::test]
async fn fencing_tokens_grow_across_runs() {
    let project = Project::new();
    project.write(
        "sink.py",
        r#"import os, sqlite3, sys
db = sqlite3.connect("sink.db", timeout=30)
db.execute("CREATE TABLE IF NOT EXISTS sink (cell TEXT PRIMARY KEY, token INTEGER)")
key, token = os.environ["GAPLESS_CELL_KEY"], int(os.environ["GAPLESS_ATTEMPT_TOKEN"])
row = db.execute("SELECT token FROM sink WHERE cell = ?", (key,)).fetchone()
if row is not None and row[0] >= token:
    sys.exit(f"rejected: token {token} for {key}, already {row[0]}")
db.execute("INSERT INTO sink VALUES (?, ?) ON CONFLICT (cell) DO UPDATE SET token = excluded.token", (key, token))
db.commit()
with open("keys.log", "a") as log:
    log.write(f"{key} {token}\n")
os.makedirs("out", exist_ok=True)
open(os.path.join("out", os.environ["GAPLESS_DATE"]), "w").write("x")
"#,
    );
    project.count_script();
    project.write(
        "gapless.toml",
        r#"
[pipeline]
name = "sink"
start = "2024-03-01"

[[phase]]
id = 1
name = "load"
run.command = ["python3", "sink.py"]
check.command = ["bin/count.sh"]
retries = 0
"#,
    );
    let state = State::new(false).await.unwrap();
    for _ in 0..3 {
        let mut args = backfill("2024-03-01", "2024-03-03").to_vec();
        args.push("--force");
        let output = state.command(&project, &args).output().unwrap();
        assert_eq!(code(&output), 0, "{}", stderr(&output));
    }
    let log = std::fs::read_to_string(project.path().join("keys.log")).unwrap();
    let mut by_key: HashMap<&str, Vec<i64>> = HashMap::new();
    for line in log.lines() {
        let (key, token) = line.split_once(' ').unwrap();
        by_key.entry(key).or_default().push(token.parse().unwrap());
    }
    assert_eq!(by_key.len(), 3, "{log}");
    assert_eq!(by_key["sink/1/2024-03-02"].len(), 3, "{log}");
    for tokens in by_key.values() {
        assert!(tokens.windows(2).all(|w| w[1] > w[0]), "{log}");
    }
}
