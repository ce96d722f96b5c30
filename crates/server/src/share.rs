//! Shared work on a PostgreSQL state store: every node takes part in every run. A node with
//! room joins the runs that have tasks it can claim now (as a helper: the run's owner re-plans
//! and records how it ended), and adopts the runs nobody owns any more (their owner died or
//! stopped), as their new owner. Woken at once when work is added or given back (LISTEN/NOTIFY
//! and this node's own events), else every poll.

use std::sync::Arc;
use std::time::Duration;

use gapless_runtime::lifecycle;

use crate::app::{App, error_chain, source_of};

/// How often runs without a live owner are looked for.
const ADOPT_EVERY: Duration = Duration::from_secs(2);

/// Runs the helper and adopter until `serve` stops; on SQLite (one node) it does nothing.
pub async fn run(app: Arc<App>) {
    if !app.shared() {
        return;
    }
    let shutdown = app.shutdown_token();
    let mut woken = app.work_woken();
    let mut last_adopt = tokio::time::Instant::now();
    loop {
        if last_adopt.elapsed() >= ADOPT_EVERY {
            last_adopt = tokio::time::Instant::now();
            match app.resume_unfinished().await {
                Ok(0) => {}
                Ok(adopted) => tracing::info!(adopted, "adopted runs whose owner is gone"),
                Err(error) => tracing::warn!(error = %format!("{error:#}"), "cannot adopt runs"),
            }
        }
        if let Err(error) = help(&app).await {
            tracing::warn!(error = %error_chain(&error), "cannot look for runs to help with");
        }
        tokio::select! {
            _ = woken.changed() => {}
            () = tokio::time::sleep(app.options.poll) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Joins, as a helper, each run with claimable work that this node does not execute yet, while
/// it has help slots free.
async fn help(app: &Arc<App>) -> Result<(), gapless_store::StoreError> {
    for run_id in app.store.runs_with_work(&app.spec.name).await? {
        if app.is_engaged(&run_id) {
            continue;
        }
        let Ok(permit) = Arc::clone(&app.help_slots).try_acquire_owned() else {
            return Ok(());
        };
        let Some(engaged) = app.engage(&run_id) else {
            continue;
        };
        let Some(run) = app.store.run(&run_id).await? else {
            continue;
        };
        let helper = Arc::clone(app);
        app.runs_tracker().spawn(async move {
            let _permit = permit;
            let _engaged = engaged;
            let context = Arc::new(helper.context());
            let options = helper.run_options(source_of(run.kind));
            match lifecycle::help_run(
                context,
                &helper.store,
                &run_id,
                &helper.owner,
                &options,
                helper.observer(),
                helper.shutdown_token().child_token(),
            )
            .await
            {
                Ok(0) => {}
                Ok(ran) => tracing::info!(run = %run_id, tasks = ran, "helped with a run"),
                Err(error) => {
                    tracing::warn!(run = %run_id, error = %error_chain(&error), "cannot help with a run")
                }
            }
            helper.wake();
        });
    }
    Ok(())
}

/// Wakes this node's helpers and the trigger when any node adds or gives back work
/// (PostgreSQL `LISTEN gapless_work`), so that an idle node starts at once instead of at its
/// next poll. A lost connection is re-established with backoff (0.1 s to 5 s); meanwhile the
/// polls still find the work.
pub async fn listen(app: Arc<App>) {
    let shutdown = app.shutdown_token();
    let mut backoff = Duration::from_millis(100);
    loop {
        let listener = tokio::select! {
            listener = app.store.listen_for_work() => listener,
            () = shutdown.cancelled() => return,
        };
        let mut listener = match listener {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), ?backoff, "cannot listen for work; polling meanwhile");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            // `try_recv` reports a lost connection as `None` (and reconnects on the next call):
            // the work notified meanwhile is found by the polls.
            let received = tokio::select! {
                received = listener.try_recv() => received,
                () = shutdown.cancelled() => return,
            };
            match received {
                Ok(Some(_)) => {
                    app.work_added();
                    app.wake();
                }
                Ok(None) => {
                    tracing::warn!("lost the connection listening for work; reconnecting");
                    app.work_added();
                }
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "listening for work failed; reconnecting");
                    break;
                }
            }
        }
    }
}
