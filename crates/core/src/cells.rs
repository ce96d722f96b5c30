//! Cells and their states: observed counts and expectations in, a phase × date matrix out.
//!
//! Expectation rule (documented in docs/pipeline-file.md): a date outside
//! `[pipeline.start, today]`, or not on the calendar when there is one, expects nothing
//! (`not_expected`). Every other date expects `max(expect source for that date, expect.min)`,
//! so a phase whose expectation is derived from upstream rows (players who played) still expects
//! at least `min` while upstream is missing, and shows as blocked rather than vanishing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::dates::{Date, DateRange};
use crate::spec::{Need, PhaseId, Spec};

/// The state of one (phase, date) cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellState {
    /// Count meets the expectation.
    Complete,
    /// 0 < count < expected.
    Partial,
    /// Count 0, expected > 0.
    Missing,
    /// Expected 0: nothing should exist (no games that day).
    NotExpected,
    /// An upstream cell it needs is not complete.
    Blocked,
}

impl CellState {
    /// The word used in output, JSON and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            CellState::Complete => "complete",
            CellState::Partial => "partial",
            CellState::Missing => "missing",
            CellState::NotExpected => "not_expected",
            CellState::Blocked => "blocked",
        }
    }

    /// Whether a cell in this state satisfies a dependency on it.
    pub fn satisfies(self) -> bool {
        matches!(self, CellState::Complete | CellState::NotExpected)
    }
}

/// A (phase, date) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct CellRef {
    /// Phase id.
    pub phase: PhaseId,
    /// Partition date.
    pub date: Date,
}

/// What the probes saw for one phase.
#[derive(Debug, Clone, Default)]
pub struct PhaseObservation {
    /// `check` counts per date (absent = 0).
    pub counts: BTreeMap<Date, i64>,
    /// `expect` source values per date, when the phase has one (absent = 0, then `min` applies).
    pub expected: Option<BTreeMap<Date, i64>>,
}

/// Everything probed for a range: the input to [`classify`].
#[derive(Debug, Clone)]
pub struct Observations {
    /// The probed range (the request extended back by the spec's lookback).
    pub range: DateRange,
    /// Calendar dates, when the pipeline has a calendar.
    pub calendar: Option<BTreeSet<Date>>,
    /// Per phase.
    pub phases: HashMap<PhaseId, PhaseObservation>,
}

/// One classified cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Observed count.
    pub count: i64,
    /// Expected count (0 = not expected).
    pub expected: i64,
    /// Derived state.
    pub state: CellState,
}

/// The classified matrix over a range: `phases[i]` is `spec.phases[i]`.
#[derive(Debug, Clone)]
pub struct Completeness {
    range: DateRange,
    phases: Vec<PhaseId>,
    cells: Vec<Vec<Cell>>,
    /// For blocked cells: the first upstream cell found not satisfied (phase index, day offset).
    blocker: Vec<Vec<Option<(u32, u32)>>>,
}

impl Completeness {
    /// The classified range.
    pub fn range(&self) -> DateRange {
        self.range
    }

    /// Phase ids in spec order.
    pub fn phases(&self) -> &[PhaseId] {
        &self.phases
    }

    /// Cells of the phase at `index` (spec order), one per date of [`Completeness::range`].
    pub fn row(&self, index: usize) -> &[Cell] {
        &self.cells[index]
    }

    /// The cell for `phase` on `date`, if inside.
    pub fn cell(&self, phase: PhaseId, date: Date) -> Option<Cell> {
        let p = self.phases.iter().position(|id| *id == phase)?;
        let d = self.range.index_of(date)?;
        Some(self.cells[p][d])
    }

    /// For a blocked cell, the root cause: the upstream cell that is missing, partial or
    /// otherwise not complete while its own needs are met (following blocked cells upstream).
    pub fn root_cause(&self, phase: PhaseId, date: Date) -> Option<(CellRef, CellState)> {
        let mut p = self.phases.iter().position(|id| *id == phase)?;
        let mut d = self.range.index_of(date)?;
        let mut steps = 0;
        while let Some((bp, bd)) = self.blocker[p][d] {
            p = bp as usize;
            d = bd as usize;
            steps += 1;
            if steps > 1_000_000 {
                break;
            }
        }
        let cell = self.cells[p][d];
        Some((
            CellRef {
                phase: self.phases[p],
                date: self.range.date_at(d),
            },
            cell.state,
        ))
    }

    /// Counts of each state for the phase at `index`, restricted to `within`.
    pub fn totals(&self, index: usize, within: DateRange) -> BTreeMap<CellState, usize> {
        let mut totals = BTreeMap::new();
        if let Some(overlap) = self.range.intersect(&within) {
            let from = self.range.index_of(overlap.start()).unwrap_or(0);
            let to = self.range.index_of(overlap.end()).unwrap_or(0);
            for cell in &self.cells[index][from..=to] {
                *totals.entry(cell.state).or_insert(0) += 1;
            }
        }
        totals
    }
}

