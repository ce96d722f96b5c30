//! Healing the gaps a scan found (SPEC.md, Semantics 6 and 7): the healable gaps (open, young
//! enough, not failed too often) run in dependency order with everything downstream of them,
//! as one run of kind `heal`; their ledger rows go `pending → triggered → complete | failed`.

use std::collections::BTreeSet;

use gapless_core::dates::{Date, DateRange};
use gapless_core::plan::{Plan, Request};
use gapless_core::spec::PhaseId;
use gapless_store::{GapFilter, GapStatus, RunId, RunKind, Store, StoreError};

use crate::context::Context;
use crate::lifecycle::{self, LifecycleError, Scan};
use crate::owner::Owner;

/// What a heal will run.
#[derive(Debug)]
pub struct HealPlan {
    /// The request planned: the healable gaps' dates (and the windows downstream of them) in
    /// their phases and every phase downstream.
    pub request: Request,
    /// The plan.
    pub plan: Plan,
    /// The ledger rows it heals.
    pub gap_ids: Vec<i64>,
    /// Open gaps older than `auto_heal_max_age`, left for a person (`heal --include-old`).
    pub too_old: usize,
    /// Open gaps that failed `max_attempts` times.
    pub gave_up: usize,
}

/// Chooses the healable gaps among those `scan` found and plans them. `None` when there is
/// nothing to heal. `include_old` heals gaps of any age.
pub async fn plan_heal(
    context: &Context,
    store: &Store,
    scan: &Scan,
    include_old: bool,
) -> Result<Option<HealPlan>, LifecycleError> {
    let healing = &context.spec.healing;
    let max_age = i64::try_from(healing.auto_heal_max_age.as_secs() / 86_400).unwrap_or(i64::MAX);
    let found: BTreeSet<(u32, Date)> = scan
        .gaps
        .iter()
        .map(|gap| (gap.phase_to.0, gap.date))
        .collect();
    let (mut too_old, mut gave_up) = (0, 0);
    let mut gap_ids = Vec::new();
    let mut cells: Vec<(PhaseId, Date)> = Vec::new();
    for row in store.gaps(GapFilter::Open).await? {
        let Ok(phase) = u32::try_from(row.phase_to) else {
            continue;
        };
        if !found.contains(&(phase, row.partition_date)) {
            continue;
        }
        if !matches!(row.healing_status, GapStatus::Pending | GapStatus::Failed) {
            continue;
        }
        if row.attempts >= i64::from(healing.max_attempts) {
            gave_up += 1;
            continue;
        }
        if row.gap_age_days > max_age && !include_old {
            too_old += 1;
            continue;
        }
        gap_ids.push(row.id);
        cells.push((PhaseId(phase), row.partition_date));
    }
    let (Some(first), Some(last)) = (
        cells.iter().map(|c| c.1).min(),
        cells.iter().map(|c| c.1).max(),
    ) else {
        return Ok(None);
    };
    // The gaps' phases and every phase downstream of them, whose windows reach
    // `max lookback` days past the last gap.
    let mut phases: BTreeSet<PhaseId> = cells.iter().map(|c| c.0).collect();
    let mut frontier: Vec<PhaseId> = phases.iter().copied().collect();
    while let Some(phase) = frontier.pop() {
        for dependent in context.spec.dependents(phase) {
            if dependent.run.is_some() && phases.insert(dependent.id) {
                frontier.push(dependent.id);
            }
        }
    }
    phases.retain(|id| context.spec.phase(*id).is_some_and(|p| p.run.is_some()));
    let reach = context.spec.max_total_lookback();
    let end = last
        .checked_add_signed(chrono::Duration::days(reach))
        .map_or(context.today, |end| end.min(context.today));
    let request = Request {
        range: DateRange::new(first, end.max(first)).unwrap_or_else(|_| DateRange::single(first)),
        phases,
        force: false,
    };
    let plan = lifecycle::plan(context, &request).await?;
    Ok(Some(HealPlan {
        request,
        plan,
        gap_ids,
        too_old,
        gave_up,
    }))
}

/// Records `heal` as a run owned by `owner` and marks its gaps `triggered` by it.
pub async fn start_heal(
    context: &Context,
    store: &Store,
    heal: &HealPlan,
    owner: &Owner,
    request_extra: Option<(&str, &str)>,
) -> Result<RunId, StoreError> {
    let run_id = lifecycle::create_run_with(
        store,
        &context.spec,
        &heal.request,
        &heal.plan,
        RunKind::Heal,
        owner,
        request_extra,
    )
    .await?;
    store.trigger_gaps(&heal.gap_ids, &run_id).await?;
    Ok(run_id)
}

/// Records how heal run `run_id` ended for its gaps: (healed, failed).
pub async fn finish_heal(store: &Store, run_id: &RunId) -> Result<(usize, usize), StoreError> {
    store.finish_heal(run_id).await
}
