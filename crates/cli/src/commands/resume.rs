//! `gapless resume`: continue an interrupted run. Tasks recorded complete never run again;
//! tasks that were running are fenced (their lease epoch bumped) and run again; pending tasks
//! whose cells already probe complete are recorded complete without running.

use std::collections::HashMap;

use anyhow::Context as _;
use gapless_core::dates::{Date, DateRange};
use gapless_runtime::executor::tasks_from_records;
use gapless_store::{RunId, RunState, TaskState};
use serde_json::json;

use crate::cli::{Global, ResumeArgs};
use crate::commands::backfill::execute_run;
use crate::commands::matrix;
use crate::exit::{Exit, UsageError};
use crate::settings;

pub(crate) async fn run(global: &Global, args: &ResumeArgs) -> anyhow::Result<Exit> {
    if args.jobs == 0 {
        return Err(UsageError::new("--jobs must be at least 1").into());
    }
    let loaded = settings::load(global)?;
    let store = loaded.store().await?;
    let run = match &args.run_id {
        Some(id) => {
            let id = RunId::parse(id).map_err(|e| UsageError::new(e.to_string()))?;
            store
                .run(&id)
                .await?
                .ok_or_else(|| UsageError::new(format!("no run `{id}` in the state store")))?
        }
        None => store
            .latest_run()
            .await?
            .ok_or_else(|| UsageError::new("there is no run to resume"))?,
    };
    if run.state == RunState::Succeeded {
        if !global.quiet {
            eprintln!("run {} already succeeded: nothing to resume", run.id);
        }
        return Ok(Exit::Success);
    }
    let requeued = store.requeue_running(&run.id).await?;
    let context = loaded.context().await?;
    let records = store.tasks(&run.id).await?;
    let mut cells: HashMap<i64, Vec<Date>> = HashMap::new();
    for cell in store.cells(&run.id).await? {
        cells.entry(cell.task_id).or_default().push(cell.date);
    }
    let mut tasks = tasks_from_records(&loaded.spec, &records, &cells);

    // Re-probe before trusting anything: cells the warehouse already holds (a runner that
    // finished just before the crash) are recorded without running again, unless forced.
    let forced = run
        .request
        .get("force")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let pending: Vec<usize> = (0..tasks.len())
        .filter(|i| tasks[*i].state == TaskState::Pending)
        .collect();
    let mut adopted = 0;
    if !forced
        && let (Some(start), Some(end)) = (
            pending.iter().map(|i| tasks[*i].range.start()).min(),
            pending.iter().map(|i| tasks[*i].range.end()).max(),
        )
    {
        let range = DateRange::new(start, end).context("resume range")?;
        let matrix = matrix(&context, range).await?;
        for i in pending {
            let task = &tasks[i];
            let complete = !task.dates.is_empty()
                && task.dates.iter().all(|date| {
                    matrix
                        .cell(task.phase, *date)
                        .is_some_and(|c| c.state == gapless_core::cells::CellState::Complete)
                });
            if !complete {
                continue;
            }
            let counts = json!(
                task.dates
                    .iter()
                    .map(|date| {
                        let cell = matrix.cell(task.phase, *date);
                        (
                            date.to_string(),
                            json!([cell.map_or(0, |c| c.count), cell.map_or(0, |c| c.expected)]),
                        )
                    })
                    .collect::<serde_json::Map<_, _>>()
            );
            if let Some(claim) = store
                .claim(
                    task.id,
                    task.epoch,
                    "gapless-resume",
                    std::time::Duration::from_secs(60),
                )
                .await?
                && store
                    .complete(task.id, claim.epoch, &counts, "resume")
                    .await?
            {
                tasks[i].state = TaskState::Complete;
                tasks[i].epoch = claim.epoch;
                adopted += 1;
            }
        }
    }
    let remaining = tasks
        .iter()
        .filter(|t| t.state == TaskState::Pending)
        .count();
    if !global.quiet {
        eprintln!(
            "resuming run {}: {} tasks complete, {} to run ({} were running, {} found complete on re-probe)",
            run.id,
            tasks
                .iter()
                .filter(|t| t.state == TaskState::Complete)
                .count(),
            remaining,
            requeued.len(),
            adopted
        );
    }
    store
        .set_run_state(&run.id, run.version, RunState::Running)
        .await?;
    execute_run(
        &loaded,
        context,
        store,
        run.id.clone(),
        tasks,
        args.jobs,
        global,
    )
    .await
}
