//! `gapless report`: the completeness report per phase and period (`[report] period`: month by
//! default, year, or a season such as the NBA's July to June), the document the original team
//! kept by hand as DATA-COMPLETENESS. Built in `gapless_core::report`.

use gapless_core::dates::DateRange;
use gapless_core::report::CompletenessReport;

use crate::cli::{Global, ReportArgs, ReportFormat};
use crate::commands::{matrix, out, print_json};
use crate::exit::{Exit, UsageError};
use crate::settings;

pub(crate) async fn run(global: &Global, args: &ReportArgs) -> anyhow::Result<Exit> {
    let loaded = settings::load(global)?;
    let range = DateRange::new(loaded.spec.start, loaded.today)
        .map_err(|e| UsageError::new(e.to_string()))?;
    let context = loaded.context().await?;
    let matrix = matrix(&context, range).await?;
    let report = CompletenessReport::build(&loaded.spec, &matrix, range, loaded.today);
    let format = if global.json {
        ReportFormat::Json
    } else {
        args.format
    };
    match format {
        ReportFormat::Json => print_json(&report)?,
        ReportFormat::Md => out(format_args!("{}", report.to_markdown()))?,
        ReportFormat::Html => out(format_args!("{}", report.to_html()))?,
    }
    Ok(Exit::Success)
}
