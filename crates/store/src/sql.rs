//! Every SQL statement of the store, as `&'static str`.
//!
//! One text serves both backends: sqlx-sqlite binds `$N` placeholders by number (its
//! `SqliteArguments::bind` maps `$NNN` to argument NNN, and SQLite gives a repeated `$1` one
//! slot), and everything used here (`RETURNING`, partial indexes, `CASE`) means the same on
//! SQLite ≥ 3.35 and PostgreSQL. Values are computed in Rust (timestamps, JSON text), so no
//! dialect-specific function appears. The few statements that differ are suffixed `_SQLITE` /
//! `_POSTGRES`.
//!
//! Every state transition is guarded by the state it expects and, where a lease is involved, by
//! the lease epoch the caller holds (RELIABILITY 2.1). Zero affected rows means the caller lost.

macro_rules! run_columns {
    () => {
        "id, kind, pipeline, request, state, created_at, updated_at, finished_at, version"
    };
}

macro_rules! task_columns {
    () => {
        "id, run_id, phase, start_date, end_date, state, attempt, lease_epoch, lease_owner, \
         lease_expires_at, not_before, started_at, finished_at, error, counts"
    };
}

// --- schema version -----------------------------------------------------------------------

pub(crate) const HAS_MIGRATIONS_TABLE_SQLITE: &str =
    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";
pub(crate) const HAS_MIGRATIONS_TABLE_POSTGRES: &str = "SELECT COUNT(*) FROM pg_catalog.pg_tables \
     WHERE schemaname = current_schema() AND tablename = '_sqlx_migrations'";
pub(crate) const SCHEMA_VERSION: &str =
    "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success";

// --- runs -----------------------------------------------------------------------------------

/// SQLite has no identity column besides the rowid; writers are serialized (`BEGIN IMMEDIATE`),
/// so `MAX(seq) + 1` cannot race.
pub(crate) const INSERT_RUN_SQLITE: &str = "INSERT INTO runs \
     (id, seq, kind, pipeline, request, state, created_at, updated_at, version) \
     VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM runs), $2, $3, $4, 'running', $5, $5, 0)";
pub(crate) const INSERT_RUN_POSTGRES: &str = "INSERT INTO runs \
     (id, kind, pipeline, request, state, created_at, updated_at, version) \
     VALUES ($1, $2, $3, $4, 'running', $5, $5, 0)";

pub(crate) const SELECT_RUN: &str = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1");

pub(crate) const LIST_RUNS: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs ORDER BY seq DESC LIMIT $1"
);

/// Compare-and-set on the run's version (cancel vs checkpoint, Dagster PR #7094).
pub(crate) const SET_RUN_STATE: &str = "UPDATE runs \
     SET state = $3, version = version + 1, updated_at = $4, finished_at = $5 \
     WHERE id = $1 AND version = $2";

/// Only a running run finishes, so a cancel is never overwritten by a late "succeeded".
pub(crate) const FINISH_RUN: &str = "UPDATE runs \
     SET state = $2, version = version + 1, updated_at = $3, finished_at = $3 \
     WHERE id = $1 AND state = 'running'";

// --- tasks and cells ------------------------------------------------------------------------

pub(crate) const INSERT_TASK: &str = "INSERT INTO tasks \
     (run_id, phase, start_date, end_date, state, error) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";

pub(crate) const INSERT_CELL: &str = "INSERT INTO run_cells \
     (run_id, phase, date, task_id, state) VALUES ($1, $2, $3, $4, $5)";

pub(crate) const SELECT_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE run_id = $1 ORDER BY phase, start_date"
);

pub(crate) const SELECT_TASK: &str =
    concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1");

pub(crate) const SELECT_CELLS: &str = "SELECT run_id, phase, date, task_id, state, completed_at \
     FROM run_cells WHERE run_id = $1 ORDER BY phase, date";

pub(crate) const RUN_PROGRESS: &str = "SELECT c.phase AS phase, COUNT(*) AS total, \
     SUM(CASE WHEN c.state = 'pending' AND t.state <> 'running' THEN 1 ELSE 0 END) AS pending, \
     SUM(CASE WHEN c.state = 'pending' AND t.state = 'running' THEN 1 ELSE 0 END) AS running, \
     SUM(CASE WHEN c.state = 'complete' THEN 1 ELSE 0 END) AS complete, \
     SUM(CASE WHEN c.state = 'failed' THEN 1 ELSE 0 END) AS failed, \
     SUM(CASE WHEN c.state = 'blocked' THEN 1 ELSE 0 END) AS blocked \
     FROM run_cells c JOIN tasks t ON t.id = c.task_id \
     WHERE c.run_id = $1 GROUP BY c.phase ORDER BY c.phase";

