//! The [`Store`] handle: connecting, migrating, and every read and transition.
//!
//! Each method computes its values once (clock, JSON text) and then has one arm per backend,
//! side by side, binding the same SQL text ([`crate::sql`]): SQLite in the calling thread
//! through [`SqliteStore`], PostgreSQL through sqlx under [`CALL_TIMEOUT`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, params};
use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::codec::{
    RowExt, cell_from_row, date, date_text, event_from_row, gap_from_row, progress_from_row,
    run_from_row, task_from_row,
};
use crate::error::{BackendError, StoreError};
use crate::model::{
    CellRecord, Claim, DetectedGap, EventRecord, GapFilter, GapRecord, NewEvent, NewRun, NewTask,
    PhaseProgress, RunId, RunRecord, RunState, ScanRecorded, TaskRecord,
};
use crate::sql;
use crate::sqlite::{self, Commit, Location, SqliteStore, SyncMode};

/// PostgreSQL cancels any statement running longer than this (server side).
const PG_STATEMENT_TIMEOUT: &str = "30s";
/// PostgreSQL ends a session that sits idle inside a transaction this long, releasing its locks.
const PG_IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";
/// Bound on establishing a connection (and on waiting for a free one in the pool).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Client-side bound on every PostgreSQL call, for hangs no server-side timeout sees (a dead
/// TCP peer). Longer than the server-side timeouts, so those fire first when they can. SQLite
/// calls run in the calling thread, where no timeout can interrupt them; SQLite's busy timeout
/// (10 s) bounds their lock waits instead.
const CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// Highest migration embedded in this binary; [`Store::ensure_current`] demands exactly this.
pub const SCHEMA_VERSION: i64 = 4;

/// The state store: runs, tasks, cells and events, on SQLite or PostgreSQL with the same
/// semantics. Chosen once at the top from the `[state] url`; cheap to clone (the connection and
/// the pool are reference-counted).
#[derive(Debug, Clone)]
pub enum Store {
    /// Embedded SQLite: the default, for one node.
    Sqlite(SqliteStore),
    /// PostgreSQL: for several nodes sharing the work.
    Postgres(PgPool),
}

/// Which way [`Store::move_tasks`] moves tasks that hold no lease.
#[derive(Debug, Clone, Copy)]
enum Move<'a> {
    /// pending → blocked, with the reason.
    Block(&'a str),
    /// blocked → pending.
    Unblock,
    /// failed → pending.
    Retry,
}

/// Tasks to claim in the transaction that completes another ([`Store::complete_then_claim`]).
#[derive(Debug, Clone, Copy)]
pub struct NextClaims<'a> {
    /// `(task_id, seen_epoch)` of each task to claim.
    pub tasks: &'a [(i64, i64)],
    /// The lease owner.
    pub owner: &'a str,
    /// The lease length.
    pub ttl: Duration,
}

/// A completion to record apart from the caller ([`Store::spawn_complete_then_claim`]): the
/// arguments of [`Store::complete_then_claim`], owned.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The task completed.
    pub task_id: i64,
    /// The lease epoch it ran under.
    pub epoch: i64,
    /// The gate's counts.
    pub counts: serde_json::Value,
    /// The events' source (`backfill`, `heal`).
    pub source: String,
    /// `(task_id, seen_epoch)` of each task to claim in the same transaction.
    pub next: Vec<(i64, i64)>,
    /// The lease owner of those claims.
    pub owner: String,
    /// Their lease length.
    pub ttl: Duration,
}

/// Runs `body` (an expression that may use `?` and evaluates to the result value) as one
/// PostgreSQL call under [`CALL_TIMEOUT`].
///
/// Boxed, here and in `pg_tx!`: sqlx's futures are kilobytes, and an unboxed branch makes every
/// store method's future that large on SQLite too, which the executor then copies whenever it
/// spawns or joins a task (a task's future was 61 KB).
macro_rules! pg_call {
    ($body:expr) => {
        bounded(Box::pin(async move { Ok::<_, StoreError>($body) })).await
    };
}

/// Like `pg_call!`, inside one transaction on `$pool` bound to `$tx` and committed after
/// `body`. An error (or the timeout) drops the transaction, which rolls it back.
macro_rules! pg_tx {
    ($pool:expr, |$tx:ident| $body:expr) => {
        bounded(Box::pin(async move {
            let mut $tx = $pool.begin().await?;
            let out = $body;
            $tx.commit().await?;
            Ok::<_, StoreError>(out)
        }))
        .await
    };
}

async fn bounded<T>(call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_elapsed| StoreError::Timeout {
            after: CALL_TIMEOUT,
        })?
}

impl Store {
    /// Opens the store at `url` without migrating it (`gapless migrate` does that; `serve` and
    /// friends call [`Store::ensure_current`]), with [`SyncMode::Normal`] on SQLite.
    ///
    /// - `sqlite://state.db`, `sqlite:state.db`: relative to `base_dir` (the pipeline file's
    ///   directory); `sqlite:///abs/state.db`: absolute. Parent directories and the file are
    ///   created. WAL, `synchronous` per [`SyncMode`], 10 s busy timeout, foreign keys on.
    /// - `sqlite::memory:`: a private in-memory database on a single connection (it lives as
    ///   long as that connection).
    /// - `postgres://…`, `postgresql://…`: 10 s connect timeout, 30 s `statement_timeout`.
    pub async fn connect(url: &str, base_dir: &Path) -> Result<Self, StoreError> {
        Self::connect_with(url, base_dir, SyncMode::Normal).await
    }

