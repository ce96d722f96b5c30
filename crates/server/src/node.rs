//! This `serve` as one node of several on a state store: it registers itself and renews its
//! registration by heartbeat, campaigns for the leader lease (the leader alone runs the
//! scheduler, the trigger and the alerts outbox), and takes back the work of nodes it finds
//! dead, after making sure their runners on this host are gone.
//!
//! Every lease here is `AppOptions::lease` long and renewed every third of it. A store call
//! that does not answer within a third of the lease counts as a failed renewal; a leader that
//! could not renew its lease steps down once five sixths of it have passed since the last
//! renewal, before anyone else can take it (RELIABILITY.md 2.7: "past leaders thought they were
//! continuing to win elections").

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use gapless_store::{Fence, LEADER, LeaseOutcome, NodeRecord, StoreError};
use tokio::time::Instant;

use crate::app::{App, error_chain};

/// Runs the node's heartbeat, leadership and reaper until `serve` stops; then gives up the
/// leader lease and the registration, so that another node takes over at once.
pub async fn run(app: Arc<App>) {
    let lease = app.options.lease;
    let period = lease / 3;
    let shutdown = app.shutdown_token();
    let mut held_until: Option<Instant> = None;
    loop {
        let started = Instant::now();
        keep_registered(&app, period).await;
        match tokio::time::timeout(period, campaign(&app)).await {
            Ok(Ok(Some(fence))) => {
                let before = app.fence();
                if before.as_ref().map(|f| f.term) != Some(fence.term) {
                    tracing::info!(term = fence.term, node = %app.owner.id, "leader");
                }
                held_until = Some(started + lease - lease / 6);
                app.set_leader(Some(fence));
            }
            Ok(Ok(None)) => {
                if held_until.take().is_some() {
                    tracing::warn!("another node holds the leader lease now: stepping down");
                }
                app.set_leader(None);
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error_chain(&error), "cannot renew the leader lease")
            }
            Err(_elapsed) => {
                tracing::warn!("the state store did not answer the leader lease in time")
            }
        }
        if let Err(error) = tokio::time::timeout(period, reap(&app))
            .await
            .unwrap_or(Ok(()))
        {
            tracing::warn!(error = %error_chain(&error), "cannot take back dead nodes' work");
        }
        // Until the next round, or the moment an unrenewed leadership must end.
        let mut next = started + period;
        if let Some(until) = held_until {
            next = next.min(until);
        }
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = shutdown.cancelled() => break,
        }
        if held_until.is_some_and(|until| Instant::now() >= until) {
            tracing::error!("the leader lease could not be renewed in time: stepping down");
            held_until = None;
            app.set_leader(None);
        }
    }
    // Stopping: leadership and registration go now, not when their leases lapse.
    if let Some(fence) = app.fence() {
        app.set_leader(None);
        if let Err(error) = app.store.release_lease(&fence).await {
            tracing::warn!(error = %error_chain(&error), "cannot release the leader lease");
        }
    }
    if let Err(error) = app.store.deregister_node(&app.owner.id).await {
        tracing::warn!(error = %error_chain(&error), "cannot deregister this node");
    }
}

/// Renews this node's registration, registering it again when a reaper removed it (this node
/// was cut off for longer than its lease: its tasks were given to others meanwhile, and their
/// lease epochs fence whatever it still tries to record).
async fn keep_registered(app: &App, within: Duration) {
    let lease = app.options.lease;
    let renewed =
        tokio::time::timeout(within, app.store.node_heartbeat(&app.owner.id, lease)).await;
    let registered = match renewed {
        Ok(Ok(true)) => return,
        Ok(Ok(false)) => {
            tracing::warn!(
                "this node was found dead by another and its work taken back: registering again"
            );
            tokio::time::timeout(
                within,
                app.store.register_node(&app.owner.as_store(), lease),
            )
            .await
        }
        Ok(Err(error)) => Ok(Err(error)),
        Err(elapsed) => Err(elapsed),
    };
    match registered {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(error = %error_chain(&error), "cannot renew this node's registration")
        }
        Err(_elapsed) => {
            tracing::warn!("the state store did not answer this node's heartbeat in time")
        }
    }
}

/// Takes or renews the leader lease; `None` while another live node holds it. A holder that
/// was a process of this host and is gone is taken over at once.
async fn campaign(app: &App) -> Result<Option<Fence>, StoreError> {
    let lease = app.options.lease;
    let me = &app.owner.id;
    let held_by = match app.store.acquire_lease(LEADER, me, lease, None).await? {
        LeaseOutcome::Held { fence, .. } => return Ok(Some(fence)),
        LeaseOutcome::HeldBy(current) => current,
    };
    let Some(holder) = held_by.holder.as_deref() else {
        return Ok(None);
    };
    if !app.owner.sees_dead_id(holder) {
        return Ok(None);
    }
    Ok(
        match app
            .store
            .acquire_lease(LEADER, me, lease, Some(holder))
            .await?
        {
            LeaseOutcome::Held { fence, .. } => Some(fence),
            LeaseOutcome::HeldBy(_) => None,
        },
    )
}

/// Takes back the work of dead nodes: those whose registration lapsed, and those of this host
/// whose process is gone. Their runners on this host are ended first, so nothing they started
/// runs beside whoever claims their tasks next. On a shared store, tasks whose lease lapsed
/// without their node being found dead (a `gapless backfill` that lost the store) are given
/// back too.
async fn reap(app: &App) -> Result<(), StoreError> {
    let now = Utc::now();
    let nodes = app.store.nodes().await?;
    let dead: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|node| node.id != app.owner.id)
        .filter(|node| node.expires_at < now || app.owner.sees_dead_id(&node.id))
        .collect();
    let mut given_back = 0;
    for node in dead {
        // A process of this host that is gone: its runners are ended here, and all its tasks
        // can go at once. Elsewhere only its tasks whose leases expired do.
        let gone = app.owner.sees_dead_id(&node.id);
        match gapless_runtime::owner::end_runners_of(&app.store, &node.id).await {
            Ok(0) => {}
            Ok(ended) => tracing::warn!(node = %node.id, ended, "stopped runners a dead node left"),
            Err(error) => {
                // Its tasks stay with it: handing them out while a runner may still run would
                // run a cell twice at once.
                tracing::error!(node = %node.id, error = %error_chain(&error), "cannot stop a dead node's runners; leaving its tasks");
                continue;
            }
        }
        if let Some(tasks) = app.store.reap_node(node, gone).await? {
            tracing::warn!(node = %node.id, host = %node.host, tasks = tasks.len(), "a node died: its tasks and runs were taken back");
            given_back += tasks.len();
        }
    }
    if app.shared() {
        let expired = app.store.requeue_expired(now).await?;
        if !expired.is_empty() {
            tracing::warn!(
                tasks = expired.len(),
                "tasks whose lease lapsed were given back"
            );
            given_back += expired.len();
        }
    }
    if given_back > 0 {
        app.work_added();
    }
    Ok(())
}
