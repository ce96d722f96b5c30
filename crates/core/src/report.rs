//! The completeness report (`gapless report`): per phase and period (month, year or season, as
//! `[report] period` says), the cells expected, complete, partial, missing and blocked; then the
//! open gaps as ranges, and the blocked cells apart, since they follow from the gaps upstream.
//! Strings in, strings out, as in [`crate::render`].

use std::collections::BTreeMap;

use chrono::Datelike;
use serde::Serialize;

use crate::cells::{CellState, Completeness};
use crate::dates::{Date, DateRange};
use crate::render::{counted, runs, thousands, thousands_i};
use crate::spec::{PhaseId, ReportPeriod, Spec};

/// The period a date falls in: a sort key and its label (`2024-01`, `2024`, `2024-25`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// Orders periods in time.
    pub key: i64,
    /// How it is shown.
    pub label: String,
}

impl ReportPeriod {
    /// The word for the period, as in the pipeline file: `month`, `year`, `season`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportPeriod::Month => "month",
            ReportPeriod::Year => "year",
            ReportPeriod::Season { .. } => "season",
        }
    }

    /// The period `date` falls in.
    pub fn of(self, date: Date) -> Period {
        match self {
            ReportPeriod::Month => Period {
                key: i64::from(date.year()) * 12 + i64::from(date.month0()),
                label: date.format("%Y-%m").to_string(),
            },
            ReportPeriod::Year => Period {
                key: i64::from(date.year()),
                label: date.year().to_string(),
            },
            ReportPeriod::Season { month, day } => {
                let year = if (date.month(), date.day()) >= (month, day) {
                    date.year()
                } else {
                    date.year() - 1
                };
                let label = if (month, day) == (1, 1) {
                    year.to_string()
                } else {
                    format!("{year}-{:02}", (year + 1).rem_euclid(100))
                };
                Period {
                    key: i64::from(year),
                    label,
                }
            }
        }
    }
}

/// One phase over one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    /// Phase id.
    pub phase: u32,
    /// Phase name.
    pub name: String,
    /// The period's label (`2024-01`, `2024`, `2024-25`).
    pub period: String,
    /// The same label when the period is a season, for consumers that read `season`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub season: Option<String>,
    /// Cells expected (due and expecting data).
    pub expected_cells: usize,
    /// Complete cells.
    pub complete: usize,
    /// Partial cells.
    pub partial: usize,
    /// Missing cells.
    pub missing: usize,
    /// Blocked cells.
    pub blocked: usize,
    /// Rows counted.
    pub rows: i64,
    /// Rows expected.
    pub expected_rows: i64,
}

/// A run of consecutive dates of one phase in one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRun {
    /// Phase id.
    pub phase: u32,
    /// Phase name.
    pub name: String,
    /// `missing` or `partial` for a gap, `blocked` for blocked cells.
    pub state: CellState,
    /// First date.
    pub start: Date,
    /// Last date.
    pub end: Date,
    /// Cells in the run.
    pub cells: usize,
}

/// The `report` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompletenessReport {
    /// Pipeline name.
    pub pipeline: String,
    /// Dates covered.
    pub range: DateRange,
    /// Today, as used for expectations.
    pub today: Date,
    /// `month`, `year` or `season`.
    pub period: &'static str,
    /// One row per phase and period, in phase then period order.
    pub rows: Vec<ReportRow>,
    /// Open gaps (missing or partial cells) as runs of dates.
    pub gaps: Vec<ReportRun>,
    /// Blocked cells as runs of dates: they wait for a gap upstream, and are not gaps of their own.
    pub blocked: Vec<ReportRun>,
}

