//! Adapters from gapless to the user's systems: the SQL warehouse (probes and the SQL runner),
//! programs (the command probe and runner), files and buckets (the files probe), and HTTP
//! endpoints (the HTTP runner).
//!
//! Main items:
//! - [`named::prepare`] splits user SQL into statements and turns `:start`, `:end`, `:date` into
//!   bound parameters, so that values never reach SQL as text.
//! - [`Warehouse`]: SQLite (with `ATTACH`ed schemas, on rusqlite), PostgreSQL (on sqlx) or
//!   BigQuery (its REST API on reqwest, with Application Default Credentials);
//!   [`Warehouse::counts`], [`Warehouse::dates`], [`Warehouse::scalar`] probe,
//!   [`Warehouse::execute_script`] runs, and [`Warehouse::execute_script_gated`] runs and
//!   validates inside one transaction, committing only what its gate accepts. Failures are
//!   [`WarehouseError`], with the backend's own [`DatabaseError`] as the source.
//! - [`command_counts`] and [`file_counts`]: the other probes.
//! - [`run_command`] and [`run_http`]: the runners, failing with [`RunError`], which says
//!   whether a retry may help.
//!
//! Every call here is async (tokio) and bounded in time. Programs run from argv arrays, never
//! through a shell, in their own process group, killed whole on timeout or cancellation.
//!
//! This crate knows nothing of phases, cells or runs. It depends on `gapless-core` only for the
//! pure SQL parameter scanner (`named`), which validation uses too. It takes validated dates and
//! substituted argv, URLs and bodies from the caller.

mod command;
mod http;
mod probe;
mod runner;
mod warehouse;

pub use command::{
    CommandOutcome, CommandSpec, DEFAULT_LOG_LIMIT, GroupEnding, KillError, RunOptions,
    RunnerStarted, end_process_group, resolve_program, run_command, run_command_with,
};
/// User SQL's named parameters (`gapless_core::sql`, pure): re-exported where the warehouse uses it.
pub use gapless_core::sql as named;
pub use http::{HttpOutcome, HttpSpec, Method, http_client, run_http};
pub use named::{Dialect, Param, SqlError, Statement};
pub use probe::{ProbeError, command_counts, file_counts};
pub use runner::RunError;
pub use tokio_util::sync::CancellationToken;
pub use warehouse::{
    BigQueryError, DatabaseError, Prepared, Rows, SchemaChanges, ScriptParams, Usage, Warehouse,
    WarehouseError,
};

use chrono::NaiveDate;

/// Parses a strict `YYYY-MM-DD` date (exactly ten characters).
pub(crate) fn parse_iso_date(text: &str) -> Option<NaiveDate> {
    gapless_core::dates::parse_date(text).ok()
}
