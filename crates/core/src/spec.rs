//! The pipeline file: `gapless.toml` parsed into [`RawSpec`] (serde, spans kept), then
//! validated into a [`Spec`] that later code can trust. Validation collects every problem as a
//! [`Diagnostic`] instead of stopping at the first.
//!
//! - this module: the validated model ([`Spec`], [`Phase`], [`Source`], …);
//! - `raw`: the file as written, deserialized with spans;
//! - `validate`: [`parse`] and [`validate`], `RawSpec` → `Spec` with every problem collected;
//! - `graph`: the phases as a graph: dependency order, cycles, lookback reach, dependents.

mod graph;
mod raw;
mod validate;

pub use raw::RawSpec;
pub use validate::{parse, validate};

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use crate::dates::{Date, DateTime};

/// Default state store when `[state]` is absent.
pub const DEFAULT_STATE_URL: &str = "sqlite://.gapless/state.db";
/// Default per-task timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Upper bound on `batch_days`.
pub const MAX_BATCH_DAYS: u32 = 366;
/// Upper bound on a need's `lookback_days` (ten years).
pub const MAX_LOOKBACK_DAYS: u32 = 3_660;
/// Upper bound on a phase's `timeout`: a week.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);
/// Upper bound on `healing.lookback` and `healing.auto_heal_max_age` (ten years, as
/// [`MAX_LOOKBACK_DAYS`]).
pub const MAX_HEALING_WINDOW: Duration = Duration::from_secs(3_660 * 86_400);
/// Upper bound on `healing.realert_after`: a year.
pub const MAX_REALERT_AFTER: Duration = Duration::from_secs(365 * 86_400);

/// The default `due`: a date's cells count from the start of the next day.
pub const DEFAULT_DUE: Duration = Duration::from_secs(86_400);
/// Upper bound on `due`: a year and a day.
pub const MAX_DUE: Duration = Duration::from_secs(366 * 86_400);

/// The default `[state] outage`: a restart of PostgreSQL or a network blip is waited out.
pub const DEFAULT_STATE_OUTAGE: Duration = Duration::from_secs(120);
/// Longest `[state] outage`.
pub const MAX_STATE_OUTAGE: Duration = Duration::from_secs(86_400);

/// Reads files that the pipeline file points at (`sql_file`), relative to the pipeline file.
/// A port: the binary reads the disk, tests hand in strings. Errors are human messages.
pub trait FileSource {
    /// The file's text, or why it could not be read.
    fn read(&self, relative_path: &str) -> Result<String, String>;
}

/// A [`FileSource`] with no files, for pipelines that inline all SQL.
pub struct NoFiles;

impl FileSource for NoFiles {
    fn read(&self, relative_path: &str) -> Result<String, String> {
        Err(format!("no file `{relative_path}` in this context"))
    }
}

/// A phase id, as in `--phases 2,3,4,5`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct PhaseId(pub u32);

impl fmt::Display for PhaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where counts (or dates) come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// SQL on the warehouse returning `(date, count)` rows, with `:start`/`:end` bound.
    Sql(String),
    /// A program printing `YYYY-MM-DD COUNT` lines; `{start}`/`{end}` substituted.
    Command(Vec<String>),
    /// Objects matching a `{date}` pattern, counted per date.
    Files(String),
}

impl Source {
    /// A short name for messages: `sql`, `command`, `files`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Sql(_) => "sql",
            Source::Command(_) => "command",
            Source::Files(_) => "files",
        }
    }
}

/// What a complete cell must reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// Per-date expected counts; `None` means only `min` applies.
    pub source: Option<Source>,
    /// Floor for every expected date (default 1): a cell is complete when count ≥ max(source, min).
    pub min: i64,
}

/// An HTTP runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRunner {
    /// Method, upper case (default `POST`).
    pub method: String,
    /// URL template; only the path and query may hold placeholders.
    pub url: String,
    /// JSON body template.
    pub body: Option<String>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Program whose stdout is a bearer token (e.g. `gcloud auth print-identity-token`).
    pub token_command: Option<Vec<String>>,
}

/// How a phase does its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    /// argv, never a shell.
    Command(Vec<String>),
    /// SQL statements run in one transaction on the warehouse.
    Sql(String),
    /// An HTTP call.
    Http(HttpRunner),
}

