//! `gapless backfill`: plan, pre-flight, persist the run, execute with gates, summarize.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context as _;
use gapless_core::render::plan_text;
use gapless_runtime::context::Context;
use gapless_runtime::executor::{self, ExecTask};
use gapless_runtime::lifecycle::{self, RunOptions};
use gapless_runtime::preflight;
use gapless_store::{RunId, RunKind, RunState, Store, TaskState};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cli::{BackfillArgs, Global};
use crate::commands::plan::request;
use crate::commands::{note, print_json};
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
    let plan = lifecycle::plan(&context, &request).await?;
    if !global.quiet {
        let _ = write!(std::io::stderr(), "{}", plan_text(&plan));
    }
    if plan.tasks.len() > CONFIRM_ABOVE
        && !args.yes
        && std::io::stdin().is_terminal()
        && !confirm(plan.tasks.len())?
    {
        note(format_args!("nothing ran"));
        return Ok(Exit::Usage);
    }
    let run_id = lifecycle::create_run(
        &store,
        &loaded.spec,
        &request,
        &plan,
        RunKind::Backfill,
        &loaded.owner,
    )
    .await
    .context("cannot record the run")?;
    if !global.quiet {
        note(format_args!("run {run_id}: {} tasks", plan.tasks.len()));
    }
    let tasks = executor::load_tasks(&store, &loaded.spec, &run_id).await?;
    execute_run(&loaded, context, store, run_id, tasks, args.jobs, global).await
}

fn confirm(tasks: usize) -> anyhow::Result<bool> {
    write!(std::io::stderr(), "run {tasks} tasks? [y/N] ")?;
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Executes with progress and Ctrl-C/SIGTERM handling, through the runtime's lifecycle (which
/// records how the run ended), and prints the summary.
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
    let signals = tokio::spawn(crate::signals::cancel_on_signal(cancel.clone()));
    let progress = Arc::new(Progress::new(&loaded.spec, &tasks, global.quiet));
    let options = RunOptions {
        jobs,
        crash_at: loaded.crash_at.clone(),
        store_outage: loaded.store_outage,
        ..RunOptions::default()
    };
    let finished = lifecycle::execute_run(
        Arc::new(context),
        &store,
        &run_id,
        &loaded.owner,
        tasks,
        &options,
        progress.clone(),
        cancel,
    )
    .await;
    signals.abort();
    progress.finish();
    let finished = finished?;
    let state = finished.state;
    let outcome = &finished.outcome;
    let exit = match state {
        RunState::Succeeded => Exit::Success,
        RunState::Interrupted => Exit::Interrupted,
        _ => Exit::Incomplete,
    };
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
            "exit_code": exit.code(),
            "elapsed_seconds": finished.elapsed.as_secs_f64(),
            "cells": finished.cells,
            "progress": store.run_progress(&run_id).await?,
            "outcome": outcome,
            "problems": failures,
        }))?;
    } else if !global.quiet {
        note(format_args!(
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
            finished.elapsed.as_secs_f64()
        ));
        if state == RunState::Failed {
            let records = store.tasks(&run_id).await?;
            for task in records
                .iter()
                .filter(|t| t.state == TaskState::Failed)
                .take(10)
            {
                note(format_args!(
                    "  failed  phase {} {}..{}: {}",
                    task.phase,
                    task.start,
                    task.end,
                    task.error.as_deref().unwrap_or("")
                ));
            }
            note(format_args!(
                "  `gapless runs show {run_id}` lists every failed and blocked task"
            ));
        }
    }
    Ok(exit)
}
