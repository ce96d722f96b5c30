//! Gap detection: which cells are missing or short while everything they need is there.
//!
//! A gap is a cell whose state is `missing` or `partial`: its expectation is above zero and
//! every cell it needs is complete (otherwise it would be `blocked`). Blocked cells are not
//! gaps of their own: they follow from the gap upstream of them and are filled when it is
//! healed, downstream in dependency order. The ledger records a gap as `phase_from → phase_to`:
//! `phase_to` is the phase of the cell, `phase_from` the nearest phase it needs (the highest id
//! among its needs on other phases), so "present in phase 2, missing in phase 3" reads as
//! `2 → 3`; a phase with no needs on other phases has no `phase_from`.
//!
//! Cells that are `not_due` are never gaps, and do not close one either. A gap's age counts
//! whole days from the moment its cell became due (its phase's `due` after the date began),
//! not from the date: with the default `due = "1d"`, yesterday's missing cell is 0 days old
//! today.

use serde::Serialize;

use crate::cells::{CellState, Completeness};
use crate::dates::{Date, DateRange, DateTime};
use crate::spec::{PhaseId, Spec};

/// One detected gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// The nearest phase the cell needs, if it needs another phase.
    pub phase_from: Option<PhaseId>,
    /// The phase of the missing or short cell.
    pub phase_to: PhaseId,
    /// Its date.
    pub date: Date,
    /// Whole days since the cell became due (its phase's `due` after `date` began).
    pub age_days: i64,
    /// `missing` or `partial`.
    pub state: CellState,
    /// Rows counted.
    pub found: i64,
    /// Rows expected.
    pub expected: i64,
}

/// The result of a scan over a range: the gaps, and the cells that are complete (or expect
/// nothing), which close any gap recorded for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Gaps, by phase (spec order) then date.
    pub gaps: Vec<Gap>,
    /// Cells that satisfy their phase: `(phase, date)`.
    pub satisfied: Vec<(PhaseId, Date)>,
}