impl Runner {
    /// A short name for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Runner::Command(_) => "command",
            Runner::Sql(_) => "sql",
            Runner::Http(_) => "http",
        }
    }
}

/// How to undo a failed task's partial effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollback {
    /// SQL statements with `:start`/`:end`.
    Sql(String),
    /// argv with placeholders.
    Command(Vec<String>),
}

/// A dependency of a phase on another (or itself, for earlier dates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// The phase needed.
    pub phase: PhaseId,
    /// Days before the date also needed. For a self-dependency the window is the `lookback_days`
    /// days before the date; for another phase it is those days and the date itself.
    pub lookback_days: u32,
}

impl Need {
    /// Offsets (in days, ≤ 0) relative to a date that `dependent` needs of `self.phase`.
    pub fn window(&self, dependent: PhaseId) -> Range<i64> {
        let lookback = i64::from(self.lookback_days);
        if self.phase == dependent {
            -lookback..0
        } else {
            -lookback..1
        }
    }
}

/// One validated phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    /// Integer id.
    pub id: PhaseId,
    /// Unique name.
    pub name: String,
    /// Free text shown in reports.
    pub description: Option<String>,
    /// Dependencies.
    pub needs: Vec<Need>,
    /// How to run it; `None` for a source phase gapless only observes.
    pub run: Option<Runner>,
    /// Longest run of consecutive dates one task may cover.
    pub batch_days: u32,
    /// How to count what is there.
    pub check: Source,
    /// What a complete cell must reach.
    pub expect: Expect,
    /// How to undo a failed task.
    pub rollback: Option<Rollback>,
    /// Retries after the first attempt.
    pub retries: u32,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Tasks of this phase at once.
    pub concurrency: u32,
    /// How long after the start of a date (00:00 UTC) its cell starts to count: the phase's
    /// own `due`, else `[pipeline] due`. Before then a cell that is not complete is `not_due`.
    pub due: Duration,
}

impl Phase {
    /// When this phase's cell for `date` becomes due: `date` 00:00 UTC plus [`Phase::due`].
    pub fn due_at(&self, date: Date) -> DateTime {
        due_at(date, self.due)
    }
}

/// `date` 00:00 plus `due`, saturating at chrono's limits.
pub fn due_at(date: Date, due: Duration) -> DateTime {
    let start = date.and_time(chrono::NaiveTime::MIN);
    chrono::TimeDelta::from_std(due)
        .ok()
        .and_then(|delta| start.checked_add_signed(delta))
        .unwrap_or(DateTime::MAX)
}

/// The warehouse where SQL probes and runners execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warehouse {
    /// `sqlite://…`, `postgres://…` or `bigquery://PROJECT?…`.
    pub url: String,
    /// SQLite only: schema name → database file, relative to the pipeline file.
    pub attach: Vec<(String, String)>,
    /// BigQuery only: the most bytes one query may bill; a query that would bill more fails
    /// without running (and without cost).
    pub maximum_bytes_billed: Option<u64>,
}

/// `[healing]`: the self-healing policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healing {
    /// Cron expression for scans in `serve`.
    pub scan: String,
    /// How far back scans look.
    pub lookback: Duration,
    /// Gaps up to this age are healed automatically.
    pub auto_heal_max_age: Duration,
    /// Failures before a gap is alerted instead of retried.
    pub max_attempts: u32,
    /// Minimum time between two alerts for the same gap.
    pub realert_after: Duration,
    /// The time zone `scan` is read in.
    pub timezone: chrono_tz::Tz,
}

impl Default for Healing {
    fn default() -> Self {
        Self {
            scan: "0 * * * *".to_owned(),
            lookback: Duration::from_secs(90 * 86_400),
            auto_heal_max_age: Duration::from_secs(30 * 86_400),
            max_attempts: 3,
            realert_after: Duration::from_secs(86_400),
            timezone: chrono_tz::UTC,
        }
    }
}

/// `[alerts]`: where alert messages go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alerts {
    /// Env var holding a Slack incoming-webhook URL.
    pub slack_webhook_env: Option<String>,
    /// Env var holding a generic webhook URL.
    pub webhook_url_env: Option<String>,
    /// SMTP settings.
    pub email: Option<Email>,
}

