//! `gapless status`: the phase × date matrix.

use gapless_core::dates::DateRange;
use gapless_core::render::StatusReport;
use gapless_core::select::select;

use crate::cli::{Global, StatusArgs};
use crate::commands::{matrix, out, print_json, with_bigquery_usage};
use crate::exit::{Exit, UsageError};
use crate::settings;

pub(crate) async fn run(global: &Global, args: &StatusArgs) -> anyhow::Result<Exit> {
    let loaded = settings::load(global)?;
    let start = match &args.start_date {
        Some(value) => settings::date_arg("start-date", value)?,
        None => loaded.spec.start,
    };
    let end = match &args.end_date {
        Some(value) => settings::date_arg("end-date", value)?,
        None => loaded.today,
    };
    let range = DateRange::new(start, end).map_err(|e| UsageError::new(e.to_string()))?;
    let phases = select(&loaded.spec, args.phases.as_deref())
        .map_err(|e| UsageError::new(format!("--phases: {e}")))?;
    let context = loaded.context().await?;
    let matrix = matrix(&context, range).await?;
    let phases: Vec<_> = phases.into_iter().collect();
    let report = StatusReport::build(&loaded.spec, &matrix, range, &phases, loaded.today);
    if global.json {
        print_json(&with_bigquery_usage(&report, &context)?)?;
    } else {
        out(format_args!("{}", report.to_text()))?;
    }
    Ok(Exit::Success)
}
