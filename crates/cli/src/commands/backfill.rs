//! `gapless backfill`: plan, pre-flight, persist the run, execute with gates, summarize.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context as _;
use gapless_core::plan::{Plan, Request};
use gapless_core::render::plan_text;
use gapless_runtime::context::Context;
use gapless_runtime::executor::{self, ExecTask, Execution, Options, Outcome};
use gapless_runtime::preflight;
use gapless_store::{NewRun, NewTask, NewTaskState, RunId, RunKind, RunState, Store, TaskState};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cli::{BackfillArgs, Global};
use crate::commands::plan::{make_plan, request};
use crate::commands::print_json;
use crate::exit::{Exit, UsageError};
use crate::progress::Progress;
use crate::settings::{self, Loaded};

/// Plans over this many tasks ask for confirmation on a terminal.
const CONFIRM_ABOVE: usize = 1_000;

pub(crate) async fn run(global: &Global, args: &BackfillArgs) -> anyhow::Result<Exit> {
    if args.jobs == 0 {
        return Err(UsageError::new("--jobs must be at least 1").into());
    }
    let loaded = settings::load(global)?;
    let request = request(&loaded, &args.plan)?;
    let context = loaded.context().await?;
    let store = loaded.store().await?;

    // Pre-flight: every program and SQL text, before anything runs.
    let report = preflight::check(&context).await;
    if !report.problems.is_empty() {
        let lines: Vec<String> = report
            .problems
            .iter()
            .map(|p| format!("  {}: {}", p.subject, p.message))
            .collect();
        anyhow::bail!("pre-flight failed:\n{}", lines.join("\n"));
    }
    let plan = make_plan(&context, &request).await?;
    if !global.quiet {
        eprint!("{}", plan_text(&plan));
    }
    if plan.tasks.len() > CONFIRM_ABOVE
        && !args.yes
        && std::io::stdin().is_terminal()
        && !confirm(plan.tasks.len())?
    {
        eprintln!("nothing ran");
        return Ok(Exit::Usage);
    }
    let run_id = create_run(&store, &loaded, &request, &plan, RunKind::Backfill).await?;
    if !global.quiet {
        eprintln!("run {run_id}: {} tasks", plan.tasks.len());
    }
    let tasks = executor::load_tasks(&store, &loaded.spec, &run_id).await?;
    execute_run(&loaded, context, store, run_id, tasks, args.jobs, global).await
}

fn confirm(tasks: usize) -> anyhow::Result<bool> {
    eprint!("run {tasks} tasks? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Persists the plan as a run: its tasks, and the blocked cells as blocked tasks, in one
/// transaction.
pub(crate) async fn create_run(
    store: &Store,
    loaded: &Loaded,
    request: &Request,
    plan: &Plan,
    kind: RunKind,
) -> anyhow::Result<RunId> {
    let mut tasks: Vec<NewTask> = plan
        .tasks
        .iter()
        .map(|task| NewTask {
            phase: i64::from(task.phase.0),
            start: task.range.start(),
            end: task.range.end(),
            dates: task.dates.clone(),
            state: NewTaskState::Pending,
            error: None,
        })
        .collect();
    tasks.extend(plan.blocked.iter().map(|blocked| NewTask {
        phase: i64::from(blocked.cell.phase.0),
        start: blocked.cell.date,
        end: blocked.cell.date,
        dates: vec![blocked.cell.date],
        state: NewTaskState::Blocked,
        error: Some(blocked.describe()),
    }));
    let run = NewRun {
        kind,
        pipeline: loaded.spec.name.clone(),
        request: json!({
            "start_date": request.range.start(),
            "end_date": request.range.end(),
            "phases": request.phases.iter().map(|p| p.0).collect::<Vec<_>>(),
            "force": request.force,
        }),
        tasks,
    };
    store
        .create_run(&run)
        .await
        .context("cannot record the run")
}

/// Executes with progress and Ctrl-C handling, records the run's end, prints the summary.
pub(crate) async fn execute_run(
    loaded: &Loaded,
    context: Context,
    store: Store,
    run_id: RunId,
    tasks: Vec<ExecTask>,
    jobs: usize,
    global: &Global,
) -> anyhow::Result<Exit> {
    let cancel = CancellationToken::new();
    let interrupt = cancel.clone();
    let signals = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: stopping running tasks (resume with `gapless resume`)");
            interrupt.cancel();
        }
    });
    let progress = Arc::new(Progress::new(&loaded.spec, &tasks, global.quiet));
    let started = std::time::Instant::now();
    let cells_total: usize = tasks.iter().map(|t| t.dates.len()).sum();
    let execution = Execution {
        context: Arc::new(context),
        store: store.clone(),
        run_id: run_id.clone(),
        options: Options {
            jobs,
            crash_at: loaded.crash_at.clone(),
            ..Options::default()
        },
        observer: progress.clone(),
        cancel: cancel.clone(),
    };
    let outcome = executor::execute(execution, tasks).await;
    signals.abort();
    progress.finish();
    let outcome: Outcome = outcome.context("the run stopped")?;
    let state = if outcome.interrupted {
        RunState::Interrupted
    } else if outcome.is_success() {
        RunState::Succeeded
    } else {
        RunState::Failed
    };
    store.finish_run(&run_id, state).await?;
    let exit = match state {
        RunState::Succeeded => Exit::Success,
        RunState::Interrupted => Exit::Interrupted,
        _ => Exit::Incomplete,
    };
    let elapsed = started.elapsed();
    if global.json {
        let records = store.tasks(&run_id).await?;
        let failures: Vec<_> = records
            .iter()
            .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Blocked))
            .map(|t| json!({"phase": t.phase, "start": t.start, "end": t.end, "state": t.state, "error": t.error}))
            .collect();
        print_json(&json!({
            "run_id": run_id,
            "state": state,
            "exit_code": match exit { Exit::Success => 0, Exit::Incomplete => 1, Exit::Interrupted => 130, Exit::Usage => 2, Exit::Infrastructure => 3 },
            "elapsed_seconds": elapsed.as_secs_f64(),
            "cells": cells_total,
            "progress": store.run_progress(&run_id).await?,
            "outcome": outcome,
            "problems": failures,
        }))?;
    } else if !global.quiet {
        eprintln!(
            "run {run_id} {}: {} tasks complete, {} failed, {} blocked{} in {:.1}s",
            state,
            outcome.tasks_complete,
            outcome.tasks_failed,
            outcome.tasks_blocked,
            if outcome.tasks_interrupted > 0 {
                format!(", {} not finished", outcome.tasks_interrupted)
            } else {
                String::new()
            },
            elapsed.as_secs_f64()
        );
        if state == RunState::Failed {
            let records = store.tasks(&run_id).await?;
            for task in records
                .iter()
                .filter(|t| t.state == TaskState::Failed)
                .take(10)
            {
                eprintln!(
                    "  failed  phase {} {}..{}: {}",
                    task.phase,
                    task.start,
                    task.end,
                    task.error.as_deref().unwrap_or("")
                );
            }
            eprintln!("  `gapless runs show {run_id}` lists every failed and blocked task");
        }
    }
    Ok(exit)
}
