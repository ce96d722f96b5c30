//! `gapless resume`: continue an interrupted run. Tasks recorded complete never run again;
//! tasks that were running are fenced (their lease epoch bumped) and run again; pending tasks
//! whose cells already probe complete are recorded complete without running.

use std::collections::HashMap;

use gapless_core::spec::PhaseId;

use anyhow::Context as _;
use gapless_core::cells::CellState;
use gapless_core::dates::{Date, DateRange};
use gapless_runtime::executor::load_tasks;
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
    let mut tasks = load_tasks(&store, &loaded.spec, &run.id).await?;

    // Re-probe before trusting anything. Tasks blocked because a cell outside the run was not
    // complete may run now if that cell has been filled since; tasks blocked behind a failed
    // task of this run stay blocked. Cells the warehouse already holds (a runner that finished
    // just before the crash) are recorded without running again, unless the run was forced.
    let forced = run
        .request
        .get("force")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let blocked: Vec<usize> = (0..tasks.len())
        .filter(|i| tasks[*i].state == TaskState::Blocked)
        .collect();
    let probed: Vec<usize> = (0..tasks.len())
        .filter(|i| tasks[*i].state != TaskState::Complete && tasks[*i].state != TaskState::Failed)
        .collect();
    let mut adopted = 0;
    let mut unblocked = 0;
    if let (Some(start), Some(end)) = (
        probed.iter().map(|i| tasks[*i].range.start()).min(),
        probed.iter().map(|i| tasks[*i].range.end()).max(),
    ) {
        let range = DateRange::new(start, end).context("resume range")?;
        let matrix = matrix(&context, range).await?;
        let state_of = |phase, date: Date| matrix.cell(phase, date).map(|cell| cell.state);
        // Which task of this run produces each cell, to tell whether a blocked cell's root
        // cause will be produced by the run itself.
        let producer: HashMap<(PhaseId, Date), usize> = tasks
            .iter()
            .enumerate()
            .flat_map(|(i, task)| task.dates.iter().map(move |date| ((task.phase, *date), i)))
            .collect();
        let mut will_run: Vec<bool> = tasks
            .iter()
            .map(|task| task.state == TaskState::Pending)
            .collect();
        // A blocked task may run once every cell it covers is either no longer blocked, or
        // blocked only behind a cell that a task of this run (complete, pending or itself
        // released) produces. Iterate: releasing phase 3 can release phase 4 behind it.
        let mut ready: Vec<usize> = Vec::new();
        loop {
            let before = ready.len();
            for &i in &blocked {
                if will_run[i] {
                    continue;
                }
                let task = &tasks[i];
                let deps_ok = task
                    .deps
                    .iter()
                    .all(|dep| tasks[*dep].state == TaskState::Complete || will_run[*dep]);
                let cells_ok = task
                    .dates
                    .iter()
                    .all(|date| match state_of(task.phase, *date) {
                        None => false,
                        Some(CellState::Blocked) => matrix
                            .root_cause(task.phase, *date)
                            .and_then(|(root, _)| producer.get(&(root.phase, root.date)))
                            .is_some_and(|j| {
                                tasks[*j].state == TaskState::Complete || will_run[*j]
                            }),
                        Some(_) => true,
                    });
                if deps_ok && cells_ok {
                    will_run[i] = true;
                    ready.push(i);
                }
            }
            if ready.len() == before {
                break;
            }
        }
        if !ready.is_empty() {
            let ids: Vec<i64> = ready.iter().map(|i| tasks[*i].id).collect();
            unblocked = store.unblock(&run.id, &ids).await?;
            for i in &ready {
                tasks[*i].state = TaskState::Pending;
            }
        }
        for i in probed {
            if forced || tasks[i].state != TaskState::Pending {
                continue;
            }
            let task = &tasks[i];
            let complete = !task.dates.is_empty()
                && task
                    .dates
                    .iter()
                    .all(|date| state_of(task.phase, *date) == Some(CellState::Complete));
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
            "resuming run {}: {} tasks complete, {} to run ({} were running, {} unblocked, {} found complete on re-probe)",
            run.id,
            tasks
                .iter()
                .filter(|t| t.state == TaskState::Complete)
                .count(),
            remaining,
            requeued.len(),
            unblocked,
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
