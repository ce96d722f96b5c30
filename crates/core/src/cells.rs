//! Cells and their states: observed counts and expectations in, a phase × date matrix out.
//!
//! Expectation rule (documented in docs/pipeline-file.md): a date outside
//! `[pipeline.start, today]`, or not on the calendar when there is one, expects nothing
//! (`not_expected`). Every other date expects `max(expect source for that date, expect.min)`,
//! so a phase whose expectation is derived from upstream rows (players who played) still expects
//! at least `min` while upstream is missing, and shows as blocked rather than vanishing.
//!
//! Due rule (same page): cells are classified at a moment `now` (UTC) that the caller passes
//! in. A cell that is not complete counts as `missing`, `partial` or `blocked` only from its
//! phase's due moment on (the date at 00:00 UTC plus the phase's `due`); before that it is
//! `not_due`. A cell that is due but not complete only because cells it needs are `not_due`
//! (and none it needs is overdue) is `not_due` too: nothing is wrong yet, and it becomes due
//! when they do. Complete and not-expected cells are never `not_due`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use std::time::Duration;

use crate::dates::{Date, DateRange, DateTime};
use crate::spec::{Need, PhaseId, Spec, due_at};

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
    /// Not complete, but its data is not expected yet: its due moment has not come, or a cell
    /// it needs is itself not due.
    NotDue,
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
            CellState::NotDue => "not_due",
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
    /// Each phase's `due`, in the order of `phases`.
    dues: Vec<Duration>,
    cells: Vec<Vec<Cell>>,
    /// For blocked cells: the first upstream cell found not satisfied (phase index, day
    /// offset). For a `not_due` cell that is due itself: the not-due cell it waits for.
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

    /// For a `not_due` cell, when it becomes due: its own due moment, or, when it waits for a
    /// not-due cell it needs, that cell's (the later of the two). `None` for other states.
    pub fn due_at(&self, phase: PhaseId, date: Date) -> Option<DateTime> {
        let p = self.phases.iter().position(|id| *id == phase)?;
        let d = self.range.index_of(date)?;
        if self.cells[p][d].state != CellState::NotDue {
            return None;
        }
        let own = due_at(date, self.dues[p]);
        let (root, _) = self.root_cause(phase, date)?;
        let root_index = self.phases.iter().position(|id| *id == root.phase)?;
        Some(own.max(due_at(root.date, self.dues[root_index])))
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

/// Classifies every cell of `observations.range` at the moment `now` (UTC): dates after
/// `now`'s date expect nothing, and cells before their due moment are `not_due` (module docs).
///
/// Dates before the range are assumed to satisfy dependencies: callers widen the range with
/// [`crate::plan::observation_range`] so the requested dates are judged on real observations.
pub fn classify(spec: &Spec, observations: &Observations, now: DateTime) -> Completeness {
    let today = now.date();
    let range = observations.range;
    let days = range.len();
    let mut cells: Vec<Vec<Cell>> = Vec::with_capacity(spec.phases.len());
    let mut blocker: Vec<Vec<Option<(u32, u32)>>> = Vec::with_capacity(spec.phases.len());
    // last_unsatisfied[p][d]: the latest day offset ≤ d whose cell does not satisfy needs.
    let mut last_unsatisfied: Vec<Vec<i64>> = Vec::with_capacity(spec.phases.len());
    // last_overdue[p][d]: the same, among cells that are not `not_due`.
    let mut last_overdue: Vec<Vec<i64>> = Vec::with_capacity(spec.phases.len());
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
        let mut row_overdue: Vec<i64> = Vec::with_capacity(days);
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
                if now < phase.due_at(date) {
                    state = CellState::NotDue;
                } else if let Some((q, latest)) =
                    unsatisfied_need(phase, p, d, &index_of, (&row_overdue, &last_overdue))
                {
                    state = CellState::Blocked;
                    row_blocker[d] = Some((q, latest));
                } else if let Some((q, latest)) = unsatisfied_need(
                    phase,
                    p,
                    d,
                    &index_of,
                    (&row_unsatisfied, &last_unsatisfied),
                ) {
                    // Everything it waits for is not due yet: neither is this cell.
                    state = CellState::NotDue;
                    row_blocker[d] = Some((q, latest));
                }
            }
            let offset = i64::try_from(d).unwrap_or(0);
            let previous = row_unsatisfied.last().copied().unwrap_or(-1);
            row_unsatisfied.push(if state.satisfies() { previous } else { offset });
            let previous = row_overdue.last().copied().unwrap_or(-1);
            row_overdue.push(if state.satisfies() || state == CellState::NotDue {
                previous
            } else {
                offset
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
        last_overdue.push(row_overdue);
    }
    Completeness {
        range,
        phases: spec.phases.iter().map(|p| p.id).collect(),
        dues: spec.phases.iter().map(|p| p.due).collect(),
        cells,
        blocker,
    }
}

/// The first need of `phase` (at index `p`) whose window around day `d` holds a cell marked in
/// `latest` (`.0` for the phase's own row being built, `.1` for the phases before it): the
/// needed phase's index and that cell's day offset.
fn unsatisfied_need(
    phase: &crate::spec::Phase,
    p: usize,
    d: usize,
    index_of: &HashMap<PhaseId, usize>,
    latest: (&[i64], &[Vec<i64>]),
) -> Option<(u32, u32)> {
    phase.needs.iter().find_map(|need| {
        let q = *index_of.get(&need.phase)?;
        let upstream = if q == p { latest.0 } else { &latest.1[q] };
        let offset = latest_in_window(need, phase.id, d, upstream)?;
        Some((
            u32::try_from(q).unwrap_or(0),
            u32::try_from(offset).unwrap_or(0),
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::dates::parse_date;
    use crate::spec::{NoFiles, parse};

    const P1: PhaseId = PhaseId(1);
    const P2: PhaseId = PhaseId(2);
    const P3: PhaseId = PhaseId(3);

    fn day(text: &str) -> Date {
        parse_date(text).unwrap()
    }

    fn at(text: &str) -> DateTime {
        DateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap()
    }

    /// Phase 1 with the pipeline's default `due` (a day), phase 2 due 6 hours after the date
    /// ends, phase 3 due as soon as its date begins, needing phase 1.
    const PIPELINE: &str = r#"
[pipeline]
name = "t"
start = "2024-03-01"

[[phase]]
id = 1
name = "raw"
check.command = ["count"]

[[phase]]
id = 2
name = "six_hours_later"
check.command = ["count"]
due = "30h"

[[phase]]
id = 3
name = "at_once"
needs = [1]
check.command = ["count"]
due = "0d"
"#;

    fn observations(counts: &[(PhaseId, &[&str])]) -> Observations {
        Observations {
            range: DateRange::new(day("2024-03-08"), day("2024-03-10")).unwrap(),
            calendar: None,
            phases: counts
                .iter()
                .map(|&(phase, dates)| {
                    let counts: BTreeMap<Date, i64> = dates.iter().map(|d| (day(d), 1)).collect();
                    (
                        phase,
                        PhaseObservation {
                            counts,
                            expected: None,
                        },
                    )
                })
                .collect::<HashMap<_, _>>(),
        }
    }

    fn states(matrix: &Completeness, phase: PhaseId) -> Vec<&'static str> {
        matrix
            .range()
            .iter()
            .map(|date| matrix.cell(phase, date).unwrap().state.as_str())
            .collect()
    }

    #[test]
    fn at_one_minute_past_midnight_today_is_not_due_and_yesterday_is_missing() {
        let spec = parse(PIPELINE, &NoFiles).unwrap();
        let matrix = classify(&spec, &observations(&[]), at("2024-03-10 00:01"));
        // The 8th and 9th became due at 00:00 on the 9th and 10th; the 10th is due on the 11th.
        assert_eq!(states(&matrix, P1), ["missing", "missing", "not_due"]);
        assert_eq!(
            matrix.due_at(P1, day("2024-03-10")),
            Some(at("2024-03-11 00:00"))
        );
        assert_eq!(matrix.due_at(P1, day("2024-03-09")), None);
        // Phase 2's own `due`: the 9th counts from 06:00 on the 10th.
        assert_eq!(states(&matrix, P2), ["missing", "not_due", "not_due"]);
        assert_eq!(
            matrix.due_at(P2, day("2024-03-09")),
            Some(at("2024-03-10 06:00"))
        );
        let later = classify(&spec, &observations(&[]), at("2024-03-10 06:00"));
        assert_eq!(states(&later, P2), ["missing", "missing", "not_due"]);
    }

    #[test]
    fn a_cell_that_needs_a_not_due_cell_is_not_due_until_that_one_is() {
        let spec = parse(PIPELINE, &NoFiles).unwrap();
        let matrix = classify(&spec, &observations(&[]), at("2024-03-10 00:01"));
        // Phase 3 is due at once, but on the 10th it waits for phase 1, which is not due yet:
        // not blocked (nothing is wrong), not due until phase 1 is. Behind yesterday's missing
        // phase 1 it is blocked.
        assert_eq!(states(&matrix, P3), ["blocked", "blocked", "not_due"]);
        assert_eq!(
            matrix.due_at(P3, day("2024-03-10")),
            Some(at("2024-03-11 00:00"))
        );
        let (root, state) = matrix.root_cause(P3, day("2024-03-10")).unwrap();
        assert_eq!(
            (root.phase, root.date, state),
            (P1, day("2024-03-10"), CellState::NotDue)
        );
        // With phase 1 there, phase 3's own `due` applies: missing at once.
        let matrix = classify(
            &spec,
            &observations(&[(P1, &["2024-03-08", "2024-03-09", "2024-03-10"])]),
            at("2024-03-10 00:01"),
        );
        assert_eq!(states(&matrix, P3), ["missing", "missing", "missing"]);
    }

    #[test]
    fn complete_cells_stay_complete_whatever_their_due() {
        let spec = parse(PIPELINE, &NoFiles).unwrap();
        let matrix = classify(
            &spec,
            &observations(&[(P1, &["2024-03-10"]), (P2, &["2024-03-09", "2024-03-10"])]),
            at("2024-03-10 00:01"),
        );
        assert_eq!(states(&matrix, P1), ["missing", "missing", "complete"]);
        assert_eq!(states(&matrix, P2), ["missing", "complete", "complete"]);
        assert_eq!(matrix.due_at(P1, day("2024-03-10")), None);
        // After today nothing is expected, due or not.
        let matrix = classify(&spec, &observations(&[]), at("2024-03-09 23:59"));
        assert_eq!(states(&matrix, P1), ["missing", "not_due", "not_expected"]);
    }
}