    /// [`Store::connect`] with the durability of SQLite commits chosen; PostgreSQL ignores
    /// `sync`.
    pub async fn connect_with(
        url: &str,
        base_dir: &Path,
        sync: SyncMode,
    ) -> Result<Self, StoreError> {
        if let Some(rest) = url.strip_prefix("sqlite:") {
            Self::connect_sqlite(rest, base_dir, sync)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url).await
        } else {
            Err(StoreError::UnsupportedUrl {
                scheme: url.split(':').next().unwrap_or_default().to_owned(),
            })
        }
    }

    fn connect_sqlite(rest: &str, base_dir: &Path, sync: SyncMode) -> Result<Self, StoreError> {
        if rest == ":memory:" {
            let store = SqliteStore::open(Location::Memory, sync)?;
            return Ok(Self::Sqlite(store));
        }
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(StoreError::InvalidSqliteUrl {
                reason: "the path is empty",
            });
        }
        if path.contains('?') {
            return Err(StoreError::InvalidSqliteUrl {
                reason: "query parameters are not supported; the store sets its own options",
            });
        }
        let path = base_dir.join(path); // an absolute `path` replaces `base_dir`
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent).map_err(StoreError::CreateDir)?;
        }
        let store = SqliteStore::open(Location::File(&path), sync)?;
        Ok(Self::Sqlite(store))
    }

    async fn connect_postgres(url: &str) -> Result<Self, StoreError> {
        let connect_error = |error| StoreError::Connect(BackendError::Postgres(error));
        let options = PgConnectOptions::from_str(url)
            .map_err(connect_error)?
            .application_name("gapless")
            .options([
                ("statement_timeout", PG_STATEMENT_TIMEOUT),
                (
                    "idle_in_transaction_session_timeout",
                    PG_IDLE_IN_TRANSACTION_TIMEOUT,
                ),
            ]);
        let connect = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options);
        let pool = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_elapsed| StoreError::Timeout {
                after: CONNECT_TIMEOUT,
            })?
            .map_err(connect_error)?;
        Ok(Self::Postgres(pool))
    }

    /// Closes the store: on PostgreSQL waits for connections in use to be returned; on SQLite
    /// closes the connection. Later calls on any clone fail.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(sqlite) => sqlite.close(),
            Self::Postgres(pool) => pool.close().await,
        }
    }

    /// The durability mode of SQLite commits; `None` on PostgreSQL.
    pub fn sync_mode(&self) -> Option<SyncMode> {
        match self {
            Self::Sqlite(sqlite) => Some(sqlite.sync_mode()),
            Self::Postgres(_) => None,
        }
    }

    /// Makes every transaction committed so far durable, e.g. before a fencing token or a
    /// completion leaves the machine. On SQLite with [`SyncMode::Normal`], one small commit that
    /// fsyncs the WAL; a no-op with [`SyncMode::Full`] and on PostgreSQL, whose commits are
    /// durable when they return.
    pub async fn flush(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(sqlite) => sqlite.flush(),
            Self::Postgres(_) => Ok(()),
        }
    }

    // --- schema ---------------------------------------------------------------------------

    /// Applies the embedded migrations that are not applied yet; a no-op when current. Refuses
    /// a database migrated by a newer gapless. Concurrent callers are serialized: on SQLite by
    /// the write lock (the version is re-read under it), on PostgreSQL by sqlx's advisory lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(sqlite) => sqlite.migrate()?,
            Self::Postgres(pool) => migrator(POSTGRES_MIGRATIONS).run(pool).await?,
        }
        Ok(())
    }

    /// Highest successfully applied migration; 0 for an empty database.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        match self {
            Self::Sqlite(sqlite) => sqlite.call(sqlite::schema_version),
            Self::Postgres(pool) => pg_call!({
                let tables: i64 = sqlx::query_scalar(sql::HAS_MIGRATIONS_TABLE_POSTGRES)
                    .fetch_one(pool)
                    .await?;
                if tables == 0 {
                    0
                } else {
                    sqlx::query_scalar(sql::SCHEMA_VERSION)
                        .fetch_one(pool)
                        .await?
                }
            }),
        }
    }

    /// Fails unless the schema is exactly the one this binary was built for: `serve`, `backfill`
    /// and the rest refuse to run on an unmigrated or newer database.
    pub async fn ensure_current(&self) -> Result<(), StoreError> {
        let found = self.schema_version().await?;
        let expected = SCHEMA_VERSION;
        match found.cmp(&expected) {
            std::cmp::Ordering::Less => Err(StoreError::SchemaOutdated { found, expected }),
            std::cmp::Ordering::Greater => Err(StoreError::SchemaNewer { found, expected }),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// SQLite's `PRAGMA integrity_check` (`"ok"` when healthy, otherwise its findings, one per
    /// line). PostgreSQL has no equivalent cheap check and returns `"ok"`.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                let lines = sqlite::rows(connection, sql::INTEGRITY_CHECK_SQLITE, [], |row| {
                    Ok(row.get::<_, String>(0)?)
                })?;
                Ok(lines.join("\n"))
            }),
            Self::Postgres(_) => Ok("ok".to_owned()),
        }
    }

    // --- runs -----------------------------------------------------------------------------

    /// Creates a run in state `running` with all its tasks and one cell per task date, in one
    /// transaction: either all of it is stored or none. Durable on SQLite whatever the
    /// [`SyncMode`]: a run that was reported created survives a power loss.
    ///
    /// Fails with [`StoreError::Duplicate`] when two tasks share (phase, start) or two tasks
    /// cover the same (phase, date), and with [`StoreError::InvalidTask`] for a task whose dates
    /// are empty or outside its range.
    pub async fn create_run(&self, new: &NewRun) -> Result<RunId, StoreError> {
        validate_tasks(&new.tasks)?;
        let now = Utc::now();
        let id = RunId::generate(now);
        let now = now.timestamp_millis();
        let request = serde_json::to_string(&new.request).map_err(|source| StoreError::Json {
            column: "runs.request",
            source,
        })?;
        let (kind, run_id) = (new.kind.as_str(), id.as_str());
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Durable, |connection| {
                let pipeline = new.pipeline.as_str();
                let values = params![run_id, kind, pipeline, request, now];
                sqlite::execute(connection, sql::INSERT_RUN_SQLITE, values)?;
                insert_tasks_sqlite(connection, run_id, &new.tasks)?;
                Ok(())
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                sqlx::query(sql::INSERT_RUN_POSTGRES)
                    .bind(run_id)
                    .bind(kind)
                    .bind(new.pipeline.as_str())
                    .bind(request.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                insert_tasks_postgres(&mut tx, run_id, &new.tasks).await?;
            })?,
        }
        Ok(id)
    }

    /// Adds tasks (and their cells) to an existing run in one transaction, returning their ids
    /// in order. Fails with [`StoreError::Duplicate`], writing nothing, when any of them repeats
    /// a (phase, start) or a (phase, date) the run already has.
    pub async fn add_tasks(
        &self,
        run_id: &RunId,
        tasks: &[NewTask],
    ) -> Result<Vec<i64>, StoreError> {
        validate_tasks(tasks)?;
        let run_id = run_id.as_str();
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                insert_tasks_sqlite(connection, run_id, tasks)
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                insert_tasks_postgres(&mut tx, run_id, tasks).await?
            }),
        }
    }

    /// The run, if it exists.
    pub async fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        self.row_by(sql::SELECT_RUN, id.as_str(), |row| run_from_row(row))
            .await
    }

    /// The most recently created run.
    pub async fn latest_run(&self) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.list_runs(1).await?.pop())
    }

    /// Up to `limit` runs, newest first (a negative `limit` counts as 0).
    pub async fn list_runs(&self, limit: i64) -> Result<Vec<RunRecord>, StoreError> {
        // A negative LIMIT means "all" to SQLite and is an error to PostgreSQL.
        self.rows_by(sql::LIST_RUNS, limit.max(0), |row| run_from_row(row))
            .await
    }

    /// Compare-and-set of the run's state on its `version`; `true` when it applied. Sets
    /// `finished_at` for terminal states and clears it for `running` (resume). Durable on
    /// SQLite whatever the [`SyncMode`].
    pub async fn set_run_state(
        &self,
        run_id: &RunId,
        expected_version: i64,
        new_state: RunState,
    ) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        let finished_at = new_state.is_terminal().then_some(now);
        let (run_id, state) = (run_id.as_str(), new_state.as_str());
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Durable, |connection| {
                let values = params![run_id, expected_version, state, now, finished_at];
                Ok(sqlite::execute(connection, sql::SET_RUN_STATE.sqlite, values)? == 1)
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::SET_RUN_STATE.postgres)
                    .bind(run_id)
                    .bind(expected_version)
                    .bind(state)
                    .bind(now)
                    .bind(finished_at)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            })?,
        };
        log_outcome("set_run_state", won);
        Ok(won)
    }

    /// Moves a `running` run to the terminal `state`; `true` when it applied. A run that is no
    /// longer running (cancelled, already finished) is left alone. Durable on SQLite whatever
    /// the [`SyncMode`], and so is everything committed before it.
    pub async fn finish_run(&self, run_id: &RunId, state: RunState) -> Result<bool, StoreError> {
        if !state.is_terminal() {
            return Err(StoreError::NotTerminal { state });
        }
        let now = Utc::now().timestamp_millis();
        let (run_id, state) = (run_id.as_str(), state.as_str());
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Durable, |connection| {
                let values = params![run_id, state, now];
                Ok(sqlite::execute(connection, sql::FINISH_RUN.sqlite, values)? == 1)
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::FINISH_RUN.postgres)
                    .bind(run_id)
                    .bind(state)
                    .bind(now)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            })?,
        };
        log_outcome("finish_run", won);
        Ok(won)
    }

    // --- tasks and cells --------------------------------------------------------------------

    /// The run's tasks, ordered by phase, then start date.
    pub async fn tasks(&self, run_id: &RunId) -> Result<Vec<TaskRecord>, StoreError> {
        self.rows_by(sql::SELECT_TASKS, run_id.as_str(), |row| task_from_row(row))
            .await
    }

    /// One task, if it exists.
    pub async fn task(&self, task_id: i64) -> Result<Option<TaskRecord>, StoreError> {
        self.row_by(sql::SELECT_TASK, task_id, |row| task_from_row(row))
            .await
    }

    /// The run's cells, ordered by phase, then date.
    pub async fn cells(&self, run_id: &RunId) -> Result<Vec<CellRecord>, StoreError> {
        self.rows_by(sql::SELECT_CELLS, run_id.as_str(), |row| cell_from_row(row))
            .await
    }

    /// Cell counts per phase of the run, ordered by phase.
    pub async fn run_progress(&self, run_id: &RunId) -> Result<Vec<PhaseProgress>, StoreError> {
        self.rows_by(sql::RUN_PROGRESS, run_id.as_str(), |row| {
            progress_from_row(row)
        })
        .await
    }

    /// Claims a pending task whose lease epoch is still `seen_epoch` and whose retry backoff has
    /// passed: pending → running, attempt + 1, lease epoch + 1, lease held by `owner` until
    /// now + `ttl`. `None` means another claimer won, the epoch is stale, or the task is not
    /// claimable (yet): do not run it. One statement (`UPDATE … RETURNING`).
    pub async fn claim(
        &self,
        task_id: i64,
        seen_epoch: i64,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let now = Utc::now().timestamp_millis();
        let expires_at = now.saturating_add(millis(ttl));
        let claim = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                claim_sqlite(connection, task_id, seen_epoch, owner, expires_at, now)
            })?,
            Self::Postgres(pool) => pg_call!({
                match sqlx::query(sql::CLAIM_POSTGRES.postgres)
                    .bind(task_id)
                    .bind(seen_epoch)
                    .bind(owner)
                    .bind(expires_at)
                    .bind(now)
                    .fetch_optional(pool)
                    .await?
                {
                    Some(row) => Some(claim_from_row(&row)?),
                    None => None,
                }
            })?,
        };
        log_outcome("claim", claim.is_some());
        Ok(claim)
    }

    /// Renews the lease of a running task held under `epoch` to now + `ttl`. `false` means the
    /// lease was lost (rescued, requeued): the holder must stop its runner. One statement.
    pub async fn heartbeat(
        &self,
        task_id: i64,
        epoch: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let expires_at = Utc::now().timestamp_millis().saturating_add(millis(ttl));
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                let values = params![task_id, epoch, expires_at];
                Ok(sqlite::execute(connection, sql::HEARTBEAT.sqlite, values)? == 1)
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::HEARTBEAT.postgres)
                    .bind(task_id)
                    .bind(epoch)
                    .bind(expires_at)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            })?,
        };
        log_outcome("heartbeat", won);
        Ok(won)
    }

    /// Records a running task held under `epoch` as complete, in one transaction: the task
    /// (with `counts`, lease cleared, epoch + 1), its still-pending cells → complete, and one
    /// `complete` event from `source` per cell that became complete. `false` means the lease was
    /// lost: a stale completion, to be logged and dropped, not turned into a failure.
    ///
    /// Three statements, each set-based (the task's compare-and-set, then the cells and their
    /// events whatever their number); a lost compare-and-set stops after the first.
    pub async fn complete(
        &self,
        task_id: i64,
        epoch: i64,
        counts: &serde_json::Value,
        source: &str,
    ) -> Result<bool, StoreError> {
        let next = NextClaims {
            tasks: &[],
            owner: "",
            ttl: Duration::ZERO,
        };
        Ok(self
            .complete_then_claim(task_id, epoch, counts, source, &next)
            .await?
            .is_some())
    }

    /// [`Store::complete`], and in the same transaction [`Store::claim`] each of `next.tasks`
    /// (`(task_id, seen_epoch)`): the executor hands the tasks a completion makes ready their
    /// claims with the commit that made them ready, one commit instead of two per task.
    /// `None` when the completion lost its compare-and-set (nothing is claimed then); otherwise
    /// one entry per next task, `None` where that claim was refused.
    pub async fn complete_then_claim(
        &self,
        task_id: i64,
        epoch: i64,
        counts: &serde_json::Value,
        source: &str,
        next: &NextClaims<'_>,
    ) -> Result<Option<Vec<Option<Claim>>>, StoreError> {
        let now = Utc::now().timestamp_millis();
        let expires_at = now.saturating_add(millis(next.ttl));
        let counts = serde_json::to_string(counts).map_err(|source| StoreError::Json {
            column: "tasks.counts",
            source,
        })?;
        let claims = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let values = params![task_id, epoch, now, counts];
                if sqlite::execute(connection, sql::COMPLETE_TASK.sqlite, values)? == 0 {
                    return Ok(None);
                }
                sqlite::execute(
                    connection,
                    sql::COMPLETE_CELLS.sqlite,
                    params![task_id, now],
                )?;
                let values = params![task_id, now, source];
                sqlite::execute(connection, sql::INSERT_COMPLETION_EVENTS.sqlite, values)?;
                let mut claims = Vec::with_capacity(next.tasks.len());
                for &(next_id, seen_epoch) in next.tasks {
                    let claim =
                        claim_sqlite(connection, next_id, seen_epoch, next.owner, expires_at, now)?;
                    claims.push(claim);
                }
                Ok(Some(claims))
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let won = sqlx::query(sql::COMPLETE_TASK.postgres)
                    .bind(task_id)
                    .bind(epoch)
                    .bind(now)
                    .bind(counts.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if won {
                    sqlx::query(sql::COMPLETE_CELLS.postgres)
                        .bind(task_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(sql::INSERT_COMPLETION_EVENTS.postgres)
                        .bind(task_id)
                        .bind(now)
                        .bind(source)
                        .execute(&mut *tx)
                        .await?;
                    let mut claims = Vec::with_capacity(next.tasks.len());
                    for &(next_id, seen_epoch) in next.tasks {
                        let row = sqlx::query(sql::CLAIM_POSTGRES.postgres)
                            .bind(next_id)
                            .bind(seen_epoch)
                            .bind(next.owner)
                            .bind(expires_at)
                            .bind(now)
                            .fetch_optional(&mut *tx)
                            .await?;
                        claims.push(match row {
                            Some(row) => Some(claim_from_row(&row)?),
                            None => None,
                        });
                    }
                    Some(claims)
                } else {
                    None
                }
            })?,
        };
        log_outcome("complete", claims.is_some());
        Ok(claims)
    }

    /// [`Store::complete_then_claim`], run apart from the caller, which awaits the handle
    /// later: the executor records one task's completion while the next task runs. On SQLite,
    /// whose calls run in the calling thread, the transaction runs on a thread of tokio's
    /// blocking pool, so the state file's commit overlaps the caller's work on another core;
    /// on PostgreSQL it is a task of the runtime. The caller keeps writes in order by awaiting
    /// one handle before it starts the next write.
    pub fn spawn_complete_then_claim(
        &self,
        completion: Completion,
    ) -> tokio::task::JoinHandle<Result<Option<Vec<Option<Claim>>>, StoreError>> {
        let store = self.clone();
        let work = async move {
            let Completion {
                task_id,
                epoch,
                counts,
                source,
                next,
                owner,
                ttl,
            } = completion;
            let next = NextClaims {
                tasks: &next,
                owner: &owner,
                ttl,
            };
            store
                .complete_then_claim(task_id, epoch, &counts, &source, &next)
                .await
        };
        match self {
            Self::Sqlite(_) => {
                // The SQLite arm never waits on I/O or a timer, so blocking on it needs nothing
                // from the runtime's drivers.
                let runtime = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || runtime.block_on(work))
            }
            Self::Postgres(_) => tokio::spawn(work),
        }
    }

    /// Gives back the claim of a task held under `epoch` whose runner never started: running →
    /// pending, the claim's attempt undone, lease cleared, epoch + 1 (so the claim is fenced).
    /// The executor claims one task ahead of need, and releases that claim when the task
    /// becomes blocked or the run stops first. `false`: the lease was lost meanwhile.
    pub async fn release_claim(&self, task_id: i64, epoch: i64) -> Result<bool, StoreError> {
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                let values = params![task_id, epoch];
                Ok(sqlite::execute(connection, sql::RELEASE_CLAIM.sqlite, values)? == 1)
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::RELEASE_CLAIM.postgres)
                    .bind(task_id)
                    .bind(epoch)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            })?,
        };
        log_outcome("release_claim", won);
        Ok(won)
    }

    /// Gives a running task held under `epoch` back for another attempt: running → pending,
    /// `error` recorded, lease cleared, epoch + 1, not claimable before now + `not_before`.
    /// One statement.
    pub async fn release_for_retry(
        &self,
        task_id: i64,
        epoch: i64,
        error: &str,
        not_before: Duration,
    ) -> Result<bool, StoreError> {
        let not_before = Utc::now()
            .timestamp_millis()
            .saturating_add(millis(not_before));
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                let values = params![task_id, epoch, error, not_before];
                Ok(sqlite::execute(connection, sql::RELEASE_FOR_RETRY.sqlite, values)? == 1)
            })?,
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::RELEASE_FOR_RETRY.postgres)
                    .bind(task_id)
                    .bind(epoch)
                    .bind(error)
                    .bind(not_before)
                    .execute(pool)
                    .await?
                    .rows_affected()
                    == 1
            })?,
        };
        log_outcome("release_for_retry", won);
        Ok(won)
    }

    /// Fails a running task held under `epoch` for good, in one transaction: the task → failed
    /// with `error` (lease cleared, epoch + 1) and its pending cells → failed. Two statements;
    /// a lost compare-and-set stops after the first.
    pub async fn fail(&self, task_id: i64, epoch: i64, error: &str) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        let won = match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let values = params![task_id, epoch, error, now];
                if sqlite::execute(connection, sql::FAIL_TASK.sqlite, values)? == 0 {
                    return Ok(false);
                }
                sqlite::execute(connection, sql::FAIL_CELLS.sqlite, [task_id])?;
                Ok(true)
            })?,
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let won = sqlx::query(sql::FAIL_TASK.postgres)
                    .bind(task_id)
                    .bind(epoch)
                    .bind(error)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if won {
                    sqlx::query(sql::FAIL_CELLS.postgres)
                        .bind(task_id)
                        .execute(&mut *tx)
                        .await?;
                }
                won
            })?,
        };
        log_outcome("fail", won);
        Ok(won)
    }

    /// Blocks the run's tasks among `task_ids` that are pending (and their pending cells), with
    /// `reason` as their error, in one transaction. Returns how many tasks it blocked; tasks in
    /// any other state are left alone.
    pub async fn block(
        &self,
        run_id: &RunId,
        task_ids: &[i64],
        reason: &str,
    ) -> Result<u64, StoreError> {
        self.move_tasks(run_id, task_ids, Move::Block(reason)).await
    }

    /// Releases the run's blocked tasks among `task_ids` (and their cells) back to pending, in
    /// one transaction, e.g. when resume finds their upstream complete now. Returns how many it
    /// released.
    pub async fn unblock(&self, run_id: &RunId, task_ids: &[i64]) -> Result<u64, StoreError> {
        self.move_tasks(run_id, task_ids, Move::Unblock).await
    }

    /// Sends the run's failed tasks among `task_ids` (and their failed cells) back to pending,
    /// in one transaction: `resume` after the cause of a failure was fixed. Their attempts stay
    /// counted. Returns how many it moved.
    pub async fn retry_failed(&self, run_id: &RunId, task_ids: &[i64]) -> Result<u64, StoreError> {
        self.move_tasks(run_id, task_ids, Move::Retry).await
    }

    /// Each task among `task_ids` that is in the move's source state moves with its cells;
    /// the others stay as they are.
    async fn move_tasks(
        &self,
        run_id: &RunId,
        task_ids: &[i64],
        kind: Move<'_>,
    ) -> Result<u64, StoreError> {
        let run_id = run_id.as_str();
        let (task_sql, cells_sql, block_reason) = match kind {
            Move::Block(reason) => (sql::BLOCK_TASK, sql::BLOCK_CELLS, Some(reason)),
            Move::Unblock => (sql::UNBLOCK_TASK, sql::UNBLOCK_CELLS, None),
            Move::Retry => (sql::RETRY_TASK, sql::RETRY_CELLS, None),
        };
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let mut moved = 0;
                for &task_id in task_ids {
                    let changed = match block_reason {
                        Some(reason) => sqlite::execute(
                            connection,
                            task_sql.sqlite,
                            params![task_id, run_id, reason],
                        )?,
                        None => {
                            sqlite::execute(connection, task_sql.sqlite, params![task_id, run_id])?
                        }
                    };
                    if changed == 1 {
                        sqlite::execute(connection, cells_sql.sqlite, [task_id])?;
                        moved += 1;
                    }
                }
                Ok(moved)
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let mut moved = 0;
                for &task_id in task_ids {
                    let mut query = sqlx::query(task_sql.postgres).bind(task_id).bind(run_id);
                    if let Some(reason) = block_reason {
                        query = query.bind(reason);
                    }
                    if query.execute(&mut *tx).await?.rows_affected() == 1 {
                        sqlx::query(cells_sql.postgres)
                            .bind(task_id)
                            .execute(&mut *tx)
                            .await?;
                        moved += 1;
                    }
                }
                moved
            }),
        }
    }

    /// For `resume` of a run whose executor is gone: every running task of the run → pending,
    /// error `interrupted`, lease cleared, epoch + 1, so a stale holder's later writes are
    /// rejected. Returns the requeued task ids. With several nodes, use
    /// [`Store::requeue_expired`] instead: it spares tasks whose holder is alive.
    pub async fn requeue_running(&self, run_id: &RunId) -> Result<Vec<i64>, StoreError> {
        let run_id = run_id.as_str();
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(connection, sql::REQUEUE_RUNNING.sqlite, [run_id], |row| {
                    Ok(row.get(0)?)
                })
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query_scalar(sql::REQUEUE_RUNNING.postgres)
                    .bind(run_id)
                    .fetch_all(pool)
                    .await?
            }),
        }
    }

    /// Rescues tasks of dead holders: every running task (of any run) whose lease expired
    /// before `now` → pending, error `lease expired`, lease cleared, epoch + 1. Returns their ids.
    ///
    /// One guarded statement, not read-then-update: the guard (still `running`, lease still
    /// expired) is evaluated per row under its row lock, so a task that completed, was
    /// re-claimed or renewed its lease meanwhile is not touched (River #1302). The epoch a
    /// separate read would have compared is implied: any epoch change also changes the state
    /// or refreshes the lease.
    pub async fn requeue_expired(&self, now: DateTime<Utc>) -> Result<Vec<i64>, StoreError> {
        let now = now.timestamp_millis();
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(connection, sql::REQUEUE_EXPIRED.sqlite, [now], |row| {
                    Ok(row.get(0)?)
                })
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query_scalar(sql::REQUEUE_EXPIRED.postgres)
                    .bind(now)
                    .fetch_all(pool)
                    .await?
            }),
        }
    }

    // --- gap ledger -------------------------------------------------------------------------

    /// Records a scan in the gap ledger, in one transaction: every gap in `found` opens a row
    /// or updates its cell's open row (one open row per cell), and every cell in `satisfied`
    /// (complete, or expecting nothing) closes its open row if it has one. Rows of cells the
    /// scan did not cover, or found blocked, are left as they are.
    pub async fn record_scan(
        &self,
        found: &[DetectedGap],
        satisfied: &[(i64, NaiveDate)],
    ) -> Result<ScanRecorded, StoreError> {
        let now = Utc::now().timestamp_millis();
        let satisfied: HashSet<(i64, NaiveDate)> = satisfied.iter().copied().collect();
        let count = move |recorded: &mut ScanRecorded, detected_at: i64| {
            if detected_at == now {
                recorded.opened += 1;
            } else {
                recorded.still_open += 1;
            }
        };
        match self {
            Self::Sqlite(sqlite) => sqlite.transaction(Commit::Configured, |connection| {
                let mut recorded = ScanRecorded::default();
                for gap in found {
                    let values = params![
                        now,
                        gap.phase_from,
                        gap.phase_to,
                        date_text(gap.date),
                        gap.age_days,
                        gap.found,
                        gap.expected
                    ];
                    let detected_at: i64 =
                        sqlite::scalar(connection, sql::UPSERT_GAP.sqlite, values)?;
                    count(&mut recorded, detected_at);
                }
                let open = sqlite::rows(connection, sql::OPEN_GAP_CELLS.sqlite, [], |row| {
                    open_gap_cell(row)
                })?;
                for id in closing(&open, &satisfied) {
                    let values = params![id, now];
                    recorded.closed += sqlite::execute(connection, sql::CLOSE_GAP.sqlite, values)?;
                }
                Ok(recorded)
            }),
            Self::Postgres(pool) => pg_tx!(pool, |tx| {
                let mut recorded = ScanRecorded::default();
                for gap in found {
                    let detected_at: i64 = sqlx::query_scalar(sql::UPSERT_GAP.postgres)
                        .bind(now)
                        .bind(gap.phase_from)
                        .bind(gap.phase_to)
                        .bind(date_text(gap.date))
                        .bind(gap.age_days)
                        .bind(gap.found)
                        .bind(gap.expected)
                        .fetch_one(&mut *tx)
                        .await?;
                    count(&mut recorded, detected_at);
                }
                let open = sqlx::query(sql::OPEN_GAP_CELLS.postgres)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(open_gap_cell)
                    .collect::<Result<Vec<_>, _>>()?;
                for id in closing(&open, &satisfied) {
                    let closed = sqlx::query(sql::CLOSE_GAP.postgres)
                        .bind(id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    recorded.closed += usize::try_from(closed).unwrap_or(usize::MAX);
                }
                recorded
            }),
        }
    }

    /// The ledger's rows that `filter` selects, by phase, date and id.
    pub async fn gaps(&self, filter: GapFilter) -> Result<Vec<GapRecord>, StoreError> {
        self.rows_by(sql::SELECT_GAPS, filter.as_str(), |row| gap_from_row(row))
            .await
    }

    // --- events -----------------------------------------------------------------------------

    /// Appends an event (e.g. a `complete` reported by the live pipeline); returns its id.
    pub async fn append_event(&self, event: &NewEvent) -> Result<i64, StoreError> {
        let now = Utc::now().timestamp_millis();
        let run_id = event.run_id.as_ref().map(RunId::as_str);
        let date = date_text(event.date);
        let (status, source) = (event.status.as_str(), event.source.as_str());
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                let values = params![event.phase, date, status, source, run_id, now];
                sqlite::scalar(connection, sql::INSERT_EVENT.sqlite, values)
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query_scalar(sql::INSERT_EVENT.postgres)
                    .bind(event.phase)
                    .bind(date)
                    .bind(status)
                    .bind(source)
                    .bind(run_id)
                    .bind(now)
                    .fetch_one(pool)
                    .await?
            }),
        }
    }

    /// Up to `limit` events with ids greater than `after_id`, oldest first (a negative `limit`
    /// counts as 0).
    pub async fn events(&self, after_id: i64, limit: i64) -> Result<Vec<EventRecord>, StoreError> {
        let limit = limit.max(0); // see `list_runs`
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(
                    connection,
                    sql::SELECT_EVENTS.sqlite,
                    [after_id, limit],
                    |row| event_from_row(row),
                )
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query(sql::SELECT_EVENTS.postgres)
                    .bind(after_id)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(event_from_row)
                    .collect::<Result<Vec<_>, _>>()?
            }),
        }
    }

    /// How many events were stored for the cell (phase, date). A scan of the events table (no
    /// index serves it: one would cost a page on every completion); meant for checks and tests.
    pub async fn count_events(&self, phase: i64, date: NaiveDate) -> Result<i64, StoreError> {
        let date = date_text(date);
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::scalar(connection, sql::COUNT_EVENTS.sqlite, params![phase, date])
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query_scalar(sql::COUNT_EVENTS.postgres)
                    .bind(phase)
                    .bind(date)
                    .fetch_one(pool)
                    .await?
            }),
        }
    }
}

