//! The planner: spec + observed cell states + request → the tasks a backfill runs.
//!
//! Pure and deterministic. Invariants (proptest-checked in `plan/tests.rs`):
//! - every cell a task needs (same date, lookback window) is complete already, not expected,
//!   or produced by an earlier task in the plan (`deps` point only backwards);
//! - no cell is produced twice;
//! - complete cells are skipped unless `force`;
//! - a batch covers at most `batch_days` consecutive dates and never spans a skipped or
//!   blocked date.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use crate::cells::{CellRef, CellState, Completeness, latest_in_window};
use crate::dates::{Date, DateRange, days_between};
use crate::spec::{PhaseId, Spec};

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Dates to cover.
    pub range: DateRange,
    /// Phases to run (ids). Phases outside it are only observed.
    pub phases: BTreeSet<PhaseId>,
    /// Re-run complete cells too.
    pub force: bool,
}

/// Why planning could not proceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The observations do not cover the requested range.
    #[error("observations cover {observed}, but the request is {requested}")]
    RangeNotObserved {
        /// What was probed.
        observed: DateRange,
        /// What was asked.
        requested: DateRange,
    },
    /// A requested phase is not in the spec.
    #[error("unknown phase {0}")]
    UnknownPhase(PhaseId),
}

/// One task: one runner invocation over consecutive dates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedTask {
    /// Phase.
    pub phase: PhaseId,
    /// Dates covered (`start`..`end`, consecutive).
    pub range: DateRange,
    /// The cells this task must make complete (expected dates in the range).
    pub dates: Vec<Date>,
    /// Indices of earlier tasks that must complete first.
    pub deps: Vec<usize>,
}

/// Why a cell cannot run in this plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RootReason {
    /// The root cell's phase is not part of this backfill.
    NotInRun,
    /// The root cell's phase has no runner (a source gapless only observes).
    NoRunner,
}

/// A requested cell that cannot run, with the cell at the root of the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockedCell {
    /// The blocked cell.
    pub cell: CellRef,
    /// The upstream cell that is not complete and will not be produced.
    pub root: CellRef,
    /// The root cell's state.
    pub root_state: CellState,
    /// Why the root will not be produced.
    pub reason: RootReason,
}

impl BlockedCell {
    /// "phase 4 2022-05-01 blocked: phase 3 2022-04-02 missing and not in this backfill".
    pub fn describe(&self) -> String {
        if self.root == self.cell {
            return format!(
                "phase {} {} {}: its phase has no runner, so gapless cannot produce it",
                self.cell.phase,
                self.cell.date,
                self.root_state.as_str()
            );
        }
        let why = match self.reason {
            RootReason::NotInRun => "not in this backfill",
            RootReason::NoRunner => "its phase has no runner",
        };
        format!(
            "phase {} {} blocked: phase {} {} {} and {why}",
            self.cell.phase,
            self.cell.date,
            self.root.phase,
            self.root.date,
            self.root_state.as_str()
        )
    }
}

/// Per-phase summary of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhasePlan {
    /// Phase id.
    pub phase: PhaseId,
    /// Phase name.
    pub name: String,
    /// Whether the phase is part of the request.
    pub requested: bool,
    /// Cells to run.
    pub cells: usize,
    /// Tasks to run.
    pub tasks: usize,
    /// Runs of consecutive dates to run (not-expected dates inside a run are folded in).
    pub ranges: Vec<DateRange>,
    /// Cells skipped because they are complete.
    pub skipped_complete: usize,
    /// Cells with nothing expected.
    pub not_expected: usize,
    /// Cells that cannot run.
    pub blocked: usize,
}

/// The result of planning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The requested range.
    pub range: DateRange,
    /// Whether complete cells are re-run.
    pub force: bool,
    /// Tasks in an order where every dependency comes first.
    pub tasks: Vec<PlannedTask>,
    /// Per requested phase, in dependency order.
    pub phases: Vec<PhasePlan>,
    /// Requested cells that cannot run, with their root causes.
    pub blocked: Vec<BlockedCell>,
}

impl Plan {
    /// Total cells the plan runs.
    pub fn cell_count(&self) -> usize {
        self.tasks.iter().map(|t| t.dates.len()).sum()
    }
}

const NONE: u32 = u32::MAX;

