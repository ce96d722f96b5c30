//! The command line (SPEC.md "Command line").

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// gapless keeps a phased, date-partitioned pipeline free of silent gaps.
#[derive(Debug, Parser)]
#[command(name = "gapless", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The pipeline file (default: $GAPLESS_PIPELINE, else ./gapless.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) pipeline: Option<PathBuf>,
    /// Print one machine-readable JSON document on stdout.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Validate the pipeline file and reach every warehouse, probe and runner program.
    Check,
    /// The phase × date matrix of cell states, with totals.
    Status(StatusArgs),
    /// What a backfill would do: per phase the ranges and tasks to run, what is skipped, what is blocked and why.
    Plan(PlanArgs),
    /// Backfill a date range through phases, in dependency order, with validation gates.
    Backfill(BackfillArgs),
    /// Continue an interrupted run (default: the latest).
    Resume(ResumeArgs),
    /// List runs, or show one.
    Runs(RunsArgs),
    /// Create or upgrade the state store's tables.
    Migrate,
    /// Find gaps (cells missing or short while all they need is complete) and record them in the gap ledger.
    Scan(ScanArgs),
    /// Scan, then heal the recent gaps with everything downstream and alert a person about the old ones.
    Heal(HealArgs),
    /// List the gap ledger.
    Gaps(GapsArgs),
    /// The `serve` nodes sharing the state store: live or not, the leader, their runs and running tasks.
    Nodes,
    /// The completeness report per phase and period (month, year or season).
    Report(ReportArgs),
    /// The service: HTTP API, events in and out, the trigger (every completed cell runs what it makes runnable), scheduled scans that heal and alert.
    Serve(ServeArgs),
    /// The NBA example end to end on embedded SQLite.
    Demo(DemoArgs),
    /// Load NBA box-score files into nba_raw (the example's phase-2 runner).
    #[command(name = "nba-load", hide = true)]
    NbaLoad(NbaLoadArgs),
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// First date (default: the pipeline's start).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub(crate) start_date: Option<String>,
    /// Last date (default: today).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub(crate) end_date: Option<String>,
    /// Phases: ids, names or ranges, comma separated (`2,3`, `analytics`, `2-5`).
    #[arg(long, value_name = "LIST")]
    pub(crate) phases: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ScanArgs {
    /// How far back from today to look, e.g. `90d` (default: `[healing] lookback`, 90 days).
    #[arg(long, value_name = "DURATION")]
    pub(crate) lookback: Option<String>,
    /// Then heal the healable gaps (open, at most `[healing] auto_heal_max_age` old, failed
    /// fewer than `max_attempts` times) with everything downstream of them.
    #[arg(long)]
    pub(crate) heal: bool,
    /// With --heal: heal gaps of any age.
    #[arg(long, requires = "heal")]
    pub(crate) include_old: bool,
    /// With --heal: tasks at once.
    #[arg(long, short = 'j', default_value_t = 4, value_name = "N")]
    pub(crate) jobs: usize,
    /// With --heal: say what would be healed and alerted, change nothing.
    #[arg(long, requires = "heal")]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct HealArgs {
    /// Say what would be healed and alerted, change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Heal gaps of any age, and gaps that failed `max_attempts` heals (a person asks).
    #[arg(long)]
    pub(crate) include_old: bool,
    /// How far back from today to look (default: `[healing] lookback`).
    #[arg(long, value_name = "DURATION")]
    pub(crate) lookback: Option<String>,
    /// Tasks at once.
    #[arg(long, short = 'j', default_value_t = 4, value_name = "N")]
    pub(crate) jobs: usize,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Where to listen (default: `[server] listen`, else 127.0.0.1:8080). An address other than
    /// loopback needs GAPLESS_API_TOKEN.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) listen: Option<String>,
    /// Tasks at once per run, and runs the trigger executes at once.
    #[arg(long, short = 'j', default_value_t = 4, value_name = "N")]
    pub(crate) jobs: usize,
    /// This node's leases (its registration, the leader's, its tasks'), renewed every third:
    /// a dead node's work is taken back and a new leader elected within about this long.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub(crate) lease: String,
}

#[derive(Debug, Args)]
pub(crate) struct GapsArgs {
    /// Which rows: open (every status but complete), pending, triggered, complete, failed, alerted or all.
    #[arg(long, default_value = "open", value_name = "STATUS")]
    pub(crate) status: String,
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// First date.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub(crate) start_date: String,
    /// Last date.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub(crate) end_date: String,
    /// Phases to run: ids, names or ranges (default: all).
    #[arg(long, value_name = "LIST")]
    pub(crate) phases: Option<String>,
    /// Re-run complete cells too.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BackfillArgs {
    #[command(flatten)]
    pub(crate) plan: PlanArgs,
    /// Tasks at once, overall (each phase's `concurrency` also applies).
    #[arg(long, short = 'j', default_value_t = 4, value_name = "N")]
    pub(crate) jobs: usize,
    /// Do not ask for confirmation of large plans.
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ResumeArgs {
    /// The run to resume (default: the latest).
    pub(crate) run_id: Option<String>,
    /// Tasks at once, overall.
    #[arg(long, short = 'j', default_value_t = 4, value_name = "N")]
    pub(crate) jobs: usize,
}

#[derive(Debug, Args)]
pub(crate) struct RunsArgs {
    #[command(subcommand)]
    pub(crate) show: Option<RunsCommand>,
    /// How many runs to list.
    #[arg(long, default_value_t = 20)]
    pub(crate) limit: i64,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
    /// One run: per-phase progress and failures.
    Show {
        /// The run id.
        run_id: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ReportFormat {
    Md,
    Html,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "md")]
    pub(crate) format: ReportFormat,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Where to build the example (default: a new temporary directory, kept and printed).
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// Tasks at once in the backfill.
    #[arg(long, short = 'j', default_value_t = 2, value_name = "N")]
    pub(crate) jobs: usize,
    /// Stop after showing the gaps: build the broken pipeline to explore with `status`,
    /// `plan` and `backfill` yourself.
    #[arg(long)]
    pub(crate) no_backfill: bool,
    /// The warehouse: embedded SQLite files, or the BigQuery emulator at
    /// `BIGQUERY_EMULATOR_HOST` (its `nba_*` datasets are replaced).
    #[arg(long, value_enum, default_value_t = DemoWarehouse::Sqlite)]
    pub(crate) warehouse: DemoWarehouse,
}

/// Where `gapless demo` builds the example's warehouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DemoWarehouse {
    /// SQLite files under the example's directory.
    Sqlite,
    /// The BigQuery emulator at `BIGQUERY_EMULATOR_HOST`.
    Bigquery,
}

#[derive(Debug, Args)]
pub(crate) struct NbaLoadArgs {
    /// The example's directory (holding gcs/ and warehouse/).
    #[arg(long, default_value = ".")]
    pub(crate) dir: PathBuf,
    /// First date.
    #[arg(long)]
    pub(crate) start_date: String,
    /// Last date.
    #[arg(long)]
    pub(crate) end_date: String,
    /// Load into this warehouse instead of the SQLite files under `--dir`: a `bigquery://`
    /// URL (the range is replaced in one transaction).
    #[arg(long, value_name = "URL")]
    pub(crate) warehouse_url: Option<String>,
}
