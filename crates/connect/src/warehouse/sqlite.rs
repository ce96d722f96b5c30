//! The SQLite side of the warehouse, on rusqlite.
//!
//! sqlx-sqlite sends every statement to a worker thread and waits for the answer (a channel
//! and a futex wake, 20–50 µs each), which dominated small tasks. Here a whole call (a probe,
//! or a script with its transaction and gate) is one job on a pooled connection, and
//! statements are cached per connection (`prepare_cached`).
//!
//! Where a job runs: first in the caller's thread, for at most [`INLINE_BUDGET`]; then, if it
//! has not finished, on a blocking thread. Most tasks' SQL is short, and the hop to a blocking
//! thread and back (two cross-thread wake-ups, ~60 µs on a small VM) would cost more than the
//! SQL itself. The inline attempt is stopped by the progress handler when its budget runs out,
//! and does not wait for another writer's lock (its busy timeout is zero); either way its
//! transaction rolls back, nothing it did is kept, and the job runs again from the start on a
//! blocking thread, where it has the whole deadline. A job is therefore `Fn`: it may run twice.
//! A SQL text that outran the budget [`DEMOTE_AFTER`] times in a row goes straight to a
//! blocking thread, and is tried inline again only once in [`RETRY_INLINE_EVERY`] calls, so a
//! long script wastes a budget now and then, not on every task, while a short one that overran
//! once (the VM descheduled the thread, a checkpoint ran) keeps its fast path. The caller's
//! thread (the scheduler's) is held for about the budget at most, and timeouts, Ctrl-C and
//! other tasks wait at most that long, with one exception: the progress handler runs between
//! virtual machine instructions, and a single instruction can run long (a sort of millions of
//! rows, an index build). Such an attempt holds the thread until the instruction ends, and its
//! text is demoted at once ([`DEMOTE_AT_ONCE_AFTER`]), so this happens once per process and
//! then once in [`RETRY_INLINE_EVERY`] calls.
//!
//! Stopping: a job runs on a blocking thread that cannot be aborted, so the async side stops
//! its SQL instead. When the deadline passes, or when the caller drops the future (a cancelled
//! task), it sets the job's [`Cancel`] flag and calls the connection's
//! [`rusqlite::InterruptHandle::interrupt`]; the running statement fails with
//! `SQLITE_INTERRUPT`, the job rolls back, and the connection returns to the pool only once no
//! transaction is open. The job also checks the flag between statements and right before
//! `COMMIT`, so a cancelled script never commits after its caller has gone.
//!
//! The interrupt alone can be lost: SQLite clears it when a statement starts while none is
//! running, so one that lands between the job's check of the flag and the next statement's
//! start does nothing. A progress handler that reads the flag every [`PROGRESS_OPS`] virtual
//! machine instructions catches those; the interrupt still matters for work that runs long
//! inside one instruction (a big sort).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::NaiveDate;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, InterruptHandle, OpenFlags};
use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use super::{
    BoundStatement, Cell, DatabaseError, Finish, GatedScript, Query, Script, SqliteTarget,
    WarehouseError, iso, snippet,
};

