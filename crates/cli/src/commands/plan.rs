//! `gapless plan`: what a backfill would do, without doing it.

use gapless_core::dates::DateRange;
use gapless_core::plan::Request;
use gapless_core::render::plan_text;
use gapless_core::select::select;

use crate::cli::{Global, PlanArgs};
use crate::commands::{out, print_json};
use crate::exit::{Exit, UsageError};
use crate::settings::{self, Loaded};

/// Validates the request's arguments against the spec.
pub(crate) fn request(loaded: &Loaded, args: &PlanArgs) -> anyhow::Result<Request> {
    let start = settings::date_arg("start-date", &args.start_date)?;
    let end = settings::date_arg("end-date", &args.end_date)?;
    let range = DateRange::new(start, end).map_err(|e| UsageError::new(e.to_string()))?;
    let phases = select(&loaded.spec, args.phases.as_deref())
        .map_err(|e| UsageError::new(format!("--phases: {e}")))?;
    Ok(Request {
        range,
        phases,
        force: args.force,
    })
}

pub(crate) async fn run(global: &Global, args: &PlanArgs) -> anyhow::Result<Exit> {
    let loaded = settings::load(global)?;
    let request = request(&loaded, args)?;
    let context = loaded.context().await?;
    let plan = gapless_runtime::lifecycle::plan(&context, &request).await?;
    if global.json {
        print_json(&plan)?;
    } else {
        out(format_args!("{}", plan_text(&plan)))?;
    }
    Ok(Exit::Success)
}
