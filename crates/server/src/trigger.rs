//! The trigger: reads the event log (completions of every run, events from outside) and runs
//! the downstream cells whose needs are now all complete (SPEC.md, Semantics 4).
//!
//! One path for live and backfill: a backfill's completions are events like any other. The
//! trigger keeps its position in the log in the state store, so events stored while `serve`
//! was down are acted on when it starts, and an event is acted on once however often it was
//! delivered (the log holds it once). A cell that is complete, or that a run whose owner is
//! alive still means to run, is never planned again; the executor's cell holds make sure that
//! two runs never run one cell at the same time anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gapless_core::cells::{CellState, Completeness};
use gapless_core::dates::{Date, DateRange};
use gapless_core::spec::{PhaseId, Spec};
use gapless_runtime::lifecycle;
use gapless_store::{Creator, EventRecord, Fence, NewRun, NewTask, NewTaskState, RunKind};
use serde_json::json;

use crate::app::{App, error_chain};

/// The trigger's name in the state store's `consumers` table.
pub const CONSUMER: &str = "trigger";

/// Events read per step.
const BATCH: i64 = 5_000;

/// Runs the trigger until `serve` stops.
pub async fn run(app: Arc<App>) {
    let shutdown = app.shutdown_token();
    let mut woken = app.woken();
    loop {
        // One node plans for all (the leader); every node executes.
        let Some(fence) = app.until_leader().await else {
            return;
        };
        match step(&app, app.leader_writes(&fence)).await {
            // A full batch: more are waiting.
            Ok(true) => continue,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "trigger step failed; retrying");
            }
        }
        tokio::select! {
            _ = woken.changed() => {
                // Let a burst of events for neighbouring dates arrive, to plan them together.
                tokio::select! {
                    () = tokio::time::sleep(app.options.coalesce) => {}
                    () = shutdown.cancelled() => return,
                }
            }
            () = tokio::time::sleep(app.options.poll) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Reads the next events, plans and starts what they make runnable, and moves the trigger's
/// position past them. `true` when a full batch was read. `fence`: the leader lease the run
/// is created under (on a shared store); once it moved on nothing is created and the position
/// stays, for the new leader to plan these events.
pub async fn step(app: &Arc<App>, fence: Option<&Fence>) -> anyhow::Result<bool> {
    let position = app.store.consumer_position(CONSUMER).await?;
    let events = app.store.events(position, BATCH).await?;
    let Some(last) = events.last().map(|event| event.id) else {
        return Ok(false);
    };
    let context = app.context();
    let candidates = candidates(&app.spec, &events, context.today);
    if !candidates.is_empty() {
        // Taken before the run is created: a run that could not execute yet would hold its
        // cells from the next events' plans meanwhile.
        let Some(permit) = app.run_slot().await else {
            return Ok(false);
        };
        let mut tasks = runnable(app, &context, &candidates).await?;
        // The executor starts ready tasks in the order they are recorded: the newest dates
        // (live data) first, the backlog behind them.
        tasks.sort_by_key(|task| std::cmp::Reverse(task.end));
        if tasks.is_empty() {
            drop(permit);
        } else {
            let cells: usize = tasks.iter().map(|task| task.dates.len()).sum();
            let run = NewRun {
                kind: RunKind::Trigger,
                pipeline: app.spec.name.clone(),
                request: json!({
                    "via": "trigger",
                    "events": {"from": position + 1, "to": last},
                    "phases": tasks.iter().map(|t| t.phase).collect::<BTreeSet<_>>(),
                }),
                tasks,
            };
            let task_count = run.tasks.len() as u64;
            let creator = Creator {
                owner: app.owner.as_store(),
                ttl: gapless_runtime::owner::RUN_LEASE,
                fence,
                heals: &[],
            };
            let run_id = match app.store.create_run_by(&run, &creator).await {
                Ok(run_id) => run_id,
                Err(error) if error.is_fenced() => {
                    tracing::warn!(error = %error_chain(&error), "the trigger's run is fenced: this node no longer leads");
                    return Ok(false);
                }
                Err(error) => return Err(error.into()),
            };
            tracing::info!(run = %run_id, tasks = task_count, cells, "trigger run");
            app.execute(run_id, RunKind::Trigger, Some(permit));
        }
    }
    app.store.save_consumer_position(CONSUMER, last).await?;
    Ok(events.len() as i64 == BATCH)
}

/// The downstream cells `events` may have made runnable: for a completion of phase `p` on `d`,
/// every phase needing `p` on the dates whose window holds `d` (`d` to `d + lookback_days`; a
/// self-dependency from `d + 1`), up to `today` and from the pipeline's start.
pub fn candidates(
    spec: &Spec,
    events: &[EventRecord],
    today: Date,
) -> BTreeMap<PhaseId, BTreeSet<Date>> {
    let mut out: BTreeMap<PhaseId, BTreeSet<Date>> = BTreeMap::new();
    for event in events.iter().filter(|event| event.status == "complete") {
        let Ok(upstream) = u32::try_from(event.phase).map(PhaseId) else {
            continue;
        };
        for phase in spec.phases.iter().filter(|phase| phase.run.is_some()) {
            for need in phase.needs.iter().filter(|need| need.phase == upstream) {
                let first = if phase.id == upstream { 1 } else { 0 };
                for offset in first..=i64::from(need.lookback_days) {
                    let Some(date) = event
                        .date
                        .checked_add_signed(chrono::Duration::days(offset))
                    else {
                        break;
                    };
                    if date > today {
                        break;
                    }
                    if date >= spec.start {
                        out.entry(phase.id).or_default().insert(date);
                    }
                }
            }
        }
    }
    out
}

/// The candidate cells to run now, as tasks of at most `batch_days` consecutive dates: not
/// complete, not held by a live run, with every need satisfied (a self-dependency may be
/// satisfied by an earlier date of the same plan).
async fn runnable(
    app: &App,
    context: &gapless_runtime::context::Context,
    candidates: &BTreeMap<PhaseId, BTreeSet<Date>>,
) -> anyhow::Result<Vec<NewTask>> {
    let first = candidates.values().filter_map(|d| d.first()).min();
    let last = candidates.values().filter_map(|d| d.last()).max();
    let (Some(&first), Some(&last)) = (first, last) else {
        return Ok(Vec::new());
    };
    let range = DateRange::new(first, last)?;
    let matrix = lifecycle::matrix(context, range)
        .await
        .map_err(|error| anyhow::anyhow!(error_chain(&error)))?;
    let mut tasks = Vec::new();
    for (&phase_id, dates) in candidates {
        let Some(phase) = app.spec.phase(phase_id) else {
            continue;
        };
        let (Some(&start), Some(&end)) = (dates.first(), dates.last()) else {
            continue;
        };
        let active: BTreeSet<Date> = app
            .store
            .active_cells(i64::from(phase_id.0), start, end)
            .await?
            .into_iter()
            .collect();
        let mut kept: BTreeSet<Date> = BTreeSet::new();
        for &date in dates {
            if active.contains(&date) {
                continue;
            }
            let Some(cell) = matrix.cell(phase_id, date) else {
                continue;
            };
            if matches!(cell.state, CellState::Complete | CellState::NotExpected) {
                continue;
            }
            if needs_met(&app.spec, &matrix, phase_id, date, &kept) {
                kept.insert(date);
            }
        }
        tasks.extend(
            batches(&kept, phase.batch_days)
                .into_iter()
                .map(|dates| NewTask {
                    phase: i64::from(phase_id.0),
                    start: dates[0],
                    end: dates[dates.len() - 1],
                    dates,
                    state: NewTaskState::Pending,
                    error: None,
                }),
        );
    }
    Ok(tasks)
}

/// Whether every cell `phase` needs for `date` is satisfied in `matrix`, or, for its own
/// earlier dates, is in `kept`. Cells before the probed range (before the pipeline's start)
/// count as satisfied.
fn needs_met(
    spec: &Spec,
    matrix: &Completeness,
    phase: PhaseId,
    date: Date,
    kept: &BTreeSet<Date>,
) -> bool {
    let Some(spec_phase) = spec.phase(phase) else {
        return false;
    };
    spec_phase.needs.iter().all(|need| {
        let own = need.phase == phase;
        let first = if own { 1 } else { 0 };
        (first..=i64::from(need.lookback_days)).all(|back| {
            let Some(day) = date.checked_sub_signed(chrono::Duration::days(back)) else {
                return true;
            };
            if own && kept.contains(&day) {
                return true;
            }
            matrix
                .cell(need.phase, day)
                .is_none_or(|cell| cell.state.satisfies())
        })
    })
}

/// `dates` cut into runs of consecutive days, each at most `batch_days` long.
fn batches(dates: &BTreeSet<Date>, batch_days: u32) -> Vec<Vec<Date>> {
    let limit = batch_days.max(1) as usize;
    let mut out: Vec<Vec<Date>> = Vec::new();
    for &date in dates {
        match out.last_mut() {
            Some(batch)
                if batch.len() < limit
                    && batch
                        .last()
                        .and_then(|last| last.succ_opt())
                        .is_some_and(|next| next == date) =>
            {
                batch.push(date);
            }
            _ => out.push(vec![date]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> Date {
        Date::from_ymd_opt(2024, 1, d).unwrap_or_default()
    }

    #[test]
    fn batches_cut_at_holes_and_at_batch_days() {
        let dates: BTreeSet<Date> = [1, 2, 3, 4, 5, 7, 8].into_iter().map(day).collect();
        let cut = batches(&dates, 3);
        assert_eq!(
            cut,
            vec![
                vec![day(1), day(2), day(3)],
                vec![day(4), day(5)],
                vec![day(7), day(8)]
            ]
        );
    }
}