/// How long SQLite waits for another writer's lock before failing with "database is locked".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections to a database file. WAL lets readers run beside the one writer; more would
/// mostly queue on the write lock.
const FILE_POOL_SIZE: u32 = 4;
/// Statements cached per connection: a runner script, its probes and the bookkeeping.
const STATEMENT_CACHE: usize = 64;
/// After a timeout, how long the caller waits for the interrupted job to let go of its
/// connection (normally well under a millisecond) before reporting the timeout anyway.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// How often the caller repeats the interrupt while it waits (see the module comment).
const STOP_REPEAT: Duration = Duration::from_millis(5);
/// Virtual machine instructions between two checks of the cancel flag by the progress handler:
/// tens of microseconds, at the cost of an atomic load per thousand instructions.
const PROGRESS_OPS: i32 = 1_000;
/// How long a job may run in the caller's thread before it is stopped and moved to a blocking
/// thread (see the module comment). Past a millisecond the hop costs under 6 %, and holding
/// the scheduler's thread longer would delay every other task's bookkeeping.
const INLINE_BUDGET: Duration = Duration::from_millis(1);
/// Overruns in a row after which a SQL text goes straight to a blocking thread.
const DEMOTE_AFTER: u32 = 3;
/// An inline attempt that took this long demotes its SQL text at once. The progress handler
/// runs between virtual machine instructions, and one instruction can run long (sorting
/// millions of rows, building an index, a checkpoint after COMMIT), holding the caller's
/// thread until it ends; such a text must not get that chance again soon.
const DEMOTE_AT_ONCE_AFTER: Duration = Duration::from_millis(10);
/// A demoted SQL text is tried inline again once in this many calls, in case it got faster.
const RETRY_INLINE_EVERY: u32 = 100;
/// At most this many SQL texts are tracked; past it, new texts are always tried inline (a
/// wasted budget each time one overruns, never a wrong result).
const SLOW_SQL_LIMIT: usize = 1_024;

/// Connections to one SQLite database, used on blocking threads.
///
/// At most `size` connections exist: a job takes a permit, then an idle connection or a new
/// one, and puts the connection back before it releases the permit.
pub(super) struct SqlitePool {
    url: String,
    target: SqliteTarget,
    /// `(schema name, file path)` attached on every connection.
    attachments: Vec<(String, String)>,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    size: u32,
    /// SQL texts whose inline attempts outran [`INLINE_BUDGET`] lately.
    slow: Mutex<SlowSql>,
}

