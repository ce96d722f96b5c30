//! Runs `serve` starts on request: backfills (`POST /backfills`) and heals (`POST /scan-gaps`
//! with `heal`), recorded as started through the API so that the next `serve` resumes them.

use std::sync::Arc;

use gapless_core::plan::{Plan, Request};
use gapless_runtime::heal::{plan_heal, start_heal};
use gapless_runtime::lifecycle::{self, Scan};
use gapless_store::{RunId, RunKind, StoreError};
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

/// Heals the healable gaps of `scan` in the background: what it started, as JSON (`None` when
/// there was nothing to heal).
pub(crate) async fn heal(app: &Arc<App>, scan: &Scan) -> anyhow::Result<Option<Value>> {
    let context = app.context();
    let Some(heal) = plan_heal(&context, &app.store, scan, false).await? else {
        return Ok(None);
    };
    if heal.plan.tasks.is_empty() && heal.plan.blocked.is_empty() {
        return Ok(None);
    }
    let run_id = start_heal(
        &context,
        &app.store,
        &heal,
        &app.owner,
        Some(("via", "api")),
    )
    .await?;
    app.execute(run_id.clone(), RunKind::Heal, None);
    Ok(Some(json!({
        "run_id": run_id,
        "gaps": heal.gap_ids.len(),
        "tasks": heal.plan.tasks.len(),
        "cells": heal.plan.cell_count(),
        "too_old": heal.too_old,
        "gave_up": heal.gave_up,
    })))
}
