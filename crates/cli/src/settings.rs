//! Runtime settings, resolved in one place, in one order: defaults < the pipeline file's
//! `[state]` table < `GAPLESS_*` environment < command-line flags. Environment variables are
//! read here and nowhere else.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use gapless_core::dates::{self, Date, DateTime};
use gapless_core::diagnostic::render_all;
use gapless_core::spec::{self, FileSource, Spec};
use gapless_runtime::context::Context;
use gapless_store::{ConnectOptions, Store, SyncMode};

use crate::cli::Global;
use crate::exit::UsageError;

/// A loaded pipeline and the settings around it.
pub(crate) struct Loaded {
    /// The pipeline file.
    pub(crate) path: PathBuf,
    /// Its directory.
    pub(crate) base_dir: PathBuf,
    /// The validated spec.
    pub(crate) spec: Spec,
    /// Today: the date of `now`, for expectations and the default ends of ranges.
    pub(crate) today: Date,
    /// The moment (UTC) cells are judged at: which are not due yet, and gap ages.
    pub(crate) now: DateTime,
    /// The state store URL after overrides.
    pub(crate) state_url: String,
    /// `$GAPLESS_CRASH_AT`, the crash-point testing hook.
    pub(crate) crash_at: Option<gapless_runtime::executor::CrashAt>,
    /// How long a run waits out a state store that stops answering: `$GAPLESS_STATE_OUTAGE`,
    /// else `[state] outage`.
    pub(crate) store_outage: std::time::Duration,
    /// This process, as the owner of the runs it executes.
    pub(crate) owner: gapless_runtime::owner::Owner,
}

/// Reads `sql_file` references relative to the pipeline file.
struct DiskFiles<'a> {
    base_dir: &'a Path,
}

impl FileSource for DiskFiles<'_> {
    fn read(&self, relative_path: &str) -> Result<String, String> {
        fs_err::read_to_string(self.base_dir.join(relative_path)).map_err(|error| {
            // fs_err's message names the path; keep only the OS reason after it.
            error
                .to_string()
                .rsplit_once(": ")
                .map_or_else(|| error.to_string(), |(_, reason)| reason.to_owned())
        })
    }
}

/// `--pipeline`, else `$GAPLESS_PIPELINE`, else `./gapless.toml`.
pub(crate) fn pipeline_path(flag: Option<&Path>) -> PathBuf {
    resolve_pipeline_path(
        flag,
        std::env::var_os("GAPLESS_PIPELINE").map(PathBuf::from),
    )
}

fn resolve_pipeline_path(flag: Option<&Path>, env: Option<PathBuf>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or(env)
        .unwrap_or_else(|| PathBuf::from("gapless.toml"))
}

/// The state store URL: `$GAPLESS_STATE_URL` beats the file's `[state] url`, which beats the
/// default.
pub(crate) fn resolve_state_url(file: &str, env: Option<String>) -> String {
    env.filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| file.to_owned())
}

/// The moment cells are judged at, in UTC: `$GAPLESS_NOW` (`YYYY-MM-DDTHH:MM` or
/// `YYYY-MM-DDTHH:MM:SS`, UTC), else `$GAPLESS_TODAY` (`YYYY-MM-DD`) at 12:00 UTC, else the
/// clock. Today is its date.
pub(crate) fn now() -> anyhow::Result<DateTime> {
    resolve_now(
        std::env::var("GAPLESS_NOW").ok(),
        std::env::var("GAPLESS_TODAY").ok(),
        chrono::Utc::now().naive_utc(),
    )
}

/// The moment `GAPLESS_TODAY=date` stands for: `date` at 12:00 UTC, after the date's start
/// and before its end, so a test reads the same whatever hour it runs at.
pub(crate) fn today_at(date: Date) -> DateTime {
    dates::midday(date)
}