/// The one value a keyed read binds, on either backend.
trait Key:
    rusqlite::ToSql
    + for<'q> sqlx::Encode<'q, sqlx::Postgres>
    + sqlx::Type<sqlx::Postgres>
    + Send
    + Sync
    + Copy
{
}

impl Key for i64 {}
impl Key for &str {}

/// A record decoder that serves both backends' rows.
type Decode<T> = fn(&dyn RowExt) -> Result<T, StoreError>;

impl Store {
    /// Every row `query` returns for `key`, decoded the same way on both backends.
    async fn rows_by<K: Key, T: Send>(
        &self,
        query: sql::Sql,
        key: K,
        decode: Decode<T>,
    ) -> Result<Vec<T>, StoreError> {
        match self {
            Self::Sqlite(sqlite) => sqlite.call(|connection| {
                sqlite::rows(connection, query.sqlite, [key], |row| decode(row))
            }),
            Self::Postgres(pool) => pg_call!({
                sqlx::query(query.postgres)
                    .bind(key)
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| decode(row))
                    .collect::<Result<Vec<_>, _>>()?
            }),
        }
    }

    /// The first row `query` returns for `key`, if any.
    async fn row_by<K: Key, T: Send>(
        &self,
        query: sql::Sql,
        key: K,
        decode: Decode<T>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.rows_by(query, key, decode).await?.into_iter().next())
    }
}

