//! The command runner against real processes.

use std::time::{Duration, Instant};

use gapless_connect::{CancellationToken, CommandSpec, RunError, resolve_program, run_command};

use crate::support::{assert_gone_soon, read_pid, script, wait_for_pid};

fn spec(dir: &std::path::Path, argv: &[&str], timeout: Duration) -> CommandSpec {
    CommandSpec {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        cwd: dir.to_owned(),
        env: vec![("GAPLESS_DATE".into(), "2024-01-15".into())],
        timeout,
        log_path: None,
        cancel: CancellationToken::new(),
    }
}

#[tokio::test]
async fn success_logs_everything_and_keeps_tails() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "job.sh",
        r#"echo "date=$GAPLESS_DATE arg=$1 cwd=$(pwd)"
i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done
echo "to stderr" >&2"#,
    );
    let log = dir.path().join("logs/run-1/job.log");
    let spec = CommandSpec {
        log_path: Some(log.clone()),
        ..spec(
            dir.path(),
            &["./job.sh", "2024-01-15; rm -rf /"],
            Duration::from_secs(20),
        )
    };
    let outcome = run_command(&spec).await.unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    // Arguments reach the program as-is, with no shell in between. (stdout and stderr are two
    // pipes read as their data comes: the log keeps each stream's order, not their interleaving,
    // so the line is looked for, not expected first.)
    let first = format!(
        "date=2024-01-15 arg=2024-01-15; rm -rf / cwd={}",
        cwd.display()
    );
    assert!(
        logged.lines().any(|line| line == first),
        "{}",
        &logged[..200.min(logged.len())]
    );
    assert!(
        logged.find(&first) < logged.find("line 0\n"),
        "stdout's order is kept in the log"
    );
    assert!(logged.contains("line 1999\n") && logged.contains("to stderr\n"));
    // The tail is the end of stdout, cut to about 4 KiB.
    assert!(
        outcome.stdout_tail.ends_with("line 1999\n"),
        "{}",
        outcome.stdout_tail
    );
    assert!(outcome.stdout_tail.starts_with('…') && outcome.stdout_tail.len() <= 4100);
    assert_eq!(outcome.stderr_tail, "to stderr\n");

    // A second run appends to the same log.
    run_command(&spec).await.unwrap();
    let logged_twice = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged_twice.len(), 2 * logged.len());
}

