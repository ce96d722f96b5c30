//! `gapless gaps`: the gap ledger.

use gapless_store::GapFilter;

use crate::cli::{GapsArgs, Global};
use crate::commands::{out, print_json};
use crate::exit::{Exit, UsageError};
use crate::settings;

pub(crate) async fn run(global: &Global, args: &GapsArgs) -> anyhow::Result<Exit> {
    let filter: GapFilter = args.status.parse().map_err(|_| {
        UsageError::new(format!(
            "--status: `{}` is not one of open, pending, triggered, complete, failed, alerted, all",
            args.status
        ))
    })?;
    let loaded = settings::load(global)?;
    let store = loaded.store().await?;
    let gaps = store.gaps(filter).await?;
    if global.json {
        print_json(&gaps)?;
        return Ok(Exit::Success);
    }
    if gaps.is_empty() {
        out(format_args!("no {} gaps in the ledger\n", filter.as_str()))?;
    }
    for gap in &gaps {
        let from = gap
            .phase_from
            .map_or_else(|| "-".to_owned(), |phase| phase.to_string());
        out(format_args!(
            "{:>6}  {from:>2} → {:<2} {}  {:<9} {} of {}  {} day(s) old  detected {}  seen {}\n",
            gap.id,
            gap.phase_to,
            gap.partition_date,
            gap.healing_status.as_str(),
            gap.found,
            gap.expected,
            gap.gap_age_days,
            gap.detected_at.format("%Y-%m-%d %H:%M"),
            gap.last_seen_at.format("%Y-%m-%d %H:%M"),
        ))?;
    }
    Ok(Exit::Success)
}