impl fmt::Debug for SqlitePool {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SqlitePool")
            .field("target", &self.target)
            .field("attachments", &self.attachments)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl SqlitePool {
    /// Opens the pool and its first connection, so that a database that cannot be opened, or
    /// an attachment that fails, is reported now rather than at the first probe.
    pub(super) async fn connect(
        url: &str,
        target: SqliteTarget,
        attachments: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Arc<Self>, WarehouseError> {
        // Every connection to `:memory:` is a database of its own: keep exactly one, forever.
        let size = match target {
            SqliteTarget::Memory => 1,
            SqliteTarget::File(_) => FILE_POOL_SIZE,
        };
        let pool = Arc::new(Self {
            url: url.to_owned(),
            target,
            attachments,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size as usize)),
            size,
            slow: Mutex::new(SlowSql::default()),
        });
        let opener = Arc::clone(&pool);
        let opened =
            tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || opener.open()))
                .await
                .map_err(|_| WarehouseError::ConnectTimeout {
                    url: url.to_owned(),
                    after: timeout,
                })?;
        let connection = joined(opened)??;
        lock(&pool.idle).push(connection);
        Ok(pool)
    }

    /// Waits for the connections in use to come back, closes them all, and fails later calls
    /// with [`WarehouseError::Closed`].
    pub(super) async fn close(&self) {
        // Every job puts its connection back before it releases its permit.
        let all = self.permits.acquire_many(self.size).await;
        self.permits.close();
        drop(all);
        lock(&self.idle).clear();
    }

    pub(super) async fn ping(
        self: &Arc<Self>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), WarehouseError> {
        const PING: &str = "SELECT 1";
        let error = |source: rusqlite::Error| WarehouseError::Query {
            query: PING.to_owned(),
            source: source.into(),
        };
        self.run(deadline, timeout, PING, move |connection, _| {
            connection
                .prepare_cached(PING)
                .and_then(|mut statement| statement.query_row([], |_| Ok(())))
                .map_err(error)
        })
        .await
    }

    /// The first column of the first row of a query without parameters, if there is a row.
    pub(super) async fn first_cell(
        self: &Arc<Self>,
        deadline: Instant,
        timeout: Duration,
        query: Query,
    ) -> Result<Option<Cell>, WarehouseError> {
        let sql = query.sql.clone();
        self.run(deadline, timeout, &sql, move |connection, cancel| {
            if cancel.is_requested() {
                return Err(query.timed_out(timeout));
            }
            let error = |source: rusqlite::Error| query.error(source.into());
            let mut statement = bind(connection, &query.statement).map_err(error)?;
            let columns = statement.column_count();
            let mut rows = statement.raw_query();
            let Some(row) = rows.next().map_err(error)? else {
                return Ok(None);
            };
            if columns == 0 {
                return Err(WarehouseError::Columns {
                    found: 0,
                    expected: "1",
                    query: snippet(&query.sql),
                });
            }
            row.get_ref(0).map(sqlite_cell).map(Some).map_err(error)
        })
        .await
    }

    /// Prepares each of `statements` (text, parameter count) without stepping it; the outcome
    /// of each, in order. A statement that met another connection's lock is not an outcome:
    /// the call fails with that (retryable) error, and the inline attempt, which does not
    /// wait for locks, gives way to one that does.
    pub(super) async fn prepare_each(
        self: &Arc<Self>,
        deadline: Instant,
        timeout: Duration,
        sql: &str,
        statements: Vec<(String, usize)>,
    ) -> Result<Vec<Result<(), DatabaseError>>, WarehouseError> {
        self.run(deadline, timeout, sql, move |connection, _| {
            let mut outcomes = Vec::with_capacity(statements.len());
            for (text, _) in &statements {
                match connection.prepare(text) {
                    Ok(_) => outcomes.push(Ok(())),
                    Err(source) => {
                        let source = DatabaseError::from(source);
                        if source.is_transient() {
                            return Err(WarehouseError::query(text, source));
                        }
                        outcomes.push(Err(source));
                    }
                }
            }
            Ok(outcomes)
        })
        .await
    }

    /// Runs a one-statement query and decodes the first `columns` columns of every row.
    pub(super) async fn fetch_cells(
        self: &Arc<Self>,
        deadline: Instant,
        timeout: Duration,
        query: Query,
        columns: usize,
    ) -> Result<Vec<Vec<Cell>>, WarehouseError> {
        let sql = query.sql.clone();
        self.run(deadline, timeout, &sql, move |connection, cancel| {
            if cancel.is_requested() {
                return Err(query.timed_out(timeout));
            }
            fetch_on(connection, &query, columns)
        })
        .await
    }

    /// See [`super::Warehouse::execute_script_gated`]: the script, the probes, `finish` (given
    /// the rows the script affected and each probe's counts) and the commit or rollback it
    /// decides all run in one blocking job.
    pub(super) async fn transact<R>(
        self: &Arc<Self>,
        deadline: Instant,
        timeout: Duration,
        gated: GatedScript,
        finish: impl Fn(u64, Vec<BTreeMap<NaiveDate, i64>>) -> Finish<R> + Send + 'static,
    ) -> Result<R, WarehouseError>
    where
        R: Send + 'static,
    {
        let sql = gated.script.sql.clone();
        self.run(deadline, timeout, &sql, move |connection, cancel| {
            in_transaction(
                connection,
                cancel,
                timeout,
                &gated.script,
                |connection, affected| {
                    let mut observed = Vec::with_capacity(gated.probes.len());
                    for probe in &gated.probes {
                        if cancel.is_requested() {
                            return Err(gated.script.timed_out(timeout));
                        }
                        let rows = fetch_on(connection, probe, 2)?;
                        observed.push(gated.tally(probe, rows)?);
                    }
                    Ok(finish(affected, observed))
                },
            )
        })
        .await
    }

    /// Runs `job` on a pooled connection, bounded by `deadline`: in this thread if it finishes
    /// within [`INLINE_BUDGET`], otherwise on a blocking thread (see the module comment).
    ///
    /// If the deadline passes, the job's SQL is interrupted and, once the job has stopped (or
    /// after [`STOP_GRACE`]), the call fails with [`WarehouseError::Timeout`], unless the job
    /// had in fact finished. If this future is dropped first, the SQL is interrupted too and
    /// the job ends on its own, rolling back.
    async fn run<T, F>(
        self: &Arc<Self>,
        deadline: Instant,
        timeout: Duration,
        sql: &str,
        job: F,
    ) -> Result<T, WarehouseError>
    where
        T: Send + 'static,
        F: Fn(&mut Connection, &Cancel) -> Result<T, WarehouseError> + Send + 'static,
    {
        if let Some(done) = self.run_inline(deadline, sql, &job) {
            return done;
        }
        let timed_out = || WarehouseError::timed_out(sql, timeout);
        let permit = match tokio::time::timeout_at(
            deadline,
            Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => return Err(WarehouseError::Closed),
            Ok(Ok(permit)) => permit,
        };
        let cancel = Arc::new(Cancel::default());
        let pool = Arc::clone(self);
        let job_cancel = Arc::clone(&cancel);
        let mut task = tokio::task::spawn_blocking(move || {
            // Not in the `match`: its lock would last through the job.
            let idle = lock(&pool.idle).pop();
            let result = match idle {
                Some(connection) => Ok(connection),
                None => pool.open(),
            }
            .and_then(|connection| {
                pool.with_connection(connection, &job_cancel, SQLITE_BUSY_TIMEOUT, job)
            });
            // Only now: the connection is back in the pool (or closed).
            drop(permit);
            result
        });
        let guard = CancelOnDrop(Some(Arc::clone(&cancel)));
        let result = match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(finished) => joined(finished)?,
            Err(_) => {
                cancel.cancel();
                match stop(&cancel, &mut task).await {
                    // It finished before it saw the flag: the work is done (and committed).
                    Some(finished) => joined(finished)?.map_err(|_| timed_out()),
                    None => Err(timed_out()),
                }
            }
        };
        guard.disarm();
        result
    }

    /// The inline attempt: runs `job` in this thread on an idle connection, stopped once
    /// [`INLINE_BUDGET`] (or the deadline) has passed, and never waiting for a lock. `None`
    /// means it did not run or did not finish, and left nothing behind: the caller runs the job
    /// on a blocking thread. Overruns are counted per SQL text (see the module comment).
    fn run_inline<T>(
        &self,
        deadline: Instant,
        sql: &str,
        job: &impl Fn(&mut Connection, &Cancel) -> Result<T, WarehouseError>,
    ) -> Option<Result<T, WarehouseError>> {
        if !lock(&self.slow).may_run_inline(sql) {
            return None;
        }
        // No free connection (or a closed pool): the blocking path waits, or reports it. Nor
        // does this thread open one: opening can wait for locks.
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        let Some(connection) = lock(&self.idle).pop() else {
            drop(permit);
            return None;
        };
        let started = std::time::Instant::now();
        let until = (started + INLINE_BUDGET).min(deadline.into_std());
        let cancel = Arc::new(Cancel::with_budget(until));
        let result = self.with_connection(connection, &cancel, Duration::ZERO, job);
        drop(permit);
        match result {
            Err(_) if cancel.budget_spent() => {
                lock(&self.slow).overran(sql, started.elapsed());
                None
            }
            // Another writer held the lock (or a connection failed to open or configure):
            // the blocking path waits for it, or reports it.
            Err(error) if error.is_retryable() => None,
            done => {
                lock(&self.slow).finished_in_time(sql);
                Some(done)
            }
        }
    }

    /// Runs `job` on `connection` (taken from the pool or new), waiting up to `busy` for
    /// another writer's lock, then puts the connection back if it is clean.
    fn with_connection<T>(
        &self,
        mut connection: Connection,
        cancel: &Arc<Cancel>,
        busy: Duration,
        job: impl FnOnce(&mut Connection, &Cancel) -> Result<T, WarehouseError>,
    ) -> Result<T, WarehouseError> {
        if let Err(source) = connection
            .busy_timeout(busy)
            .and_then(|()| watch(&connection, cancel))
        {
            self.put_back(connection);
            return Err(WarehouseError::Connect {
                url: self.url.clone(),
                source: source.into(),
            });
        }
        // A panicking gate must not cost the connection (for `:memory:`, the database).
        let result = catch_unwind(AssertUnwindSafe(|| job(&mut connection, cancel)));
        unwatch(&connection, cancel);
        self.put_back(connection);
        match result {
            Ok(result) => result,
            Err(panic) => resume_unwind(panic),
        }
    }

    /// Returns a connection to the pool if no transaction is left open on it; otherwise it is
    /// closed, which rolls back whatever it held. A `:memory:` connection is the database
    /// itself and is always kept.
    fn put_back(&self, connection: Connection) {
        if !connection.is_autocommit() {
            // Best effort: `is_autocommit` below decides.
            let _ = connection.execute_batch("ROLLBACK");
        }
        if connection.is_autocommit() || matches!(self.target, SqliteTarget::Memory) {
            lock(&self.idle).push(connection);
        }
    }

    /// Opens and configures a connection: WAL, the busy timeout, foreign keys (as sqlx did),
    /// and the attachments.
    fn open(&self) -> Result<Connection, WarehouseError> {
        let open = || -> rusqlite::Result<Connection> {
            let connection = match &self.target {
                SqliteTarget::Memory => Connection::open_in_memory()?,
                // No SQLITE_OPEN_URI: the path is a file name, never a `file:` URI.
                SqliteTarget::File(path) => Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE
                        | OpenFlags::SQLITE_OPEN_CREATE
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?,
            };
            // Each call sets its own busy timeout too (`with_connection`).
            connection.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
            connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            connection.execute_batch("PRAGMA foreign_keys = ON")?;
            if matches!(self.target, SqliteTarget::File(_)) {
                // `synchronous` stays at SQLite's default, FULL: this is the user's data.
                wal(&connection, "main")?;
            }
            for (name, path) in &self.attachments {
                // The name is a validated plain identifier; the path is bound.
                connection.execute(&format!("ATTACH DATABASE ?1 AS \"{name}\""), [path])?;
                wal(&connection, name)?;
            }
            Ok(connection)
        };
        open().map_err(|source| WarehouseError::Connect {
            url: self.url.clone(),
            source: source.into(),
        })
    }
}