/// Finds the gaps within `range` in a classified matrix that covers `range`, at the moment
/// `now` (UTC) the matrix was classified at.
pub fn detect(spec: &Spec, matrix: &Completeness, range: DateRange, now: DateTime) -> Scan {
    let mut scan = Scan::default();
    for (index, &phase_id) in matrix.phases().iter().enumerate() {
        let phase = spec.phase(phase_id);
        let phase_from = phase.and_then(|phase| {
            phase
                .needs
                .iter()
                .map(|need| need.phase)
                .filter(|&needed| needed != phase_id)
                .max()
        });
        let row = matrix.row(index);
        for date in range.iter() {
            let Some(offset) = matrix.range().index_of(date) else {
                continue;
            };
            let cell = row[offset];
            match cell.state {
                CellState::Missing | CellState::Partial => scan.gaps.push(Gap {
                    phase_from,
                    phase_to: phase_id,
                    date,
                    age_days: phase.map_or(0, |phase| {
                        now.signed_duration_since(phase.due_at(date))
                            .num_days()
                            .max(0)
                    }),
                    state: cell.state,
                    found: cell.count,
                    expected: cell.expected,
                }),
                state if state.satisfies() => scan.satisfied.push((phase_id, date)),
                _ => {}
            }
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::cells::{Observations, PhaseObservation, classify};
    use crate::dates::{midday, parse_date};
    use crate::spec::{NoFiles, parse};

    const P1: PhaseId = PhaseId(1);
    const P2: PhaseId = PhaseId(2);
    const P3: PhaseId = PhaseId(3);

    fn day(text: &str) -> Date {
        parse_date(text).unwrap()
    }

    const PIPELINE: &str = r#"
[pipeline]
name = "t"
start = "2024-01-01"

[warehouse]
url = "sqlite::memory:"

[[phase]]
id = 1
name = "raw"
check.sql = "SELECT d, n FROM raw WHERE d BETWEEN :start AND :end"

[[phase]]
id = 2
name = "loaded"
needs = [1]
check.sql = "SELECT d, n FROM loaded WHERE d BETWEEN :start AND :end"
expect.sql = "SELECT d, n FROM raw WHERE d BETWEEN :start AND :end"

[[phase]]
id = 3
name = "rolled"
needs = [{ phase = 2, lookback_days = 1 }, 1]
check.sql = "SELECT d, n FROM rolled WHERE d BETWEEN :start AND :end"
"#;

    fn counts(pairs: &[(&str, i64)]) -> BTreeMap<Date, i64> {
        pairs.iter().map(|&(d, n)| (day(d), n)).collect()
    }

    #[test]
    fn missing_and_short_cells_are_gaps_and_blocked_ones_are_not() {
        let spec = parse(PIPELINE, &NoFiles).unwrap();
        let range = DateRange::new(day("2024-01-01"), day("2024-01-04")).unwrap();
        let raw = counts(&[
            ("2024-01-01", 3),
            ("2024-01-02", 3),
            ("2024-01-03", 3),
            ("2024-01-04", 3),
        ]);
        let observations = Observations {
            range,
            calendar: None,
            phases: HashMap::from([
                (
                    P1,
                    PhaseObservation {
                        counts: raw.clone(),
                        expected: None,
                    },
                ),
                (
                    P2,
                    PhaseObservation {
                        // 01-02 short, 01-03 missing.
                        counts: counts(&[("2024-01-01", 3), ("2024-01-02", 2), ("2024-01-04", 3)]),
                        expected: Some(raw),
                    },
                ),
                (
                    P3,
                    PhaseObservation {
                        counts: counts(&[("2024-01-01", 1)]),
                        expected: None,
                    },
                ),
            ]),
        };
        // Midday on the 10th: every date up to the 9th is due (the default `due` is a day).
        let now = midday(day("2024-01-10"));
        let matrix = classify(&spec, &observations, now);
        let scan = detect(&spec, &matrix, range, now);
        let gaps: Vec<_> = scan
            .gaps
            .iter()
            .map(|gap| {
                (
                    gap.phase_from,
                    gap.phase_to,
                    gap.date.to_string(),
                    gap.state,
                    gap.found,
                    gap.expected,
                    gap.age_days,
                )
            })
            .collect();
        assert_eq!(
            gaps,
            [
                (
                    Some(P1),
                    P2,
                    "2024-01-02".into(),
                    CellState::Partial,
                    2,
                    3,
                    // Due since the 3rd at 00:00: 7 whole days by midday on the 10th.
                    7
                ),
                (
                    Some(P1),
                    P2,
                    "2024-01-03".into(),
                    CellState::Missing,
                    0,
                    3,
                    6
                ),
                // 01-02 of phase 3 needs 01-01 and 01-02 of phase 2: blocked, not a gap; 01-03
                // and 01-04 likewise. Its nearest need is phase 2, not phase 1.
            ]
        );
        // Complete cells close gaps; blocked ones neither open nor close anything.
        assert!(scan.satisfied.contains(&(P1, day("2024-01-03"))));
        assert!(scan.satisfied.contains(&(P3, day("2024-01-01"))));
        assert!(!scan.satisfied.contains(&(P3, day("2024-01-02"))));
        assert!(!scan.satisfied.contains(&(P2, day("2024-01-03"))));

        // Only the range asked for: on the 3rd, phase 2's gap, phase 1 complete, phase 3
        // blocked.
        let narrow = DateRange::new(day("2024-01-03"), day("2024-01-03")).unwrap();
        let scan = detect(&spec, &matrix, narrow, now);
        assert_eq!(scan.gaps.len(), 1);
        assert_eq!(scan.gaps[0].phase_to, P2);
        assert_eq!(scan.satisfied, [(P1, day("2024-01-03"))]);
    }

    #[test]
    fn a_phase_without_upstream_has_no_phase_from() {
        let spec = parse(PIPELINE, &NoFiles).unwrap();
        let range = DateRange::new(day("2024-01-01"), day("2024-01-02")).unwrap();
        let observations = Observations {
            range,
            calendar: None,
            phases: HashMap::new(),
        };
        let now = midday(day("2024-01-03"));
        let matrix = classify(&spec, &observations, now);
        let scan = detect(&spec, &matrix, range, now);
        // Phase 1's two dates; phases 2 and 3 are blocked behind them.
        assert_eq!(scan.gaps.len(), 2);
        assert!(scan.gaps.iter().all(|gap| gap.phase_from.is_none()));
        assert_eq!(scan.gaps[1].age_days, 0);
    }

    /// At one minute past midnight on the 3rd: the 3rd is not due (nothing is recorded for it,
    /// not even as satisfied), the 2nd became due a minute ago (a gap 0 days old), the 1st a
    /// day ago.
    #[test]
    fn cells_not_due_are_neither_gaps_nor_satisfied_and_ages_count_from_due() {
        let spec = parse(PIPELINE, &NoFiles).unwrap();
        let range = DateRange::new(day("2024-01-01"), day("2024-01-03")).unwrap();
        let observations = Observations {
            range,
            calendar: None,
            phases: HashMap::new(),
        };
        let now = day("2024-01-03").and_hms_opt(0, 1, 0).unwrap();
        let matrix = classify(&spec, &observations, now);
        let scan = detect(&spec, &matrix, range, now);
        let gaps: Vec<_> = scan
            .gaps
            .iter()
            .map(|gap| (gap.phase_to, gap.date.to_string(), gap.age_days))
            .collect();
        assert_eq!(
            gaps,
            [(P1, "2024-01-01".into(), 1), (P1, "2024-01-02".into(), 0)]
        );
        assert!(scan.satisfied.is_empty(), "{:?}", scan.satisfied);
        assert_eq!(
            matrix.cell(P1, day("2024-01-03")).unwrap().state,
            CellState::NotDue
        );
    }
}