/// Inserts `tasks` and their cells into the open transaction; their ids, in order.
async fn insert_tasks_postgres(
    tx: &mut sqlx::PgConnection,
    run_id: &str,
    tasks: &[NewTask],
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::with_capacity(tasks.len());
    for task in tasks {
        let task_id: i64 = sqlx::query_scalar(sql::INSERT_TASK_POSTGRES.postgres)
            .bind(run_id)
            .bind(task.phase)
            .bind(date_text(task.start))
            .bind(date_text(task.end))
            .bind(task.state.as_str())
            .bind(task.error.as_deref())
            .fetch_one(&mut *tx)
            .await?;
        for date in &task.dates {
            sqlx::query(sql::INSERT_CELL.postgres)
                .bind(run_id)
                .bind(task.phase)
                .bind(date_text(*date))
                .bind(task_id)
                .bind(task.state.as_str())
                .execute(&mut *tx)
                .await?;
        }
        ids.push(task_id);
    }
    Ok(ids)
}

/// Inserts `tasks` and their cells into the open transaction; their ids, in order.
fn insert_tasks_sqlite(
    connection: &Connection,
    run_id: &str,
    tasks: &[NewTask],
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (start, end, state) = (
            date_text(task.start),
            date_text(task.end),
            task.state.as_str(),
        );
        let values = params![run_id, task.phase, start, end, state, task.error];
        sqlite::execute(connection, sql::INSERT_TASK_SQLITE.sqlite, values)?;
        let task_id = connection.last_insert_rowid();
        for date in &task.dates {
            let values = params![run_id, task.phase, date_text(*date), task_id, state];
            sqlite::execute(connection, sql::INSERT_CELL.sqlite, values)?;
        }
        ids.push(task_id);
    }
    Ok(ids)
}

