//! `gapless resume`: continue an interrupted run, through the runtime's lifecycle
//! ([`lifecycle::prepare_resume`]). Tasks recorded complete never run again; tasks that were
//! running are fenced (their lease epoch bumped) and run again; pending tasks whose cells
//! already probe complete are recorded complete without running.

use gapless_core::render::{counted, thousands};
use gapless_runtime::{heal, lifecycle};
use gapless_store::{RunId, RunState, TaskState};

use crate::cli::{Global, ResumeArgs};
use crate::commands::backfill::execute_run;
use crate::commands::note;
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
        // A heal run whose process died before it recorded the heal: recorded now.
        heal::record_if_ended(&store, &run.id).await?;
        if !global.quiet {
            note(format_args!(
                "run {} already succeeded: nothing to resume",
                run.id
            ));
        }
        return Ok(Exit::Success);
    }
    let context = loaded.context().await?;
    let resumption = match lifecycle::prepare_resume(&context, &store, &run, &loaded.owner).await {
        Err(error @ lifecycle::LifecycleError::Owned { .. }) => {
            return Err(UsageError::new(error.to_string()).into());
        }
        other => other?,
    };
    let tasks = resumption.tasks;
    if !global.quiet {
        let complete = tasks
            .iter()
            .filter(|t| t.state == TaskState::Complete)
            .count();
        let to_run = tasks
            .iter()
            .filter(|t| t.state == TaskState::Pending)
            .count();
        note(format_args!(
            "resuming run {}: {} complete, {} to run ({} running, {} failed before, {} unblocked, {} found complete on re-probe)",
            run.id,
            counted(complete, "task"),
            thousands(to_run),
            thousands(resumption.requeued),
            thousands(usize::try_from(resumption.retried).unwrap_or(usize::MAX)),
            thousands(usize::try_from(resumption.unblocked).unwrap_or(usize::MAX)),
            thousands(resumption.adopted)
        ));
    }
    store
        .set_run_state(&run.id, run.version, RunState::Running)
        .await?;
    let exit = execute_run(
        &loaded,
        context,
        store.clone(),
        run.id.clone(),
        tasks,
        args.jobs,
        global,
    )
    .await?;
    // A heal run records how it went for its gaps once it ended, as `gapless heal` does.
    heal::record_if_ended(&store, &run.id).await?;
    Ok(exit)
}