/// E-mail alert settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// `smtp://host:port`.
    pub smtp: String,
    /// Sender.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
}

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Pipeline name.
    pub name: String,
    /// Free text shown in reports.
    pub description: Option<String>,
    /// Earliest partition.
    pub start: Date,
    /// Dates on which data is expected; `None` means every day.
    pub calendar: Option<Source>,
    /// `[pipeline] due` ([`DEFAULT_DUE`] when absent): the default of every phase's `due`.
    pub due: Duration,
    /// Where SQL runs.
    pub warehouse: Option<Warehouse>,
    /// State store URL.
    pub state_url: String,
    /// `[state] sync`: when the SQLite state store fsyncs its commits.
    pub state_sync: StateSync,
    /// `[state] outage`: how long a run waits out a state store that stops answering before
    /// it stops (exit 3).
    pub state_outage: Duration,
    /// `[server] listen`, if set.
    pub listen: Option<String>,
    /// Phases in dependency order (every phase after the phases it needs).
    pub phases: Vec<Phase>,
    /// Healing policy.
    pub healing: Healing,
    /// Alert destinations.
    pub alerts: Alerts,
    /// `[report]`: how `gapless report` groups dates.
    pub report: ReportSettings,
}

/// `[report]`: how `gapless report` groups dates into rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportSettings {
    /// The period of a row.
    pub period: ReportPeriod,
}

/// The period a report row covers (`[report] period`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReportPeriod {
    /// A calendar month, labelled `2024-01` (the default).
    #[default]
    Month,
    /// A calendar year, labelled `2024`.
    Year,
    /// A year starting on `season_start` (`MM-DD`), labelled by its starting year and the next
    /// one's last two digits: `2024-25` for a season from 2024-07-01 to 2025-06-30.
    Season {
        /// Month the season starts in, 1 to 12.
        month: u32,
        /// Day of that month, 1 to 28, 30 or 31.
        day: u32,
    },
}

/// When the SQLite state store makes a commit durable (`[state] sync`). PostgreSQL ignores it:
/// its own `synchronous_commit` decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StateSync {
    /// Every commit survives a crash of gapless (kill -9, OOM, panic); an OS crash or power
    /// loss may roll back the last few, which the next `resume` re-probes from the warehouse.
    /// Runs starting and ending are always made durable.
    #[default]
    Normal,
    /// Every commit is fsynced before gapless goes on.
    Full,
}

/// Parses a `[healing] scan` cron expression: five fields, or six with seconds first. Times
/// are read in `[healing] timezone`.
pub fn parse_cron(text: &str) -> Result<croner::Cron, croner::errors::CronError> {
    let fields = text.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(croner::errors::CronError::InvalidPattern(format!(
            "{fields} fields; expected 5, or 6 with seconds first"
        )));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(text)
}

impl Spec {
    /// The phase with `id`.
    pub fn phase(&self, id: PhaseId) -> Option<&Phase> {
        self.phases.iter().find(|p| p.id == id)
    }

    /// Index of the phase with `id` in [`Spec::phases`].
    pub fn phase_index(&self, id: PhaseId) -> Option<usize> {
        self.phases.iter().position(|p| p.id == id)
    }

    /// Whether anything in the spec runs SQL (and so needs a warehouse).
    pub fn uses_sql(&self) -> bool {
        let source_sql = |s: &Source| matches!(s, Source::Sql(_));
        self.calendar.as_ref().is_some_and(source_sql)
            || self.phases.iter().any(|p| {
                source_sql(&p.check)
                    || p.expect.source.as_ref().is_some_and(source_sql)
                    || matches!(p.run, Some(Runner::Sql(_)))
                    || matches!(p.rollback, Some(Rollback::Sql(_)))
            })
    }
}

/// A URL with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or("");
            if user_info.contains(':') {
                format!("{user}:****@{host}")
            } else {
                format!("{user}@{host}")
            }
        }
        None => authority.to_owned(),
    };
    if path.is_empty() && !rest.contains('/') {
        format!("{scheme}://{authority}")
    } else {
        format!("{scheme}://{authority}/{path}")
    }
}

#[cfg(test)]
mod tests;