/// Expected count for `phase_index` on each date of `observations.range`.
fn expectations(
    spec: &Spec,
    phase_index: usize,
    observations: &Observations,
    today: Date,
) -> Vec<i64> {
    let phase = &spec.phases[phase_index];
    let observed = observations.phases.get(&phase.id);
    let range = observations.range;
    range
        .iter()
        .map(|date| {
            if date < spec.start || date > today {
                return 0;
            }
            if let Some(calendar) = &observations.calendar
                && !calendar.contains(&date)
            {
                return 0;
            }
            let from_source = observed
                .and_then(|o| o.expected.as_ref())
                .and_then(|e| e.get(&date).copied())
                .unwrap_or(0);
            from_source.max(phase.expect.min)
        })
        .collect()
}

/// The latest day offset inside `need`'s window around day `day` (of a cell of `dependent`)
/// whose cell does not satisfy dependencies, given `latest`, a row where entry `i` holds the
/// latest unsatisfied offset ≤ `i` (or -1). For a self-dependency `latest` is the row being
/// built, which already covers every offset before `day`. One comparison per need, whatever
/// the lookback: this keeps classification and planning linear in cells.
pub(crate) fn latest_in_window(
    need: &Need,
    dependent: PhaseId,
    day: usize,
    latest: &[i64],
) -> Option<usize> {
    let window = need.window(dependent);
    let day = i64::try_from(day).unwrap_or(i64::MAX);
    let lo = (day + window.start).max(0);
    let hi = day + window.end - 1;
    if hi < 0 {
        return None;
    }
    let found = latest
        .get(usize::try_from(hi).unwrap_or(usize::MAX))
        .copied()
        .unwrap_or(-1);
    (found >= lo).then(|| usize::try_from(found).unwrap_or(0))
}

/// Classifies every cell of `observations.range`.
///
/// Dates before the range are assumed to satisfy dependencies: callers widen the range with
/// [`crate::plan::observation_range`] so the requested dates are judged on real observations.
pub fn classify(spec: &Spec, observations: &Observations, today: Date) -> Completeness {
    let range = observations.range;
    let days = range.len();
    let mut cells: Vec<Vec<Cell>> = Vec::with_capacity(spec.phases.len());
    let mut blocker: Vec<Vec<Option<(u32, u32)>>> = Vec::with_capacity(spec.phases.len());
    // last_unsatisfied[p][d]: the latest day offset ≤ d whose cell does not satisfy needs.
    let mut last_unsatisfied: Vec<Vec<i64>> = Vec::with_capacity(spec.phases.len());
    let index_of: HashMap<PhaseId, usize> = spec
        .phases
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id, i))
        .collect();

    for (p, phase) in spec.phases.iter().enumerate() {
        let expected = expectations(spec, p, observations, today);
        let counts = observations.phases.get(&phase.id).map(|o| &o.counts);
        let mut row: Vec<Cell> = Vec::with_capacity(days);
        let mut row_blocker: Vec<Option<(u32, u32)>> = vec![None; days];
        let mut row_unsatisfied: Vec<i64> = Vec::with_capacity(days);
        let mut count_iter = counts.map(|c| c.range(range.start()..=range.end()).peekable());
        for (d, date) in range.iter().enumerate() {
            let mut count = 0;
            if let Some(iter) = count_iter.as_mut() {
                while let Some((day, value)) = iter.peek() {
                    if **day < date {
                        iter.next();
                    } else {
                        if **day == date {
                            count = **value;
                        }
                        break;
                    }
                }
            }
            let expect = expected[d];
            let mut state = if expect <= 0 {
                CellState::NotExpected
            } else if count >= expect {
                CellState::Complete
            } else if count > 0 {
                CellState::Partial
            } else {
                CellState::Missing
            };
            if !state.satisfies() {
                'needs: for need in &phase.needs {
                    let Some(&q) = index_of.get(&need.phase) else {
                        continue;
                    };
                    let upstream = if q == p {
                        &row_unsatisfied
                    } else {
                        &last_unsatisfied[q]
                    };
                    if let Some(latest) = latest_in_window(need, phase.id, d, upstream) {
                        state = CellState::Blocked;
                        row_blocker[d] = Some((
                            u32::try_from(q).unwrap_or(0),
                            u32::try_from(latest).unwrap_or(0),
                        ));
                        break 'needs;
                    }
                }
            }
            let previous = row_unsatisfied.last().copied().unwrap_or(-1);
            row_unsatisfied.push(if state.satisfies() {
                previous
            } else {
                i64::try_from(d).unwrap_or(0)
            });
            row.push(Cell {
                count,
                expected: expect,
                state,
            });
        }
        cells.push(row);
        blocker.push(row_blocker);
        last_unsatisfied.push(row_unsatisfied);
    }
    Completeness {
        range,
        phases: spec.phases.iter().map(|p| p.id).collect(),
        cells,
        blocker,
    }
}
