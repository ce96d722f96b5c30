//! Every SQL statement of the store, each written once with `$N` placeholders.
//!
//! One text serves both backends. [`Sql::postgres`] is the text as written. [`Sql::sqlite`] is
//! the same text with every `$N` turned into `?N`, computed at compile time: SQLite reads `$1`
//! as a *named* parameter and numbers names in order of first appearance, so positional binding
//! would silently misbind a statement whose placeholders are not in order (`SET_RUN_STATE` uses
//! `$3` first). `?N` pins parameter N, and a repeated `?N` is one slot, as `$N` is on
//! PostgreSQL. Everything used here (`RETURNING`, partial indexes, `CASE`) means the same on
//! SQLite ≥ 3.35 and PostgreSQL. Values are computed in Rust (timestamps, JSON text), so no
//! dialect-specific function appears. The few statements that differ are suffixed `_SQLITE` /
//! `_POSTGRES`.
//!
//! Every state transition is guarded by the state it expects and, where a lease is involved, by
//! the lease epoch the caller holds (RELIABILITY 2.1). Zero affected rows means the caller lost.

/// One statement in each backend's placeholder style.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sql {
    /// As written: `$N` placeholders.
    pub(crate) postgres: &'static str,
    /// `?N` placeholders.
    pub(crate) sqlite: &'static str,
}

/// `text` with every `$` outside a `'…'` literal replaced by `?`. `N` is `text.len()` (the
/// replacement keeps the length); `const`, so the SQLite texts are built by the compiler.
const fn numbered_placeholders<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    let mut out = [0; N];
    let mut index = 0;
    let mut in_literal = false;
    while index < N {
        let byte = bytes[index];
        if byte == b'\'' {
            in_literal = !in_literal;
        }
        out[index] = if byte == b'$' && !in_literal {
            b'?'
        } else {
            byte
        };
        index += 1;
    }
    out
}

