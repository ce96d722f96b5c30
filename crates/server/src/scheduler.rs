//! The scheduler: runs scan + heal on `[healing] scan` (cron, UTC). A tick missed while `serve`
//! was down runs once on start, not once per missed tick; two ticks never overlap (they run one
//! after another, and a scan-and-heal from the API waits for the one in flight).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::app::{App, error_chain};

/// The tick's name in the state store's `ticks` table.
pub const TICK: &str = "healing.scan";

/// Runs the scheduler until `serve` stops. Ticks follow the wall clock; what a tick sees as
/// "now" (which cells are due, gap ages) is the app's clock.
pub async fn run(app: Arc<App>) {
    let cron = match gapless_core::spec::parse_cron(&app.spec.healing.scan) {
        Ok(cron) => cron,
        Err(error) => {
            // Validated with the pipeline file; kept as a log line rather than a panic.
            tracing::error!(%error, cron = %app.spec.healing.scan, "no scheduled scans");
            return;
        }
    };
    let shutdown = app.shutdown_token();
    loop {
        let now = Utc::now();
        match due(&app, &cron, now).await {
            Ok(true) => {
                tick(&app).await;
                if let Err(error) = app.store.save_tick(TICK, now).await {
                    tracing::warn!(error = %error_chain(&error), "cannot record the scan's tick");
                }
                continue;
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(error = %format!("{error:#}"), "scheduler"),
        }
        let wait = cron
            .find_next_occurrence(&now, false)
            .ok()
            .and_then(|next| (next - Utc::now()).to_std().ok())
            .unwrap_or(std::time::Duration::from_secs(1))
            .min(std::time::Duration::from_secs(60));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Whether a tick is due at `now`: an occurrence at or before `now` came after the last tick
/// recorded. The first `serve` on a state store starts the schedule: its first tick is the
/// next occurrence.
async fn due(app: &App, cron: &croner::Cron, now: DateTime<Utc>) -> anyhow::Result<bool> {
    let last = app.store.last_tick(TICK).await?;
    let Some(last) = last else {
        app.store.save_tick(TICK, now).await?;
        return Ok(false);
    };
    let previous = cron.find_previous_occurrence(&now, true)?;
    Ok(previous > last)
}

/// One scheduled scan and heal; failures are logged, and the next tick tries again.
async fn tick(app: &Arc<App>) {
    match scan_and_heal(app, None, false).await {
        Ok(outcome) => tracing::info!(
            found = %outcome["found"],
            healed = %outcome["healed"]["gaps"],
            alerted = %outcome["alerted"],
            "scheduled scan"
        ),
        Err(error) => tracing::warn!(error = %format!("{error:#}"), "scheduled scan failed"),
    }
}

/// Scans the last `lookback_days` (default `[healing] lookback`) and applies the healing policy:
/// what the scheduler and `POST /scan-gaps` both do, one at a time.
pub(crate) async fn scan_and_heal(
    app: &Arc<App>,
    lookback_days: Option<i64>,
    include_old: bool,
) -> anyhow::Result<Value> {
    let days = lookback_days.unwrap_or_else(|| {
        i64::try_from(app.spec.healing.lookback.as_secs().div_ceil(86_400)).unwrap_or(i64::MAX)
    });
    let _one_at_a_time = app.heal_lock.lock().await;
    let context = app.context();
    let scan = gapless_runtime::lifecycle::scan(&context, &app.store, days)
        .await
        .map_err(|error| anyhow::anyhow!(error_chain(&error)))?;
    let policy = crate::heal::heal(app, &scan, include_old).await?;
    Ok(serde_json::json!({
        "found": scan.gaps.len(),
        "healed": policy["healed"],
        "alerted": policy["alerted"],
    }))
}