/// Builds the task graph for `request`. Pure: same inputs, same plan.
pub fn plan(spec: &Spec, observed: &Completeness, request: &Request) -> Result<Plan, PlanError> {
    let probed = observed.range();
    if probed.start() > request.range.start() || probed.end() < request.range.end() {
        return Err(PlanError::RangeNotObserved {
            observed: probed,
            requested: request.range,
        });
    }
    let index = phase_indices(spec);
    for id in &request.phases {
        if !index.contains_key(id) {
            return Err(PlanError::UnknownPhase(*id));
        }
    }
    let days = probed.len();
    let first = probed.index_of(request.range.start()).unwrap_or(0);
    let last = probed.index_of(request.range.end()).unwrap_or(0);

    // available[p][d] as "latest unavailable offset ≤ d" for O(1) window checks, and
    // root[p][d]: for unavailable cells, the root cell (phase index, offset) and reason.
    let mut latest_unavailable: Vec<Vec<i64>> = Vec::with_capacity(spec.phases.len());
    let mut roots: Vec<Vec<(u32, u32, RootReason)>> = Vec::with_capacity(spec.phases.len());
    let mut planned: Vec<Vec<bool>> = Vec::with_capacity(spec.phases.len());
    let mut blocked = Vec::new();
    let mut summaries = Vec::new();

    for (p, phase) in spec.phases.iter().enumerate() {
        let requested = request.phases.contains(&phase.id);
        let runnable = requested && phase.run.is_some();
        let row = observed.row(p);
        let mut row_latest: Vec<i64> = Vec::with_capacity(days);
        let mut row_roots: Vec<(u32, u32, RootReason)> =
            vec![(NONE, NONE, RootReason::NotInRun); days];
        let mut row_planned = vec![false; days];
        let mut summary = PhasePlan {
            phase: phase.id,
            name: phase.name.clone(),
            requested,
            cells: 0,
            tasks: 0,
            ranges: Vec::new(),
            skipped_complete: 0,
            not_expected: 0,
            blocked: 0,
        };
        for d in 0..days {
            let cell = row[d];
            let in_request = d >= first && d <= last;
            let wants_run = runnable
                && in_request
                && cell.state != CellState::NotExpected
                && (cell.state != CellState::Complete || request.force);
            let mut available = cell.state.satisfies();
            if wants_run {
                // Check needs against availability computed so far.
                let mut missing_root = None;
                for need in &phase.needs {
                    let Some(&q) = index.get(&need.phase) else {
                        continue;
                    };
                    let upstream = if q == p {
                        &row_latest
                    } else {
                        &latest_unavailable[q]
                    };
                    if let Some(offset) = latest_in_window(need, phase.id, d, upstream) {
                        let root = if q == p {
                            row_roots[offset]
                        } else {
                            roots[q][offset]
                        };
                        missing_root = Some(root);
                        break;
                    }
                }
                match missing_root {
                    None => {
                        row_planned[d] = true;
                        available = true;
                        summary.cells += 1;
                    }
                    Some(root) => {
                        row_roots[d] = root;
                        available = false;
                        summary.blocked += 1;
                        blocked.push(blocked_cell(spec, observed, probed, phase.id, d, root));
                    }
                }
            } else if !available {
                // Not going to run: this cell is its own root unless it is blocked upstream,
                // in which case its root is the upstream root.
                let own_reason = if requested && phase.run.is_none() {
                    RootReason::NoRunner
                } else {
                    RootReason::NotInRun
                };
                row_roots[d] = if cell.state == CellState::Blocked {
                    upstream_root(spec, &index, observed, p, d, &roots, &row_roots).unwrap_or((
                        u32::try_from(p).unwrap_or(0),
                        u32::try_from(d).unwrap_or(0),
                        own_reason,
                    ))
                } else {
                    (
                        u32::try_from(p).unwrap_or(0),
                        u32::try_from(d).unwrap_or(0),
                        own_reason,
                    )
                };
                if requested && in_request {
                    // Only a requested phase without a runner gets here: a source's own gap.
                    summary.blocked += 1;
                    blocked.push(blocked_cell(
                        spec,
                        observed,
                        probed,
                        phase.id,
                        d,
                        row_roots[d],
                    ));
                }
            } else if requested && in_request {
                match cell.state {
                    CellState::NotExpected => summary.not_expected += 1,
                    _ => summary.skipped_complete += 1,
                }
            }
            let previous = row_latest.last().copied().unwrap_or(-1);
            row_latest.push(if available {
                previous
            } else {
                i64::try_from(d).unwrap_or(0)
            });
        }
        latest_unavailable.push(row_latest);
        roots.push(row_roots);
        planned.push(row_planned);
        summaries.push(summary);
    }

    // Batching, phase by phase in dependency order, dates ascending.
    let mut tasks: Vec<PlannedTask> = Vec::new();
    for (p, phase) in spec.phases.iter().enumerate() {
        let row = observed.row(p);
        let batch_days = phase.batch_days.max(1) as usize;
        let mut d = first;
        let summary = &mut summaries[p];
        while d <= last {
            if !planned[p][d] {
                d += 1;
                continue;
            }
            let start = d;
            let mut end = d;
            let mut dates = vec![probed.date_at(d)];
            let mut next = d + 1;
            while next <= last && next - start < batch_days {
                if planned[p][next] {
                    end = next;
                    dates.push(probed.date_at(next));
                } else if row[next].state != CellState::NotExpected {
                    break;
                }
                next += 1;
            }
            let range = DateRange::new(probed.date_at(start), probed.date_at(end))
                .unwrap_or_else(|_| DateRange::single(probed.date_at(start)));
            tasks.push(PlannedTask {
                phase: phase.id,
                range,
                dates,
                deps: Vec::new(),
            });
            summary.tasks += 1;
            d = end + 1;
        }
        summary.ranges = fold_ranges(&planned[p], row, (first, last), batch_days, probed);
    }
    let deps = dependencies(spec, &tasks);
    for (task, deps) in tasks.iter_mut().zip(deps) {
        task.deps = deps;
    }
    let phases = summaries.into_iter().filter(|s| s.requested).collect();
    Ok(Plan {
        range: request.range,
        force: request.force,
        tasks,
        phases,
        blocked,
    })
}