/// Lets `cancel` stop the connection's statements: its interrupt handle, and the progress
/// handler that reads its flag.
fn watch(connection: &Connection, cancel: &Arc<Cancel>) -> rusqlite::Result<()> {
    cancel.arm(connection);
    let watched = Arc::clone(cancel);
    connection.progress_handler(PROGRESS_OPS, Some(move || watched.should_stop()))
}

/// Undoes [`watch`], so that a rollback cannot be stopped and a late interrupt cannot reach the
/// next call on this connection.
fn unwatch(connection: &Connection, cancel: &Cancel) {
    cancel.disarm();
    // Fails only for a connection this process does not own.
    let _ = connection.progress_handler(0, None::<fn() -> bool>);
}

fn wal(connection: &Connection, schema: &str) -> rusqlite::Result<()> {
    // `journal_mode` answers with the mode now in force, as a row.
    connection.query_row(
        &format!("PRAGMA \"{schema}\".journal_mode = WAL"),
        [],
        |_| Ok(()),
    )
}

/// A job's stop signal: a flag it checks between statements, and the interrupt handle of the
/// connection it runs on while it has one.
#[derive(Default)]
struct Cancel {
    is_requested: AtomicBool,
    /// Set only while the job holds the connection: a handle kept after the connection went
    /// back to the pool would interrupt another call's statement.
    interrupt: Mutex<Option<InterruptHandle>>,
    /// For an inline attempt: when the progress handler stops it.
    budget: Option<Budget>,
}