#[tokio::test]
async fn failure_carries_the_stderr_tail() {
    let dir = tempfile::tempdir().unwrap();
    let error = run_command(&spec(
        dir.path(),
        &[
            "sh",
            "-c",
            "echo working; echo 'boom: table missing' >&2; exit 3",
        ],
        Duration::from_secs(20),
    ))
    .await
    .unwrap_err();
    match &error {
        RunError::Failed { code, stderr_tail } => {
            assert_eq!(*code, 3);
            assert_eq!(stderr_tail, "boom: table missing\n");
        }
        other => panic!("expected a failed exit, got {other:?}"),
    }
    assert!(error.is_retryable());
    assert_eq!(
        error.to_string(),
        "command exited with status 3: boom: table missing"
    );

    let error = run_command(&spec(
        dir.path(),
        &["sh", "-c", "kill -9 $$"],
        Duration::from_secs(20),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(error, RunError::Signaled { signal: 9, .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    // The shell and its background child both ignore SIGTERM, so only the SIGKILL after the
    // grace period ends them.
    let started = Instant::now();
    let error = run_command(&spec(
        dir.path(),
        &[
            "sh",
            "-c",
            "trap '' TERM; echo $$ > leader.pid; sleep 100 & echo $! > child.pid; wait",
        ],
        Duration::from_millis(700),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(error, RunError::Timeout { after } if after == Duration::from_millis(700)),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_gone_soon(read_pid(&dir.path().join("leader.pid"))).await;
    assert_gone_soon(read_pid(&dir.path().join("child.pid"))).await;

    // Without the trap, SIGTERM alone ends the group quickly.
    let started = Instant::now();
    let error = run_command(&spec(
        dir.path(),
        &["sh", "-c", "sleep 100 & echo $! > child2.pid; wait"],
        Duration::from_millis(500),
    ))
    .await
    .unwrap_err();
    assert!(matches!(error, RunError::Timeout { .. }), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_gone_soon(read_pid(&dir.path().join("child2.pid"))).await;
}

#[tokio::test]
async fn processes_left_behind_do_not_hold_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let outcome = run_command(&spec(
        dir.path(),
        &["sh", "-c", "sleep 100 & echo $! > straggler.pid; echo done"],
        Duration::from_secs(30),
    ))
    .await
    .unwrap();
    assert_eq!(outcome.stdout_tail, "done\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_gone_soon(read_pid(&dir.path().join("straggler.pid"))).await;
}

#[tokio::test]
async fn cancel_terminates_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        &["sh", "-c", "sleep 100 & echo $! > child.pid; wait"],
        Duration::from_secs(60),
    );
    let cancel = spec.cancel.clone();
    let pid_file = dir.path().join("child.pid");
    let canceller = async {
        // Cancel once the child is running.
        let pid = wait_for_pid(&pid_file).await;
        cancel.cancel();
        pid
    };
    let started = Instant::now();
    let (result, pid) = tokio::join!(run_command(&spec), canceller);
    let error = result.unwrap_err();
    assert!(matches!(error, RunError::Cancelled), "{error:?}");
    assert!(!error.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_gone_soon(pid).await;

    // A token cancelled before the start runs nothing.
    let error = run_command(&spec).await.unwrap_err();
    assert!(matches!(error, RunError::Cancelled), "{error:?}");
}

#[tokio::test]
async fn missing_programs_fail_to_spawn_for_good() {
    let dir = tempfile::tempdir().unwrap();
    for program in ["gapless-no-such-program", "./missing.sh", "bin/missing"] {
        let error = run_command(&spec(dir.path(), &[program], Duration::from_secs(5)))
            .await
            .unwrap_err();
        match &error {
            RunError::Spawn {
                program: named,
                source,
            } => {
                assert_eq!(named, program);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{source}");
            }
            other => panic!("{program}: expected a spawn error, got {other:?}"),
        }
        assert!(!error.is_retryable());
        assert!(resolve_program(program, dir.path()).is_err());
    }
    let error = run_command(&spec(dir.path(), &[], Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(matches!(error, RunError::Spawn { .. }), "{error:?}");

    // Pre-flight resolution: PATH for bare names, the working directory for paths.
    assert!(resolve_program("sh", dir.path()).unwrap().is_absolute());
    let job = script(dir.path(), "job.sh", "true");
    assert_eq!(
        resolve_program("./job.sh", dir.path()).unwrap(),
        dir.path().join("./job.sh")
    );
    assert_eq!(
        resolve_program(job.to_str().unwrap(), std::path::Path::new("/")).unwrap(),
        job
    );
}

#[tokio::test]
async fn dropping_the_run_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        &["sh", "-c", "sleep 100 & echo $! > child.pid; wait"],
        Duration::from_secs(60),
    );
    let pid_file = dir.path().join("child.pid");
    // The run is dropped as soon as its grandchild exists, as an aborted task's would be.
    let pid = tokio::select! {
        result = run_command(&spec) => panic!("the run ended by itself: {result:?}"),
        pid = wait_for_pid(&pid_file) => pid,
    };
    assert_gone_soon(pid).await;
}

/// A program still open for writing somewhere (a script generated a moment ago, its file
/// descriptor inherited by a child another thread forked) cannot be executed (`ETXTBSY`) until
/// that descriptor closes; the runner waits briefly for it instead of failing the task.
#[tokio::test]
async fn a_program_busy_for_a_moment_still_runs() {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.sh");
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&path)
        .unwrap();
    writer.write_all(b"#!/bin/sh\necho ran\n").unwrap();
    writer.flush().unwrap();
    // Still open for writing: executing it now fails with ETXTBSY.
    let busy = std::process::Command::new(&path).status().unwrap_err();
    assert_eq!(busy.raw_os_error(), Some(26), "{busy}");
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(writer);
    });
    let outcome = run_command(&spec(dir.path(), &["./fresh.sh"], Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(outcome.stdout_tail, "ran\n");
    closer.join().unwrap();
}
