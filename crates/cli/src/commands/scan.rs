//! `gapless scan`: find the gaps of the last `--lookback` days by counting rows, and record them
//! in the gap ledger (SPEC.md, Semantics 6).

use std::time::Duration;

use gapless_core::dates::{DateRange, parse_duration};
use gapless_core::gaps::Gap;
use gapless_core::render::{DateRun, counted, date_runs, table, thousands, thousands_i};
use gapless_core::spec::{PhaseId, Spec};
use gapless_runtime::lifecycle::Ledger;
use serde_json::json;

use crate::cli::{Global, ScanArgs};
use crate::commands::{note, out, print_json};
use crate::exit::{Exit, UsageError};
use crate::settings;

const DAY: u64 = 86_400;

pub(crate) async fn run(global: &Global, args: &ScanArgs) -> anyhow::Result<Exit> {
    let loaded = settings::load(global)?;
    let lookback = match &args.lookback {
        Some(text) => {
            parse_duration(text).map_err(|e| UsageError::new(format!("--lookback: {e}")))?
        }
        None => loaded.spec.healing.lookback,
    };
    let days = lookback_days(lookback)
        .ok_or_else(|| UsageError::new("--lookback: must be at least one day, e.g. `90d`"))?;
    let store = loaded.store().await?;
    let context = loaded.context().await?;
    let ledger = if args.dry_run {
        Ledger::Untouched
    } else {
        Ledger::Recorded { fence: None }
    };
    let scan = gapless_runtime::lifecycle::scan_with(&context, &store, days, ledger).await?;
    if args.heal && args.jobs == 0 {
        return Err(UsageError::new("--jobs: must be at least 1").into());
    }
    // With --json, one document: the heal runs first, quietly, and is reported with the scan.
    let healed = if args.heal && global.json {
        Some(heal(&loaded, &context, &store, &scan, args, global).await?)
    } else {
        None
    };
    let gaps: Vec<_> = scan
        .gaps
        .iter()
        .map(|gap| {
            let name = loaded
                .spec
                .phase(gap.phase_to)
                .map(|phase| phase.name.clone());
            (gap, name.unwrap_or_default())
        })
        .collect();
    let exit = report(
        global,
        scan.range,
        &gaps,
        &PhaseNames(&loaded.spec),
        scan.recorded,
        healed.as_ref(),
        crate::commands::bigquery_usage(&context),
    )?;
    if args.heal && !global.json {
        let healed = heal(&loaded, &context, &store, &scan, args, global).await?;
        if let Some(alert) = &healed.alert
            && !global.quiet
        {
            out(format_args!("{alert}"))?;
        }
        return Ok(healed.exit);
    }
    Ok(healed.map_or(exit, |healed| healed.exit))
}

/// What `--heal` did.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Healed {
    /// The heal run, if one was started.
    run_id: Option<gapless_store::RunId>,
    /// Gaps it was started for (a dry run: would be).
    pub(crate) gaps: usize,
    /// Of them, closed by it.
    healed: usize,
    /// Of them, still open (failed or blocked), each with its error in the ledger.
    failed: usize,
    /// Gaps left for a person: older than `auto_heal_max_age`, or failed `max_attempts` times.
    pub(crate) left: usize,
    /// Of them, alerted about now (the others were, within `realert_after`).
    alerted: usize,
    /// Gaps a heal run is already working on.
    in_progress: usize,
    /// Nothing was changed.
    dry_run: bool,
    /// The alert's text for the gaps alerted about now.
    #[serde(skip)]
    pub(crate) alert: Option<String>,
    #[serde(skip)]
    pub(crate) exit: Exit,
}

