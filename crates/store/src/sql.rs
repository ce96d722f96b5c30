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
        "id, kind, pipeline, request, state, created_at, updated_at, finished_at, version, \
         owner_id, owner_host, owner_pid, owner_expires_at"
    };
}

macro_rules! task_columns {
    () => {
        "id, run_id, phase, start_date, end_date, state, attempt, lease_epoch, lease_owner, \
         lease_expires_at, not_before, started_at, finished_at, error, counts, runner_host, \
         runner_pgid"
    };
}

/// Takes task `$1`'s cell holds until `$2`; `$3` is now. The `WHERE` of `SELECT` keeps SQLite
/// from reading `ON CONFLICT` as a join constraint.
macro_rules! take_holds {
    () => {
        "INSERT INTO cell_holds (phase, date, task_id, run_id, expires_at) \
         SELECT phase, date, task_id, run_id, $2 FROM run_cells WHERE task_id = $1 \
         ORDER BY phase, date \
         ON CONFLICT (phase, date) DO UPDATE \
         SET task_id = excluded.task_id, run_id = excluded.run_id, \
             expires_at = excluded.expires_at \
         WHERE cell_holds.task_id = excluded.task_id OR cell_holds.expires_at < $3"
    };
}

macro_rules! insert_task {
    () => {
        "INSERT INTO tasks (run_id, phase, start_date, end_date, state, error) \
         VALUES ($1, $2, $3, $4, $5, $6)"
    };
}

/// pending → running: sets the lease expiry with the state (RELIABILITY 2.3), respects the
/// retry backoff, and clears the previous attempt's runner. `$epoch` is the new lease epoch:
/// drawn from `lease_counter` on SQLite, from the `lease_epochs` sequence on PostgreSQL.
macro_rules! claim_update {
    ($epoch:literal, $guard:literal) => {
        concat!(
            "UPDATE tasks \
             SET state = 'running', attempt = attempt + 1, lease_epoch = ",
            $epoch,
            ", lease_owner = $3, lease_expires_at = $4, started_at = $5, not_before = NULL, \
                 runner_host = NULL, runner_pgid = NULL \
             WHERE id = $1 AND state = 'pending' AND lease_epoch = $2 \
               AND (not_before IS NULL OR not_before <= $5)",
            $guard
        )
    };
}

