//! `gapless gaps`: the gap ledger, its rows grouped into runs of consecutive dates per phase and
//! status (`--json` keeps one object per row).

use gapless_core::render::{counted, date_runs, table, thousands, thousands_i};
use gapless_core::spec::PhaseId;
use gapless_store::{GapFilter, GapRecord, GapStatus};

use crate::cli::{GapsArgs, Global};
use crate::commands::scan::{PhaseNames, in_ranges, span};
use crate::commands::{out, print_json};
use crate::exit::{Exit, UsageError};
use crate::settings;

const MINUTE: &str = "%Y-%m-%d %H:%M";

pub(crate) async fn run(global: &Global, args: &GapsArgs) -> anyhow::Result<Exit> {
    let filter: GapFilter = args.status.parse().map_err(|_| {
        UsageError::new(format!(
            "--status: `{}` is not one of open, pending, triggered, complete, failed, alerted, all",
            args.status
        ))
    })?;
    let loaded = settings::load(global)?;
    let store = loaded.store().await?;
    let mut gaps = store.gaps(filter).await?;
    if global.json {
        print_json(&gaps)?;
        return Ok(Exit::Success);
    }
    if gaps.is_empty() {
        out(format_args!("no {}s in the ledger\n", noun(filter)))?;
        return Ok(Exit::Success);
    }
    gaps.sort_by_key(|gap| (gap.phase_to, run_key(gap), gap.partition_date, gap.id));
    let names = PhaseNames(&loaded.spec);
    out(format_args!("{}", ledger_text(&gaps, filter, &names)))?;
    Ok(Exit::Success)
}

/// What a run of ledger rows shares besides its phase: where it stands, what it follows from,
/// and (for closed gaps) the minute it closed.
fn run_key(gap: &GapRecord) -> (&'static str, Option<i64>, Option<String>) {
    (gap.healing_status.as_str(), gap.phase_from, closed(gap))
}

/// How a gap closed: `cell complete 2024-03-10 12:00`; `None` while it is open.
fn closed(gap: &GapRecord) -> Option<String> {
    (gap.healing_status == GapStatus::Complete).then(|| match gap.healed_at {
        Some(at) => format!("cell complete {}", at.format(MINUTE)),
        None => "cell complete".to_owned(),
    })
}

fn phase_id(id: i64) -> Option<PhaseId> {
    u32::try_from(id).ok().map(PhaseId)
}

/// The header line, then one line per run of consecutive dates.
fn ledger_text(gaps: &[GapRecord], filter: GapFilter, names: &PhaseNames<'_>) -> String {
    let runs = date_runs(
        gaps,
        |gap| (gap.phase_to, run_key(gap)),
        |gap| gap.partition_date,
    );
    let any_closed = gaps.iter().any(|gap| closed(gap).is_some());
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            let first = run.items[0];
            let found: i64 = run.items.iter().map(|gap| gap.found).sum();
            let expected: i64 = run.items.iter().map(|gap| gap.expected).sum();
            let ages = run.items.iter().map(|gap| gap.gap_age_days);
            let detected = run.items.iter().map(|gap| gap.detected_at).min();
            let mut row = vec![
                phase_id(first.phase_to)
                    .map_or_else(|| first.phase_to.to_string(), |id| names.phase(id)),
                run.dates(),
                first.healing_status.as_str().to_owned(),
                thousands(run.items.len()),
                format!("{} of {}", thousands_i(found), thousands_i(expected)),
                span(ages.clone().min().unwrap_or(0), ages.max().unwrap_or(0)),
                names.upstream(first.phase_from.and_then(phase_id)),
                detected.map_or_else(String::new, |at| at.format(MINUTE).to_string()),
            ];
            if any_closed {
                row.push(closed(first).unwrap_or_else(|| "-".to_owned()));
            }
            row
        })
        .collect();
    let mut header = vec![
        "phase",
        "dates",
        "status",
        "cells",
        "rows",
        "age (days)",
        "upstream",
        "detected",
    ];
    if any_closed {
        header.push("closed");
    }
    format!(
        "{}{}\n{}",
        counted(gaps.len(), &noun(filter)),
        in_ranges(runs.len(), gaps.len()),
        table(&header, &rows)
    )
}

/// `open gap`, `complete gap`, or `gap` (for `all`): what the filter lists.
fn noun(filter: GapFilter) -> String {
    match filter {
        GapFilter::All => "gap".to_owned(),
        other => format!("{} gap", other.as_str()),
    }
}
