//! Runs `serve` starts on request: backfills (`POST /backfills`) and heals (`POST /scan-gaps`
//! with `heal`), recorded as started through the API so that the next `serve` resumes them.

use std::sync::Arc;

use gapless_core::plan::{Plan, Request};
use gapless_runtime::heal::{Starter, Why, decide, record_alerts, start_heal};
use gapless_runtime::lifecycle::{self, Scan};
use gapless_store::{Fence, RunId, RunKind, StoreError};
use serde_json::{Value, json};

use crate::app::App;

/// Records `plan` as a run of `kind` owned by this `serve`, marked `"via": "api"`.
pub(crate) async fn create_api_run(
    app: &App,
    request: &Request,
    plan: &Plan,
    kind: RunKind,
) -> Result<RunId, StoreError> {
    lifecycle::create_run_with(
        &app.store,
        &app.spec,
        request,
        plan,
        kind,
        &app.owner,
        Some(("via", "api")),
    )
    .await
}

/// Applies the healing policy to `scan`: records the alerts (delivered by the alerts outbox)
/// and starts the heal in the background. What it did, as JSON. `fence`: the leader lease the
/// alerts and the heal run are recorded under, when this is the scheduler's tick.
pub(crate) async fn heal(
    app: &Arc<App>,
    scan: &Scan,
    include_old: bool,
    fence: Option<&Fence>,
) -> anyhow::Result<Value> {
    let context = app.context();
    let decision = decide(&context, &app.store, scan, include_old).await?;
    let alerted = record_alerts(&context, &app.store, &decision, fence).await?;
    app.metrics.heals("alerted", alerted as u64);
    if alerted > 0 {
        app.wake();
    }
    let left: Vec<Value> = decision
        .left
        .iter()
        .map(|left| {
            json!({
                "phase": left.phase.0,
                "date": left.date,
                "age_days": left.age_days,
                "why": match &left.why {
                    Why::TooOld => "too_old",
                    Why::GaveUp { .. } => "gave_up",
                },
                "alerted_now": left.alert_now,
            })
        })
        .collect();
    let mut healed = Value::Null;
    if let Some(heal) = &decision.heal
        && !(heal.plan.tasks.is_empty() && heal.plan.blocked.is_empty())
    {
        let starter = Starter {
            owner: &app.owner,
            extra: Some(("via", "api")),
            fence,
        };
        let run_id = start_heal(&context, &app.store, heal, starter).await?;
        app.execute(run_id.clone(), RunKind::Heal, None);
        healed = json!({
            "run_id": run_id,
            "gaps": heal.cells.len(),
            "tasks": heal.plan.tasks.len(),
            "cells": heal.plan.cell_count(),
        });
    }
    Ok(json!({
        "healed": healed,
        "alerted": alerted,
        "left": left,
        "in_progress": decision.in_progress,
    }))
}