fn resolve_now(
    now: Option<String>,
    today: Option<String>,
    clock: DateTime,
) -> anyhow::Result<DateTime> {
    if let Some(value) = now.filter(|v| !v.trim().is_empty()) {
        let value = value.trim();
        return ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
            .iter()
            .find_map(|format| DateTime::parse_from_str(value, format).ok())
            .ok_or_else(|| {
                UsageError::new(format!(
                    "GAPLESS_NOW: `{}` is not a UTC date and time: expected YYYY-MM-DDTHH:MM[:SS]",
                    value.chars().take(64).collect::<String>()
                ))
                .into()
            });
    }
    match today {
        Some(value) if !value.trim().is_empty() => dates::parse_date(value.trim())
            .map(today_at)
            .map_err(|error| UsageError::new(format!("GAPLESS_TODAY: {error}")).into()),
        _ => Ok(clock),
    }
}

/// Loads and validates the pipeline file. Diagnostics become a [`UsageError`] (exit 2).
pub(crate) fn load(global: &Global) -> anyhow::Result<Loaded> {
    let path = pipeline_path(global.pipeline.as_deref());
    load_path(&path)
}

/// [`load`] for an explicit path.
pub(crate) fn load_path(path: &Path) -> anyhow::Result<Loaded> {
    let source = fs_err::read_to_string(path).map_err(|error| {
        UsageError::new(format!(
            "cannot read the pipeline file: {error}{}",
            if path == Path::new("gapless.toml") {
                " (pass --pipeline FILE or set GAPLESS_PIPELINE)"
            } else {
                ""
            }
        ))
    })?;
    let base_dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    let base_dir =
        fs_err::canonicalize(base_dir).context("cannot resolve the pipeline file's directory")?;
    let spec = spec::parse(
        &source,
        &DiskFiles {
            base_dir: &base_dir,
        },
    )
    .map_err(|diagnostics| {
        UsageError::rendered(render_all(
            &diagnostics,
            &path.display().to_string(),
            &source,
        ))
    })?;
    let state_url = resolve_state_url(&spec.state_url, std::env::var("GAPLESS_STATE_URL").ok());
    let store_outage = store_outage(spec.state_outage)?;
    let now = now()?;
    Ok(Loaded {
        path: path.to_path_buf(),
        base_dir,
        spec,
        today: now.date(),
        now,
        state_url,
        crash_at: crash_at()?,
        store_outage,
        owner: gapless_runtime::owner::Owner::this_process(),
    })
}

/// `$GAPLESS_STATE_OUTAGE` (a duration such as `2m`), else the file's `[state] outage`.
fn store_outage(file: std::time::Duration) -> anyhow::Result<std::time::Duration> {
    match std::env::var("GAPLESS_STATE_OUTAGE") {
        Ok(value) if !value.is_empty() => dates::parse_duration(&value)
            .map_err(|error| UsageError::new(format!("GAPLESS_STATE_OUTAGE: {error}")).into()),
        _ => Ok(file),
    }
}

impl Loaded {
    /// Where logs and local state live: the SQLite state file's directory, or `.gapless`
    /// next to the pipeline file.
    pub(crate) fn state_dir(&self) -> PathBuf {
        if let Some(path) = self.state_url.strip_prefix("sqlite://")
            && !path.is_empty()
        {
            let file = if Path::new(path).is_absolute() {
                PathBuf::from(path)
            } else {
                self.base_dir.join(path)
            };
            if let Some(parent) = file.parent() {
                return parent.to_path_buf();
            }
        }
        self.base_dir.join(".gapless")
    }

    /// Connects the warehouse and builds the runtime context.
    pub(crate) async fn context(&self) -> anyhow::Result<Context> {
        Context::connect(
            self.spec.clone(),
            &self.base_dir,
            self.state_dir().join("logs"),
            self.now,
        )
        .await
        .context("cannot reach the warehouse")
    }

    /// Connects the state store and brings its schema up to date (first use migrates).
    pub(crate) async fn store(&self) -> anyhow::Result<Store> {
        self.store_stalling_at(ConnectOptions::DEFAULT_STALL_LIMIT)
            .await
    }

