//! `gapless scan`: find the gaps of the last `--lookback` days by counting rows, and record them
//! in the gap ledger (SPEC.md, Semantics 6).

use std::time::Duration;

use gapless_core::dates::{DateRange, parse_duration};
use gapless_core::gaps::Gap;
use serde_json::json;

use crate::cli::{Global, ScanArgs};
use crate::commands::{out, print_json};
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
    let scan = gapless_runtime::lifecycle::scan(&context, &store, days).await?;
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
    report(global, scan.range, &gaps, scan.recorded)
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
    recorded: gapless_store::ScanRecorded,
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
        print_json(&json!({
            "start_date": range.map(|r| r.start()),
            "end_date": range.map(|r| r.end()),
            "gaps": gaps,
            "ledger": recorded,
        }))?;
    } else {
        match range {
            Some(range) => out(format_args!(
                "scanned {}..{}: {} gap(s); ledger: {} new, {} still open, {} closed\n",
                range.start(),
                range.end(),
                gaps.len(),
                recorded.opened,
                recorded.still_open,
                recorded.closed
            ))?,
            None => out(format_args!(
                "nothing to scan: the pipeline starts after today\n"
            ))?,
        }
        for (gap, name) in gaps {
            let from = gap
                .phase_from
                .map_or_else(|| "-".to_owned(), |phase| phase.to_string());
            out(format_args!(
                "  phase {} {name:<14} {}  {:<7} {} of {}  from phase {from}  {} day(s) old\n",
                gap.phase_to,
                gap.date,
                gap.state.as_str(),
                gap.found,
                gap.expected,
                gap.age_days,
            ))?;
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
