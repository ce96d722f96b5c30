//! `gapless runs` and `gapless runs show RUN_ID`.

use gapless_core::render::thousands_i;
use gapless_runtime::executor;
use gapless_runtime::lifecycle::{self, ResumePreview};
use gapless_store::{RunId, RunState, TaskState};
use serde_json::json;

use crate::cli::{Global, RunsArgs, RunsCommand};
use crate::commands::{out, print_json};
use crate::exit::{Exit, UsageError};
use crate::settings;

pub(crate) async fn run(global: &Global, args: &RunsArgs) -> anyhow::Result<Exit> {
    let loaded = settings::load(global)?;
    let store = loaded.store().await?;
    match &args.show {
        None => {
            let runs = store.list_runs(args.limit.max(1)).await?;
            if global.json {
                let mut documents = Vec::new();
                for run in &runs {
                    documents
                        .push(json!({"run": run, "progress": store.run_progress(&run.id).await?}));
                }
                print_json(&documents)?;
                return Ok(Exit::Success);
            }
            if runs.is_empty() {
                out(format_args!("no runs yet\n"))?;
            }
            for run in &runs {
                let progress = store.run_progress(&run.id).await?;
                let total: i64 = progress.iter().map(|p| p.total).sum();
                let complete: i64 = progress.iter().map(|p| p.complete).sum();
                let failed: i64 = progress.iter().map(|p| p.failed).sum();
                let blocked: i64 = progress.iter().map(|p| p.blocked).sum();
                out(format_args!(
                    "{}  {:<8} {:<11} {}  {}  {}\n",
                    run.id,
                    run.kind.as_str(),
                    run.state.as_str(),
                    run.created_at.format("%Y-%m-%d %H:%M:%S"),
                    request_summary(&run.request),
                    cells_summary(&run.request, total, complete, failed, blocked),
                ))?;
            }
            Ok(Exit::Success)
        }
        Some(RunsCommand::Show { run_id }) => {
            let id = RunId::parse(run_id).map_err(|e| UsageError::new(e.to_string()))?;
            let run = store
                .run(&id)
                .await?
                .ok_or_else(|| UsageError::new(format!("no run `{id}` in the state store")))?;
            let progress = store.run_progress(&id).await?;
            let tasks = store.tasks(&id).await?;
            let preview = if run.state == RunState::Succeeded {
                None
            } else {
                let tasks = executor::load_tasks(&store, &loaded.spec, &id).await?;
                Some(lifecycle::resume_preview(&tasks))
            };
            let problems: Vec<_> = tasks
                .iter()
                .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Blocked))
                .collect();
            if global.json {
                print_json(&json!({
                    "run": run,
                    "progress": progress,
                    "problems": problems,
                    "resume": preview,
                }))?;
                return Ok(Exit::Success);
            }
            out(format_args!(
                "run {}  {}  {}  created {}  {}\n\n",
                run.id,
                run.kind,
                run.state,
                run.created_at.format("%Y-%m-%d %H:%M:%S"),
                request_summary(&run.request)
            ))?;
            if let Some(owner) = &run.owner {
                out(format_args!(
                    "executed by process {} on {} (lease until {})\n\n",
                    owner.pid,
                    owner.host,
                    owner.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
                ))?;
            }
            for phase in &progress {
                let name = loaded
                    .spec
                    .phases
                    .iter()
                    .find(|p| i64::from(p.id.0) == phase.phase)
                    .map_or("?", |p| p.name.as_str());
                out(format_args!(
                    "phase {:<3} {:<16} {:>6}/{:<6} complete  {} running  {} pending  {} failed  {} blocked\n",
                    phase.phase,
                    name,
                    phase.complete,
                    phase.total,
                    phase.running,
                    phase.pending,
                    phase.failed,
                    phase.blocked
                ))?;
            }
            if let Some(preview) = &preview {
                out(format_args!("\n{}\n", resume_text(preview)))?;
            }
            if !problems.is_empty() {
                out(format_args!("\n"))?;
                for task in problems {
                    out(format_args!(
                        "{:<8} phase {} {}..{}  {}\n",
                        task.state.as_str(),
                        task.phase,
                        task.start,
                        task.end,
                        task.error.as_deref().unwrap_or("")
                    ))?;
                }
            }
            Ok(Exit::Success)
        }
    }
}

/// `gapless resume` would: run 3 tasks (…).
fn resume_text(preview: &ResumePreview) -> String {
    if preview.total() == 0 {
        return "`gapless resume` would run nothing: every task is complete".to_owned();
    }
    let parts: Vec<String> = [
        (
            preview.rerun_running,
            "were running (fenced, then run again)",
        ),
        (preview.run_pending, "not started"),
        (preview.retry_failed, "failed (re-probed, then run again)"),
        (
            preview.after_failures,
            "blocked behind those (run once they complete)",
        ),
        (
            preview.recheck_blocked,
            "blocked by cells outside the run (run if those were filled since)",
        ),
    ]
    .into_iter()
    .filter(|(count, _)| *count > 0)
    .map(|(count, what)| format!("{count} {what}"))
    .collect();
    format!(
        "`gapless resume` would run {} task{}: {}",
        preview.total(),
        if preview.total() == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// `92 cells: 5 run and complete, 85 already complete, 2 expect nothing`: every cell the
/// request covers, the run's own and those it found complete or expecting nothing.
fn cells_summary(
    request: &serde_json::Value,
    total: i64,
    complete: i64,
    failed: i64,
    blocked: i64,
) -> String {
    let count = |key: &str| {
        request
            .get(key)
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0)
    };
    let (already, not_expected) = (count("already_complete"), count("not_expected"));
    let covered = total + already + not_expected;
    let mut parts = vec![format!("{} run and complete", thousands_i(complete))];
    if already > 0 {
        parts.push(format!("{} already complete", thousands_i(already)));
    }
    if not_expected > 0 {
        parts.push(format!("{} expect nothing", thousands_i(not_expected)));
    }
    if failed > 0 {
        parts.push(format!("{} failed", thousands_i(failed)));
    }
    if blocked > 0 {
        parts.push(format!("{} blocked", thousands_i(blocked)));
    }
    let pending = total - complete - failed - blocked;
    if pending > 0 {
        parts.push(format!("{} not run yet", thousands_i(pending)));
    }
    format!(
        "{} cell{}: {}",
        thousands_i(covered),
        if covered == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// `2024-01-01..2024-03-31 phases [2,3]`, or one date alone.
fn request_summary(request: &serde_json::Value) -> String {
    let get = |key: &str| {
        request
            .get(key)
            .map(|v| v.to_string().trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    let (start, end) = (get("start_date"), get("end_date"));
    let dates = if start == end {
        start
    } else {
        format!("{start}..{end}")
    };
    format!("{dates} phases {}", get("phases"))
}
