//! The scheduler: runs scan + heal on `[healing] scan` (cron, read in `[healing] timezone`). A tick missed while `serve`
//! was down runs once on start, not once per missed tick; two ticks never overlap (they run one
//! after another, and a scan-and-heal from the API waits for the one in flight). With several
//! nodes only the leader ticks, and each occurrence is taken under its term (`tick_runs`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use gapless_runtime::lifecycle::{self, Ledger, Scan};
use gapless_store::Fence;
use serde_json::Value;

use crate::app::{App, error_chain};

/// The tick's name in the state store's `ticks` table.
pub const TICK: &str = "healing.scan";

/// Runs the scheduler until `serve` stops, while this node leads: one node of several runs
/// it. Ticks follow the wall clock; what a tick sees as "now" (which cells are due, gap ages)
/// is the app's clock.
pub async fn run(app: Arc<App>) {
    let cron = match gapless_core::spec::parse_cron(&app.spec.healing.scan) {
        Ok(cron) => cron,
        Err(error) => {
            // Validated with the pipeline file; kept as a log line rather than a panic.
            tracing::error!(%error, cron = %app.spec.healing.scan, "no scheduled scans");
            return;
        }
    };
    while let Some(fence) = app.until_leader().await {
        lead(&app, &cron, &fence).await;
    }
}

/// Ticks under the leader lease `fence` until this node stops leading or `serve` stops. Each
/// occurrence is taken in the state store under the lease's term before it runs (so two
/// leaders never run one occurrence), and recorded finished after; an occurrence that an
/// older leader took and never finished (it died mid-tick) runs again.
async fn lead(app: &Arc<App>, cron: &croner::Cron, fence: &Fence) {
    let shutdown = app.shutdown_token();
    loop {
        if app.fence().as_ref() != Some(fence) {
            return;
        }
        let now = Utc::now();
        match next_tick(app, cron, fence, now).await {
            Ok(Some(at)) => {
                run_tick(app, at, fence).await;
                continue;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(error = %format!("{error:#}"), "scheduler"),
        }
        let zone = app.spec.healing.timezone;
        let wait = cron
            .find_next_occurrence(&now.with_timezone(&zone), false)
            .ok()
            .and_then(|next| (next.with_timezone(&Utc) - Utc::now()).to_std().ok())
            .unwrap_or(std::time::Duration::from_secs(1))
            .min(std::time::Duration::from_secs(60));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = app.leadership_lost() => return,
            () = shutdown.cancelled() => return,
        }
    }
}

/// Takes occurrence `at` under `fence` and runs it; a refusal (another leader took it, or this
/// one's lease moved on) runs nothing.
async fn run_tick(app: &Arc<App>, at: DateTime<Utc>, fence: &Fence) {
    match app.store.claim_tick(TICK, at, fence).await {
        Ok(Some(attempts)) => {
            if attempts > 1 {
                tracing::warn!(%at, attempts, "running a scheduled scan that a previous leader did not finish");
            }
            tick(app, fence).await;
            match app.store.finish_tick(TICK, at, fence).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(%at, "the scan's tick is fenced: this node no longer leads")
                }
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "cannot record the scan's tick")
                }
            }
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(error = %error_chain(&error), "cannot take the scan's tick"),
    }
}

/// The occurrence to run now, if any: one that a previous leader took and never finished, or
/// the latest occurrence at or before `now`, in the pipeline's time zone (`0 6 * * *` in
/// `Europe/Paris` is 06:00 Paris time, summer or winter), when it came after the last tick
/// recorded. The first `serve` on a state store starts the schedule: its first tick is the
/// next occurrence.
async fn next_tick(
    app: &App,
    cron: &croner::Cron,
    fence: &Fence,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let last = app.store.last_tick(TICK).await?;
    let Some(last) = last else {
        app.store.save_tick(TICK, now).await?;
        return Ok(None);
    };
    if let Some(unfinished) = app.store.unfinished_tick(TICK, fence.term).await?
        && unfinished >= last
    {
        return Ok(Some(unfinished));
    }
    let previous = previous_occurrence(cron, now, app.spec.healing.timezone)?;
    Ok((previous > last).then_some(previous))
}