/// For a cell observed blocked that is not being run, the root of its first unavailable need.
fn upstream_root(
    spec: &Spec,
    index: &HashMap<PhaseId, usize>,
    observed: &Completeness,
    p: usize,
    d: usize,
    roots: &[Vec<(u32, u32, RootReason)>],
    row_roots: &[(u32, u32, RootReason)],
) -> Option<(u32, u32, RootReason)> {
    let phase = &spec.phases[p];
    for need in &phase.needs {
        let q = *index.get(&need.phase)?;
        let window = need.window(phase.id);
        let lo = (i64::try_from(d).unwrap_or(0) + window.start).max(0);
        let hi = i64::try_from(d).unwrap_or(0) + window.end - 1;
        for offset in (lo..=hi).rev() {
            let offset = usize::try_from(offset).unwrap_or(0);
            let cell = observed.row(q)[offset];
            if !cell.state.satisfies() {
                let root = if q == p {
                    row_roots[offset]
                } else {
                    roots[q][offset]
                };
                if root.0 != NONE {
                    return Some(root);
                }
            }
        }
    }
    None
}

fn blocked_cell(
    spec: &Spec,
    observed: &Completeness,
    probed: DateRange,
    phase: PhaseId,
    d: usize,
    root: (u32, u32, RootReason),
) -> BlockedCell {
    let (rp, rd, reason) = root;
    let root_phase = spec.phases[rp as usize].id;
    let root_state = observed.row(rp as usize)[rd as usize].state;
    BlockedCell {
        cell: CellRef {
            phase,
            date: probed.date_at(d),
        },
        root: CellRef {
            phase: root_phase,
            date: probed.date_at(rd as usize),
        },
        root_state,
        reason,
    }
}

/// Runs of planned dates, with not-expected dates between planned ones folded in — unless
/// there are more of them in a row than a batch may span, and at least a week (an off-season),
/// which ends the run.
fn fold_ranges(
    planned: &[bool],
    row: &[crate::cells::Cell],
    window: (usize, usize),
    batch_days: usize,
    probed: DateRange,
) -> Vec<DateRange> {
    let (first, last) = window;
    let mut ranges = Vec::new();
    let mut open: Option<(usize, usize)> = None;
    for d in first..=last {
        if planned[d] {
            open = Some(open.map_or((d, d), |(s, _)| (s, d)));
            continue;
        }
        let Some((s, e)) = open else { continue };
        if row[d].state != CellState::NotExpected || d - e >= batch_days.max(7) {
            ranges.push((s, e));
            open = None;
        }
    }
    if let Some(range) = open {
        ranges.push(range);
    }
    ranges
        .into_iter()
        .filter_map(|(s, e)| DateRange::new(probed.date_at(s), probed.date_at(e)).ok())
        .collect()
}

/// For each task, the indices of other tasks that produce cells it needs. Used by the planner,
/// by [`crate::reblock`] and by `resume`, which rebuilds the graph from the tasks stored for a
/// run.
///
/// The rule is per cell: task `i` depends on task `j` when some date in `i.dates` needs (same
/// date, lookback window, self-dependency) a date in `j.dates`. Dates inside a task's range
/// but not in its `dates` (folded not-expected dates) neither produce nor need anything, so a
/// task never waits for a task none of its cells needs. Cost: one pass over each task's dates
/// and windows, whatever the number of tasks.
pub fn dependencies(spec: &Spec, tasks: &[PlannedTask]) -> Vec<Vec<usize>> {
    let cells: Vec<(PhaseId, &[Date])> = tasks
        .iter()
        .map(|task| (task.phase, task.dates.as_slice()))
        .collect();
    dependencies_of(spec, &cells)
}

