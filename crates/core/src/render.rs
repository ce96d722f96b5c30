//! Human renderings of the status matrix and of plans, and the JSON documents behind them.
//! Strings in, strings out; the binary decides where they go.

use serde::Serialize;

use crate::cells::{CellState, Completeness};
use crate::dates::{Date, DateRange, DateTime};
use crate::plan::Plan;
use crate::spec::{PhaseId, Spec};

/// Longest list of runs shown per phase before folding the rest into "… N more".
const MAX_RUNS_SHOWN: usize = 24;
/// Longest list of blocked cells shown by `plan`.
const MAX_BLOCKED_SHOWN: usize = 20;

/// A run of consecutive cells in one state; not-expected dates inside are absorbed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateRun {
    /// The state.
    pub state: CellState,
    /// First date.
    pub start: Date,
    /// Last date.
    pub end: Date,
    /// Cells in the run (excluding absorbed not-expected dates).
    pub cells: usize,
    /// Sum of counts.
    pub count: i64,
    /// Sum of expectations.
    pub expected: i64,
}

/// One phase's row of the status matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseStatus {
    /// Phase id.
    pub phase: PhaseId,
    /// Phase name.
    pub name: String,
    /// Cells per state.
    pub complete: usize,
    /// Partial cells.
    pub partial: usize,
    /// Missing cells.
    pub missing: usize,
    /// Blocked cells.
    pub blocked: usize,
    /// Cells not due yet.
    pub not_due: usize,
    /// Not-expected cells.
    pub not_expected: usize,
    /// The runs of equal state.
    pub runs: Vec<StateRun>,
    /// Every cell not due yet, with the moment it becomes due, in date order.
    pub not_due_cells: Vec<NotDueCell>,
}

/// A cell that is not due yet, and when it becomes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NotDueCell {
    /// Its date.
    pub date: Date,
    /// When it starts to count (UTC), as `YYYY-MM-DDTHH:MM:SSZ`.
    #[serde(serialize_with = "utc")]
    pub due_at: DateTime,
}

fn utc<S: serde::Serializer>(moment: &DateTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&moment.format("%Y-%m-%dT%H:%M:%SZ"))
}

/// The `status` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// Pipeline name.
    pub pipeline: String,
    /// Range shown.
    pub range: DateRange,
    /// Today, as used for expectations.
    pub today: Date,
    /// Rows.
    pub phases: Vec<PhaseStatus>,
}

impl StatusReport {
    /// Builds the report for `phases` over `range` (which must lie within the matrix).
    pub fn build(
        spec: &Spec,
        matrix: &Completeness,
        range: DateRange,
        phases: &[PhaseId],
        today: Date,
    ) -> Self {
        let rows = spec
            .phases
            .iter()
            .enumerate()
            .filter(|(_, p)| phases.contains(&p.id))
            .map(|(index, phase)| {
                let totals = matrix.totals(index, range);
                let get = |s| totals.get(&s).copied().unwrap_or(0);
                PhaseStatus {
                    phase: phase.id,
                    name: phase.name.clone(),
                    complete: get(CellState::Complete),
                    partial: get(CellState::Partial),
                    missing: get(CellState::Missing),
                    blocked: get(CellState::Blocked),
                    not_due: get(CellState::NotDue),
                    not_expected: get(CellState::NotExpected),
                    runs: runs(matrix, index, range),
                    not_due_cells: not_due_cells(matrix, index, range),
                }
            })
            .collect();
        StatusReport {
            pipeline: spec.name.clone(),
            range,
            today,
            phases: rows,
        }
    }

    /// Whether any shown cell is missing, partial or blocked.
    pub fn has_gaps(&self) -> bool {
        self.phases
            .iter()
            .any(|p| p.partial + p.missing + p.blocked > 0)
    }

