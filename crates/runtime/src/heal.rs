//! The healing policy (SPEC.md, Semantics 6–8): of the gaps a scan found, the young ones are
//! healed in dependency order with everything downstream of them, as one run of kind `heal`;
//! the old ones, and those that failed `max_attempts` heals, are alerted for a person, once per
//! `realert_after`. Ledger rows go `pending → triggered → complete | failed`, or `alerted`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use gapless_core::dates::{Date, DateRange};
use gapless_core::plan::{Plan, Request};
use gapless_core::spec::PhaseId;
use gapless_store::{
    Creator, Fence, GapFilter, GapRecord, GapStatus, RunId, RunKind, RunState, Store, StoreError,
};
use serde_json::{Value, json};

use crate::context::Context;
use crate::lifecycle::{self, LifecycleError, Scan};
use crate::owner::{Owner, RUN_LEASE};

/// Why a gap is left for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Older than `auto_heal_max_age`.
    TooOld,
    /// Failed `max_attempts` heals; the last error.
    GaveUp {
        /// Heals tried.
        attempts: i64,
        /// The last one's error.
        last_error: Option<String>,
    },
}

/// A gap the policy leaves for a person.
#[derive(Debug, Clone)]
pub struct Left {
    /// Phase.
    pub phase: PhaseId,
    /// Date.
    pub date: Date,
    /// Age in days.
    pub age_days: i64,
    /// Why it is left.
    pub why: Why,
    /// Its ledger row, when the scan recorded one (a dry run may not have).
    pub gap_id: Option<i64>,
    /// Whether it is alerted now: never before, or not within `realert_after`.
    pub alert_now: bool,
}

/// What the policy decided for one scan.
#[derive(Debug)]
pub struct Decision {
    /// The heal to run, if any gap is to be healed.
    pub heal: Option<HealPlan>,
    /// The gaps left for a person.
    pub left: Vec<Left>,
    /// Gaps a heal run is already working on.
    pub in_progress: usize,
}

impl Decision {
    /// The gaps to alert about now.
    pub fn to_alert(&self) -> impl Iterator<Item = &Left> {
        self.left.iter().filter(|left| left.alert_now)
    }
}

/// What a heal will run.
#[derive(Debug)]
pub struct HealPlan {
    /// The request planned: the healed gaps' dates (and the windows downstream of them) in
    /// their phases and every phase downstream.
    pub request: Request,
    /// The plan.
    pub plan: Plan,
    /// The ledger rows it heals.
    pub gap_ids: Vec<i64>,
    /// The gaps it heals.
    pub cells: Vec<(PhaseId, Date)>,
}

/// Applies the policy to the gaps `scan` found, against the ledger as it is now. With
/// `include_old`, every gap is healed, old and given-up ones too (a person asked).
pub async fn decide(
    context: &Context,
    store: &Store,
    scan: &Scan,
    include_old: bool,
) -> Result<Decision, LifecycleError> {
    let healing = &context.spec.healing;
    let max_age = days(healing.auto_heal_max_age);
    let realert =
        chrono::Duration::from_std(healing.realert_after).unwrap_or(chrono::Duration::MAX);
    let now: DateTime<Utc> = context.now.and_utc();
    let ledger: BTreeMap<(i64, Date), GapRecord> = store
        .gaps(GapFilter::Open)
        .await?
        .into_iter()
        .map(|row| ((row.phase_to, row.partition_date), row))
        .collect();
    let mut left = Vec::new();
    let mut in_progress = 0;
    let mut heal_cells = Vec::new();
    let mut gap_ids = Vec::new();
    for gap in &scan.gaps {
        let row = ledger.get(&(i64::from(gap.phase_to.0), gap.date));
        if row.is_some_and(|row| row.healing_status == GapStatus::Triggered) {
            in_progress += 1;
            continue;
        }
        let attempts = row.map_or(0, |row| row.attempts);
        let why = if attempts >= i64::from(healing.max_attempts) {
            Some(Why::GaveUp {
                attempts,
                last_error: row.and_then(|row| row.last_error.clone()),
            })
        } else if gap.age_days > max_age {
            Some(Why::TooOld)
        } else {
            None
        };
        match why {
            Some(why) if !include_old => {
                let alert_now = row.is_none_or(|row| {
                    row.healing_status != GapStatus::Alerted
                        || row.alerted_at.is_none_or(|at| now - at >= realert)
                });
                left.push(Left {
                    phase: gap.phase_to,
                    date: gap.date,
                    age_days: gap.age_days,
                    why,
                    gap_id: row.map(|row| row.id),
                    alert_now,
                });
            }
            _ => {
                heal_cells.push((gap.phase_to, gap.date));
                gap_ids.extend(row.map(|row| row.id));
            }
        }
    }
    let heal = plan_cells(context, heal_cells, gap_ids).await?;
    Ok(Decision {
        heal,
        left,
        in_progress,
    })
}

