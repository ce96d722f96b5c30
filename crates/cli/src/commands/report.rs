//! `gapless report`: the completeness report per phase and season (July to June), the
//! document the original team kept by hand as DATA-COMPLETENESS.

use std::collections::BTreeMap;

use gapless_core::cells::CellState;
use gapless_core::dates::{DateRange, season_of};
use gapless_core::render::{runs, thousands};
use serde::Serialize;

use crate::cli::{Global, ReportArgs, ReportFormat};
use crate::commands::{matrix, out, print_json};
use crate::exit::{Exit, UsageError};
use crate::settings;

#[derive(Debug, Default, Serialize)]
struct Row {
    phase: u32,
    name: String,
    season: String,
    expected_cells: usize,
    complete: usize,
    partial: usize,
    missing: usize,
    blocked: usize,
    rows: i64,
    expected_rows: i64,
}

#[derive(Debug, Serialize)]
struct Gap {
    phase: u32,
    name: String,
    state: CellState,
    start: String,
    end: String,
    cells: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    pipeline: String,
    range: DateRange,
    today: String,
    rows: Vec<Row>,
    gaps: Vec<Gap>,
}

pub(crate) async fn run(global: &Global, args: &ReportArgs) -> anyhow::Result<Exit> {
    let loaded = settings::load(global)?;
    let range = DateRange::new(loaded.spec.start, loaded.today)
        .map_err(|e| UsageError::new(e.to_string()))?;
    let context = loaded.context().await?;
    let matrix = matrix(&context, range).await?;
    let mut rows = Vec::new();
    let mut gaps = Vec::new();
    for (index, phase) in loaded.spec.phases.iter().enumerate() {
        let mut seasons: BTreeMap<i32, Row> = BTreeMap::new();
        for (offset, cell) in matrix.row(index).iter().enumerate() {
            let date = matrix.range().date_at(offset);
            // Cells not due yet are not counted against anything, as cells not expected.
            if !range.contains(date)
                || matches!(cell.state, CellState::NotExpected | CellState::NotDue)
            {
                continue;
            }
            let season = season_of(date);
            let row = seasons.entry(season).or_insert_with(|| Row {
                phase: phase.id.0,
                name: phase.name.clone(),
                season: format!("{}-{:02}", season, (season + 1) % 100),
                ..Row::default()
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
        rows.extend(seasons.into_values());
        for run in runs(&matrix, index, range) {
            if matches!(
                run.state,
                CellState::Missing | CellState::Partial | CellState::Blocked
            ) {
                gaps.push(Gap {
                    phase: phase.id.0,
                    name: phase.name.clone(),
                    state: run.state,
                    start: run.start.to_string(),
                    end: run.end.to_string(),
                    cells: run.cells,
                });
            }
        }
    }
    let report = Report {
        pipeline: loaded.spec.name.clone(),
        range,
        today: loaded.today.to_string(),
        rows,
        gaps,
    };
    let format = if global.json {
        ReportFormat::Json
    } else {
        args.format
    };
    match format {
        ReportFormat::Json => print_json(&report)?,
        ReportFormat::Md => out(format_args!("{}", markdown(&report)))?,
        ReportFormat::Html => out(format_args!("{}", html(&report)))?,
    }
    Ok(Exit::Success)
}

fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

fn markdown(report: &Report) -> String {
    let mut out = format!(
        "# Data completeness: {}\n\n{} · as of {}\n\n| phase | season | expected | complete | partial | missing | blocked | rows / expected |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        report.pipeline, report.range, report.today
    );
    for row in &report.rows {
        out.push_str(&format!(
            "| {} {} | {} | {} | {} ({}) | {} | {} | {} | {} / {} |\n",
            row.phase,
            row.name,
            row.season,
            thousands(row.expected_cells),
            thousands(row.complete),
            percent(row.complete, row.expected_cells),
            thousands(row.partial),
            thousands(row.missing),
            thousands(row.blocked),
            gapless_core::render::thousands_i(row.rows),
            gapless_core::render::thousands_i(row.expected_rows),
        ));
    }
    out.push_str("\n## Open gaps\n\n");
    if report.gaps.is_empty() {
        out.push_str("None: every expected cell is complete.\n");
    } else {
        out.push_str("| phase | state | from | to | cells |\n| --- | --- | --- | --- | ---: |\n");
        for gap in &report.gaps {
            out.push_str(&format!(
                "| {} {} | {} | {} | {} | {} |\n",
                gap.phase,
                gap.name,
                gap.state.as_str(),
                gap.start,
                gap.end,
                gap.cells
            ));
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(report: &Report) -> String {
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Data completeness: {0}</title>\n<style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}}td:first-child,th:first-child{{text-align:left}}.gap{{background:#fde2e1}}.ok{{background:#e3f6e5}}</style></head><body>\n<h1>Data completeness: {0}</h1>\n<p>{1} · as of {2}</p>\n<table><thead><tr><th>phase</th><th>season</th><th>expected</th><th>complete</th><th>partial</th><th>missing</th><th>blocked</th><th>rows / expected</th></tr></thead><tbody>\n",
        escape(&report.pipeline),
        report.range,
        report.today
    );
    for row in &report.rows {
        let class = if row.complete == row.expected_cells {
            "ok"
        } else {
            "gap"
        };
        out.push_str(&format!(
            "<tr class=\"{class}\"><td>{} {}</td><td>{}</td><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td></tr>\n",
            row.phase,
            escape(&row.name),
            row.season,
            row.expected_cells,
            row.complete,
            percent(row.complete, row.expected_cells),
            row.partial,
            row.missing,
            row.blocked,
            row.rows,
            row.expected_rows
        ));
    }
    out.push_str("</tbody></table>\n<h2>Open gaps</h2>\n");
    if report.gaps.is_empty() {
        out.push_str("<p>None: every expected cell is complete.</p>\n");
    } else {
        out.push_str("<table><thead><tr><th>phase</th><th>state</th><th>from</th><th>to</th><th>cells</th></tr></thead><tbody>\n");
        for gap in &report.gaps {
            out.push_str(&format!(
                "<tr><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                gap.phase,
                escape(&gap.name),
                gap.state.as_str(),
                gap.start,
                gap.end,
                gap.cells
            ));
        }
        out.push_str("</tbody></table>\n");
    }
    out.push_str("</body></html>\n");
    out
}