/// [`dependencies`] over `(phase, dates)` pairs.
pub(crate) fn dependencies_of(spec: &Spec, tasks: &[(PhaseId, &[Date])]) -> Vec<Vec<usize>> {
    let (Some(min), Some(max)) = (
        tasks.iter().flat_map(|(_, dates)| dates.iter()).min(),
        tasks.iter().flat_map(|(_, dates)| dates.iter()).max(),
    ) else {
        return vec![Vec::new(); tasks.len()];
    };
    let Ok(span) = DateRange::new(*min, *max) else {
        return vec![Vec::new(); tasks.len()];
    };
    let days = i64::try_from(span.len()).unwrap_or(i64::MAX);
    let index = phase_indices(spec);
    // producer[p][d] = index of the task producing that cell.
    let mut producer: Vec<Vec<u32>> = vec![Vec::new(); spec.phases.len()];
    for (i, (phase, dates)) in tasks.iter().enumerate() {
        let Some(&p) = index.get(phase) else {
            continue;
        };
        if producer[p].is_empty() {
            producer[p] = vec![NONE; span.len()];
        }
        for date in *dates {
            if let Some(d) = span.index_of(*date) {
                producer[p][d] = u32::try_from(i).unwrap_or(NONE);
            }
        }
    }
    tasks
        .iter()
        .enumerate()
        .map(|(i, (phase_id, dates))| {
            let Some(&p) = index.get(phase_id) else {
                return Vec::new();
            };
            let phase = &spec.phases[p];
            let mut offsets: Vec<i64> = dates
                .iter()
                .filter_map(|date| span.index_of(*date))
                .map(|d| i64::try_from(d).unwrap_or(0))
                .collect();
            offsets.sort_unstable();
            let mut deps = BTreeSet::new();
            for need in &phase.needs {
                let Some(&q) = index.get(&need.phase) else {
                    continue;
                };
                if producer[q].is_empty() {
                    continue;
                }
                let window = need.window(phase.id);
                // The union of the dates' windows, scanned once: `scanned` is the last offset
                // already looked at.
                let mut scanned = -1_i64;
                for &d in &offsets {
                    let lo = (d + window.start).max(scanned + 1).max(0);
                    let hi = (d + window.end - 1).min(days - 1);
                    for offset in lo..=hi {
                        let producer_index = producer[q][usize::try_from(offset).unwrap_or(0)];
                        if producer_index != NONE && producer_index as usize != i {
                            deps.insert(producer_index as usize);
                        }
                    }
                    scanned = scanned.max(hi);
                }
            }
            deps.into_iter().collect()
        })
        .collect()
}

/// Spec index of each phase id: one lookup per need instead of a scan of the phases, so
/// planning stays linear in cells with thousands of phases.
pub(crate) fn phase_indices(spec: &Spec) -> HashMap<PhaseId, usize> {
    spec.phases
        .iter()
        .enumerate()
        .map(|(i, phase)| (phase.id, i))
        .collect()
}

/// The dates to observe so that the cells of `requested` can be classified and planned
/// exactly: `requested` extended back by the longest single lookback of any need, and never
/// before `[pipeline] start` (every date before it expects nothing, so observing it adds
/// nothing).
///
/// One window is enough, however long the chains of needs: a cell's state depends only on its
/// own counts and on whether the cells in its direct windows satisfy dependencies, which again
/// depends only on their own counts (`blocked` never turns a satisfied cell unsatisfied). Only
/// cells inside `requested` are planned; the cells before it are observed, never produced. The
/// cost of observing, classifying and planning is therefore
/// `phases × (requested days + longest lookback)`, not `phases × chain length × lookback`.
/// A blocked cell's root is followed back as far as this range reaches: at its first date, an
/// unsatisfied cell is reported as it was observed (`missing` or `partial`).
pub fn observation_range(spec: &Spec, requested: DateRange) -> DateRange {
    let lookback = spec
        .phases
        .iter()
        .flat_map(|phase| phase.needs.iter())
        .map(|need| i64::from(need.lookback_days))
        .max()
        .unwrap_or(0);
    let to_start = days_between(spec.start, requested.start()).max(0);
    requested.extend_back(lookback.min(to_start))
}

#[cfg(test)]
mod tests;