/// Whole days in `duration`.
fn days(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_secs() / 86_400).unwrap_or(i64::MAX)
}

/// Plans `cells` with every phase downstream of them, over their dates and the windows after
/// them, up to today.
async fn plan_cells(
    context: &Context,
    cells: Vec<(PhaseId, Date)>,
    gap_ids: Vec<i64>,
) -> Result<Option<HealPlan>, LifecycleError> {
    let (Some(first), Some(last)) = (
        cells.iter().map(|c| c.1).min(),
        cells.iter().map(|c| c.1).max(),
    ) else {
        return Ok(None);
    };
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
    if phases.is_empty() {
        return Ok(None);
    }
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
        cells,
    }))
}

/// Who starts a heal ([`start_heal`]).
#[derive(Debug, Clone, Copy)]
pub struct Starter<'a> {
    /// Owns the heal run from its first commit.
    pub owner: &'a Owner,
    /// One more `(key, value)` in the run's recorded request
    /// ([`lifecycle::create_run_with`]).
    pub extra: Option<(&'a str, &'a str)>,
    /// The leader lease, when the heal is the leader's scheduled work on a shared store: once
    /// it moved on, nothing is created and the call fails with [`StoreError::Fenced`].
    pub fence: Option<&'a Fence>,
}

/// Records `heal` as a run owned by `starter.owner` and marks its gaps `triggered` by it, in
/// one transaction.
pub async fn start_heal(
    context: &Context,
    store: &Store,
    heal: &HealPlan,
    starter: Starter<'_>,
) -> Result<RunId, StoreError> {
    let run = lifecycle::new_run(
        &context.spec,
        &heal.request,
        &heal.plan,
        RunKind::Heal,
        starter.extra,
    );
    let creator = Creator {
        owner: starter.owner.as_store(),
        ttl: RUN_LEASE,
        fence: starter.fence,
        heals: &heal.gap_ids,
    };
    store.create_run_by(&run, &creator).await
}

/// Records how heal run `run_id` ended for its gaps: (healed, failed). Its owner does this as
/// the run ends; anyone may do it again (it changes nothing the second time).
pub async fn finish_heal(store: &Store, run_id: &RunId) -> Result<(usize, usize), StoreError> {
    store.finish_heal(run_id, None).await
}

/// Records the heal of run `run_id` if it is a heal run that has ended: what `gapless resume`
/// does once it ran one to its end, or found it ended already (its process died before
/// recording the heal). `None` when it is not a heal run, or still running.
pub async fn record_if_ended(
    store: &Store,
    run_id: &RunId,
) -> Result<Option<(usize, usize)>, StoreError> {
    match store.run(run_id).await? {
        Some(run) if run.kind == RunKind::Heal && run.state != RunState::Running => {
            finish_heal(store, run_id).await.map(Some)
        }
        _ => Ok(None),
    }
}

