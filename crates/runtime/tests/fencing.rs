//! RELIABILITY.md §2.2 / T7 in miniature: a task whose lease is taken over (here by a resume
//! that fenced it) stops its runner — the whole process group — and records nothing.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::sync::Arc;
use std::time::Duration;

mod common;

use gapless_core::dates::parse_date;
use gapless_core::spec::{NoFiles, parse};
use gapless_runtime::context::Context;
use gapless_runtime::executor::{Execution, Options, Quiet, execute};
use gapless_store::TaskState;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_task_kills_its_runner_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("work.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nsleep 300 &\necho $! > child.pid\nwait\ntouch finished\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spec = parse(
        r#"
[pipeline]
name = "fence"
start = "2024-01-01"

[[phase]]
id = 1
name = "work"
run.command = ["./work.sh"]
check.command = ["true"]
"#,
        &NoFiles,
    )
    .unwrap();
    let today = parse_date("2024-01-01").unwrap();
    let context = Context::connect(
        spec,
        dir.path(),
        dir.path().join("logs"),
        today.and_time(chrono::NaiveTime::MIN),
    )
    .await
    .unwrap();
    let (store, run_id, task) = common::one_task_run(dir.path(), &context.spec, today).await;
    let (task_id, first_epoch) = (task.id, task.epoch);
    let tasks = vec![task];
    let execution = Execution {
        context: Arc::new(context),
        store: store.clone(),
        run_id: run_id.clone(),
        options: Options {
            jobs: 1,
            lease_ttl: Duration::from_millis(600),
            ..Options::default()
        },
        observer: Arc::new(Quiet),
        cancel: CancellationToken::new(),
    };
    let running = tokio::spawn(execute(execution, tasks));

    // Wait for the runner, then take the task over as a resume would.
    let pid_file = dir.path().join("child.pid");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !pid_file.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runner never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fenced = store.requeue_running(&run_id).await.unwrap();
    assert_eq!(fenced, vec![task_id]);

    let outcome = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.tasks_interrupted, 1, "{outcome:?}");
    assert_eq!(outcome.tasks_complete, 0);
    // The runner's whole process group is gone, and it never finished.
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        gapless_testkit::process_gone(&pid),
        "the runner's child survived losing the lease"
    );
    assert!(!dir.path().join("finished").exists());
    // The stale holder recorded nothing: the task is pending for the new holder, no cell
    // complete, no event.
    let task = store.task(task_id).await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Pending);
    assert!(task.lease_epoch > first_epoch + 1);
    assert_eq!(store.count_events(1, today).await.unwrap(), 0);
}
