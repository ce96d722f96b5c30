//! The [`Store`] handle: connecting, migrating, and every read and transition.

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row as _, SqlSafeStr as _};

use crate::error::StoreError;
use crate::model::{
    CellRecord, CellState, Claim, EventRecord, NewEvent, NewRun, NewTask, PhaseProgress, RunId,
    RunKind, RunRecord, RunState, TaskRecord, TaskState,
};
use crate::sql;

/// SQLite waits this long for another writer before failing with `BUSY`.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL cancels any statement running longer than this (server side).
const PG_STATEMENT_TIMEOUT: &str = "30s";
/// PostgreSQL ends a session that sits idle inside a transaction this long, releasing its locks.
const PG_IDLE_IN_TRANSACTION_TIMEOUT: &str = "60s";
/// Bound on establishing a connection (and on waiting for a free one in the pool).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Client-side bound on every store call, for hangs no server-side timeout sees (a dead TCP
/// peer). Longer than the server-side timeouts, so those fire first when they can.
const CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// Highest migration embedded in this binary; [`Store::ensure_current`] demands exactly this.
pub const SCHEMA_VERSION: i64 = 1;

/// The state store: runs, tasks, cells and events, on SQLite or PostgreSQL with the same
/// semantics. Chosen once at the top from the `[state] url`; cheap to clone (the pools are
/// reference-counted).
#[derive(Debug, Clone)]
pub enum Store {
    /// Embedded SQLite: the default, for one node.
    Sqlite(SqlitePool),
    /// PostgreSQL: for several nodes sharing the work.
    Postgres(PgPool),
}

/// Runs `body` (an expression that may use `?` and evaluates to the result value) with `$pool`
/// bound to the backend's pool, under [`CALL_TIMEOUT`]. The body is compiled once per backend:
/// sqlx's query types are generic over the database, so the same text serves both.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Sqlite($pool) => bounded(async move { Ok::<_, StoreError>($body) }).await,
            Store::Postgres($pool) => bounded(async move { Ok::<_, StoreError>($body) }).await,
        }
    };
}