/// Applies the healing policy to `scan` as `gapless heal` does: records and sends the alerts,
/// runs the heal with progress, records how it ended.
pub(crate) async fn heal(
    loaded: &settings::Loaded,
    context: &gapless_runtime::context::Context,
    store: &gapless_store::Store,
    scan: &gapless_runtime::lifecycle::Scan,
    args: &ScanArgs,
    global: &Global,
) -> anyhow::Result<Healed> {
    use gapless_runtime::heal;
    let speak = !global.json && !global.quiet;
    let decision = heal::decide(context, store, scan, args.include_old).await?;
    let alerted = if args.dry_run {
        decision.to_alert().count()
    } else {
        heal::record_alerts(context, store, &decision, None).await?
    };
    let left = decision.left.len();
    if !args.dry_run && alerted > 0 {
        deliver_alerts(loaded, store, speak).await;
    }
    let now: Vec<&heal::Left> = decision.to_alert().collect();
    let alert = (!now.is_empty())
        .then(|| {
            gapless_server::alerts::AlertMessage::from_outbox(&heal::alert_message(context, &now))
                .ok()
                .map(|message| message.text())
        })
        .flatten();
    if speak && left > 0 {
        let old = decision
            .left
            .iter()
            .filter(|l| l.why == heal::Why::TooOld)
            .count();
        let gave_up = left - old;
        let mut parts = Vec::new();
        if old > 0 {
            parts.push(format!(
                "{} older than {}",
                counted(old, "gap"),
                gapless_core::dates::format_duration(loaded.spec.healing.auto_heal_max_age)
            ));
        }
        if gave_up > 0 {
            parts.push(format!(
                "{} that failed {} heals",
                counted(gave_up, "gap"),
                loaded.spec.healing.max_attempts
            ));
        }
        note(format_args!(
            "left for a person: {} ({} alerted {}; heal them with `gapless heal --include-old`)",
            parts.join(" and "),
            thousands(alerted),
            if args.dry_run { "would be" } else { "now" }
        ));
    }
    let mut healed = Healed {
        run_id: None,
        gaps: 0,
        healed: 0,
        failed: 0,
        left,
        alerted,
        in_progress: decision.in_progress,
        dry_run: args.dry_run,
        alert,
        exit: if scan.gaps.is_empty() {
            Exit::Success
        } else {
            Exit::Incomplete
        },
    };
    let Some(plan) = decision
        .heal
        .as_ref()
        .filter(|plan| !(plan.plan.tasks.is_empty() && plan.plan.blocked.is_empty()))
    else {
        if speak {
            note(format_args!("nothing to heal"));
        }
        return Ok(healed);
    };
    healed.gaps = plan.cells.len();
    if args.dry_run {
        if speak {
            note(format_args!(
                "would heal {} with everything downstream: {}, {}",
                counted(plan.cells.len(), "gap"),
                counted(plan.plan.tasks.len(), "task"),
                counted(plan.plan.cell_count(), "cell")
            ));
        }
        return Ok(healed);
    }
    let starter = heal::Starter {
        owner: &loaded.owner,
        extra: None,
        fence: None,
    };
    let run_id = heal::start_heal(context, store, plan, starter).await?;
    if speak {
        note(format_args!(
            "healing {} with everything downstream: run {run_id}, {}",
            counted(plan.cells.len(), "gap"),
            counted(plan.plan.tasks.len(), "task"),
        ));
    }
    let tasks = gapless_runtime::executor::load_tasks(store, &loaded.spec, &run_id).await?;
    let quiet = Global {
        pipeline: None,
        json: false,
        verbose: global.verbose,
        quiet: global.quiet || global.json,
    };
    let exit = crate::commands::backfill::execute_run(
        loaded,
        context.clone(),
        store.clone(),
        run_id.clone(),
        tasks,
        args.jobs,
        &quiet,
    )
    .await?;
    let (closed, failed) = heal::finish_heal(store, &run_id).await?;
    if speak {
        out(format_args!(
            "healed {} of {}{}\n",
            thousands(closed),
            counted(plan.cells.len(), "gap"),
            if failed > 0 {
                format!("; {} still open (see `gapless gaps`)", thousands(failed))
            } else {
                String::new()
            }
        ))?;
    }
    healed.run_id = Some(run_id);
    healed.healed = closed;
    healed.failed = failed;
    healed.exit = match exit {
        Exit::Success if failed == 0 && left == 0 => Exit::Success,
        Exit::Interrupted => Exit::Interrupted,
        Exit::Success => Exit::Incomplete,
        other => other,
    };
    Ok(healed)
}

/// Sends the alerts outbox on the `[alerts]` channels, once; what cannot be delivered now
/// stays in the outbox for `serve` (or the next `heal`) to send.
async fn deliver_alerts(loaded: &settings::Loaded, store: &gapless_store::Store, speak: bool) {
    let channels = match crate::commands::serve::alert_channels(&loaded.spec) {
        Ok(channels) => channels,
        Err(error) => {
            note(format_args!("alerts not sent: {error:#}"));
            return;
        }
    };
    if channels.is_empty() {
        if speak {
            note(format_args!(
                "no [alerts] channel is configured: `gapless gaps --status alerted` lists them"
            ));
        }
        return;
    }
    match gapless_server::alert_outbox::deliver_pending(store, &channels, None).await {
        Ok(outcome) if outcome.failed > 0 => note(format_args!(
            "{} not delivered yet; kept to be sent again",
            counted(outcome.failed, "alert message")
        )),
        Ok(outcome) if speak => note(format_args!(
            "{} sent",
            counted(outcome.delivered, "alert message")
        )),
        Ok(_) => {}
        Err(error) => note(format_args!("alerts not sent: {error:#}")),
    }
}

