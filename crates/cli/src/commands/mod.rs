//! One module per subcommand, each `run(args, …) -> anyhow::Result<Exit>`.

pub(crate) mod backfill;
pub(crate) mod check;
pub(crate) mod demo;
pub(crate) mod gaps;
pub(crate) mod nodes;
pub(crate) mod plan;
pub(crate) mod report;
pub(crate) mod resume;
pub(crate) mod runs;
pub(crate) mod scan;
pub(crate) mod serve;
pub(crate) mod status;

use std::io::Write;

use anyhow::Context as _;
use gapless_core::cells::Completeness;
use gapless_core::dates::DateRange;
use gapless_runtime::context::Context;
use serde::Serialize;

use crate::cli::{Cli, Command};
use crate::exit::Exit;

/// Runs the parsed command line.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let global = &cli.global;
    match &cli.command {
        Command::Check => check::run(global).await,
        Command::Status(args) => status::run(global, args).await,
        Command::Plan(args) => plan::run(global, args).await,
        Command::Backfill(args) => backfill::run(global, args).await,
        Command::Resume(args) => resume::run(global, args).await,
        Command::Runs(args) => runs::run(global, args).await,
        Command::Migrate => {
            let loaded = crate::settings::load(global)?;
            let store = loaded.store().await?;
            let version = store.schema_version().await?;
            if global.json {
                print_json(&serde_json::json!({ "schema_version": version }))?;
            } else {
                out(format_args!("state store at schema version {version}\n"))?;
            }
            Ok(Exit::Success)
        }
        Command::Scan(args) => scan::run(global, args).await,
        Command::Heal(args) => {
            let scan = crate::cli::ScanArgs {
                lookback: args.lookback.clone(),
                heal: true,
                include_old: args.include_old,
                jobs: args.jobs,
                dry_run: args.dry_run,
            };
            scan::run(global, &scan).await
        }
        Command::Gaps(args) => gaps::run(global, args).await,
        Command::Nodes => nodes::run(global).await,
        Command::Report(args) => report::run(global, args).await,
        Command::Serve(args) => serve::run(global, args).await,
        Command::Demo(args) => demo::run(global, args).await,
        Command::NbaLoad(args) => {
            let start = crate::settings::date_arg("start-date", &args.start_date)?;
            let end = crate::settings::date_arg("end-date", &args.end_date)?;
            let report = match &args.warehouse_url {
                None => gapless_nba::load_boxscores(&args.dir, start, end)
                    .await
                    .context("loading box scores")?,
                Some(url) => demo::load_into(url, &args.dir, start, end).await?,
            };
            out(format_args!(
                "loaded {} rows of {} games over {} dates\n",
                report.rows, report.games, report.dates
            ))?;
            Ok(Exit::Success)
        }
    }
}

/// Probes `range` (widened back by the spec's lookback) and classifies every cell.
pub(crate) async fn matrix(context: &Context, range: DateRange) -> anyhow::Result<Completeness> {
    Ok(gapless_runtime::lifecycle::matrix(context, range).await?)
}

/// A line for the person watching, on stderr. A closed stderr (`gapless backfill 2>&1 | head`)
/// loses the line, never the run: the run's state is recorded whatever happens to its output.
pub(crate) fn note(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{args}");
}

/// Writes to stdout; a closed pipe surfaces as an error `main` treats as success.
pub(crate) fn out(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args)?;
    stdout.flush()?;
    Ok(())
}

/// Prints `value` as pretty JSON on stdout.
/// On BigQuery, what the command's queries cost so far, for `--json`: `{"queries": N,
/// "bytes_processed": B}` (dry runs included). `None` on SQLite and PostgreSQL.
pub(crate) fn bigquery_usage(context: &Context) -> Option<serde_json::Value> {
    let usage = context.warehouse.as_ref()?.usage()?;
    Some(serde_json::json!({
        "queries": usage.queries,
        "bytes_processed": usage.bytes_processed,
    }))
}

/// `value` (an object) with the key `bigquery` from [`bigquery_usage`] when there is one.
pub(crate) fn with_bigquery_usage(
    value: &impl Serialize,
    context: &Context,
) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(value)?;
    if let (Some(usage), Some(object)) = (bigquery_usage(context), value.as_object_mut()) {
        object.insert("bigquery".to_owned(), usage);
    }
    Ok(value)
}

pub(crate) fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    out(format_args!("{text}\n"))
}
