//! What a runner leaves behind: its log, capped to its tail; its process group, reported when it
//! starts, ended on request, and dead with its parent even when that parent is killed with
//! SIGKILL.

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use gapless_connect::{
    CancellationToken, CommandSpec, GroupEnding, KillError, RunOptions, end_process_group,
    run_command_with,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{assert_gone_soon, script, wait_for_pid};

fn spec(dir: &std::path::Path, argv: &[&str]) -> CommandSpec {
    CommandSpec {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        cwd: dir.to_owned(),
        env: Vec::new(),
        timeout: Duration::from_secs(120),
        log_path: None,
        cancel: CancellationToken::new(),
    }
}

/// A runner printing ~50 MB leaves a log of the cap's size: a line saying how much was dropped,
/// then the end of the output, from a line boundary; no `.1` part is left.
#[tokio::test]
async fn attempt_log_keeps_the_tail_within_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "loud.sh", "seq 1 6000000\necho end");
    let log = dir.path().join("logs/attempt1.log");
    let limit = 256 * 1024;
    let options = RunOptions {
        log_limit: limit,
        ..RunOptions::default()
    };
    let outcome = run_command_with(
        &CommandSpec {
            log_path: Some(log.clone()),
            ..spec(dir.path(), &["./loud.sh"])
        },
        &options,
    )
    .await
    .unwrap();
    assert!(outcome.stdout_tail.ends_with("5999999\n6000000\nend\n"));

    let total: u64 = (1..=6_000_000u64)
        .map(|n| n.to_string().len() as u64 + 1)
        .sum::<u64>()
        + 4;
    assert!(total > 45_000_000, "{total}");
    let text = std::fs::read_to_string(&log).unwrap();
    let (header, kept) = text.split_once('\n').unwrap();
    assert!(
        text.len() as u64 <= limit + header.len() as u64 + 1,
        "{} bytes",
        text.len()
    );
    assert!(kept.len() as u64 >= limit / 2, "{} bytes kept", kept.len());
    assert_eq!(
        header,
        format!(
            "[gapless: {} bytes of earlier output dropped; the last {} bytes follow]",
            total - kept.len() as u64,
            kept.len()
        )
    );
    assert!(kept.ends_with("5999999\n6000000\nend\n"));
    // Whole lines, consecutive to the end.
    let numbers: Vec<u64> = kept
        .lines()
        .filter(|line| *line != "end")
        .map(|line| line.parse().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|pair| pair[1] == pair[0] + 1));
    assert!(!dir.path().join("logs/attempt1.log.1").exists());

    // Output within the cap is logged as it was, without a header.
    let quiet = dir.path().join("logs/attempt2.log");
    script(dir.path(), "quiet.sh", "seq 1 1000");
    run_command_with(
        &CommandSpec {
            log_path: Some(quiet.clone()),
            ..spec(dir.path(), &["./quiet.sh"])
        },
        &options,
    )
    .await
    .unwrap();
    let expected: String = (1..=1000).map(|n| format!("{n}\n")).collect();
    assert_eq!(std::fs::read_to_string(&quiet).unwrap(), expected);
}

/// The process group of a process, from /proc.
fn process_group_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// The caller learns the runner's pid and group while it runs, and can end that group.
#[tokio::test]
async fn runner_group_is_reported_at_start_and_can_be_ended() {
    let dir = tempfile::tempdir().unwrap();
    // The runner and a child it leaves running both ignore SIGTERM.
    script(
        dir.path(),
        "stubborn.sh",
        "trap '' TERM\nsleep 100 &\necho $! > child.pid\necho $$ > runner.pid\nwait",
    );
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let options = RunOptions {
        started: Some(sender),
        ..RunOptions::default()
    };
    let runner_spec = spec(dir.path(), &["./stubborn.sh"]);
    let run = tokio::spawn(async move { run_command_with(&runner_spec, &options).await });
    let started = tokio::time::timeout(Duration::from_secs(5), receiver.recv())
        .await
        .unwrap()
        .unwrap();
    let runner = wait_for_pid(&dir.path().join("runner.pid")).await;
    let child = wait_for_pid(&dir.path().join("child.pid")).await;
    assert_eq!(i32::try_from(started.pid).unwrap(), runner);
    assert_eq!(started.process_group, runner);
    assert_eq!(process_group_of(child), runner);

    let grace = Duration::from_millis(300);
    assert_eq!(
        end_process_group(started.process_group, grace)
            .await
            .unwrap(),
        GroupEnding::Killed
    );
    assert_gone_soon(child).await;
    assert_gone_soon(runner).await;
    assert!(run.await.unwrap().is_err());
    assert_eq!(
        end_process_group(started.process_group, grace)
            .await
            .unwrap(),
        GroupEnding::AlreadyGone
    );

    // A group that ends on SIGTERM.
    let mut polite = std::process::Command::new("sleep")
        .arg("100")
        .process_group(0)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let group = i32::try_from(polite.id()).unwrap();
    assert_eq!(
        end_process_group(group, Duration::from_secs(5))
            .await
            .unwrap(),
        GroupEnding::Terminated
    );
    polite.wait().unwrap();

    // Never the caller's own group, nor 0 or 1.
    let own = nix::unistd::getpgrp().as_raw();
    for group in [0, 1, -5, own] {
        assert!(
            matches!(
                end_process_group(group, grace).await,
                Err(KillError::NotARunnerGroup { .. })
            ),
            "{group}"
        );
    }
}

const HELPER_DIR: &str = "GAPLESS_TEST_ORPHAN_DIR";

/// Run by [`runner_dies_with_its_parent`] in a process of its own: starts a runner and waits.
#[tokio::test]
#[ignore = "a helper process of runner_dies_with_its_parent"]
async fn runner_parent_helper() {
    let dir = std::env::var_os(HELPER_DIR)
        .map(std::path::PathBuf::from)
        .expect("run by runner_dies_with_its_parent, which sets GAPLESS_TEST_ORPHAN_DIR");
    script(&dir, "runner.sh", "echo $$ > runner.pid\nexec sleep 100");
    run_command_with(&spec(&dir, &["./runner.sh"]), &RunOptions::default())
        .await
        .unwrap();
}

/// A process that runs a runner is killed with SIGKILL, which it cannot catch: its runner
/// dies too, instead of running on as an orphan.
#[tokio::test]
async fn runner_dies_with_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "lifetime::runner_parent_helper",
            "--test-threads=1",
        ])
        .env(HELPER_DIR, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runner = wait_for_pid(&dir.path().join("runner.pid")).await;
    // Running, and not in the test's process group nor the helper's.
    assert!(kill(Pid::from_raw(runner), None).is_ok());
    assert_eq!(process_group_of(runner), runner);
    kill(
        Pid::from_raw(i32::try_from(parent.id()).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    parent.wait().unwrap();
    assert_gone_soon(runner).await;
}