    /// [`Loaded::store`] whose PostgreSQL sessions end when stalled inside a transaction for
    /// `stall_limit` (see [`ConnectOptions::stall_limit`]).
    pub(crate) async fn store_stalling_at(&self, stall_limit: Duration) -> anyhow::Result<Store> {
        let sync = match self.spec.state_sync {
            spec::StateSync::Normal => SyncMode::Normal,
            spec::StateSync::Full => SyncMode::Full,
        };
        let options = ConnectOptions { sync, stall_limit };
        let store = Store::connect_with(&self.state_url, &self.base_dir, options)
            .await
            .with_context(|| {
                format!(
                    "cannot open the state store `{}`",
                    spec::redact_url(&self.state_url)
                )
            })?;
        store
            .migrate()
            .await
            .context("cannot migrate the state store")?;
        Ok(store)
    }
}

/// Whether this process was started by `cargo run` (cargo sets `CARGO` for what it runs), so
/// that hints show a command the user can paste.
pub(crate) fn run_by_cargo() -> bool {
    std::env::var_os("CARGO").is_some()
}

/// `$GAPLESS_CRASH_AT=point[:n]`, the crash-point testing hook (RELIABILITY.md T3).
fn crash_at() -> anyhow::Result<Option<gapless_runtime::executor::CrashAt>> {
    match std::env::var("GAPLESS_CRASH_AT") {
        Ok(value) if !value.is_empty() => gapless_runtime::executor::CrashAt::parse(&value)
            .map(Some)
            .ok_or_else(|| {
                let names: Vec<&str> = gapless_runtime::executor::CrashPoint::ALL
                    .iter()
                    .map(|(name, _)| *name)
                    .collect();
                UsageError::new(format!(
                    "GAPLESS_CRASH_AT: `{value}` is not one of {} (optionally `:n`)",
                    names.join(", ")
                ))
                .into()
            }),
        _ => Ok(None),
    }
}

/// Parses a `--start-date`/`--end-date` value (exit 2 on error).
pub(crate) fn date_arg(flag: &str, value: &str) -> anyhow::Result<Date> {
    dates::parse_date(value).map_err(|error| UsageError::new(format!("--{flag}: {error}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_precedence() {
        // Flag beats env beats default.
        assert_eq!(
            resolve_pipeline_path(Some(Path::new("a.toml")), Some(PathBuf::from("b.toml"))),
            PathBuf::from("a.toml")
        );
        assert_eq!(
            resolve_pipeline_path(None, Some(PathBuf::from("b.toml"))),
            PathBuf::from("b.toml")
        );
        assert_eq!(
            resolve_pipeline_path(None, None),
            PathBuf::from("gapless.toml")
        );
        // Env beats the file.
        assert_eq!(
            resolve_state_url("sqlite://x.db", Some("postgres://h/db".into())),
            "postgres://h/db"
        );
        assert_eq!(
            resolve_state_url("sqlite://x.db", Some(String::new())),
            "sqlite://x.db"
        );
        assert_eq!(resolve_state_url("sqlite://x.db", None), "sqlite://x.db");
        // The clock: GAPLESS_NOW beats GAPLESS_TODAY (noon UTC) beats the clock.
        let at = |text: &str| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").unwrap();
        let clock = at("2026-01-01T08:30:00");
        assert_eq!(
            resolve_now(None, Some("2025-07-01".into()), clock).unwrap(),
            at("2025-07-01T12:00:00")
        );
        assert_eq!(
            resolve_now(
                Some("2025-07-02T00:01".into()),
                Some("2025-07-01".into()),
                clock
            )
            .unwrap(),
            at("2025-07-02T00:01:00")
        );
        assert_eq!(
            resolve_now(Some("2025-07-02T23:59:30".into()), None, clock).unwrap(),
            at("2025-07-02T23:59:30")
        );
        assert_eq!(resolve_now(None, None, clock).unwrap(), clock);
        assert_eq!(resolve_now(Some(" ".into()), None, clock).unwrap(), clock);
        assert!(resolve_now(None, Some("July".into()), clock).is_err());
        let error = resolve_now(Some("2025-07-02".into()), None, clock).unwrap_err();
        assert_eq!(
            error.to_string(),
            "GAPLESS_NOW: `2025-07-02` is not a UTC date and time: expected YYYY-MM-DDTHH:MM[:SS]"
        );
    }
}