/// Which SQL texts overran their inline budget lately, and so which get an inline attempt.
#[derive(Debug, Default)]
struct SlowSql(HashMap<String, Overruns>);

/// How a SQL text's inline attempts have overrun their budget lately.
#[derive(Debug)]
struct Overruns {
    /// Overruns since its last inline attempt that finished in time.
    in_a_row: u32,
    /// Calls sent straight to a blocking thread since its last inline attempt.
    skipped: u32,
}

impl SlowSql {
    /// Whether `sql` gets an inline attempt: not when it overran [`DEMOTE_AFTER`] times in a
    /// row, except once in [`RETRY_INLINE_EVERY`] calls.
    fn may_run_inline(&mut self, sql: &str) -> bool {
        let Some(overruns) = self.0.get_mut(sql) else {
            return true;
        };
        if overruns.in_a_row < DEMOTE_AFTER {
            return true;
        }
        overruns.skipped += 1;
        if overruns.skipped < RETRY_INLINE_EVERY {
            return false;
        }
        overruns.skipped = 0;
        true
    }

    /// An inline attempt of `sql` was stopped for its budget after `took`.
    fn overran(&mut self, sql: &str, took: Duration) {
        let count = if took >= DEMOTE_AT_ONCE_AFTER {
            DEMOTE_AFTER
        } else {
            1
        };
        if let Some(overruns) = self.0.get_mut(sql) {
            overruns.in_a_row = overruns.in_a_row.saturating_add(count);
        } else if self.0.len() < SLOW_SQL_LIMIT {
            let first = Overruns {
                in_a_row: count,
                skipped: 0,
            };
            self.0.insert(sql.to_owned(), first);
        }
    }

