//! The pipeline file: `gapless.toml` parsed into [`RawSpec`] (serde, spans kept), then
//! validated into a [`Spec`] that later code can trust. Validation collects every problem as a
//! [`Diagnostic`] instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::dates::{self, Date};
use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::template::{self, Placeholder};

/// Default state store when `[state]` is absent.
pub const DEFAULT_STATE_URL: &str = "sqlite://.gapless/state.db";
/// Default per-task timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Upper bound on `batch_days`.
pub const MAX_BATCH_DAYS: u32 = 366;

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
}

/// The warehouse where SQL probes and runners execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warehouse {
    /// `sqlite://…` or `postgres://…`.
    pub url: String,
    /// SQLite only: schema name → database file, relative to the pipeline file.
    pub attach: Vec<(String, String)>,
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
}

impl Default for Healing {
    fn default() -> Self {
        Self {
            scan: "0 * * * *".to_owned(),
            lookback: Duration::from_secs(90 * 86_400),
            auto_heal_max_age: Duration::from_secs(30 * 86_400),
            max_attempts: 3,
            realert_after: Duration::from_secs(86_400),
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
    /// Where SQL runs.
    pub warehouse: Option<Warehouse>,
    /// State store URL.
    pub state_url: String,
    /// `[state] sync`: when the SQLite state store fsyncs its commits.
    pub state_sync: StateSync,
    /// `[server] listen`, if set.
    pub listen: Option<String>,
    /// Phases in dependency order (every phase after the phases it needs).
    pub phases: Vec<Phase>,
    /// Healing policy.
    pub healing: Healing,
    /// Alert destinations.
    pub alerts: Alerts,
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

impl Spec {
    /// The phase with `id`.
    pub fn phase(&self, id: PhaseId) -> Option<&Phase> {
        self.phases.iter().find(|p| p.id == id)
    }

    /// Index of the phase with `id` in [`Spec::phases`].
    pub fn phase_index(&self, id: PhaseId) -> Option<usize> {
        self.phases.iter().position(|p| p.id == id)
    }

    /// The most days any chain of needs reaches back from a date: how far before a requested
    /// range probes must look so lookback windows can be judged.
    pub fn max_total_lookback(&self) -> i64 {
        let mut reach: HashMap<PhaseId, i64> = HashMap::new();
        for phase in &self.phases {
            let own = phase
                .needs
                .iter()
                .map(|need| {
                    let upstream = if need.phase == phase.id {
                        0
                    } else {
                        reach.get(&need.phase).copied().unwrap_or(0)
                    };
                    i64::from(need.lookback_days) + upstream
                })
                .max()
                .unwrap_or(0);
            reach.insert(phase.id, own);
        }
        // A self-dependency chains back indefinitely; one window is enough to judge the first
        // requested date, since earlier dates were judged when they were planned.
        reach.values().copied().max().unwrap_or(0)
    }

    /// Phases that directly need `id` (excluding itself).
    pub fn dependents(&self, id: PhaseId) -> impl Iterator<Item = &Phase> {
        self.phases
            .iter()
            .filter(move |p| p.id != id && p.needs.iter().any(|n| n.phase == id))
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

// ---------------------------------------------------------------------------------------------
// Raw, as written.

/// The file as written, before validation. Spans point back into the source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pipeline: Spanned<RawPipeline>,
    warehouse: Option<Spanned<RawWarehouse>>,
    state: Option<RawState>,
    server: Option<RawServer>,
    #[serde(default)]
    phase: Vec<Spanned<RawPhase>>,
    healing: Option<RawHealing>,
    alerts: Option<RawAlerts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Spanned<String>,
    start: Spanned<String>,
    calendar: Option<Spanned<RawSource>>,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarehouse {
    url: Spanned<String>,
    #[serde(default)]
    attach: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    url: Option<Spanned<String>>,
    sync: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
}

/// Every key any source-like table may hold; which are allowed depends on the table, checked
/// in validation so the message can say "`files` is not allowed in `expect`".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    sql: Option<Spanned<String>>,
    sql_file: Option<Spanned<String>>,
    command: Option<Spanned<Vec<Spanned<String>>>>,
    files: Option<Spanned<String>>,
    http: Option<Spanned<RawHttp>>,
    min: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    url: Spanned<String>,
    method: Option<Spanned<String>>,
    body: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    token_command: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    id: Spanned<i64>,
    name: Spanned<String>,
    description: Option<String>,
    #[serde(default)]
    needs: Vec<Spanned<RawNeed>>,
    run: Option<Spanned<RawSource>>,
    batch_days: Option<Spanned<i64>>,
    check: Option<Spanned<RawSource>>,
    expect: Option<Spanned<RawSource>>,
    rollback: Option<Spanned<RawSource>>,
    retries: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    concurrency: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawNeed {
    Id(i64),
    Name(String),
    Table(RawNeedTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNeedTable {
    phase: RawPhaseRef,
    #[serde(default)]
    lookback_days: i64,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawPhaseRef {
    Id(i64),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealing {
    scan: Option<Spanned<String>>,
    lookback: Option<Spanned<String>>,
    auto_heal_max_age: Option<Spanned<String>>,
    max_attempts: Option<Spanned<i64>>,
    realert_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    slack_webhook_env: Option<String>,
    webhook_url_env: Option<String>,
    email: Option<Spanned<RawEmail>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    smtp: String,
    from: String,
    to: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation.

/// Parses and validates a pipeline file. `files` resolves `sql_file` keys.
pub fn parse(source: &str, files: &dyn FileSource) -> Result<Spec, Vec<Diagnostic>> {
    let raw: RawSpec = toml::from_str(source).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        vec![toml_error_diagnostic(error.message(), span)]
    })?;
    validate(raw, files)
}

fn toml_error_diagnostic(message: &str, span: Range<usize>) -> Diagnostic {
    let message = message.trim().trim_end_matches('.').to_owned();
    let hint = message
        .contains("unknown field")
        .then(|| "the pipeline file reference lists every key: docs/pipeline-file.md".to_owned());
    let first_line = message.lines().next().unwrap_or_default().to_owned();
    let mut diagnostic = Diagnostic::new(first_line, span);
    diagnostic.hint = hint;
    diagnostic
}

struct Validator<'a> {
    diagnostics: Vec<Diagnostic>,
    files: &'a dyn FileSource,
    /// The warehouse's SQL dialect, for checking SQL texts' parameters.
    dialect: crate::sql::Dialect,
}

impl Validator<'_> {
    fn error(&mut self, message: impl Into<String>, span: Range<usize>) {
        self.diagnostics.push(Diagnostic::new(message, span));
    }

    fn error_hint(
        &mut self,
        message: impl Into<String>,
        span: Range<usize>,
        hint: impl Into<String>,
    ) {
        self.diagnostics
            .push(Diagnostic::new(message, span).with_hint(hint));
    }

    fn template(&mut self, value: &Spanned<String>, allowed: &[Placeholder], context: &str) {
        // Spans of strings include the quotes; the template offset is one byte in for a basic
        // string. Multi-line and literal strings are close enough to point at the value.
        let base = value.span().start + 1;
        match template::placeholders(value.get_ref()) {
            Ok(used) => {
                for placeholder in used {
                    if !allowed.contains(&placeholder) {
                        let names: Vec<String> = allowed
                            .iter()
                            .map(|p| format!("{{{}}}", p.name()))
                            .collect();
                        self.error_hint(
                            format!(
                                "placeholder `{{{}}}` is not available in {context}",
                                placeholder.name()
                            ),
                            value.span(),
                            format!("available here: {}", names.join(", ")),
                        );
                    }
                }
            }
            Err(error) => {
                let span = base + error.span.start..base + error.span.end;
                let hint = error.unknown.as_deref().and_then(|unknown| {
                    did_you_mean(unknown, allowed.iter().map(|p| p.name()))
                        .map(|name| format!("did you mean `{{{name}}}`?"))
                });
                let names: Vec<String> = allowed
                    .iter()
                    .map(|p| format!("{{{}}}", p.name()))
                    .collect();
                let hint = hint.unwrap_or_else(|| format!("available here: {}", names.join(", ")));
                self.error_hint(format!("{} in {context}", error.message), span, hint);
            }
        }
    }

    fn argv(
        &mut self,
        argv: &Spanned<Vec<Spanned<String>>>,
        allowed: &[Placeholder],
        context: &str,
    ) -> Option<Vec<String>> {
        if argv.get_ref().is_empty() {
            self.error(
                format!("{context} is empty: give the program and its arguments"),
                argv.span(),
            );
            return None;
        }
        if argv.get_ref()[0].get_ref().contains('{') {
            self.error(
                format!("{context}: the program name cannot hold a placeholder"),
                argv.get_ref()[0].span(),
            );
        }
        for element in argv.get_ref() {
            self.template(element, allowed, context);
        }
        Some(argv.get_ref().iter().map(|s| s.get_ref().clone()).collect())
    }

    fn sql(
        &mut self,
        inline: Option<&Spanned<String>>,
        file: Option<&Spanned<String>>,
    ) -> Option<String> {
        if let Some(sql) = inline {
            if sql.get_ref().trim().is_empty() {
                self.error("SQL is empty", sql.span());
                return None;
            }
            return self.sql_parameters(sql.get_ref(), sql.span(), None);
        }
        let file = file?;
        match self.files.read(file.get_ref()) {
            Ok(text) if text.trim().is_empty() => {
                self.error(
                    format!("SQL file `{}` is empty", file.get_ref()),
                    file.span(),
                );
                None
            }
            Ok(text) => self.sql_parameters(&text, file.span(), Some(file.get_ref())),
            Err(reason) => {
                self.error_hint(
                    format!("cannot read SQL file `{}`", file.get_ref()),
                    file.span(),
                    reason,
                );
                None
            }
        }
    }

    /// Checks that SQL only uses `:start`, `:end` and `:date`, which gapless binds: a typo like
    /// `:ned` is a pipeline-file error, not a failure at 3 a.m.
    fn sql_parameters(
        &mut self,
        text: &str,
        span: Range<usize>,
        file: Option<&str>,
    ) -> Option<String> {
        match crate::sql::prepare(text, self.dialect) {
            Ok(_) => Some(text.to_owned()),
            Err(error) => {
                let message = match file {
                    Some(file) => format!("in SQL file `{file}`: {error}"),
                    None => format!("in SQL: {error}"),
                };
                self.error_hint(
                    message,
                    span,
                    "values reach SQL only as the bound parameters :start, :end and :date",
                );
                None
            }
        }
    }

    /// Validates a source-like table. `allowed` names the keys permitted in this context.
    fn source(
        &mut self,
        raw: &Spanned<RawSource>,
        context: &str,
        allowed: &[&str],
        placeholders: &[Placeholder],
    ) -> Option<SourceLike> {
        let table = raw.get_ref();
        let present: Vec<(&str, Range<usize>)> = [
            ("sql", table.sql.as_ref().map(Spanned::span)),
            ("sql_file", table.sql_file.as_ref().map(Spanned::span)),
            ("command", table.command.as_ref().map(Spanned::span)),
            ("files", table.files.as_ref().map(Spanned::span)),
            ("http", table.http.as_ref().map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(key, span)| span.map(|span| (key, span)))
        .collect();
        let mut ok = true;
        for (key, span) in &present {
            if !allowed.contains(key) {
                ok = false;
                self.error_hint(
                    format!("`{context}.{key}` is not supported"),
                    span.clone(),
                    format!(
                        "`{context}` takes one of: {}",
                        allowed
                            .iter()
                            .filter(|k| **k != "min")
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        if let Some(min) = &table.min
            && !allowed.contains(&"min")
        {
            ok = false;
            self.error(format!("`{context}.min` is not supported"), min.span());
        }
        if present.len() > 1 {
            let keys: Vec<String> = present.iter().map(|(k, _)| format!("`{k}`")).collect();
            self.error(
                format!("`{context}` has {}; give exactly one", keys.join(" and ")),
                present[1].1.clone(),
            );
            return None;
        }
        if !ok {
            return None;
        }
        let Some((key, _)) = present.first() else {
            return Some(SourceLike::None);
        };
        match *key {
            "sql" | "sql_file" => self
                .sql(table.sql.as_ref(), table.sql_file.as_ref())
                .map(SourceLike::Sql),
            "command" => table
                .command
                .as_ref()
                .and_then(|argv| self.argv(argv, placeholders, &format!("`{context}.command`")))
                .map(SourceLike::Command),
            "files" => {
                let pattern = table.files.as_ref()?;
                self.template(pattern, &[Placeholder::Date], &format!("`{context}.files`"));
                if !pattern.get_ref().contains("{date}") {
                    self.error_hint(
                        format!("`{context}.files` pattern has no `{{date}}`"),
                        pattern.span(),
                        "the pattern must say where the date goes, like \"landing/{date}/*.json\"",
                    );
                    return None;
                }
                Some(SourceLike::Files(pattern.get_ref().clone()))
            }
            "http" => {
                let http = table.http.as_ref()?;
                self.http(http, placeholders, context).map(SourceLike::Http)
            }
            _ => None,
        }
    }

    fn http(
        &mut self,
        raw: &Spanned<RawHttp>,
        placeholders: &[Placeholder],
        context: &str,
    ) -> Option<HttpRunner> {
        let http = raw.get_ref();
        let url = http.url.get_ref();
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !scheme_ok {
            self.error(
                format!("`{context}.http.url` must start with http:// or https://"),
                http.url.span(),
            );
            return None;
        }
        // The host is fixed by the spec: no placeholder may reach it (no SSRF through values).
        let after_scheme = url.split_once("://").map_or("", |(_, rest)| rest);
        let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('{') {
            self.error(
                format!("`{context}.http.url`: placeholders may not appear in the host"),
                http.url.span(),
            );
        }
        self.template(&http.url, placeholders, &format!("`{context}.http.url`"));
        if let Some(body) = &http.body {
            self.template(body, placeholders, &format!("`{context}.http.body`"));
        }
        let method = http
            .method
            .as_ref()
            .map_or_else(|| "POST".to_owned(), |m| m.get_ref().to_ascii_uppercase());
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str())
            && let Some(m) = &http.method
        {
            self.error(
                format!("unsupported HTTP method `{}`", m.get_ref()),
                m.span(),
            );
        }
        let token_command = http
            .token_command
            .as_ref()
            .and_then(|argv| self.argv(argv, &[], &format!("`{context}.http.token_command`")));
        Some(HttpRunner {
            method,
            url: url.clone(),
            body: http.body.as_ref().map(|b| b.get_ref().clone()),
            headers: http
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            token_command,
        })
    }

    fn duration(&mut self, value: &Spanned<String>, what: &str) -> Option<Duration> {
        match dates::parse_duration(value.get_ref()) {
            Ok(duration) if duration.is_zero() => {
                self.error(format!("`{what}` must be greater than zero"), value.span());
                None
            }
            Ok(duration) => Some(duration),
            Err(error) => {
                self.error(format!("`{what}`: {error}"), value.span());
                None
            }
        }
    }

    fn bounded(
        &mut self,
        value: &Spanned<i64>,
        what: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<u32> {
        let v = *value.get_ref();
        if range.contains(&v) {
            u32::try_from(v).ok()
        } else {
            self.error(
                format!(
                    "`{what}` is {v}; it must be between {} and {}",
                    range.start(),
                    range.end()
                ),
                value.span(),
            );
            None
        }
    }
}

enum SourceLike {
    None,
    Sql(String),
    Command(Vec<String>),
    Files(String),
    Http(HttpRunner),
}

const RANGE_PLACEHOLDERS: &[Placeholder] = &[Placeholder::Start, Placeholder::End];
const TASK_PLACEHOLDERS: &[Placeholder] = &[
    Placeholder::Date,
    Placeholder::Start,
    Placeholder::End,
    Placeholder::Phase,
    Placeholder::RunId,
];

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

fn is_phase_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !name.chars().all(|c| c.is_ascii_digit())
}

/// Validates a parsed file into a [`Spec`], collecting every problem.
pub fn validate(raw: RawSpec, files: &dyn FileSource) -> Result<Spec, Vec<Diagnostic>> {
    let is_postgres = raw.warehouse.as_ref().is_some_and(|w| {
        let url = w.get_ref().url.get_ref();
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    });
    let mut v = Validator {
        diagnostics: Vec::new(),
        files,
        dialect: if is_postgres {
            crate::sql::Dialect::Postgres
        } else {
            crate::sql::Dialect::Sqlite
        },
    };
    let pipeline = raw.pipeline.get_ref();

    let name = pipeline.name.get_ref().trim().to_owned();
    if name.is_empty() {
        v.error("`pipeline.name` is empty", pipeline.name.span());
    }
    let start = match dates::parse_date(pipeline.start.get_ref()) {
        Ok(date) => Some(date),
        Err(error) => {
            v.error(format!("`pipeline.start`: {error}"), pipeline.start.span());
            None
        }
    };
    let calendar = pipeline.calendar.as_ref().and_then(|calendar| {
        match v.source(
            calendar,
            "pipeline.calendar",
            &["sql", "sql_file", "command"],
            RANGE_PLACEHOLDERS,
        )? {
            SourceLike::Sql(sql) => Some(Source::Sql(sql)),
            SourceLike::Command(argv) => Some(Source::Command(argv)),
            SourceLike::None => {
                v.error(
                    "`pipeline.calendar` needs `sql`, `sql_file` or `command`",
                    calendar.span(),
                );
                None
            }
            SourceLike::Files(_) | SourceLike::Http(_) => None,
        }
    });

    let warehouse = raw.warehouse.as_ref().and_then(|w| {
        let w_ref = w.get_ref();
        let url = w_ref.url.get_ref();
        let is_sqlite = url.starts_with("sqlite:");
        let is_postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !is_sqlite && !is_postgres {
            v.error_hint(
                format!("unsupported warehouse URL `{}`", redact_url(url)),
                w_ref.url.span(),
                "use sqlite://path/to/file.db or postgres://user@host/db",
            );
            return None;
        }
        let mut attach = Vec::new();
        for (schema, path) in &w_ref.attach {
            if !is_sqlite {
                v.error_hint(
                    "`warehouse.attach` only applies to SQLite",
                    path.span(),
                    "on PostgreSQL, schemas are part of the database",
                );
                continue;
            }
            if !is_identifier(schema) || schema.eq_ignore_ascii_case("main") || schema.eq_ignore_ascii_case("temp") {
                v.error(
                    format!("`{schema}` cannot be an attached schema name: use letters, digits and `_`, not `main` or `temp`"),
                    path.span(),
                );
                continue;
            }
            attach.push((schema.clone(), path.get_ref().clone()));
        }
        Some(Warehouse {
            url: url.clone(),
            attach,
        })
    });

    let state_url = raw.state.as_ref().and_then(|s| s.url.as_ref()).map_or_else(
        || DEFAULT_STATE_URL.to_owned(),
        |u| {
            let url = u.get_ref();
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                v.error_hint(
                    format!("unsupported state URL `{}`", redact_url(url)),
                    u.span(),
                    "use sqlite://path/to/state.db or postgres://user@host/db",
                );
            }
            url.clone()
        },
    );
    let state_sync = raw
        .state
        .as_ref()
        .and_then(|s| s.sync.as_ref())
        .map_or(StateSync::Normal, |sync| match sync.get_ref().as_str() {
            "normal" => StateSync::Normal,
            "full" => StateSync::Full,
            other => {
                v.error_hint(
                    format!("unknown `state.sync` value `{other}`"),
                    sync.span(),
                    "use \"normal\" (the default: commits survive a crash of gapless) or \"full\" (fsync every commit)",
                );
                StateSync::Normal
            }
        });
    let listen = raw
        .server
        .as_ref()
        .and_then(|s| s.listen.as_ref())
        .map(|l| l.get_ref().clone());

    // Phases: ids and names first, so needs can be resolved.
    let mut ids: HashMap<i64, usize> = HashMap::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    if raw.phase.is_empty() {
        v.error_hint(
            "the pipeline has no phases",
            raw.pipeline.span(),
            "add at least one [[phase]] table",
        );
    }
    for (index, phase) in raw.phase.iter().enumerate() {
        let p = phase.get_ref();
        let id = *p.id.get_ref();
        if !(1..=i64::from(u16::MAX)).contains(&id) {
            v.error(
                format!("phase id {id} is out of range: use 1 to 65535"),
                p.id.span(),
            );
        } else if let Some(&first) = ids.get(&id) {
            let first_name = raw.phase[first].get_ref().name.get_ref();
            v.error(
                format!("duplicate phase id {id} (also used by phase `{first_name}`)"),
                p.id.span(),
            );
        } else {
            ids.insert(id, index);
        }
        let name = p.name.get_ref();
        if !is_phase_name(name) {
            v.error_hint(
                format!("phase name `{name}` is not valid"),
                p.name.span(),
                "use lowercase letters, digits, `_` and `-`, not only digits",
            );
        } else if names.contains_key(name) {
            v.error(format!("duplicate phase name `{name}`"), p.name.span());
        } else {
            names.insert(name.clone(), index);
        }
    }
    let phase_names: Vec<String> = raw
        .phase
        .iter()
        .map(|p| p.get_ref().name.get_ref().clone())
        .collect();

    let mut phases: Vec<Phase> = Vec::new();
    let mut need_spans: HashMap<u32, Range<usize>> = HashMap::new();
    for phase in &raw.phase {
        let p = phase.get_ref();
        let context_name = p.name.get_ref();
        let id = u32::try_from(*p.id.get_ref()).unwrap_or(0);
        let mut needs = Vec::new();
        for need in &p.needs {
            let (reference, lookback) = match need.get_ref() {
                RawNeed::Id(id) => (RawPhaseRef::Id(*id), 0),
                RawNeed::Name(name) => (RawPhaseRef::Name(name.clone()), 0),
                RawNeed::Table(table) => (
                    match &table.phase {
                        RawPhaseRef::Id(id) => RawPhaseRef::Id(*id),
                        RawPhaseRef::Name(name) => RawPhaseRef::Name(name.clone()),
                    },
                    table.lookback_days,
                ),
            };
            let target = match &reference {
                RawPhaseRef::Id(needed) => ids.get(needed).copied().or_else(|| {
                    let known: Vec<String> = ids.keys().map(ToString::to_string).collect();
                    let mut known = known;
                    known.sort();
                    v.error_hint(
                        format!("phase `{context_name}` needs unknown phase {needed}"),
                        need.span(),
                        format!("phases are: {}", known.join(", ")),
                    );
                    None
                }),
                RawPhaseRef::Name(needed) => names.get(needed).copied().or_else(|| {
                    let hint = did_you_mean(needed, phase_names.iter().map(String::as_str))
                        .map_or_else(
                            || format!("phases are: {}", phase_names.join(", ")),
                            |name| format!("did you mean `{name}`?"),
                        );
                    v.error_hint(
                        format!("phase `{context_name}` needs unknown phase `{needed}`"),
                        need.span(),
                        hint,
                    );
                    None
                }),
            };
            if !(0..=3_660).contains(&lookback) {
                v.error(
                    format!("`lookback_days` is {lookback}; it must be between 0 and 3660"),
                    need.span(),
                );
                continue;
            }
            let Some(target) = target else { continue };
            let target_id = u32::try_from(*raw.phase[target].get_ref().id.get_ref()).unwrap_or(0);
            if target_id == id && lookback == 0 {
                v.error_hint(
                    format!("phase `{context_name}` needs itself on the same date: a cycle"),
                    need.span(),
                    "a phase may need its own earlier dates: { phase = N, lookback_days = 1 }",
                );
                continue;
            }
            let lookback = u32::try_from(lookback).unwrap_or(0);
            if let Some(existing) = needs
                .iter_mut()
                .find(|n: &&mut Need| n.phase.0 == target_id)
            {
                existing.lookback_days = existing.lookback_days.max(lookback);
            } else {
                needs.push(Need {
                    phase: PhaseId(target_id),
                    lookback_days: lookback,
                });
            }
            need_spans.entry(id).or_insert_with(|| need.span());
        }

        let batch_days = p
            .batch_days
            .as_ref()
            .and_then(|b| v.bounded(b, "batch_days", 1..=i64::from(MAX_BATCH_DAYS)))
            .unwrap_or(1);
        let run_placeholders: Vec<Placeholder> = if batch_days > 1 {
            TASK_PLACEHOLDERS
                .iter()
                .copied()
                .filter(|p| *p != Placeholder::Date)
                .collect()
        } else {
            TASK_PLACEHOLDERS.to_vec()
        };
        let run = p.run.as_ref().and_then(|run| {
            match v.source(run, "run", &["command", "sql", "sql_file", "http"], &run_placeholders)? {
                SourceLike::Command(argv) => Some(Runner::Command(argv)),
                SourceLike::Sql(sql) => Some(Runner::Sql(sql)),
                SourceLike::Http(http) => Some(Runner::Http(http)),
                SourceLike::None => {
                    v.error_hint(
                        format!("phase `{context_name}` has an empty `run`"),
                        run.span(),
                        "give run.command, run.sql, run.sql_file or run.http; omit `run` for a phase gapless only observes",
                    );
                    None
                }
                SourceLike::Files(_) => None,
            }
        });
        let check = match &p.check {
            None => {
                v.error_hint(
                    format!("phase `{context_name}` has no `check`"),
                    p.name.span(),
                    "gapless counts rows to know what is complete: add check.sql, check.command or check.files",
                );
                None
            }
            Some(check) => match v.source(
                check,
                "check",
                &["sql", "sql_file", "command", "files"],
                RANGE_PLACEHOLDERS,
            ) {
                Some(SourceLike::Sql(sql)) => Some(Source::Sql(sql)),
                Some(SourceLike::Command(argv)) => Some(Source::Command(argv)),
                Some(SourceLike::Files(pattern)) => Some(Source::Files(pattern)),
                Some(SourceLike::None) => {
                    v.error(
                        format!("phase `{context_name}`: `check` is empty"),
                        check.span(),
                    );
                    None
                }
                Some(SourceLike::Http(_)) | None => None,
            },
        };
        let expect = match &p.expect {
            None => Some(Expect {
                source: None,
                min: 1,
            }),
            Some(expect) => {
                let min = match &expect.get_ref().min {
                    Some(min) if *min.get_ref() < 1 => {
                        v.error("`expect.min` must be at least 1", min.span());
                        1
                    }
                    Some(min) => *min.get_ref(),
                    None => 1,
                };
                match v.source(
                    expect,
                    "expect",
                    &["sql", "sql_file", "command", "min"],
                    RANGE_PLACEHOLDERS,
                ) {
                    Some(SourceLike::Sql(sql)) => Some(Expect {
                        source: Some(Source::Sql(sql)),
                        min,
                    }),
                    Some(SourceLike::Command(argv)) => Some(Expect {
                        source: Some(Source::Command(argv)),
                        min,
                    }),
                    Some(SourceLike::None) => Some(Expect { source: None, min }),
                    _ => None,
                }
            }
        };
        let rollback = p.rollback.as_ref().and_then(|rollback| {
            match v.source(
                rollback,
                "rollback",
                &["sql", "sql_file", "command"],
                &run_placeholders,
            )? {
                SourceLike::Sql(sql) => Some(Rollback::Sql(sql)),
                SourceLike::Command(argv) => Some(Rollback::Command(argv)),
                _ => None,
            }
        });
        if p.run.is_none()
            && let Some(rollback) = &p.rollback
        {
            v.error(
                format!("phase `{context_name}` has a `rollback` but no `run`"),
                rollback.span(),
            );
        }
        let retries = p
            .retries
            .as_ref()
            .and_then(|r| v.bounded(r, "retries", 0..=100))
            .unwrap_or(0);
        let timeout = p
            .timeout
            .as_ref()
            .and_then(|t| v.duration(t, "timeout"))
            .unwrap_or(DEFAULT_TIMEOUT);
        let concurrency = p
            .concurrency
            .as_ref()
            .and_then(|c| v.bounded(c, "concurrency", 1..=1_024))
            .unwrap_or(1);
        if let (Some(check), Some(expect)) = (check, expect) {
            phases.push(Phase {
                id: PhaseId(id),
                name: p.name.get_ref().clone(),
                description: p.description.clone(),
                needs,
                run,
                batch_days,
                check,
                expect,
                rollback,
                retries,
                timeout,
                concurrency,
            });
        }
    }

    let healing = raw.healing.as_ref().map_or_else(Healing::default, |h| {
        let defaults = Healing::default();
        Healing {
            scan: h.scan.as_ref().map_or(defaults.scan, |s| {
                if s.get_ref().split_whitespace().count() != 5 {
                    v.error_hint(
                        format!("`healing.scan` is not a cron expression: `{}`", s.get_ref()),
                        s.span(),
                        "five fields: minute hour day-of-month month day-of-week, like \"0 * * * *\"",
                    );
                }
                s.get_ref().clone()
            }),
            lookback: h
                .lookback
                .as_ref()
                .and_then(|d| v.duration(d, "healing.lookback"))
                .unwrap_or(defaults.lookback),
            auto_heal_max_age: h
                .auto_heal_max_age
                .as_ref()
                .and_then(|d| v.duration(d, "healing.auto_heal_max_age"))
                .unwrap_or(defaults.auto_heal_max_age),
            max_attempts: h
                .max_attempts
                .as_ref()
                .and_then(|m| v.bounded(m, "healing.max_attempts", 1..=100))
                .unwrap_or(defaults.max_attempts),
            realert_after: h
                .realert_after
                .as_ref()
                .and_then(|d| v.duration(d, "healing.realert_after"))
                .unwrap_or(defaults.realert_after),
        }
    });
    let alerts = raw
        .alerts
        .as_ref()
        .map_or_else(Alerts::default, |a| Alerts {
            slack_webhook_env: a.slack_webhook_env.clone(),
            webhook_url_env: a.webhook_url_env.clone(),
            email: a.email.as_ref().map(|e| {
                let e_ref = e.get_ref();
                if !e_ref.smtp.starts_with("smtp://") && !e_ref.smtp.starts_with("smtps://") {
                    v.error(
                        "`alerts.email.smtp` must be an smtp:// or smtps:// URL",
                        e.span(),
                    );
                }
                if e_ref.to.is_empty() {
                    v.error("`alerts.email.to` has no recipients", e.span());
                }
                Email {
                    smtp: e_ref.smtp.clone(),
                    from: e_ref.from.clone(),
                    to: e_ref.to.clone(),
                }
            }),
        });

    // Cycles across phases (self-dependencies with a lookback are fine and excluded).
    let ordered = match topological_order(&phases) {
        Ok(order) => order,
        Err(cycle) => {
            let names: Vec<String> = cycle
                .iter()
                .filter_map(|id| {
                    phases
                        .iter()
                        .find(|p| p.id == *id)
                        .map(|p| format!("`{}`", p.name))
                })
                .collect();
            let span = cycle
                .first()
                .and_then(|id| need_spans.get(&id.0).cloned())
                .unwrap_or(0..0);
            v.error_hint(
                format!(
                    "phases depend on each other in a cycle: {}",
                    names.join(" → ")
                ),
                span,
                "a phase can only need phases that do not need it back",
            );
            phases.clone()
        }
    };

    let mut spec = Spec {
        name,
        description: pipeline.description.clone(),
        start: start.unwrap_or(Date::MIN),
        calendar,
        warehouse,
        state_url,
        state_sync,
        listen,
        phases: ordered,
        healing,
        alerts,
    };
    if spec.uses_sql() && spec.warehouse.is_none() {
        v.error_hint(
            "some phase uses SQL but there is no [warehouse]",
            raw.pipeline.span(),
            "add [warehouse] url = \"sqlite://warehouse.db\" (or postgres://…)",
        );
    }
    if v.diagnostics.is_empty() {
        spec.phases.shrink_to_fit();
        Ok(spec)
    } else {
        v.diagnostics.sort_by_key(|d| d.span.start);
        Err(v.diagnostics)
    }
}

/// Phases ordered so each comes after the phases it needs; on a cycle, the phases in it.
/// In rounds: each round takes every phase whose needs are all ordered, in file order. Linear
/// in phases and needs (Kahn's algorithm), so a chain of thousands of phases validates fast.
fn topological_order(phases: &[Phase]) -> Result<Vec<Phase>, Vec<PhaseId>> {
    let index: HashMap<PhaseId, usize> =
        phases.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
    let mut waiting_on: Vec<usize> = vec![0; phases.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); phases.len()];
    for (i, phase) in phases.iter().enumerate() {
        for need in phase.needs.iter().filter(|n| n.phase != phase.id) {
            if let Some(&q) = index.get(&need.phase) {
                waiting_on[i] += 1;
                dependents[q].push(i);
            }
        }
    }
    let mut ordered: Vec<Phase> = Vec::with_capacity(phases.len());
    // Stable: among ready phases, file order.
    let mut ready: Vec<usize> = (0..phases.len()).filter(|&i| waiting_on[i] == 0).collect();
    while !ready.is_empty() {
        let mut next = Vec::new();
        for &i in &ready {
            ordered.push(phases[i].clone());
            for &j in &dependents[i] {
                waiting_on[j] -= 1;
                if waiting_on[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        ready = next;
    }
    if ordered.len() < phases.len() {
        let remaining: BTreeSet<PhaseId> = phases
            .iter()
            .enumerate()
            .filter(|(i, _)| waiting_on[*i] > 0)
            .map(|(_, p)| p.id)
            .collect();
        return Err(cycle_members(phases, &remaining));
    }
    Ok(ordered)
}

/// Walks needs from a remaining phase until a phase repeats: that loop is the cycle.
fn cycle_members(phases: &[Phase], remaining: &BTreeSet<PhaseId>) -> Vec<PhaseId> {
    let by_id: HashMap<PhaseId, &Phase> = phases.iter().map(|p| (p.id, p)).collect();
    let Some(&first) = remaining.iter().next() else {
        return Vec::new();
    };
    let mut path = vec![first];
    let mut current = first;
    loop {
        let next = by_id.get(&current).and_then(|p| {
            p.needs
                .iter()
                .map(|n| n.phase)
                .find(|id| *id != current && remaining.contains(id))
        });
        let Some(next) = next else { return path };
        if let Some(position) = path.iter().position(|id| *id == next) {
            let mut cycle = path[position..].to_vec();
            cycle.push(next);
            return cycle;
        }
        path.push(next);
        current = next;
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
