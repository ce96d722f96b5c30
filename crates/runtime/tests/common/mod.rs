//! What the runtime's integration tests share.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use gapless_core::dates::Date;
use gapless_core::spec::Spec;
use gapless_runtime::executor::{ExecTask, load_tasks};
use gapless_store::{NewRun, NewTask, NewTaskState, RunId, RunKind, Store};

/// A fresh SQLite state store in `dir` holding one backfill run of one pending task, phase 1 on
/// `day`, and that task as the executor sees it (read back with [`load_tasks`]).
pub(crate) async fn one_task_run(
    dir: &std::path::Path,
    spec: &Spec,
    day: Date,
) -> (Store, RunId, ExecTask) {
    let store = Store::connect("sqlite://state.db", dir).await.unwrap();
    store.migrate().await.unwrap();
    let run_id = store
        .create_run(&NewRun {
            kind: RunKind::Backfill,
            pipeline: spec.name.clone(),
            request: serde_json::json!({}),
            tasks: vec![NewTask {
                phase: 1,
                start: day,
                end: day,
                dates: vec![day],
                state: NewTaskState::Pending,
                error: None,
            }],
        })
        .await
        .unwrap();
    let task = load_tasks(&store, spec, &run_id).await.unwrap().remove(0);
    (store, run_id, task)
}