    /// Whatever `sql` overran before is forgotten.
    fn finished_in_time(&mut self, sql: &str) {
        if !self.0.is_empty() {
            self.0.remove(sql);
        }
    }
}

/// An inline attempt's allowance of time.
struct Budget {
    until: std::time::Instant,
    /// Set when the progress handler stopped the attempt for running past `until`.
    spent: AtomicBool,
}

impl Cancel {
    fn with_budget(until: std::time::Instant) -> Self {
        Self {
            budget: Some(Budget {
                until,
                spent: AtomicBool::new(false),
            }),
            ..Self::default()
        }
    }

    /// The progress handler's question: cancelled, or past the inline budget.
    fn should_stop(&self) -> bool {
        if self.is_requested() {
            return true;
        }
        match &self.budget {
            Some(budget) if std::time::Instant::now() >= budget.until => {
                budget.spent.store(true, Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    /// Whether the progress handler stopped an inline attempt for its budget.
    fn budget_spent(&self) -> bool {
        self.budget
            .as_ref()
            .is_some_and(|budget| budget.spent.load(Ordering::SeqCst))
    }

    fn cancel(&self) {
        self.is_requested.store(true, Ordering::SeqCst);
        self.interrupt();
    }

    fn interrupt(&self) {
        if let Some(handle) = lock(&self.interrupt).as_ref() {
            handle.interrupt();
        }
    }

    fn is_requested(&self) -> bool {
        self.is_requested.load(Ordering::SeqCst)
    }

    /// Called before the job's first statement, which checks the flag after this (and the
    /// progress handler reads it throughout): a cancel that found no handle set the flag
    /// first, so the job sees it.
    fn arm(&self, connection: &Connection) {
        *lock(&self.interrupt) = Some(connection.get_interrupt_handle());
    }

    fn disarm(&self) {
        *lock(&self.interrupt) = None;
    }
}

/// Cancels the job when the caller's future is dropped before the job's result is in.
struct CancelOnDrop(Option<Arc<Cancel>>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.cancel();
        }
    }
}

/// After a cancel, waits for the job to stop, repeating the interrupt; `None` if it has not
/// stopped within [`STOP_GRACE`].
async fn stop<T>(cancel: &Cancel, task: &mut JoinHandle<T>) -> Option<Result<T, JoinError>> {
    let give_up = Instant::now() + STOP_GRACE;
    loop {
        let next = (Instant::now() + STOP_REPEAT).min(give_up);
        match tokio::time::timeout_at(next, &mut *task).await {
            Ok(finished) => return Some(finished),
            Err(_) if Instant::now() >= give_up => return None,
            Err(_) => cancel.interrupt(),
        }
    }
}

/// The result of a blocking job. A panic in it continues in the caller, as if the job had run
/// inline; a job cancelled before it started means the runtime is shutting down.
fn joined<T>(finished: Result<T, JoinError>) -> Result<T, WarehouseError> {
    match finished {
        Ok(value) => Ok(value),
        Err(error) if error.is_panic() => resume_unwind(error.into_panic()),
        Err(_) => Err(WarehouseError::Closed),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks (idle connections, a handle) stays valid whatever panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `script` in a `BEGIN IMMEDIATE` transaction, then `finish` inside it, and commits or
/// rolls back as `finish` says. Any error, or a cancel seen before `COMMIT`, rolls back.
fn in_transaction<T>(
    connection: &Connection,
    cancel: &Cancel,
    timeout: Duration,
    script: &Script,
    finish: impl FnOnce(&Connection, u64) -> Result<Finish<T>, WarehouseError>,
) -> Result<T, WarehouseError> {
    let transaction_error = |source: rusqlite::Error| script.transaction_error(source.into());
    if cancel.is_requested() {
        return Err(script.timed_out(timeout));
    }
    // IMMEDIATE takes the write lock up front: a deferred transaction that reads first can
    // fail to upgrade with SQLITE_BUSY under a concurrent writer.
    run_cached(connection, "BEGIN IMMEDIATE").map_err(transaction_error)?;
    let outcome = (|| {
        let mut affected = 0u64;
        for (index, statement) in script.statements.iter().enumerate() {
            if cancel.is_requested() {
                return Err(script.timed_out(timeout));
            }
            affected += execute(connection, statement)
                .map_err(|source| script.statement_error(index, source.into()))?;
        }
        let finished = finish(connection, affected)?;
        if cancel.is_requested() {
            return Err(script.timed_out(timeout));
        }
        Ok(finished)
    })();
    match outcome {
        Ok(Finish::Commit(value)) => match run_cached(connection, "COMMIT") {
            Ok(()) => Ok(value),
            Err(source) => {
                roll_back(connection, cancel);
                Err(transaction_error(source))
            }
        },
        Ok(Finish::RollBack(value)) => {
            roll_back(connection, cancel);
            Ok(value)
        }
        Err(error) => {
            roll_back(connection, cancel);
            Err(error)
        }
    }
}

/// Rolls back, unwatched so that the cancel cannot stop the rollback itself. It fails
/// harmlessly when SQLite already rolled back (an interrupted write does); a transaction left
/// open anyway keeps the connection out of the pool.
fn roll_back(connection: &Connection, cancel: &Cancel) {
    unwatch(connection, cancel);
    let _ = run_cached(connection, "ROLLBACK");
}

fn run_cached(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([]).map(drop)
}

/// Prepares (cached) and binds a statement: dates as `YYYY-MM-DD` text, which is what SQLite
/// date functions and text date columns compare with.
fn bind<'c>(
    connection: &'c Connection,
    statement: &BoundStatement,
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    let mut prepared = connection.prepare_cached(&statement.text)?;
    for (index, value) in statement.values.iter().enumerate() {
        prepared.raw_bind_parameter(index + 1, iso(*value))?;
    }
    Ok(prepared)
}

/// Runs one statement of a script to the end, rows and all, and returns the rows it inserted,
/// updated or deleted. `changes()` alone would repeat the previous statement's count after a
/// statement that changes nothing (DDL, SELECT); `total_changes()` moving tells them apart.
fn execute(connection: &Connection, statement: &BoundStatement) -> rusqlite::Result<u64> {
    let before = connection.total_changes();
    let mut prepared = bind(connection, statement)?;
    let mut rows = prepared.raw_query();
    while rows.next()?.is_some() {}
    drop(rows);
    drop(prepared);
    Ok(if connection.total_changes() == before {
        0
    } else {
        connection.changes()
    })
}

/// Runs a one-statement query and decodes the first `columns` columns of every row.
fn fetch_on(
    connection: &Connection,
    query: &Query,
    columns: usize,
) -> Result<Vec<Vec<Cell>>, WarehouseError> {
    let error = |source: rusqlite::Error| query.error(source.into());
    let mut statement = bind(connection, &query.statement).map_err(error)?;
    let width = statement.column_count();
    let mut rows = statement.raw_query();
    let mut decoded = Vec::new();
    while let Some(row) = rows.next().map_err(error)? {
        query.check_width(columns, width)?;
        let cells = (0..columns)
            .map(|index| row.get_ref(index).map(sqlite_cell))
            .collect::<Result<Vec<_>, _>>()
            .map_err(error)?;
        decoded.push(cells);
    }
    Ok(decoded)
}

/// A value by its storage class: SQLite types values, not columns.
fn sqlite_cell(value: ValueRef<'_>) -> Cell {
    match value {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(value) => Cell::Int(value),
        ValueRef::Real(value) => Cell::Real(value),
        ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => Cell::Text(text.to_owned()),
            Err(_) => Cell::Other("TEXT (not UTF-8)".into()),
        },
        ValueRef::Blob(_) => Cell::Other("BLOB".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calls in a row that get an inline attempt, out of `calls`.
    fn inline_pattern(slow: &mut SlowSql, sql: &str, calls: u32) -> Vec<u32> {
        (0..calls)
            .filter(|_| slow.may_run_inline(sql))
            .collect::<Vec<_>>()
    }

    #[test]
    fn a_text_is_demoted_after_overruns_in_a_row_and_retried_now_and_then() {
        let mut slow = SlowSql::default();
        let sql = "INSERT INTO big SELECT * FROM huge";
        for _ in 1..DEMOTE_AFTER {
            slow.overran(sql, INLINE_BUDGET);
            assert!(
                slow.may_run_inline(sql),
                "demoted before {DEMOTE_AFTER} overruns"
            );
        }
        slow.overran(sql, INLINE_BUDGET);
        // Demoted: one call in RETRY_INLINE_EVERY is tried inline.
        let tried = inline_pattern(&mut slow, sql, 3 * RETRY_INLINE_EVERY);
        let every = RETRY_INLINE_EVERY;
        assert_eq!(tried, vec![every - 1, 2 * every - 1, 3 * every - 1]);
        // Other texts are untouched.
        assert!(slow.may_run_inline("SELECT 1"));
        // A retry that finishes in time restores the fast path for good.
        slow.finished_in_time(sql);
        assert_eq!(inline_pattern(&mut slow, sql, 5).len(), 5);
    }

    #[test]
    fn an_attempt_stuck_in_one_long_instruction_demotes_at_once() {
        let mut slow = SlowSql::default();
        let sql = "CREATE INDEX big_d ON big (d)";
        slow.overran(sql, DEMOTE_AT_ONCE_AFTER);
        assert!(!slow.may_run_inline(sql));
        let short = "INSERT INTO t VALUES (1)";
        slow.overran(short, DEMOTE_AT_ONCE_AFTER - Duration::from_millis(1));
        assert!(slow.may_run_inline(short));
    }

    #[test]
    fn an_overrun_now_and_then_keeps_the_fast_path() {
        // A short script overran once (the thread was descheduled): it stays inline, and the
        // count starts again after each attempt that finished in time.
        let mut slow = SlowSql::default();
        let sql = "INSERT INTO t VALUES (1)";
        for _ in 0..10 {
            for _ in 1..DEMOTE_AFTER {
                slow.overran(sql, INLINE_BUDGET);
            }
            assert!(slow.may_run_inline(sql));
            slow.finished_in_time(sql);
        }
        assert!(slow.0.is_empty());
    }

    #[test]
    fn the_number_of_texts_tracked_is_bounded() {
        let mut slow = SlowSql::default();
        for index in 0..SLOW_SQL_LIMIT + 10 {
            for _ in 0..DEMOTE_AFTER {
                slow.overran(&format!("SELECT {index}"), INLINE_BUDGET);
            }
        }
        assert_eq!(slow.0.len(), SLOW_SQL_LIMIT);
        // Past the limit a text is not tracked, so it is always tried inline.
        let untracked = format!("SELECT {}", SLOW_SQL_LIMIT + 5);
        assert!(slow.may_run_inline(&untracked));
        assert!(!slow.may_run_inline("SELECT 0"));
    }
}