    /// The compact text matrix.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "pipeline {} · {} ({} days) · today {}\n",
            self.pipeline,
            self.range,
            self.range.len(),
            self.today
        );
        let name_width = self.phases.iter().map(|p| p.name.len()).max().unwrap_or(0);
        for phase in &self.phases {
            out.push_str(&format!(
                "\nphase {:<3} {:<name_width$}  complete {} · partial {} · missing {} · blocked {} · not due {} · not expected {}\n",
                phase.phase,
                phase.name,
                thousands(phase.complete),
                thousands(phase.partial),
                thousands(phase.missing),
                thousands(phase.blocked),
                thousands(phase.not_due),
                thousands(phase.not_expected),
            ));
            for run in phase.runs.iter().take(MAX_RUNS_SHOWN) {
                let range = if run.start == run.end {
                    run.start.to_string()
                } else {
                    format!("{}..{}", run.start, run.end)
                };
                let detail = match run.state {
                    CellState::Partial => format!(
                        "{} cell{}, {} of {} expected",
                        run.cells,
                        plural(run.cells),
                        thousands_i(run.count),
                        thousands_i(run.expected)
                    ),
                    CellState::NotDue => {
                        let first = phase
                            .not_due_cells
                            .iter()
                            .find(|cell| cell.date >= run.start)
                            .map(|cell| cell.due_at.format("%Y-%m-%d %H:%M UTC").to_string())
                            .unwrap_or_default();
                        if run.cells == 1 {
                            format!("1 cell, due {first}")
                        } else {
                            format!("{} cells, the first due {first}", run.cells)
                        }
                    }
                    _ => format!("{} cell{}", run.cells, plural(run.cells)),
                };
                out.push_str(&format!(
                    "  {:<9} {:<22}  {detail}\n",
                    run.state.as_str(),
                    range
                ));
            }
            if phase.runs.len() > MAX_RUNS_SHOWN {
                out.push_str(&format!(
                    "  … {} more runs (use --start-date/--end-date or --json)\n",
                    phase.runs.len() - MAX_RUNS_SHOWN
                ));
            }
        }
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The not-due cells of the phase at `index` over `range`, with when each becomes due.
pub fn not_due_cells(matrix: &Completeness, index: usize, range: DateRange) -> Vec<NotDueCell> {
    let Some(range) = matrix.range().intersect(&range) else {
        return Vec::new();
    };
    let phase = matrix.phases()[index];
    let first = matrix.range().index_of(range.start()).unwrap_or(0);
    let row = &matrix.row(index)[first..first + range.len()];
    range
        .iter()
        .zip(row)
        .filter(|(_, cell)| cell.state == CellState::NotDue)
        .filter_map(|(date, _)| {
            matrix
                .due_at(phase, date)
                .map(|due_at| NotDueCell { date, due_at })
        })
        .collect()
}

/// Runs of equal state for the phase at `index` over `range`.
pub fn runs(matrix: &Completeness, index: usize, range: DateRange) -> Vec<StateRun> {
    let Some(range) = matrix.range().intersect(&range) else {
        return Vec::new();
    };
    let row = matrix.row(index);
    let first = matrix.range().index_of(range.start()).unwrap_or(0);
    let last = matrix.range().index_of(range.end()).unwrap_or(0);
    let mut out: Vec<StateRun> = Vec::new();
    for (d, cell) in row.iter().enumerate().take(last + 1).skip(first) {
        let cell = *cell;
        if cell.state == CellState::NotExpected {
            continue;
        }
        let date = matrix.range().date_at(d);
        match out.last_mut() {
            Some(run) if run.state == cell.state => {
                run.end = date;
                run.cells += 1;
                run.count += cell.count;
                run.expected += cell.expected;
            }
            _ => out.push(StateRun {
                state: cell.state,
                start: date,
                end: date,
                cells: 1,
                count: cell.count,
                expected: cell.expected,
            }),
        }
    }
    out
}

/// Text rendering of a plan.
pub fn plan_text(plan: &Plan) -> String {
    let mut out = format!(
        "plan {} · {} task{} · {} cell{} to run{}\n",
        plan.range,
        thousands(plan.tasks.len()),
        plural(plan.tasks.len()),
        thousands(plan.cell_count()),
        plural(plan.cell_count()),
        if plan.force {
            " · --force: complete cells re-run"
        } else {
            ""
        }
    );
    let name_width = plan.phases.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for phase in &plan.phases {
        out.push_str(&format!(
            "\nphase {:<3} {:<name_width$}  run {} cell{} in {} task{} · skip {} complete · {} not expected · {} blocked\n",
            phase.phase,
            phase.name,
            thousands(phase.cells),
            plural(phase.cells),
            thousands(phase.tasks),
            plural(phase.tasks),
            thousands(phase.skipped_complete),
            thousands(phase.not_expected),
            thousands(phase.blocked),
        ));
        for range in phase.ranges.iter().take(MAX_RUNS_SHOWN) {
            out.push_str(&format!("  run  {range}\n"));
        }
        if phase.ranges.len() > MAX_RUNS_SHOWN {
            out.push_str(&format!(
                "  … {} more ranges\n",
                phase.ranges.len() - MAX_RUNS_SHOWN
            ));
        }
    }
    if !plan.blocked.is_empty() {
        out.push_str(&format!("\nblocked ({}):\n", thousands(plan.blocked.len())));
        for cell in plan.blocked.iter().take(MAX_BLOCKED_SHOWN) {
            out.push_str(&format!("  {}\n", cell.describe()));
        }
        if plan.blocked.len() > MAX_BLOCKED_SHOWN {
            out.push_str(&format!(
                "  … and {} more (--json lists all)\n",
                plan.blocked.len() - MAX_BLOCKED_SHOWN
            ));
        }
    }
    out
}