/// The gaps in runs of consecutive dates of one phase and state.
fn gap_runs<'a>(gaps: &'a [(&'a Gap, String)]) -> Vec<DateRun<'a, (&'a Gap, String)>> {
    date_runs(
        gaps,
        |(gap, _)| (gap.phase_to, gap.state),
        |(gap, _)| gap.date,
    )
}

/// ` in 3 ranges` when the gaps make fewer ranges than gaps, else nothing.
pub(crate) fn in_ranges(ranges: usize, gaps: usize) -> String {
    if ranges < gaps {
        format!(" in {}", counted(ranges, "range"))
    } else {
        String::new()
    }
}

/// One line per run of gaps, under a header naming the columns.
fn gap_table(gaps: &[(&Gap, String)], names: &PhaseNames<'_>) -> String {
    let rows: Vec<Vec<String>> = gap_runs(gaps)
        .iter()
        .map(|run| {
            let (first, name) = run.items[0];
            let found: i64 = run.items.iter().map(|(gap, _)| gap.found).sum();
            let expected: i64 = run.items.iter().map(|(gap, _)| gap.expected).sum();
            let ages = run.items.iter().map(|(gap, _)| gap.age_days);
            vec![
                format!("{} {name}", first.phase_to),
                run.dates(),
                first.state.as_str().to_owned(),
                thousands(run.items.len()),
                format!("{} of {}", thousands_i(found), thousands_i(expected)),
                span(ages.clone().min().unwrap_or(0), ages.max().unwrap_or(0)),
                names.upstream(first.phase_from),
            ]
        })
        .collect();
    table(
        &[
            "phase",
            "dates",
            "state",
            "cells",
            "rows",
            "age (days)",
            "upstream",
        ],
        &rows,
    )
}

/// `3`, or `1-3` when the values differ.
pub(crate) fn span(low: i64, high: i64) -> String {
    if low == high {
        low.to_string()
    } else {
        format!("{low}-{high}")
    }
}

/// Phase names for messages, from the pipeline file.
pub(crate) struct PhaseNames<'a>(pub(crate) &'a Spec);

impl PhaseNames<'_> {
    /// `3 analytics`, or the bare id of a phase the pipeline file no longer has.
    pub(crate) fn phase(&self, id: PhaseId) -> String {
        self.0
            .phase(id)
            .map_or_else(|| id.to_string(), |phase| format!("{id} {}", phase.name))
    }

    /// The phase a gap's cell needs (`2 load`), or `source` for a phase that needs none.
    pub(crate) fn upstream(&self, from: Option<PhaseId>) -> String {
        from.map_or_else(|| "source".to_owned(), |id| self.phase(id))
    }
}

/// Whole days in `lookback`, rounded up; `None` under one day.
fn lookback_days(lookback: Duration) -> Option<i64> {
    let days = lookback.as_secs().div_ceil(DAY);
    (lookback >= Duration::from_secs(DAY)).then(|| i64::try_from(days).unwrap_or(i64::MAX))
}

/// Prints the scan; exit 0 when no gap is open in the range, 1 otherwise.
fn report(
    global: &Global,
    range: Option<DateRange>,
    gaps: &[(&Gap, String)],
    names: &PhaseNames<'_>,
    recorded: gapless_store::ScanRecorded,
    healed: Option<&Healed>,
    bigquery: Option<serde_json::Value>,
) -> anyhow::Result<Exit> {
    if global.json {
        let gaps: Vec<_> = gaps
            .iter()
            .map(|(gap, name)| {
                json!({
                    "phase_from": gap.phase_from,
                    "phase_to": gap.phase_to,
                    "phase_name": name,
                    "date": gap.date,
                    "state": gap.state,
                    "found": gap.found,
                    "expected": gap.expected,
                    "gap_age_days": gap.age_days,
                })
            })
            .collect();
        let mut document = json!({
            "start_date": range.map(|r| r.start()),
            "end_date": range.map(|r| r.end()),
            "gaps": gaps,
            "ledger": recorded,
            "heal": healed,
        });
        if let Some(usage) = bigquery {
            document["bigquery"] = usage;
        }
        print_json(&document)?;
    } else {
        match range {
            Some(range) => out(format_args!(
                "scanned {range}: {}{}; ledger: {} new, {} still open, {} closed\n",
                counted(gaps.len(), "gap"),
                in_ranges(gap_runs(gaps).len(), gaps.len()),
                thousands(recorded.opened),
                thousands(recorded.still_open),
                thousands(recorded.closed)
            ))?,
            None => out(format_args!(
                "nothing to scan: the pipeline starts after today\n"
            ))?,
        }
        if !gaps.is_empty() {
            out(format_args!("{}", gap_table(gaps, names)))?;
        }
    }
    Ok(if gaps.is_empty() {
        Exit::Success
    } else {
        Exit::Incomplete
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookback_is_whole_days_rounded_up() {
        assert_eq!(lookback_days(Duration::from_secs(90 * DAY)), Some(90));
        assert_eq!(lookback_days(Duration::from_secs(DAY + 1)), Some(2));
        assert_eq!(lookback_days(Duration::from_secs(DAY - 1)), None);
    }
}