/// The `SET` list of every transition that takes a task out of `running` for good or back to
/// `pending` through its holder: lease cleared, epoch + 1, runner forgotten.
macro_rules! leave_running {
    () => {
        "lease_epoch = lease_epoch + 1, lease_owner = NULL, lease_expires_at = NULL, \
         runner_host = NULL, runner_pgid = NULL"
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
/// `$6..$9`: the owner's id, host, pid and lease expiry, or all NULL for a run without owner.
pub(crate) const INSERT_RUN_SQLITE: &str = "INSERT INTO runs \
     (id, seq, kind, pipeline, request, state, created_at, updated_at, version, \
      owner_id, owner_host, owner_pid, owner_expires_at) \
     VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM runs), ?2, ?3, ?4, 'running', ?5, ?5, 0, \
             ?6, ?7, ?8, ?9)";
pub(crate) const INSERT_RUN_POSTGRES: &str = "INSERT INTO runs \
     (id, kind, pipeline, request, state, created_at, updated_at, version, \
      owner_id, owner_host, owner_pid, owner_expires_at) \
     VALUES ($1, $2, $3, $4, 'running', $5, $5, 0, $6, $7, $8, $9)";

statements! {
    SELECT_RUN = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1");

    LIST_RUNS = concat!("SELECT ", run_columns!(), " FROM runs ORDER BY seq DESC LIMIT $1");

    /// Compare-and-set on the run's version (cancel vs checkpoint, Dagster PR #7094). A terminal
    /// state (`$5`, `finished_at`, set) releases the run's owner.
    SET_RUN_STATE = "UPDATE runs \
         SET state = $3, version = version + 1, updated_at = $4, finished_at = $5, \
             owner_id = CASE WHEN $5 IS NULL THEN owner_id ELSE NULL END, \
             owner_host = CASE WHEN $5 IS NULL THEN owner_host ELSE NULL END, \
             owner_pid = CASE WHEN $5 IS NULL THEN owner_pid ELSE NULL END, \
             owner_expires_at = CASE WHEN $5 IS NULL THEN owner_expires_at ELSE NULL END \
         WHERE id = $1 AND version = $2";

    /// Only a running run finishes, so a cancel is never overwritten by a late "succeeded".
    /// Finishing releases the run's owner.
    FINISH_RUN = "UPDATE runs \
         SET state = $2, version = version + 1, updated_at = $3, finished_at = $3, \
             owner_id = NULL, owner_host = NULL, owner_pid = NULL, owner_expires_at = NULL \
         WHERE id = $1 AND state = 'running'";

    /// The run's owner, read before deciding whether a caller may take it.
    SELECT_RUN_OWNER_SQLITE = "SELECT owner_id, owner_host, owner_pid, owner_expires_at \
         FROM runs WHERE id = $1";

    /// The same, locking the run's row until the deciding transaction ends.
    SELECT_RUN_OWNER_POSTGRES = "SELECT owner_id, owner_host, owner_pid, owner_expires_at \
         FROM runs WHERE id = $1 FOR UPDATE";

    /// Compare-and-set of the owner: applies only if the owner is still `$6` (NULL: none).
    SET_RUN_OWNER = "UPDATE runs \
         SET owner_id = $2, owner_host = $3, owner_pid = $4, owner_expires_at = $5 \
         WHERE id = $1 AND ((owner_id IS NULL AND $6 IS NULL) OR owner_id = $6)";

    RENEW_RUN = "UPDATE runs SET owner_expires_at = $3 WHERE id = $1 AND owner_id = $2";

    RELEASE_RUN = "UPDATE runs \
         SET owner_id = NULL, owner_host = NULL, owner_pid = NULL, owner_expires_at = NULL \
         WHERE id = $1 AND owner_id = $2";
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

    /// Locks task `$1` for its claim if it is still pending at epoch `$2` and its retry backoff
    /// passed at `$3` (now), skipping it if another transaction holds it: two nodes racing for
    /// one task never wait on each other; the loser hears "not claimable" at once and moves on.
    /// Taken first by every claim on PostgreSQL, before the run's phase lock and the cells'
    /// holds.
    LOCK_CLAIMABLE_POSTGRES = "SELECT 1 FROM tasks \
         WHERE id = $1 AND state = 'pending' AND lease_epoch = $2 \
           AND (not_before IS NULL OR not_before <= $3) \
         FOR UPDATE SKIP LOCKED";

    /// The claim, returning the new lease. The new epoch comes from the `lease_epochs`
    /// sequence (migration 9), larger than every epoch a claim drew before. The caller took the
    /// task's cell holds first ([`TAKE_HOLDS_POSTGRES`]) in the same transaction, so a later
    /// claim of the same cell draws its epoch after this one commits, and draws a larger one.
    CLAIM_POSTGRES = concat!(
        claim_update!("nextval('lease_epochs')", ""),
        " RETURNING lease_epoch, attempt"
    );

    /// The claim on SQLite, whose writers are serialized: the new epoch is read from the
    /// counter ([`SET_LEASE_COUNTER`] then records it), and the guard refuses the claim while
    /// another task's hold on one of its cells is live, so [`TAKE_HOLDS`] then takes them all.
    /// [`SELECT_LEASE`] reads the new lease: SQLite runs `RETURNING` through a temporary
    /// table, which took ~3 µs more per claim than the read.
    CLAIM_SQLITE = claim_update!(
        "(SELECT MAX(last, $2) + 1 FROM lease_counter)",
        " AND NOT EXISTS (SELECT 1 FROM run_cells c \
             JOIN cell_holds h ON h.phase = c.phase AND h.date = c.date \
             WHERE c.task_id = $1 AND h.task_id <> $1 AND h.expires_at >= $5)"
    );

    SELECT_LEASE = "SELECT lease_epoch, attempt FROM tasks WHERE id = $1";

    /// Serializes the claims of one run's phase until the transaction ends, so that the count
    /// of its running tasks ([`RUNNING_PEERS`], a later statement with a fresh snapshot) is
    /// exact across nodes. One key per run and phase: claims of other phases never wait.
    LOCK_PHASE_POSTGRES = "SELECT pg_advisory_xact_lock(hashtext(run_id || '/' || phase::text)) \
         FROM tasks WHERE id = $1";

    /// Running tasks of task `$1`'s run and phase, on any node.
    RUNNING_PEERS = "SELECT COUNT(*) FROM tasks t JOIN tasks me \
             ON me.run_id = t.run_id AND me.phase = t.phase \
         WHERE me.id = $1 AND t.state = 'running'";

    /// Every task's state and epoch, for a scheduler that follows what other nodes do.
    TASK_STATES = "SELECT id, state, lease_epoch FROM tasks WHERE run_id = $1 ORDER BY id";

    /// Running runs of pipeline `$1` with a task claimable at `$2`: work a node can help with.
    /// Each node asks on every wake-up (every completion anywhere notifies), so its cost must
    /// follow the running runs, not the pending tasks: the runs come from `runs_running`, and
    /// each run's first claimable task from `tasks_pending_run` (PostgreSQL's partial indexes).
    RUNS_WITH_WORK = "SELECT r.id FROM runs r \
         WHERE r.state = 'running' AND r.pipeline = $1 AND EXISTS ( \
             SELECT 1 FROM tasks t WHERE t.run_id = r.id AND t.state = 'pending' \
                 AND (t.not_before IS NULL OR t.not_before <= $2)) \
         ORDER BY r.created_at \
         LIMIT 50";

    SET_LEASE_COUNTER = "UPDATE lease_counter SET last = $1 WHERE id = 1";

    /// A hold on each cell of task `$1` until `$2`, taking over holds that are the task's own
    /// or expired before `$3` (now). Cells in key order, so concurrent claims lock them in the
    /// same order.
    TAKE_HOLDS = take_holds!();

    /// [`TAKE_HOLDS`], and whether it took every cell of the task: `false` means another task
    /// holds one, and the caller rolls the claim back.
    TAKE_HOLDS_POSTGRES = concat!(
        "WITH held AS (",
        take_holds!(),
        " RETURNING 1) SELECT (SELECT COUNT(*) FROM held) = \
             (SELECT COUNT(*) FROM run_cells WHERE task_id = $1)"
    );

    /// A heartbeat renews the task's holds with its lease. Holds are found through the task's
    /// cells: `cell_holds` has no index on `task_id` (one page less written per claim).
    RENEW_HOLDS = "UPDATE cell_holds SET expires_at = $2 \
         WHERE (phase, date) IN (SELECT phase, date FROM run_cells WHERE task_id = $1) \
           AND task_id = $1";

    DROP_HOLDS = "DELETE FROM cell_holds \
         WHERE (phase, date) IN (SELECT phase, date FROM run_cells WHERE task_id = $1) \
           AND task_id = $1";

    /// Live holds of other tasks on the cells of task `$1` at `$2` (now).
    SELECT_HOLDERS = "SELECT h.phase AS phase, h.date AS date, h.run_id AS run_id, \
             h.task_id AS task_id, h.expires_at AS expires_at \
         FROM run_cells c JOIN cell_holds h ON h.phase = c.phase AND h.date = c.date \
         WHERE c.task_id = $1 AND h.task_id <> $1 AND h.expires_at >= $2 \
         ORDER BY h.phase, h.date";

    HEARTBEAT = "UPDATE tasks SET lease_expires_at = $3 \
         WHERE id = $1 AND state = 'running' AND lease_epoch = $2";

    RECORD_RUNNER = "UPDATE tasks SET runner_host = $3, runner_pgid = $4 \
         WHERE id = $1 AND state = 'running' AND lease_epoch = $2";

    /// Runners that may still be alive: of running tasks, and of tasks a requeue took from a
    /// holder that may not have stopped them.
    SELECT_RUNNERS = "SELECT id, runner_host, runner_pgid FROM tasks \
         WHERE run_id = $1 AND runner_host IS NOT NULL AND runner_pgid IS NOT NULL \
           AND (state = 'running' OR state = 'pending') \
         ORDER BY id";

    FORGET_RUNNERS = "UPDATE tasks SET runner_host = NULL, runner_pgid = NULL \
         WHERE run_id = $1 AND state <> 'running' AND runner_host IS NOT NULL";

    COMPLETE_TASK = concat!(
        "UPDATE tasks SET state = 'complete', ",
        leave_running!(),
        ", finished_at = $3, counts = $4, error = NULL \
         WHERE id = $1 AND state = 'running' AND lease_epoch = $2"
    );

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

    RELEASE_FOR_RETRY = concat!(
        "UPDATE tasks SET state = 'pending', ",
        leave_running!(),
        ", error = $3, not_before = $4 \
         WHERE id = $1 AND state = 'running' AND lease_epoch = $2"
    );

    FAIL_TASK = concat!(
        "UPDATE tasks SET state = 'failed', ",
        leave_running!(),
        ", error = $3, finished_at = $4 \
         WHERE id = $1 AND state = 'running' AND lease_epoch = $2"
    );

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

    /// A pending or blocked task at epoch `$2` becomes the first piece of its split: new range,
    /// state and error, a fresh attempt count, epoch + 1 (readers of the old task are fenced).
    REWRITE_SPLIT_TASK = "UPDATE tasks \
         SET start_date = $3, end_date = $4, state = $5, error = $6, attempt = 0, \
             lease_epoch = lease_epoch + 1, not_before = NULL, started_at = NULL, \
             finished_at = NULL, counts = NULL, runner_host = NULL, runner_pgid = NULL \
         WHERE id = $1 AND lease_epoch = $2 AND (state = 'pending' OR state = 'blocked')";

    /// The task's cells, in date order.
    SELECT_TASK_DATES = "SELECT date FROM run_cells WHERE task_id = $1 ORDER BY date";

    /// The cells of task `$1` within `$4..=$5` move to task `$2` in state `$3`.
    MOVE_CELLS = "UPDATE run_cells SET task_id = $2, state = $3 \
         WHERE task_id = $1 AND date >= $4 AND date <= $5";

    /// Resume: every running task of the run back to pending, fencing the old holder. The
    /// runner stays recorded: the old holder may not have stopped it.
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

    /// Tasks by phase and state, over every run.
    TASK_COUNTS = "SELECT phase, state, COUNT(*) AS n FROM tasks GROUP BY phase, state \
         ORDER BY phase, state";

    /// Newest first.
    RECENT_EVENTS = "SELECT id, phase, date, status, source, run_id, created_at \
         FROM events ORDER BY id DESC LIMIT $1";

    /// An event from outside, stored unless one with the same key was: no row comes back then.
    INGEST_EVENT = "INSERT INTO events \
         (phase, date, status, source, run_id, created_at, dedup_key) \
         VALUES ($1, $2, $3, $4, NULL, $5, $6) \
         ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING \
         RETURNING id";

    QUARANTINE = "INSERT INTO quarantine (received_at, source, dedup_key, payload, reason) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING \
         RETURNING id";

    /// Newest first.
    SELECT_QUARANTINE = "SELECT id, received_at, source, dedup_key, payload, reason \
         FROM quarantine ORDER BY id DESC LIMIT $1";

    SELECT_CONSUMER = "SELECT event_id FROM consumers WHERE name = $1";

    SAVE_CONSUMER = "INSERT INTO consumers (name, event_id, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET event_id = excluded.event_id, \
             updated_at = excluded.updated_at";

    /// The cells of phase `$2` within `$3..=$4` that a run still means to run, while its owner
    /// holds it (`$1` is now), or while it is `running` without owner (its node died and
    /// another is adopting it): a run that was interrupted, or whose owner's lease lapsed,
    /// plans nothing.
    ACTIVE_CELLS = "SELECT c.date FROM runs r \
         JOIN run_cells c ON c.run_id = r.id \
         WHERE (r.owner_expires_at > $1 OR (r.state = 'running' AND r.owner_id IS NULL)) \
             AND c.phase = $2 AND c.date >= $3 AND c.date <= $4 \
             AND c.state = 'pending' \
         ORDER BY c.date";
}

/// Taken by every PostgreSQL transaction that inserts events, before its first insert, and held
/// to its commit: identity values are drawn at insert, so without it an event could become
/// visible after a later id was read, and a consumer keeping the last id read would skip it.
pub(crate) const LOCK_EVENT_LOG_POSTGRES: &str = "SELECT pg_advisory_xact_lock(7306231840418816)";

/// Wakes the nodes that listen (`LISTEN gapless_work`): work was added or given back. Sent in
/// the transaction that did it, so it is delivered at its commit, and only then.
pub(crate) const NOTIFY_WORK_POSTGRES: &str = "SELECT pg_notify('gapless_work', '')";
/// The channel of [`NOTIFY_WORK_POSTGRES`].
pub(crate) const WORK_CHANNEL: &str = "gapless_work";

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

    /// A heal run `$2` was started for open gap `$1` (SQLite, one statement a gap: in process).
    TRIGGER_GAP = "UPDATE gaps SET healing_status = 'triggered', run_id = $2, \
             attempts = attempts + 1, last_error = NULL \
         WHERE id = $1 AND healing_status <> 'complete'";

    /// A heal run `$2` was started for the open gaps `$1` (an array): one round trip however
    /// many gaps it heals.
    TRIGGER_GAPS_POSTGRES = "UPDATE gaps SET healing_status = 'triggered', run_id = $2, \
             attempts = attempts + 1, last_error = NULL \
         WHERE id = ANY($1) AND healing_status <> 'complete'";

    /// After heal run `$1`: the gaps it was started for whose cell it completed are closed.
    HEALED_GAPS = "UPDATE gaps SET healing_status = 'complete', healed_at = $2 \
         WHERE run_id = $1 AND healing_status = 'triggered' AND EXISTS ( \
             SELECT 1 FROM run_cells c WHERE c.run_id = $1 AND c.phase = gaps.phase_to \
                 AND c.date = gaps.partition_date AND c.state = 'complete')";

    /// After heal run `$1`: the others failed, with their task's error.
    UNHEALED_GAPS = "UPDATE gaps SET healing_status = 'failed', last_error = COALESCE( \
             (SELECT t.error FROM run_cells c JOIN tasks t ON t.id = c.task_id \
              WHERE c.run_id = $1 AND c.phase = gaps.phase_to \
                  AND c.date = gaps.partition_date), \
             'the heal run ended without completing it') \
         WHERE run_id = $1 AND healing_status = 'triggered'";

    /// The ended runs (not running) that gaps still name as `triggered`: their heal was never
    /// recorded (their node died between ending the run and recording it).
    ENDED_HEALS = "SELECT DISTINCT g.run_id FROM gaps g JOIN runs r ON r.id = g.run_id \
         WHERE g.healing_status = 'triggered' AND r.state <> 'running' \
         ORDER BY g.run_id";

    /// Open gap `$1` is alerted about at `$2`.
    ALERT_GAP = "UPDATE gaps SET healing_status = 'alerted', alerted_at = $2 \
         WHERE id = $1 AND healing_status <> 'complete'";

    INSERT_ALERT = "INSERT INTO alerts (created_at, channel, message) VALUES ($1, $2, $3)";

    UNDELIVERED_ALERTS = "SELECT id, created_at, channel, message, delivered_at, attempts, \
             last_error \
         FROM alerts WHERE delivered_at IS NULL ORDER BY id LIMIT $1";

    ALERT_DELIVERED = "UPDATE alerts SET delivered_at = $2, attempts = attempts + 1, \
             last_error = NULL \
         WHERE id = $1 AND delivered_at IS NULL";

    ALERT_FAILED = "UPDATE alerts SET attempts = attempts + 1, last_error = $2 \
         WHERE id = $1 AND delivered_at IS NULL";

    SELECT_TICK = "SELECT last_at FROM ticks WHERE name = $1";

    /// Only forward: a slower process never moves a tick back.
    SAVE_TICK = "INSERT INTO ticks (name, last_at) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET last_at = excluded.last_at \
         WHERE ticks.last_at < excluded.last_at";

    /// `$1` is `open`, `all` or a status.
    SELECT_GAPS = "SELECT id, detected_at, last_seen_at, phase_from, phase_to, partition_date, \
             gap_age_days, found, expected, healing_status, attempts, run_id, alerted_at, \
             healed_at, last_error \
         FROM gaps \
         WHERE $1 = 'all' OR ($1 = 'open' AND healing_status <> 'complete') \
             OR healing_status = $1 \
         ORDER BY phase_to, partition_date, id";

    /// The ledger's history from `$1` (ms): the gaps open at `$1` (`kind` = `open`), then per
    /// UTC day (`day` = days since 1970-01-01) the gaps found (`found`) and closed (`closed`).
    GAP_HISTORY = "SELECT 'open' AS kind, CAST(0 AS BIGINT) AS day, COUNT(*) AS n FROM gaps \
         WHERE detected_at < $1 AND (healed_at IS NULL OR healed_at >= $1) \
         UNION ALL \
         SELECT 'found', detected_at / 86400000, COUNT(*) FROM gaps WHERE detected_at >= $1 \
         GROUP BY detected_at / 86400000 \
         UNION ALL \
         SELECT 'closed', healed_at / 86400000, COUNT(*) FROM gaps WHERE healed_at >= $1 \
         GROUP BY healed_at / 86400000";
}

// --- nodes, leases and ticks ----------------------------------------------------------------

statements! {
    /// A node starts, or renews a row that a reaper has not removed yet.
    REGISTER_NODE = "INSERT INTO nodes (id, host, pid, started_at, heartbeat_at, expires_at) \
         VALUES ($1, $2, $3, $4, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, \
             expires_at = excluded.expires_at";

    NODE_HEARTBEAT = "UPDATE nodes SET heartbeat_at = $2, expires_at = $3 WHERE id = $1";

    SELECT_NODES = "SELECT id, host, pid, started_at, heartbeat_at, expires_at FROM nodes \
         ORDER BY started_at, id";

    /// A node's row goes, guarded by the expiry the reaper saw, so a node that renewed
    /// meanwhile stays.
    DELETE_NODE = "DELETE FROM nodes WHERE id = $1 AND expires_at = $2";

    DELETE_OWN_NODE = "DELETE FROM nodes WHERE id = $1";

    /// Leases held by `$1`, released when it stops or is found dead: the term stays, so the
    /// next holder's is larger.
    RELEASE_LEASES_OF = "UPDATE leases SET holder = NULL, expires_at = NULL WHERE holder = $1";

    /// The running tasks a node holds, with their recorded runners.
    RUNNING_TASKS_OF = "SELECT id, runner_host, runner_pgid FROM tasks \
         WHERE state = 'running' AND lease_owner = $1 \
           AND runner_host IS NOT NULL AND runner_pgid IS NOT NULL ORDER BY id";

    /// A dead node's running tasks back to pending, fenced: those whose lease expired before
    /// `$2` (a node of another host: its runners stop themselves before their leases expire),
    /// or all of them when `$2` is the largest value (a process of this host that is gone).
    /// The runner stays recorded: the caller stopped it if it could.
    REQUEUE_OWNED_BY = "UPDATE tasks \
         SET state = 'pending', lease_epoch = lease_epoch + 1, lease_owner = NULL, \
             lease_expires_at = NULL, error = 'its node died' \
         WHERE state = 'running' AND lease_owner = $1 AND lease_expires_at < $2 RETURNING id";

    /// A dead node's runs lose their owner, so any node adopts them at once.
    RELEASE_RUNS_OF = "UPDATE runs \
         SET owner_id = NULL, owner_host = NULL, owner_pid = NULL, owner_expires_at = NULL \
         WHERE owner_id = $1";

    ENSURE_LEASE = "INSERT INTO leases (name, holder, term) VALUES ($1, NULL, 0) \
         ON CONFLICT (name) DO NOTHING";

    SELECT_LEASE_SQLITE = "SELECT name, holder, term, acquired_at, expires_at FROM leases \
         WHERE name = $1";

    /// Locks the lease's row to the end of the deciding transaction.
    SELECT_LEASE_POSTGRES = "SELECT name, holder, term, acquired_at, expires_at FROM leases \
         WHERE name = $1 FOR UPDATE";

    SELECT_LEASES = "SELECT name, holder, term, acquired_at, expires_at FROM leases \
         ORDER BY name";

    /// A new holder: the term moves on by one, issued by the store in this transaction.
    TAKE_LEASE = "UPDATE leases SET holder = $2, term = term + 1, acquired_at = $3, \
             expires_at = $4 \
         WHERE name = $1 AND term = $5 RETURNING term";

    RENEW_LEASE = "UPDATE leases SET expires_at = $4 \
         WHERE name = $1 AND holder = $2 AND term = $3";

    RELEASE_LEASE = "UPDATE leases SET holder = NULL, expires_at = NULL \
         WHERE name = $1 AND holder = $2 AND term = $3";

    /// The fence: the lease is still `$2`'s under term `$3` and unexpired at `$4`. Written as
    /// a locking read on PostgreSQL ([`FENCE_POSTGRES`]), so a take-over waits for the
    /// fenced write to commit, and the write waits for a take-over in progress.
    FENCE_SQLITE = "SELECT COUNT(*) FROM leases \
         WHERE name = $1 AND holder = $2 AND term = $3 AND expires_at >= $4";

    FENCE_POSTGRES = "SELECT COUNT(*) FROM (SELECT 1 FROM leases \
         WHERE name = $1 AND holder = $2 AND term = $3 AND expires_at >= $4 FOR SHARE) held";

    /// A leader takes scheduled occurrence `$2` of `$1`: a new row, or one that a leader of
    /// an older term took and never finished (it died mid-tick).
    CLAIM_TICK = "INSERT INTO tick_runs (name, at, term, node, claimed_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (name, at) DO UPDATE SET term = excluded.term, node = excluded.node, \
             claimed_at = excluded.claimed_at, attempts = tick_runs.attempts + 1 \
         WHERE tick_runs.finished_at IS NULL AND tick_runs.term < excluded.term \
         RETURNING attempts";

    FINISH_TICK = "UPDATE tick_runs SET finished_at = $4 \
         WHERE name = $1 AND at = $2 AND term = $3 AND finished_at IS NULL";

    /// The latest occurrence taken but not finished, of a term older than `$2`.
    UNFINISHED_TICK = "SELECT at FROM tick_runs \
         WHERE name = $1 AND finished_at IS NULL AND term < $2 ORDER BY at DESC LIMIT 1";

    TICK_RUNS = "SELECT name, at, term, node, claimed_at, finished_at, attempts FROM tick_runs \
         WHERE name = $1 ORDER BY at";

    /// Runs owned per owner id, and running tasks per lease owner, for `gapless nodes`.
    OWNED_RUNS = "SELECT owner_id, id FROM runs WHERE owner_id IS NOT NULL \
         AND state = 'running' ORDER BY owner_id, id";

    RUNNING_PER_OWNER = "SELECT lease_owner, COUNT(*) AS n FROM tasks \
         WHERE state = 'running' AND lease_owner IS NOT NULL GROUP BY lease_owner";
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