impl CompletenessReport {
    /// Builds the report over `range` (which must lie within the matrix), grouped by
    /// `spec.report.period`.
    pub fn build(spec: &Spec, matrix: &Completeness, range: DateRange, today: Date) -> Self {
        let period = spec.report.period;
        let mut rows = Vec::new();
        let mut gaps = Vec::new();
        let mut blocked = Vec::new();
        for (index, &phase_id) in matrix.phases().iter().enumerate() {
            let name = spec
                .phase(phase_id)
                .map(|phase| phase.name.clone())
                .unwrap_or_default();
            let PhaseId(phase) = phase_id;
            let mut periods: BTreeMap<i64, ReportRow> = BTreeMap::new();
            for (offset, cell) in matrix.row(index).iter().enumerate() {
                let date = matrix.range().date_at(offset);
                // Cells not due yet are not counted against anything, as cells not expected.
                if !range.contains(date)
                    || matches!(cell.state, CellState::NotExpected | CellState::NotDue)
                {
                    continue;
                }
                let Period { key, label } = period.of(date);
                let row = periods.entry(key).or_insert_with(|| ReportRow {
                    phase,
                    name: name.clone(),
                    season: matches!(period, ReportPeriod::Season { .. }).then(|| label.clone()),
                    period: label,
                    ..ReportRow::default()
                });
                row.expected_cells += 1;
                row.rows += cell.count;
                row.expected_rows += cell.expected;
                match cell.state {
                    CellState::Complete => row.complete += 1,
                    CellState::Partial => row.partial += 1,
                    CellState::Missing => row.missing += 1,
                    CellState::Blocked => row.blocked += 1,
                    CellState::NotExpected | CellState::NotDue => {}
                }
            }
            rows.extend(periods.into_values());
            for run in runs(matrix, index, range) {
                let into = match run.state {
                    CellState::Missing | CellState::Partial => &mut gaps,
                    CellState::Blocked => &mut blocked,
                    CellState::Complete | CellState::NotDue | CellState::NotExpected => continue,
                };
                into.push(ReportRun {
                    phase,
                    name: name.clone(),
                    state: run.state,
                    start: run.start,
                    end: run.end,
                    cells: run.cells,
                });
            }
        }
        CompletenessReport {
            pipeline: spec.name.clone(),
            range,
            today,
            period: period.as_str(),
            rows,
            gaps,
            blocked,
        }
    }

    fn gap_cells(&self) -> usize {
        self.gaps.iter().map(|run| run.cells).sum()
    }