/// Claims a task inside the caller's SQLite transaction: the guarded update, then the new
/// lease. `None` when the guard refused (not pending at `seen_epoch`, or backing off).
fn claim_sqlite(
    connection: &Connection,
    task_id: i64,
    seen_epoch: i64,
    owner: &str,
    expires_at: i64,
    now: i64,
) -> Result<Option<Claim>, StoreError> {
    let values = params![task_id, seen_epoch, owner, expires_at, now];
    if sqlite::execute(connection, sql::CLAIM_SQLITE.sqlite, values)? == 0 {
        return Ok(None);
    }
    let lease = sqlite::rows(connection, sql::SELECT_LEASE.sqlite, [task_id], |row| {
        claim_from_row(row)
    })?;
    Ok(lease.into_iter().next())
}

fn claim_from_row(row: &impl RowExt) -> Result<Claim, StoreError> {
    Ok(Claim {
        epoch: row.i64("lease_epoch")?,
        attempt: row.i32("attempt")?,
    })
}

// --- migrations -------------------------------------------------------------------------------

/// One embedded migration: version, description, SQL.
type EmbeddedMigration = (i64, &'static str, &'static str);

// PostgreSQL keeps sqlx's migrator. The `sqlx::migrate!` macro needs sqlx's `macros` feature,
// which costs 30–50 s per clean build (STACK.md). Its runtime half needs nothing extra:
// `Migrator::with_migrations` over `include_str!`-embedded files gives the `_sqlx_migrations`
// table, checksums (an edited, already-applied migration is an error, not silently skipped),
// per-migration transactions and an advisory lock against concurrent `migrate` calls. SQLite
// runs on rusqlite and has its own runner (`sqlite::SqliteStore::migrate`).
const POSTGRES_MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "lean events",
        include_str!("../migrations/postgres/0002_lean_events.sql"),
    ),
    (
        3,
        "gap ledger",
        include_str!("../migrations/postgres/0003_gap_ledger.sql"),
    ),
    (
        4,
        "checks without IN lists",
        include_str!("../migrations/postgres/0004_checks_without_in_lists.sql"),
    ),
];