/// Declares `pub(crate) const NAME: Sql` items, each from one `$N` text (a literal or `concat!`).
macro_rules! statements {
    ($($(#[$meta:meta])* $name:ident = $text:expr;)+) => {$(
        $(#[$meta])*
        pub(crate) const $name: Sql = {
            const TEXT: &str = $text;
            const SQLITE: [u8; TEXT.len()] = numbered_placeholders(TEXT);
            Sql {
                postgres: TEXT,
                sqlite: match std::str::from_utf8(&SQLITE) {
                    Ok(text) => text,
                    // Unreachable: only ASCII `$` bytes were replaced, by ASCII `?`.
                    Err(_) => panic!("SQL text is not UTF-8"),
                },
            }
        };
    )+};
}

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

macro_rules! insert_task {
    () => {
        "INSERT INTO tasks (run_id, phase, start_date, end_date, state, error) \
         VALUES ($1, $2, $3, $4, $5, $6)"
    };
}

/// pending → running, in one statement: sets the lease expiry with the state (RELIABILITY 2.3)
/// and respects the retry backoff.
macro_rules! claim_update {
    () => {
        "UPDATE tasks \
         SET state = 'running', attempt = attempt + 1, lease_epoch = lease_epoch + 1, \
             lease_owner = $3, lease_expires_at = $4, started_at = $5, not_before = NULL \
         WHERE id = $1 AND state = 'pending' AND lease_epoch = $2 \
           AND (not_before IS NULL OR not_before <= $5)"
    };
}

// --- schema version -----------------------------------------------------------------------

/// Whether sqlx's migration table exists. On SQLite only databases migrated by an older gapless
/// (sqlx's migrator) have it; this store keeps the version in `PRAGMA user_version` instead.
pub(crate) const HAS_MIGRATIONS_TABLE_SQLITE: &str =
    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";
pub(crate) const HAS_MIGRATIONS_TABLE_POSTGRES: &str = "SELECT COUNT(*) FROM pg_catalog.pg_tables \
     WHERE schemaname = current_schema() AND tablename = '_sqlx_migrations'";
/// Highest migration sqlx's migrator applied (PostgreSQL; SQLite databases of older versions).
pub(crate) const SCHEMA_VERSION: &str =
    "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success";

// --- runs -----------------------------------------------------------------------------------

/// SQLite has no identity column besides the rowid; writers are serialized (`BEGIN IMMEDIATE`),
/// so `MAX(seq) + 1` cannot race.
pub(crate) const INSERT_RUN_SQLITE: &str = "INSERT INTO runs \
     (id, seq, kind, pipeline, request, state, created_at, updated_at, version) \
     VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM runs), ?2, ?3, ?4, 'running', ?5, ?5, 0)";
pub(crate) const INSERT_RUN_POSTGRES: &str = "INSERT INTO runs \
     (id, kind, pipeline, request, state, created_at, updated_at, version) \
     VALUES ($1, $2, $3, $4, 'running', $5, $5, 0)";

statements! {
    SELECT_RUN = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1");

    LIST_RUNS = concat!("SELECT ", run_columns!(), " FROM runs ORDER BY seq DESC LIMIT $1");

    /// Compare-and-set on the run's version (cancel vs checkpoint, Dagster PR #7094).
    SET_RUN_STATE = "UPDATE runs \
         SET state = $3, version = version + 1, updated_at = $4, finished_at = $5 \
         WHERE id = $1 AND version = $2";

    /// Only a running run finishes, so a cancel is never overwritten by a late "succeeded".
    FINISH_RUN = "UPDATE runs \
         SET state = $2, version = version + 1, updated_at = $3, finished_at = $3 \
         WHERE id = $1 AND state = 'running'";
}

// --- tasks and cells ------------------------------------------------------------------------

statements! {
    /// SQLite takes the new id from `last_insert_rowid()`: `RETURNING` would stage every row
    /// in a temporary table, and a run inserts thousands.
    INSERT_TASK_SQLITE = insert_task!();

    INSERT_TASK_POSTGRES = concat!(insert_task!(), " RETURNING id");

    INSERT_CELL = "INSERT INTO run_cells \
         (run_id, phase, date, task_id, state) VALUES ($1, $2, $3, $4, $5)";

    SELECT_TASKS = concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE run_id = $1 ORDER BY phase, start_date"
    );

    SELECT_TASK = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = $1");

    SELECT_CELLS = "SELECT run_id, phase, date, task_id, state, completed_at \
         FROM run_cells WHERE run_id = $1 ORDER BY phase, date";

    RUN_PROGRESS = "SELECT c.phase AS phase, COUNT(*) AS total, \
         SUM(CASE WHEN c.state = 'pending' AND t.state <> 'running' THEN 1 ELSE 0 END) AS pending, \
         SUM(CASE WHEN c.state = 'pending' AND t.state = 'running' THEN 1 ELSE 0 END) AS running, \
         SUM(CASE WHEN c.state = 'complete' THEN 1 ELSE 0 END) AS complete, \
         SUM(CASE WHEN c.state = 'failed' THEN 1 ELSE 0 END) AS failed, \
         SUM(CASE WHEN c.state = 'blocked' THEN 1 ELSE 0 END) AS blocked \
         FROM run_cells c JOIN tasks t ON t.id = c.task_id \
         WHERE c.run_id = $1 GROUP BY c.phase ORDER BY c.phase";

    /// The claim, returning the new lease: one round trip.
    CLAIM_POSTGRES = concat!(claim_update!(), " RETURNING lease_epoch, attempt");

    /// The claim; [`SELECT_LEASE`] then reads the new lease in the same transaction. SQLite runs
    /// `RETURNING` through a temporary table, which took ~3 µs more per claim than the read.
    CLAIM_SQLITE = claim_update!();

    SELECT_LEASE = "SELECT lease_epoch, attempt FROM tasks WHERE id = $1";

    HEARTBEAT = "UPDATE tasks SET lease_expires_at = $3 \
         WHERE id = $1 AND state = 'running' AND lease_epoch = $2";

    COMPLETE_TASK = "UPDATE tasks \
         SET state = 'complete', lease_epoch = lease_epoch + 1, lease_owner = NULL, \
             lease_expires_at = NULL, finished_at = $3, counts = $4, error = NULL \
         WHERE id = $1 AND state = 'running' AND lease_epoch = $2";

    /// Only pending cells move, so a cell is recorded complete at most once.
    COMPLETE_CELLS = "UPDATE run_cells SET state = 'complete', completed_at = $2 \
         WHERE task_id = $1 AND state = 'pending'";

    /// One event per cell that [`COMPLETE_CELLS`] just moved, set-based (a 31-day task is one
    /// statement, not 31). The task's completion is a compare-and-set that wins once, so the
    /// cells stamped with this transaction's time are exactly the ones it completed.
    INSERT_COMPLETION_EVENTS = "INSERT INTO events \
         (phase, date, status, source, run_id, created_at) \
         SELECT phase, date, 'complete', $3, run_id, $2 FROM run_cells \
         WHERE task_id = $1 AND state = 'complete' AND completed_at = $2";

    INSERT_EVENT = "INSERT INTO events \
         (phase, date, status, source, run_id, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
         RETURNING id";

    RELEASE_FOR_RETRY = "UPDATE tasks \
         SET state = 'pending', lease_epoch = lease_epoch + 1, lease_owner = NULL, \
             lease_expires_at = NULL, error = $3, not_before = $4 \
         WHERE id = $1 AND state = 'running' AND lease_epoch = $2";

    /// Gives back a claim whose runner never started (the executor claims one task ahead):
    /// running → pending with the attempt it took undone, lease cleared, epoch + 1, and the
    /// start time cleared when no attempt ran before. (`SET` reads the row as it was.)
    RELEASE_CLAIM = "UPDATE tasks \
         SET state = 'pending', attempt = attempt - 1, lease_epoch = lease_epoch + 1, \
             lease_owner = NULL, lease_expires_at = NULL, \
             started_at = CASE WHEN attempt > 1 THEN started_at ELSE NULL END \
         WHERE id = $1 AND state = 'running' AND lease_epoch = $2";

    FAIL_TASK = "UPDATE tasks \
         SET state = 'failed', lease_epoch = lease_epoch + 1, lease_owner = NULL, \
             lease_expires_at = NULL, error = $3, finished_at = $4 \
         WHERE id = $1 AND state = 'running' AND lease_epoch = $2";

    FAIL_CELLS = "UPDATE run_cells SET state = 'failed' WHERE task_id = $1 AND state = 'pending'";

    /// pending → blocked. No lease is involved, so the epoch stays.
    BLOCK_TASK = "UPDATE tasks SET state = 'blocked', error = $3 \
         WHERE id = $1 AND run_id = $2 AND state = 'pending'";

    BLOCK_CELLS = "UPDATE run_cells SET state = 'blocked' WHERE task_id = $1 AND state = 'pending'";

    UNBLOCK_TASK = "UPDATE tasks SET state = 'pending', error = NULL \
         WHERE id = $1 AND run_id = $2 AND state = 'blocked'";

    UNBLOCK_CELLS = "UPDATE run_cells SET state = 'pending' WHERE task_id = $1 AND state = 'blocked'";

    /// failed → pending, for a resume after the cause was fixed. Its attempts stay counted;
    /// a failed task holds no lease, so the epoch stays.
    RETRY_TASK = "UPDATE tasks SET state = 'pending', error = NULL, not_before = NULL, \
             finished_at = NULL \
         WHERE id = $1 AND run_id = $2 AND state = 'failed'";

    RETRY_CELLS = "UPDATE run_cells SET state = 'pending' WHERE task_id = $1 AND state = 'failed'";

    /// Resume: every running task of the run back to pending, fencing the old holder.
    REQUEUE_RUNNING = "UPDATE tasks \
         SET state = 'pending', lease_epoch = lease_epoch + 1, lease_owner = NULL, \
             lease_expires_at = NULL, error = 'interrupted' \
         WHERE run_id = $1 AND state = 'running' RETURNING id";

    /// Rescue of dead nodes' tasks. The guard (`running` and lease expired) is evaluated per row
    /// by the UPDATE itself, under the row lock, so there is no read-then-write window
    /// (River #1302): a task completed, re-claimed or heartbeated meanwhile no longer matches.
    REQUEUE_EXPIRED = "UPDATE tasks \
         SET state = 'pending', lease_epoch = lease_epoch + 1, lease_owner = NULL, \
             lease_expires_at = NULL, error = 'lease expired' \
         WHERE state = 'running' AND lease_expires_at < $1 RETURNING id";
}

// --- events ---------------------------------------------------------------------------------

statements! {
    SELECT_EVENTS = "SELECT id, phase, date, status, source, run_id, created_at \
         FROM events WHERE id > $1 ORDER BY id LIMIT $2";

    COUNT_EVENTS = "SELECT COUNT(*) FROM events WHERE phase = $1 AND date = $2";
}

// --- gap ledger -----------------------------------------------------------------------------

statements! {
    /// A gap found by a scan: a new open row, or the cell's open row updated. `detected_at`
    /// of the returned row equals `$1` only for a new row.
    UPSERT_GAP = "INSERT INTO gaps (detected_at, last_seen_at, phase_from, phase_to, \
             partition_date, gap_age_days, found, expected, healing_status) \
         VALUES ($1, $1, $2, $3, $4, $5, $6, $7, 'pending') \
         ON CONFLICT (phase_to, partition_date) WHERE healing_status <> 'complete' \
         DO UPDATE SET last_seen_at = excluded.last_seen_at, phase_from = excluded.phase_from, \
             gap_age_days = excluded.gap_age_days, found = excluded.found, \
             expected = excluded.expected \
         RETURNING detected_at";

    /// The cells with an open gap: a scan closes those it found complete, so its work is in
    /// proportion to the open gaps, not to the cells it covered.
    OPEN_GAP_CELLS = "SELECT id, phase_to, partition_date FROM gaps \
         WHERE healing_status <> 'complete'";

    /// A cell found complete closes its open gap.
    CLOSE_GAP = "UPDATE gaps SET healing_status = 'complete', healed_at = $2 \
         WHERE id = $1 AND healing_status <> 'complete'";

    /// `$1` is `open`, `all` or a status.
    SELECT_GAPS = "SELECT id, detected_at, last_seen_at, phase_from, phase_to, partition_date, \
             gap_age_days, found, expected, healing_status, attempts, run_id, alerted_at, \
             healed_at, last_error \
         FROM gaps \
         WHERE $1 = 'all' OR ($1 = 'open' AND healing_status <> 'complete') \
             OR healing_status = $1 \
         ORDER BY phase_to, partition_date, id";
}

// --- maintenance ----------------------------------------------------------------------------

pub(crate) const INTEGRITY_CHECK_SQLITE: &str = "PRAGMA integrity_check";

#[cfg(test)]
mod tests {
    use super::{CLAIM_POSTGRES, SET_RUN_STATE, numbered_placeholders};

    #[test]
    fn sqlite_texts_pin_parameters_by_number() {
        assert!(SET_RUN_STATE.postgres.contains("state = $3"));
        assert!(SET_RUN_STATE.sqlite.contains("state = ?3"));
        assert!(
            SET_RUN_STATE
                .sqlite
                .contains("WHERE id = ?1 AND version = ?2")
        );
        assert!(!CLAIM_POSTGRES.sqlite.contains('$'));
        assert_eq!(CLAIM_POSTGRES.sqlite.len(), CLAIM_POSTGRES.postgres.len());
    }

    #[test]
    fn dollars_inside_literals_are_kept() {
        let text = "SELECT '$1', $2";
        assert_eq!(&numbered_placeholders::<15>(text), b"SELECT '$1', ?2");
    }
}