/// Like `with_pool!`, inside one transaction bound to `$tx` and committed after `body`. An error
/// (or the timeout) drops the transaction, which rolls it back.
///
/// SQLite transactions start with `BEGIN IMMEDIATE`: they take the write lock up front, so
/// `busy_timeout` queues concurrent writers. A deferred transaction that reads first and writes
/// later fails at once with `SQLITE_BUSY_SNAPSHOT` when another writer got in between.
macro_rules! with_tx {
    ($store:expr, |$tx:ident| $body:expr) => {
        match $store {
            Store::Sqlite(pool) => {
                bounded(async move {
                    let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    let out = $body;
                    $tx.commit().await?;
                    Ok::<_, StoreError>(out)
                })
                .await
            }
            Store::Postgres(pool) => {
                bounded(async move {
                    let mut $tx = pool.begin().await?;
                    let out = $body;
                    $tx.commit().await?;
                    Ok::<_, StoreError>(out)
                })
                .await
            }
        }
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
    /// friends call [`Store::ensure_current`]).
    ///
    /// - `sqlite://state.db`, `sqlite:state.db`: relative to `base_dir` (the pipeline file's
    ///   directory); `sqlite:///abs/state.db`: absolute. Parent directories and the file are
    ///   created. WAL, `synchronous=FULL`, 10 s busy timeout, foreign keys on.
    /// - `sqlite::memory:`: a private in-memory database on a single connection (it lives as
    ///   long as that connection).
    /// - `postgres://…`, `postgresql://…`: 10 s connect timeout, 30 s `statement_timeout`.
    pub async fn connect(url: &str, base_dir: &Path) -> Result<Self, StoreError> {
        if let Some(rest) = url.strip_prefix("sqlite:") {
            Self::connect_sqlite(rest, base_dir).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url).await
        } else {
            Err(StoreError::UnsupportedUrl {
                scheme: url.split(':').next().unwrap_or_default().to_owned(),
            })
        }
    }

    async fn connect_sqlite(rest: &str, base_dir: &Path) -> Result<Self, StoreError> {
        if rest == ":memory:" {
            // sqlx names each `:memory:` database uniquely, so two stores never share one.
            let options = SqliteConnectOptions::from_str("sqlite::memory:")
                .map_err(StoreError::Connect)?
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            // One connection that never expires: each in-memory connection is its own database.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(CALL_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(StoreError::Connect)?;
            return Ok(Self::Sqlite(pool));
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
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        // Writers are serialized by SQLite anyway; a few connections let reads overlap writes.
        // A local file cannot drop a connection: skip sqlx's ping before every acquire, a round
        // trip per query on the executor's hot path.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .acquire_timeout(CALL_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(StoreError::Connect)?;
        Ok(Self::Sqlite(pool))
    }

    async fn connect_postgres(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(StoreError::Connect)?
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
            .map_err(StoreError::Connect)?;
        Ok(Self::Postgres(pool))
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }

    // --- schema ---------------------------------------------------------------------------

    /// Applies the embedded migrations that are not applied yet; a no-op when current.
    /// Concurrent callers on PostgreSQL are serialized by sqlx's advisory lock.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(pool) => migrator(SQLITE_MIGRATIONS).run(pool).await?,
            Self::Postgres(pool) => migrator(POSTGRES_MIGRATIONS).run(pool).await?,
        }
        Ok(())
    }

    /// Highest successfully applied migration; 0 for an empty database.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let has_table = match self {
            Self::Sqlite(_) => sql::HAS_MIGRATIONS_TABLE_SQLITE,
            Self::Postgres(_) => sql::HAS_MIGRATIONS_TABLE_POSTGRES,
        };
        with_pool!(self, |pool| {
            let tables: i64 = sqlx::query_scalar(has_table).fetch_one(pool).await?;
            if tables == 0 {
                0
            } else {
                sqlx::query_scalar(sql::SCHEMA_VERSION)
                    .fetch_one(pool)
                    .await?
            }
        })
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
            Self::Sqlite(pool) => {
                bounded(async move {
                    let lines: Vec<String> = sqlx::query_scalar(sql::INTEGRITY_CHECK_SQLITE)
                        .fetch_all(pool)
                        .await?;
                    Ok(lines.join("\n"))
                })
                .await
            }
            Self::Postgres(_) => Ok("ok".to_owned()),
        }
    }

    // --- runs -----------------------------------------------------------------------------

    /// Creates a run in state `running` with all its tasks and one cell per task date, in one
    /// transaction: either all of it is stored or none.
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
        let insert_run = match self {
            Self::Sqlite(_) => sql::INSERT_RUN_SQLITE,
            Self::Postgres(_) => sql::INSERT_RUN_POSTGRES,
        };
        let (kind, run_id) = (new.kind.as_str(), id.as_str());
        with_tx!(self, |tx| {
            sqlx::query(insert_run)
                .bind(run_id)
                .bind(kind)
                .bind(new.pipeline.as_str())
                .bind(request.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            for task in &new.tasks {
                let task_id: i64 = sqlx::query_scalar(sql::INSERT_TASK)
                    .bind(run_id)
                    .bind(task.phase)
                    .bind(date_text(task.start))
                    .bind(date_text(task.end))
                    .bind(task.state.as_str())
                    .bind(task.error.as_deref())
                    .fetch_one(&mut *tx)
                    .await?;
                for date in &task.dates {
                    sqlx::query(sql::INSERT_CELL)
                        .bind(run_id)
                        .bind(task.phase)
                        .bind(date_text(*date))
                        .bind(task_id)
                        .bind(task.state.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
            }
        })?;
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
        with_tx!(self, |tx| {
            let mut ids = Vec::with_capacity(tasks.len());
            for task in tasks {
                let task_id: i64 = sqlx::query_scalar(sql::INSERT_TASK)
                    .bind(run_id)
                    .bind(task.phase)
                    .bind(date_text(task.start))
                    .bind(date_text(task.end))
                    .bind(task.state.as_str())
                    .bind(task.error.as_deref())
                    .fetch_one(&mut *tx)
                    .await?;
                for date in &task.dates {
                    sqlx::query(sql::INSERT_CELL)
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
            ids
        })
    }

    /// The run, if it exists.
    pub async fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        let id = id.as_str();
        with_pool!(self, |pool| {
            match sqlx::query(sql::SELECT_RUN)
                .bind(id)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(run_from_row(&row)?),
                None => None,
            }
        })
    }

    /// The most recently created run.
    pub async fn latest_run(&self) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.list_runs(1).await?.pop())
    }

    /// Up to `limit` runs, newest first (a negative `limit` counts as 0).
    pub async fn list_runs(&self, limit: i64) -> Result<Vec<RunRecord>, StoreError> {
        // A negative LIMIT means "all" to SQLite and is an error to PostgreSQL.
        let limit = limit.max(0);
        with_pool!(self, |pool| {
            sqlx::query(sql::LIST_RUNS)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(run_from_row)
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// Compare-and-set of the run's state on its `version`; `true` when it applied. Sets
    /// `finished_at` for terminal states and clears it for `running` (resume).
    pub async fn set_run_state(
        &self,
        run_id: &RunId,
        expected_version: i64,
        new_state: RunState,
    ) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        let finished_at = new_state.is_terminal().then_some(now);
        let (run_id, state) = (run_id.as_str(), new_state.as_str());
        let won = with_pool!(self, |pool| {
            sqlx::query(sql::SET_RUN_STATE)
                .bind(run_id)
                .bind(expected_version)
                .bind(state)
                .bind(now)
                .bind(finished_at)
                .execute(pool)
                .await?
                .rows_affected()
                == 1
        })?;
        log_outcome("set_run_state", won);
        Ok(won)
    }

    /// Moves a `running` run to the terminal `state`; `true` when it applied. A run that is no
    /// longer running (cancelled, already finished) is left alone.
    pub async fn finish_run(&self, run_id: &RunId, state: RunState) -> Result<bool, StoreError> {
        if !state.is_terminal() {
            return Err(StoreError::NotTerminal { state });
        }
        let now = Utc::now().timestamp_millis();
        let (run_id, state) = (run_id.as_str(), state.as_str());
        let won = with_pool!(self, |pool| {
            sqlx::query(sql::FINISH_RUN)
                .bind(run_id)
                .bind(state)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
                == 1
        })?;
        log_outcome("finish_run", won);
        Ok(won)
    }

    // --- tasks and cells --------------------------------------------------------------------

    /// The run's tasks, ordered by phase, then start date.
    pub async fn tasks(&self, run_id: &RunId) -> Result<Vec<TaskRecord>, StoreError> {
        let run_id = run_id.as_str();
        with_pool!(self, |pool| {
            sqlx::query(sql::SELECT_TASKS)
                .bind(run_id)
                .fetch_all(pool)
                .await?
                .iter()
                .map(task_from_row)
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// One task, if it exists.
    pub async fn task(&self, task_id: i64) -> Result<Option<TaskRecord>, StoreError> {
        with_pool!(self, |pool| {
            match sqlx::query(sql::SELECT_TASK)
                .bind(task_id)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(task_from_row(&row)?),
                None => None,
            }
        })
    }

    /// The run's cells, ordered by phase, then date.
    pub async fn cells(&self, run_id: &RunId) -> Result<Vec<CellRecord>, StoreError> {
        let run_id = run_id.as_str();
        with_pool!(self, |pool| {
            sqlx::query(sql::SELECT_CELLS)
                .bind(run_id)
                .fetch_all(pool)
                .await?
                .iter()
                .map(cell_from_row)
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// Cell counts per phase of the run, ordered by phase.
    pub async fn run_progress(&self, run_id: &RunId) -> Result<Vec<PhaseProgress>, StoreError> {
        let run_id = run_id.as_str();
        with_pool!(self, |pool| {
            sqlx::query(sql::RUN_PROGRESS)
                .bind(run_id)
                .fetch_all(pool)
                .await?
                .iter()
                .map(progress_from_row)
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// Claims a pending task whose lease epoch is still `seen_epoch` and whose retry backoff has
    /// passed: pending → running, attempt + 1, lease epoch + 1, lease held by `owner` until
    /// now + `ttl`. `None` means another claimer won, the epoch is stale, or the task is not
    /// claimable (yet): do not run it.
    pub async fn claim(
        &self,
        task_id: i64,
        seen_epoch: i64,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let now = Utc::now().timestamp_millis();
        let expires_at = now.saturating_add(millis(ttl));
        let claim = with_pool!(self, |pool| {
            match sqlx::query(sql::CLAIM)
                .bind(task_id)
                .bind(seen_epoch)
                .bind(owner)
                .bind(expires_at)
                .bind(now)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(Claim {
                    epoch: row.i64("lease_epoch")?,
                    attempt: row.i32("attempt")?,
                }),
                None => None,
            }
        })?;
        log_outcome("claim", claim.is_some());
        Ok(claim)
    }

    /// Renews the lease of a running task held under `epoch` to now + `ttl`. `false` means the
    /// lease was lost (rescued, requeued): the holder must stop its runner.
    pub async fn heartbeat(
        &self,
        task_id: i64,
        epoch: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let expires_at = Utc::now().timestamp_millis().saturating_add(millis(ttl));
        let won = with_pool!(self, |pool| {
            sqlx::query(sql::HEARTBEAT)
                .bind(task_id)
                .bind(epoch)
                .bind(expires_at)
                .execute(pool)
                .await?
                .rows_affected()
                == 1
        })?;
        log_outcome("heartbeat", won);
        Ok(won)
    }

    /// Records a running task held under `epoch` as complete, in one transaction: the task
    /// (with `counts`, lease cleared, epoch + 1), its still-pending cells → complete, and one
    /// `complete` event from `source` per cell that became complete. `false` means the lease was
    /// lost: a stale completion, to be logged and dropped, not turned into a failure.
    pub async fn complete(
        &self,
        task_id: i64,
        epoch: i64,
        counts: &serde_json::Value,
        source: &str,
    ) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        let counts = serde_json::to_string(counts).map_err(|source| StoreError::Json {
            column: "tasks.counts",
            source,
        })?;
        let won = with_tx!(self, |tx| {
            let run_id: Option<String> = sqlx::query_scalar(sql::COMPLETE_TASK)
                .bind(task_id)
                .bind(epoch)
                .bind(now)
                .bind(counts.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            match run_id {
                None => false,
                Some(_) => {
                    sqlx::query(sql::COMPLETE_CELLS)
                        .bind(task_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(sql::INSERT_COMPLETION_EVENTS)
                        .bind(task_id)
                        .bind(now)
                        .bind(source)
                        .execute(&mut *tx)
                        .await?;
                    true
                }
            }
        })?;
        log_outcome("complete", won);
        Ok(won)
    }

    /// Gives a running task held under `epoch` back for another attempt: running → pending,
    /// `error` recorded, lease cleared, epoch + 1, not claimable before now + `not_before`.
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
        let won = with_pool!(self, |pool| {
            sqlx::query(sql::RELEASE_FOR_RETRY)
                .bind(task_id)
                .bind(epoch)
                .bind(error)
                .bind(not_before)
                .execute(pool)
                .await?
                .rows_affected()
                == 1
        })?;
        log_outcome("release_for_retry", won);
        Ok(won)
    }

    /// Fails a running task held under `epoch` for good, in one transaction: the task → failed
    /// with `error` (lease cleared, epoch + 1) and its pending cells → failed.
    pub async fn fail(&self, task_id: i64, epoch: i64, error: &str) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        let won = with_tx!(self, |tx| {
            let won = sqlx::query(sql::FAIL_TASK)
                .bind(task_id)
                .bind(epoch)
                .bind(error)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if won {
                sqlx::query(sql::FAIL_CELLS)
                    .bind(task_id)
                    .execute(&mut *tx)
                    .await?;
            }
            won
        })?;
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
        self.move_tasks(run_id, task_ids, Some(reason)).await
    }

    /// Releases the run's blocked tasks among `task_ids` (and their cells) back to pending, in
    /// one transaction, e.g. when resume finds their upstream complete now. Returns how many it
    /// released.
    pub async fn unblock(&self, run_id: &RunId, task_ids: &[i64]) -> Result<u64, StoreError> {
        self.move_tasks(run_id, task_ids, None).await
    }

    /// `block` (with a reason) or `unblock` (without): each task that is in the source state
    /// moves with its cells; the others stay as they are.
    async fn move_tasks(
        &self,
        run_id: &RunId,
        task_ids: &[i64],
        block_reason: Option<&str>,
    ) -> Result<u64, StoreError> {
        let run_id = run_id.as_str();
        let (task_sql, cells_sql) = match block_reason {
            Some(_) => (sql::BLOCK_TASK, sql::BLOCK_CELLS),
            None => (sql::UNBLOCK_TASK, sql::UNBLOCK_CELLS),
        };
        with_tx!(self, |tx| {
            let mut moved = 0;
            for &task_id in task_ids {
                let mut query = sqlx::query(task_sql).bind(task_id).bind(run_id);
                if let Some(reason) = block_reason {
                    query = query.bind(reason);
                }
                if query.execute(&mut *tx).await?.rows_affected() == 1 {
                    sqlx::query(cells_sql)
                        .bind(task_id)
                        .execute(&mut *tx)
                        .await?;
                    moved += 1;
                }
            }
            moved
        })
    }

    /// For `resume` of a run whose executor is gone: every running task of the run → pending,
    /// error `interrupted`, lease cleared, epoch + 1, so a stale holder's later writes are
    /// rejected. Returns the requeued task ids. With several nodes, use
    /// [`Store::requeue_expired`] instead: it spares tasks whose holder is alive.
    pub async fn requeue_running(&self, run_id: &RunId) -> Result<Vec<i64>, StoreError> {
        let run_id = run_id.as_str();
        with_pool!(self, |pool| {
            sqlx::query_scalar(sql::REQUEUE_RUNNING)
                .bind(run_id)
                .fetch_all(pool)
                .await?
        })
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
        with_pool!(self, |pool| {
            sqlx::query_scalar(sql::REQUEUE_EXPIRED)
                .bind(now)
                .fetch_all(pool)
                .await?
        })
    }

    // --- events -----------------------------------------------------------------------------

    /// Appends an event (e.g. a `complete` reported by the live pipeline); returns its id.
    pub async fn append_event(&self, event: &NewEvent) -> Result<i64, StoreError> {
        let now = Utc::now().timestamp_millis();
        let run_id = event.run_id.as_ref().map(RunId::as_str);
        with_pool!(self, |pool| {
            sqlx::query_scalar(sql::INSERT_EVENT)
                .bind(event.phase)
                .bind(date_text(event.date))
                .bind(event.status.as_str())
                .bind(event.source.as_str())
                .bind(run_id)
                .bind(now)
                .fetch_one(pool)
                .await?
        })
    }

    /// Up to `limit` events with ids greater than `after_id`, oldest first (a negative `limit`
    /// counts as 0).
    pub async fn events(&self, after_id: i64, limit: i64) -> Result<Vec<EventRecord>, StoreError> {
        let limit = limit.max(0); // see `list_runs`
        with_pool!(self, |pool| {
            sqlx::query(sql::SELECT_EVENTS)
                .bind(after_id)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(event_from_row)
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// How many events were stored for the cell (phase, date).
    pub async fn count_events(&self, phase: i64, date: NaiveDate) -> Result<i64, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query_scalar(sql::COUNT_EVENTS)
                .bind(phase)
                .bind(date_text(date))
                .fetch_one(pool)
                .await?
        })
    }
}

// --- migrations -------------------------------------------------------------------------------

/// One embedded migration: version, description, SQL.
type EmbeddedMigration = (i64, &'static str, &'static str);

// The `sqlx::migrate!` macro needs sqlx's `macros` feature, which costs 30–50 s per clean build
// (STACK.md). Its runtime half needs nothing extra: `Migrator::with_migrations` over
// `include_str!`-embedded files gives the same `_sqlx_migrations` table, checksums (an edited,
// already-applied migration is an error, not silently skipped), per-migration transactions and,
// on PostgreSQL, an advisory lock against concurrent `migrate` calls. A home-made runner would
// have to rebuild all of that.
const SQLITE_MIGRATIONS: &[EmbeddedMigration] = &[(
    1,
    "init",
    include_str!("../migrations/sqlite/0001_init.sql"),
)];
const POSTGRES_MIGRATIONS: &[EmbeddedMigration] = &[(
    1,
    "init",
    include_str!("../migrations/postgres/0001_init.sql"),
)];

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

// --- row decoding -----------------------------------------------------------------------------

/// Typed column access shared by both backends' rows, so each record is decoded by one function.
trait RowExt {
    fn i64(&self, column: &str) -> Result<i64, StoreError>;
    fn i32(&self, column: &str) -> Result<i32, StoreError>;
    fn string(&self, column: &str) -> Result<String, StoreError>;
    fn opt_i64(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn opt_string(&self, column: &str) -> Result<Option<String>, StoreError>;
}

macro_rules! impl_row_ext {
    ($($row:ty),+) => {$(
        impl RowExt for $row {
            fn i64(&self, column: &str) -> Result<i64, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn i32(&self, column: &str) -> Result<i32, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn string(&self, column: &str) -> Result<String, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn opt_i64(&self, column: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn opt_string(&self, column: &str) -> Result<Option<String>, StoreError> {
                Ok(self.try_get(column)?)
            }
        }
    )+};
}

impl_row_ext!(SqliteRow, PgRow);

fn run_from_row(row: &impl RowExt) -> Result<RunRecord, StoreError> {
    let request = row.string("request")?;
    Ok(RunRecord {
        id: run_id(row.string("id")?)?,
        kind: parse_text::<RunKind>("runs.kind", row.string("kind")?)?,
        pipeline: row.string("pipeline")?,
        request: serde_json::from_str(&request).map_err(|source| StoreError::Json {
            column: "runs.request",
            source,
        })?,
        state: parse_text::<RunState>("runs.state", row.string("state")?)?,
        created_at: time("runs.created_at", row.i64("created_at")?)?,
        updated_at: time("runs.updated_at", row.i64("updated_at")?)?,
        finished_at: opt_time("runs.finished_at", row.opt_i64("finished_at")?)?,
        version: row.i64("version")?,
    })
}

fn task_from_row(row: &impl RowExt) -> Result<TaskRecord, StoreError> {
    let counts = row
        .opt_string("counts")?
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|source| StoreError::Json {
            column: "tasks.counts",
            source,
        })?;
    Ok(TaskRecord {
        id: row.i64("id")?,
        run_id: run_id(row.string("run_id")?)?,
        phase: row.i64("phase")?,
        start: date("tasks.start_date", &row.string("start_date")?)?,
        end: date("tasks.end_date", &row.string("end_date")?)?,
        state: parse_text::<TaskState>("tasks.state", row.string("state")?)?,
        attempt: row.i32("attempt")?,
        lease_epoch: row.i64("lease_epoch")?,
        lease_owner: row.opt_string("lease_owner")?,
        lease_expires_at: opt_time("tasks.lease_expires_at", row.opt_i64("lease_expires_at")?)?,
        not_before: opt_time("tasks.not_before", row.opt_i64("not_before")?)?,
        started_at: opt_time("tasks.started_at", row.opt_i64("started_at")?)?,
        finished_at: opt_time("tasks.finished_at", row.opt_i64("finished_at")?)?,
        error: row.opt_string("error")?,
        counts,
    })
}

fn cell_from_row(row: &impl RowExt) -> Result<CellRecord, StoreError> {
    Ok(CellRecord {
        run_id: run_id(row.string("run_id")?)?,
        phase: row.i64("phase")?,
        date: date("run_cells.date", &row.string("date")?)?,
        task_id: row.i64("task_id")?,
        state: parse_text::<CellState>("run_cells.state", row.string("state")?)?,
        completed_at: opt_time("run_cells.completed_at", row.opt_i64("completed_at")?)?,
    })
}

fn progress_from_row(row: &impl RowExt) -> Result<PhaseProgress, StoreError> {
    Ok(PhaseProgress {
        phase: row.i64("phase")?,
        total: row.i64("total")?,
        pending: row.i64("pending")?,
        running: row.i64("running")?,
        complete: row.i64("complete")?,
        failed: row.i64("failed")?,
        blocked: row.i64("blocked")?,
    })
}

fn event_from_row(row: &impl RowExt) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        id: row.i64("id")?,
        phase: row.i64("phase")?,
        date: date("events.date", &row.string("date")?)?,
        status: row.string("status")?,
        source: row.string("source")?,
        run_id: row.opt_string("run_id")?.map(run_id).transpose()?,
        created_at: time("events.created_at", row.i64("created_at")?)?,
    })
}

// --- helpers ----------------------------------------------------------------------------------

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

/// Dates are stored as `YYYY-MM-DD`, which sorts as it compares.
fn date_text(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

fn date(column: &'static str, text: &str) -> Result<NaiveDate, StoreError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| StoreError::Corrupt {
        column,
        value: text.to_owned(),
    })
}

fn time(column: &'static str, millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| StoreError::Corrupt {
        column,
        value: millis.to_string(),
    })
}

fn opt_time(
    column: &'static str,
    millis: Option<i64>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    millis.map(|millis| time(column, millis)).transpose()
}

fn run_id(text: String) -> Result<RunId, StoreError> {
    RunId::parse(&text).map_err(|_| StoreError::Corrupt {
        column: "run_id",
        value: text,
    })
}

fn parse_text<T: FromStr>(column: &'static str, text: String) -> Result<T, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        column,
        value: text,
    })
}
