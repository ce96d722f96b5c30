//! The gapless state store: runs, their tasks, the (run, phase, date) cells they cover, and the
//! event log, on embedded SQLite (the default) or PostgreSQL (several nodes), with the same
//! semantics on both.
//!
//! - [`Store`] is the handle, an enum over the two backends chosen once from the `[state] url`
//!   ([`Store::connect`], [`Store::connect_with`]): [`SqliteStore`], one rusqlite connection
//!   called in the calling thread (a statement costs microseconds, less than a hop to a worker
//!   thread), or a sqlx PostgreSQL pool. [`Store::migrate`] is a separate, explicit step and
//!   [`Store::ensure_current`] lets commands refuse an unmigrated database.
//! - Every state change is one transaction and a compare-and-set: guarded by the state it
//!   expects and by the lease epoch (fencing token) the caller holds. A `false` / `None` result
//!   means the caller lost the race and must not act; it is not an error (RELIABILITY §2.1–2.3).
//! - A cell is recorded complete exactly once, together with its `complete` event, in the same
//!   transaction as its task's completion.
//! - Durability on SQLite is a [`SyncMode`]: by default task commits survive a process crash
//!   but not a power loss, since resume re-probes every cell; run-level changes and
//!   [`Store::flush`] are durable in every mode.
//! - Errors are [`StoreError`]; [`StoreError::is_retryable`] separates transient failures.
//!
//! This crate must not depend on `gapless-core`: it has its own plain types (phase ids are `i64`,
//! dates `chrono::NaiveDate`) and the runtime maps between the two. All SQL is `&'static str`
//! with bound parameters, one text per statement for both backends; no sqlx macros (the
//! `macros` feature is off for build time).

mod codec;
mod error;
mod model;
mod schema;
mod sql;
mod sqlite;
mod store;

pub use crate::error::{BackendError, StoreError};
pub use crate::model::{
    AlertRecord, CellHolder, CellRecord, CellState, Claim, Creator, DetectedGap, EventRecord,
    Fence, GapFilter, GapHistory, GapRecord, GapStatus, IncomingEvent, Ingested, InvalidRunId,
    LeaseOutcome, LeaseRecord, NewEvent, NewRun, NewTask, NewTaskState, NodeRecord, NodeView,
    NodesReport, Ownership, PhaseProgress, QuarantineRecord, RunId, RunKind, RunOwner,
    RunOwnerRecord, RunRecord, RunState, RunnerRecord, ScanRecorded, TaskRecord, TaskState,
    TickRun, UnknownState,
};
pub use crate::schema::SCHEMA_VERSION;
pub use crate::sqlite::{SqliteStore, SyncMode};
pub use crate::store::{ConnectOptions, LEADER, NextClaims, Store};