fn migrator(embedded: &[EmbeddedMigration]) -> Migrator {
    Migrator::with_migrations(
        embedded
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

// --- helpers ----------------------------------------------------------------------------------

/// `(id, phase_to, partition_date)` of an open gap.
fn open_gap_cell(row: &(impl RowExt + ?Sized)) -> Result<(i64, i64, NaiveDate), StoreError> {
    Ok((
        row.i64("id")?,
        row.i64("phase_to")?,
        date("gaps.partition_date", &row.string("partition_date")?)?,
    ))
}

/// The open gaps whose cell is among `satisfied`.
fn closing(open: &[(i64, i64, NaiveDate)], satisfied: &HashSet<(i64, NaiveDate)>) -> Vec<i64> {
    open.iter()
        .filter(|&&(_, phase, date)| satisfied.contains(&(phase, date)))
        .map(|&(id, _, _)| id)
        .collect()
}

fn validate_tasks(tasks: &[NewTask]) -> Result<(), StoreError> {
    for task in tasks {
        let invalid = |reason| StoreError::InvalidTask {
            phase: task.phase,
            start: task.start,
            reason,
        };
        if task.start > task.end {
            return Err(invalid("start is after end"));
        }
        if task.dates.is_empty() {
            return Err(invalid("it covers no dates"));
        }
        if task
            .dates
            .iter()
            .any(|date| *date < task.start || *date > task.end)
        {
            return Err(invalid("a date lies outside start..=end"));
        }
    }
    Ok(())
}

fn log_outcome(operation: &'static str, won: bool) {
    if !won {
        tracing::debug!(
            operation,
            "compare-and-set lost: state or lease epoch moved on"
        );
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::{POSTGRES_MIGRATIONS, SCHEMA_VERSION};
    use crate::sqlite::MIGRATIONS as SQLITE_MIGRATIONS;

    #[test]
    fn both_backends_embed_the_schema_version() {
        assert_eq!(
            POSTGRES_MIGRATIONS.last().map(|m| m.0),
            Some(SCHEMA_VERSION)
        );
        assert_eq!(SQLITE_MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
    }
}