/// Heals recorded late ([`record_late_heals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LateHeals {
    /// Heal runs whose heal was recorded now.
    pub runs: usize,
    /// Their gaps closed.
    pub healed: usize,
    /// Their gaps failed.
    pub failed: usize,
}

/// Records the heal of every run that ended while gaps still name it `triggered`: the node
/// that ran it died between ending the run and recording the heal (which its owner does as
/// the run ends), and those gaps would otherwise stay `triggered`, never healed again.
/// Recording a heal twice changes nothing ([`Store::finish_heal`]), so this is safe beside an
/// owner that records it at the same moment. `fence`: as in [`lifecycle::Ledger::Recorded`].
pub async fn record_late_heals(
    store: &Store,
    fence: Option<&Fence>,
) -> Result<LateHeals, StoreError> {
    let mut late = LateHeals::default();
    for run_id in store.ended_heals().await? {
        let (healed, failed) = store.finish_heal(&run_id, fence).await?;
        tracing::warn!(run = %run_id, healed, failed, "recorded the heal of a run that ended unrecorded");
        late.runs += 1;
        late.healed += healed;
        late.failed += failed;
    }
    Ok(late)
}

/// The alert message for `left` (the gaps to alert about now), as the alerts outbox keeps it:
/// one item per phase and reason, with its dates.
pub fn alert_message(context: &Context, left: &[&Left]) -> Value {
    let mut items: BTreeMap<(PhaseId, String), (Vec<Date>, i64, Value)> = BTreeMap::new();
    for gap in left {
        let (key, reason) = match &gap.why {
            Why::TooOld => (
                "too_old".to_owned(),
                json!({"kind": "too_old", "max_age_days": days(context.spec.healing.auto_heal_max_age)}),
            ),
            Why::GaveUp {
                attempts,
                last_error,
            } => (
                format!("gave_up:{}", last_error.as_deref().unwrap_or("")),
                json!({"kind": "gave_up", "attempts": attempts, "last_error": last_error}),
            ),
        };
        let entry = items
            .entry((gap.phase, key))
            .or_insert_with(|| (Vec::new(), 0, reason));
        entry.0.push(gap.date);
        entry.1 = entry.1.max(gap.age_days);
    }
    let items: Vec<Value> = items
        .into_iter()
        .map(|((phase, _), (mut dates, oldest, reason))| {
            dates.sort_unstable();
            let name = context
                .spec
                .phase(phase)
                .map(|p| p.name.clone())
                .unwrap_or_default();
            json!({
                "phase": phase.0,
                "phase_name": name,
                "dates": dates,
                "oldest_age_days": oldest,
                "reason": reason,
            })
        })
        .collect();
    json!({ "pipeline": context.spec.name, "items": items })
}

/// The alert channels `[alerts]` configures: `slack`, `webhook`, `email`.
pub fn channels(context: &Context) -> Vec<&'static str> {
    let alerts = &context.spec.alerts;
    let mut out = Vec::new();
    if alerts.slack_webhook_env.is_some() {
        out.push("slack");
    }
    if alerts.webhook_url_env.is_some() {
        out.push("webhook");
    }
    if alerts.email.is_some() {
        out.push("email");
    }
    out
}

/// Marks the gaps to alert about now `alerted` and puts one message per channel in the alerts
/// outbox, in one transaction. Returns how many gaps it alerted about. `fence`: as for
/// [`Starter::fence`].
pub async fn record_alerts(
    context: &Context,
    store: &Store,
    decision: &Decision,
    fence: Option<&Fence>,
) -> Result<usize, StoreError> {
    let left: Vec<&Left> = decision.to_alert().collect();
    if left.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = left.iter().filter_map(|gap| gap.gap_id).collect();
    let message = alert_message(context, &left);
    store
        .alert_gaps(&ids, &channels(context), &message, fence)
        .await?;
    Ok(left.len())
}
