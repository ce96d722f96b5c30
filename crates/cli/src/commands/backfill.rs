//! `gapless backfill`: plan, pre-flight, persist the run, execute with gates, summarize.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context as _;
use gapless_core::dates::{Date, DateRange};
use gapless_core::plan::{Plan, Request};
use gapless_core::render::{counted, plan_text, thousands};
use gapless_core::spec::PhaseId;
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
    let (_, exit) = run_plan(&loaded, context, store, &request, &plan, args.jobs, global).await?;
    Ok(exit)
}

/// Records `plan` as a backfill run owned by this process, then executes it
/// ([`execute_run`]): what `backfill` and the demo do after planning.
pub(crate) async fn run_plan(
    loaded: &Loaded,
    context: Context,
    store: Store,
    request: &Request,
    plan: &Plan,
    jobs: usize,
    global: &Global,
) -> anyhow::Result<(RunId, Exit)> {
    let run_id = lifecycle::create_run(
        &store,
        &loaded.spec,
        request,
        plan,
        RunKind::Backfill,
        &loaded.owner,
    )
    .await
    .context("cannot record the run")?;
    if !global.quiet {
        note(format_args!(
            "run {run_id}: {}",
            counted(plan.tasks.len(), "task")
        ));
    }
    let tasks = executor::load_tasks(&store, &loaded.spec, &run_id).await?;
    let exit = execute_run(loaded, context, store, run_id.clone(), tasks, jobs, global).await?;
    Ok((run_id, exit))
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
    let context = Arc::new(context);
    let finished = lifecycle::execute_run(
        Arc::clone(&context),
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
        let waits = if outcome.tasks_failed == 0 && outcome.tasks_blocked > 0 {
            source_waits(&context, &store, &run_id).await?
        } else {
            None
        };
        let mut parts = vec![format!(
            "{} complete",
            counted(outcome.tasks_complete, "task")
        )];
        if outcome.tasks_failed > 0 {
            parts.push(format!("{} failed", thousands(outcome.tasks_failed)));
        }
        match &waits {
            Some(waits) => parts.extend(waits.iter().map(|wait| {
                format!(
                    "{} {} for phase {} `{}` data on {}",
                    counted(wait.cells, "cell"),
                    if wait.cells == 1 { "waits" } else { "wait" },
                    wait.phase,
                    wait.name,
                    listed(&wait.dates)
                )
            })),
            None if outcome.tasks_blocked > 0 => {
                parts.push(format!("{} blocked", thousands(outcome.tasks_blocked)));
            }
            None => {}
        }
        if outcome.tasks_interrupted > 0 {
            parts.push(format!(
                "{} not finished",
                thousands(outcome.tasks_interrupted)
            ));
        }
        let word = match state {
            RunState::Failed if waits.is_some() => "incomplete".to_owned(),
            other => other.to_string(),
        };
        // The outcome is the answer, on stdout (so `gapless backfill … | tee` keeps it), while
        // progress went to stderr. A closed stdout must not turn the run's exit code into 0.
        let _ = writeln!(
            std::io::stdout(),
            "run {run_id} {word}: {} in {:.1}s",
            parts.join(", "),
            finished.elapsed.as_secs_f64()
        );
        if outcome.tasks_failed > 0 {
            let records = store.tasks(&run_id).await?;
            for task in records
                .iter()
                .filter(|t| t.state == TaskState::Failed)
                .take(10)
            {
                note(format_args!(
                    "  failed  phase {} {}: {}",
                    task.phase,
                    range_text(task.start, task.end),
                    task.error.as_deref().unwrap_or("")
                ));
            }
        }
        if state == RunState::Failed {
            note(format_args!(
                "  `gapless runs show {run_id}` lists every failed and blocked task"
            ));
        }
    }
    Ok(exit)
}

/// Blocked cells waiting for data of one source phase (a phase without a runner).
struct SourceWait {
    phase: PhaseId,
    name: String,
    cells: usize,
    dates: Vec<Date>,
}

/// When every blocked cell of the run waits for a source phase's data that is not there yet
/// (not for a failure), which data they wait for, per source phase; `None` otherwise. One probe
/// per phase over the blocked cells' dates.
async fn source_waits(
    context: &Context,
    store: &Store,
    run_id: &RunId,
) -> anyhow::Result<Option<Vec<SourceWait>>> {
    let blocked: Vec<_> = store
        .cells(run_id)
        .await?
        .into_iter()
        .filter(|cell| cell.state == gapless_store::CellState::Blocked)
        .collect();
    let (Some(first), Some(last)) = (
        blocked.iter().map(|c| c.date).min(),
        blocked.iter().map(|c| c.date).max(),
    ) else {
        return Ok(None);
    };
    let Ok(range) = DateRange::new(first, last) else {
        return Ok(None);
    };
    let matrix = lifecycle::matrix(context, range).await?;
    let mut waits: BTreeMap<PhaseId, (usize, BTreeSet<Date>)> = BTreeMap::new();
    for cell in &blocked {
        let phase = PhaseId(u32::try_from(cell.phase).unwrap_or(0));
        if context.spec.phase(phase).is_some_and(|p| p.run.is_none()) {
            // The source's own missing cells: the data waited for, not cells that wait.
            continue;
        }
        let Some((root, _)) = matrix.root_cause(phase, cell.date) else {
            return Ok(None);
        };
        let is_source = context
            .spec
            .phase(root.phase)
            .is_some_and(|phase| phase.run.is_none());
        if !is_source {
            return Ok(None);
        }
        let entry = waits.entry(root.phase).or_default();
        entry.0 += 1;
        entry.1.insert(root.date);
    }
    if waits.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        waits
            .into_iter()
            .map(|(phase, (cells, dates))| SourceWait {
                phase,
                name: context
                    .spec
                    .phase(phase)
                    .map_or_else(String::new, |p| p.name.clone()),
                cells,
                dates: dates.into_iter().collect(),
            })
            .collect(),
    ))
}

/// `2024-01-10, 2024-02-03 and 4 more`: up to five dates.
fn listed(dates: &[Date]) -> String {
    let shown: Vec<String> = dates.iter().take(5).map(ToString::to_string).collect();
    match dates.len().saturating_sub(5) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// `2024-01-10` for one date, `2024-01-10..2024-01-16` for more.
fn range_text(start: Date, end: Date) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}..{end}")
    }
}