/// A count and its noun, pluralized with an `s` and with thousands separators: `1 gap`,
/// `2 gaps`, `1,234 cells`.
pub fn counted(n: usize, noun: &str) -> String {
    format!("{} {noun}{}", thousands(n), plural(n))
}

/// Items grouped into runs of consecutive dates sharing a key (a phase and a state, say): the
/// grouping `status` shows for a matrix row, for lists of cells such as detected gaps or ledger
/// rows. Items must come ordered by key, then date; a date gap or a new key starts a new run.
pub fn date_runs<'a, T, K: PartialEq>(
    items: &'a [T],
    key: impl Fn(&T) -> K,
    date: impl Fn(&T) -> Date,
) -> Vec<DateRun<'a, T>> {
    let mut out: Vec<DateRun<'a, T>> = Vec::new();
    let mut last_key: Option<K> = None;
    for item in items {
        let (item_key, item_date) = (key(item), date(item));
        let extends = last_key.as_ref() == Some(&item_key)
            && out
                .last()
                .is_some_and(|run| run.end.succ_opt() == Some(item_date));
        match out.last_mut() {
            Some(run) if extends => {
                run.end = item_date;
                run.items.push(item);
            }
            _ => out.push(DateRun {
                start: item_date,
                end: item_date,
                items: vec![item],
            }),
        }
        last_key = Some(item_key);
    }
    out
}

/// A text table: a header line naming the columns, then the rows, columns left-aligned and two
/// spaces apart, no trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, width) in cells.zip(&widths) {
            text.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count()) + 2;
            text.extend(std::iter::repeat_n(' ', pad));
        }
        format!("{}\n", text.trim_end())
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// A run of items on consecutive dates, from [`date_runs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateRun<'a, T> {
    /// First date.
    pub start: Date,
    /// Last date.
    pub end: Date,
    /// The items, in date order.
    pub items: Vec<&'a T>,
}

impl<T> DateRun<'_, T> {
    /// `2024-01-03..2024-01-05`, or the one date when the run is one day long.
    pub fn dates(&self) -> String {
        DateRange::new(self.start, self.end)
            .map_or_else(|_| self.start.to_string(), |range| range.to_string())
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Signed [`thousands`].
pub fn thousands_i(n: i64) -> String {
    let formatted = thousands(usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX));
    if n < 0 {
        format!("-{formatted}")
    } else {
        formatted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_pluralizes_and_separates_thousands() {
        assert_eq!(counted(1, "gap"), "1 gap");
        assert_eq!(counted(2, "gap"), "2 gaps");
        assert_eq!(counted(1_234, "cell"), "1,234 cells");
        assert_eq!(counted(0, "range"), "0 ranges");
    }

    #[test]
    fn table_aligns_columns_under_a_header() {
        let rows = vec![
            vec!["1 raw".to_owned(), "2024-01-01".to_owned(), "3".to_owned()],
            vec!["12 load".to_owned(), "-".to_owned(), String::new()],
        ];
        assert_eq!(
            table(&["phase", "dates", "cells"], &rows),
            "phase    dates       cells\n1 raw    2024-01-01  3\n12 load  -\n"
        );
    }

    #[test]
    fn date_runs_split_on_a_new_key_or_a_missing_date() {
        let d = |text: &str| -> Date { text.parse().unwrap() };
        let items = [
            (1, d("2024-01-01")),
            (1, d("2024-01-02")),
            (1, d("2024-01-04")),
            (2, d("2024-01-05")),
            (3, d("2024-01-06")),
        ];
        let runs = date_runs(&items, |item| item.0, |item| item.1);
        let shown: Vec<_> = runs
            .iter()
            .map(|run| (run.dates(), run.items.len()))
            .collect();
        assert_eq!(
            shown,
            [
                ("2024-01-01..2024-01-02".to_owned(), 2),
                ("2024-01-04".to_owned(), 1),
                ("2024-01-05".to_owned(), 1),
                ("2024-01-06".to_owned(), 1),
            ]
        );
    }
}