/// pending → running. Sets the lease expiry in the same statement (RELIABILITY 2.3) and respects
/// the retry backoff.
pub(crate) const CLAIM: &str = "UPDATE tasks \
     SET state = 'running', attempt = attempt + 1, lease_epoch = lease_epoch + 1, \
         lease_owner = $3, lease_expires_at = $4, started_at = $5, not_before = NULL \
     WHERE id = $1 AND state = 'pending' AND lease_epoch = $2 \
       AND (not_before IS NULL OR not_before <= $5) \
     RETURNING lease_epoch, attempt";

pub(crate) const HEARTBEAT: &str = "UPDATE tasks SET lease_expires_at = $3 \
     WHERE id = $1 AND state = 'running' AND lease_epoch = $2";

pub(crate) const COMPLETE_TASK: &str = "UPDATE tasks \
     SET state = 'complete', lease_epoch = lease_epoch + 1, lease_owner = NULL, \
         lease_expires_at = NULL, finished_at = $3, counts = $4, error = NULL \
     WHERE id = $1 AND state = 'running' AND lease_epoch = $2 \
     RETURNING run_id";

/// Only pending cells move, so a cell is recorded complete at most once.
pub(crate) const COMPLETE_CELLS: &str = "UPDATE run_cells SET state = 'complete', completed_at = $2 \
     WHERE task_id = $1 AND state = 'pending'";

/// One event per cell that [`COMPLETE_CELLS`] just moved, set-based (a 31-day task is one
/// statement, not 31). The task's completion is a compare-and-set that wins once, so the cells
/// stamped with this transaction's time are exactly the ones it completed.
pub(crate) const INSERT_COMPLETION_EVENTS: &str = "INSERT INTO events \
     (phase, date, status, source, run_id, created_at) \
     SELECT phase, date, 'complete', $3, run_id, $2 FROM run_cells \
     WHERE task_id = $1 AND state = 'complete' AND completed_at = $2";

pub(crate) const INSERT_EVENT: &str = "INSERT INTO events \
     (phase, date, status, source, run_id, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
     RETURNING id";

pub(crate) const RELEASE_FOR_RETRY: &str = "UPDATE tasks \
     SET state = 'pending', lease_epoch = lease_epoch + 1, lease_owner = NULL, \
         lease_expires_at = NULL, error = $3, not_before = $4 \
     WHERE id = $1 AND state = 'running' AND lease_epoch = $2";

pub(crate) const FAIL_TASK: &str = "UPDATE tasks \
     SET state = 'failed', lease_epoch = lease_epoch + 1, lease_owner = NULL, \
         lease_expires_at = NULL, error = $3, finished_at = $4 \
     WHERE id = $1 AND state = 'running' AND lease_epoch = $2";

pub(crate) const FAIL_CELLS: &str =
    "UPDATE run_cells SET state = 'failed' WHERE task_id = $1 AND state = 'pending'";

/// pending → blocked. No lease is involved, so the epoch stays.
pub(crate) const BLOCK_TASK: &str = "UPDATE tasks SET state = 'blocked', error = $3 \
     WHERE id = $1 AND run_id = $2 AND state = 'pending'";

pub(crate) const BLOCK_CELLS: &str =
    "UPDATE run_cells SET state = 'blocked' WHERE task_id = $1 AND state = 'pending'";

pub(crate) const UNBLOCK_TASK: &str = "UPDATE tasks SET state = 'pending', error = NULL \
     WHERE id = $1 AND run_id = $2 AND state = 'blocked'";

pub(crate) const UNBLOCK_CELLS: &str =
    "UPDATE run_cells SET state = 'pending' WHERE task_id = $1 AND state = 'blocked'";

/// Resume: every running task of the run back to pending, fencing the old holder.
pub(crate) const REQUEUE_RUNNING: &str = "UPDATE tasks \
     SET state = 'pending', lease_epoch = lease_epoch + 1, lease_owner = NULL, \
         lease_expires_at = NULL, error = 'interrupted' \
     WHERE run_id = $1 AND state = 'running' RETURNING id";

/// Rescue of dead nodes' tasks. The guard (`running` and lease expired) is evaluated per row by
/// the UPDATE itself, under the row lock, so there is no read-then-write window (River #1302):
/// a task completed, re-claimed or heartbeated meanwhile no longer matches.
pub(crate) const REQUEUE_EXPIRED: &str = "UPDATE tasks \
     SET state = 'pending', lease_epoch = lease_epoch + 1, lease_owner = NULL, \
         lease_expires_at = NULL, error = 'lease expired' \
     WHERE state = 'running' AND lease_expires_at < $1 RETURNING id";

// --- events ---------------------------------------------------------------------------------

pub(crate) const SELECT_EVENTS: &str = "SELECT id, phase, date, status, source, run_id, created_at \
     FROM events WHERE id > $1 ORDER BY id LIMIT $2";

pub(crate) const COUNT_EVENTS: &str = "SELECT COUNT(*) FROM events WHERE phase = $1 AND date = $2";

// --- maintenance ----------------------------------------------------------------------------

pub(crate) const INTEGRITY_CHECK_SQLITE: &str = "PRAGMA integrity_check";