/// The latest occurrence of `cron`, read in `zone`, at or before `now`.
fn previous_occurrence(
    cron: &croner::Cron,
    now: DateTime<Utc>,
    zone: chrono_tz::Tz,
) -> Result<DateTime<Utc>, croner::errors::CronError> {
    Ok(cron
        .find_previous_occurrence(&now.with_timezone(&zone), true)?
        .with_timezone(&Utc))
}

/// One scheduled scan and heal, under the leader lease `fence`; failures are logged, and the
/// next tick tries again. A refused (fenced) write ends the tick where it stands: the new
/// leader scans again.
async fn tick(app: &Arc<App>, fence: &Fence) {
    let days = lookback_days(app.spec.healing.lookback);
    match scan_and_heal(app, days, Some(false), app.leader_writes(fence)).await {
        Ok((scan, policy)) => {
            let policy = policy.unwrap_or_default();
            tracing::info!(
                found = scan.gaps.len(),
                healed = %policy["healed"]["gaps"],
                alerted = %policy["alerted"],
                "scheduled scan"
            );
        }
        Err(error) => tracing::warn!(error = %format!("{error:#}"), "scheduled scan failed"),
    }
}

/// Scans the last `days` days and, with `heal` (`Some(include_old)`), applies the healing
/// policy: what the scheduler and `POST /scan-gaps` both do, one at a time. The scan, and what
/// the policy did (as JSON). `fence`: the leader lease every ledger write and the heal run's
/// creation are fenced by (the scheduler's tick on a shared store); `None` for a scan asked
/// for through the API, which is no leader's work.
pub(crate) async fn scan_and_heal(
    app: &Arc<App>,
    days: i64,
    heal: Option<bool>,
    fence: Option<&Fence>,
) -> anyhow::Result<(Scan, Option<Value>)> {
    let _one_at_a_time = app.heal_lock.lock().await;
    let context = app.context();
    let started = std::time::Instant::now();
    let scan = lifecycle::scan_with(&context, &app.store, days, Ledger::Recorded { fence })
        .await
        .map_err(|error| anyhow::anyhow!(error_chain(&error)))?;
    app.metrics.scan(started.elapsed().as_secs_f64());
    app.metrics.heals("healed", scan.late_heals.healed as u64);
    app.metrics.heals("failed", scan.late_heals.failed as u64);
    let policy = match heal {
        Some(include_old) => Some(crate::heal::heal(app, &scan, include_old, fence).await?),
        None => None,
    };
    Ok((scan, policy))
}

/// Whole days in `lookback`, rounded up.
pub(crate) fn lookback_days(lookback: std::time::Duration) -> i64 {
    i64::try_from(lookback.as_secs().div_ceil(86_400)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap_or_default()
    }

    #[test]
    fn the_cron_is_read_in_the_pipelines_time_zone() {
        let cron = gapless_core::spec::parse_cron("0 6 * * *").unwrap_or_else(|e| panic!("{e}"));
        let paris = chrono_tz::Europe::Paris;
        // 06:00 in Paris is 04:00 UTC in summer and 05:00 UTC in winter.
        assert_eq!(
            previous_occurrence(&cron, utc("2024-07-01T05:30:00Z"), paris).ok(),
            Some(utc("2024-07-01T04:00:00Z"))
        );
        assert_eq!(
            previous_occurrence(&cron, utc("2024-01-10T04:30:00Z"), paris).ok(),
            Some(utc("2024-01-09T05:00:00Z"))
        );
        assert_eq!(
            previous_occurrence(&cron, utc("2024-01-10T04:30:00Z"), chrono_tz::UTC).ok(),
            Some(utc("2024-01-09T06:00:00Z"))
        );
    }
}