    fn blocked_cells(&self) -> usize {
        self.blocked.iter().map(|run| run.cells).sum()
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "# Data completeness: {}\n\n{} · as of {}\n\n| phase | {} | expected | complete | partial | missing | blocked | rows / expected |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            self.pipeline, self.range, self.today, self.period
        );
        for row in &self.rows {
            out.push_str(&format!(
                "| {} {} | {} | {} | {} ({}) | {} | {} | {} | {} / {} |\n",
                row.phase,
                row.name,
                row.period,
                thousands(row.expected_cells),
                thousands(row.complete),
                percent(row.complete, row.expected_cells),
                thousands(row.partial),
                thousands(row.missing),
                thousands(row.blocked),
                thousands_i(row.rows),
                thousands_i(row.expected_rows),
            ));
        }
        out.push_str("\n## Open gaps\n\n");
        if self.gaps.is_empty() {
            out.push_str(self.no_gaps());
        } else {
            out.push_str(&format!(
                "{} in {}.\n\n| phase | state | dates | cells |\n| --- | --- | --- | ---: |\n",
                counted(self.gap_cells(), "cell"),
                counted(self.gaps.len(), "range"),
            ));
            for run in &self.gaps {
                out.push_str(&format!(
                    "| {} {} | {} | {} | {} |\n",
                    run.phase,
                    run.name,
                    run.state.as_str(),
                    dates(run),
                    thousands(run.cells)
                ));
            }
        }
        if !self.blocked.is_empty() {
            out.push_str(&format!(
                "\n## Blocked\n\n{} wait for the cells they need; they fill in when the gaps upstream are healed.\n\n| phase | dates | cells |\n| --- | --- | ---: |\n",
                counted(self.blocked_cells(), "blocked cell"),
            ));
            for run in &self.blocked {
                out.push_str(&format!(
                    "| {} {} | {} | {} |\n",
                    run.phase,
                    run.name,
                    dates(run),
                    thousands(run.cells)
                ));
            }
        }
        out
    }

    fn no_gaps(&self) -> &'static str {
        if self.blocked.is_empty() {
            "None: every expected cell is complete.\n"
        } else {
            "None.\n"
        }
    }

    /// The report as a standalone HTML page.
    pub fn to_html(&self) -> String {
        let mut out = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Data completeness: {0}</title>\n<style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}}td:first-child,th:first-child{{text-align:left}}.gap{{background:#fde2e1}}.ok{{background:#e3f6e5}}</style></head><body>\n<h1>Data completeness: {0}</h1>\n<p>{1} · as of {2}</p>\n<table><thead><tr><th>phase</th><th>{3}</th><th>expected</th><th>complete</th><th>partial</th><th>missing</th><th>blocked</th><th>rows / expected</th></tr></thead><tbody>\n",
            escape(&self.pipeline),
            self.range,
            self.today,
            self.period
        );
        for row in &self.rows {
            let class = if row.complete == row.expected_cells {
                "ok"
            } else {
                "gap"
            };
            out.push_str(&format!(
                "<tr class=\"{class}\"><td>{} {}</td><td>{}</td><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td></tr>\n",
                row.phase,
                escape(&row.name),
                row.period,
                thousands(row.expected_cells),
                thousands(row.complete),
                percent(row.complete, row.expected_cells),
                thousands(row.partial),
                thousands(row.missing),
                thousands(row.blocked),
                thousands_i(row.rows),
                thousands_i(row.expected_rows)
            ));
        }
        out.push_str("</tbody></table>\n<h2>Open gaps</h2>\n");
        if self.gaps.is_empty() {
            out.push_str(&format!("<p>{}</p>\n", self.no_gaps().trim_end()));
        } else {
            out.push_str(&format!(
                "<p>{} in {}.</p>\n<table><thead><tr><th>phase</th><th>state</th><th>dates</th><th>cells</th></tr></thead><tbody>\n",
                counted(self.gap_cells(), "cell"),
                counted(self.gaps.len(), "range"),
            ));
            for run in &self.gaps {
                out.push_str(&format!(
                    "<tr><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                    run.phase,
                    escape(&run.name),
                    run.state.as_str(),
                    dates(run),
                    thousands(run.cells)
                ));
            }
            out.push_str("</tbody></table>\n");
        }
        if !self.blocked.is_empty() {
            out.push_str(&format!(
                "<h2>Blocked</h2>\n<p>{} wait for the cells they need; they fill in when the gaps upstream are healed.</p>\n<table><thead><tr><th>phase</th><th>dates</th><th>cells</th></tr></thead><tbody>\n",
                counted(self.blocked_cells(), "blocked cell"),
            ));
            for run in &self.blocked {
                out.push_str(&format!(
                    "<tr><td>{} {}</td><td>{}</td><td>{}</td></tr>\n",
                    run.phase,
                    escape(&run.name),
                    dates(run),
                    thousands(run.cells)
                ));
            }
            out.push_str("</tbody></table>\n");
        }
        out.push_str("</body></html>\n");
        out
    }
}

/// `2024-01-03..2024-01-05`, or one date.
fn dates(run: &ReportRun) -> String {
    DateRange::new(run.start, run.end).map_or_else(|_| run.start.to_string(), |r| r.to_string())
}

fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> Date {
        text.parse().unwrap()
    }

    #[test]
    fn periods_label_months_years_and_seasons() {
        let day = date("2024-06-30");
        assert_eq!(ReportPeriod::Month.of(day).label, "2024-06");
        assert_eq!(ReportPeriod::Year.of(day).label, "2024");
        let nba = ReportPeriod::Season { month: 7, day: 1 };
        assert_eq!(nba.of(day).label, "2023-24");
        assert_eq!(nba.of(date("2024-07-01")).label, "2024-25");
        assert_eq!(nba.of(date("1999-12-31")).label, "1999-00");
        let calendar = ReportPeriod::Season { month: 1, day: 1 };
        assert_eq!(calendar.of(day).label, "2024");
        assert!(ReportPeriod::Month.of(date("2023-12-31")).key < ReportPeriod::Month.of(day).key);
    }
}
