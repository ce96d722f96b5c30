//! The SQLite backend: one rusqlite connection, called in the calling thread.
//!
//! sqlx-sqlite runs every statement on a worker thread and hands the result back through a
//! channel: 20–50 µs of thread hops per statement, against about 2 µs for an indexed SELECT
//! and 19 µs for a WAL commit at `synchronous=NORMAL` done in-thread. So the store holds a
//! single [`Connection`] behind a [`Mutex`] and runs each call to completion in the thread that
//! makes it. Nothing here is `async`, so the lock can never be held across an `.await`.
//!
//! One connection, not a pool: writers are serialized by SQLite anyway, a call takes
//! microseconds, and a single connection makes the per-transaction `synchronous` switch of
//! durable commits ([`Commit::Durable`]) a plain connection setting. Other processes (a second
//! `gapless`, a test reading the file) are kept apart by SQLite's own locks: writers start with
//! `BEGIN IMMEDIATE` and wait up to [`BUSY_TIMEOUT`] for each other.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::FromSql;
use rusqlite::{Connection, OpenFlags, Params, Row};

use crate::error::{BackendError, StoreError};
use crate::schema::{SCHEMA_VERSION, SQLITE_MIGRATIONS};

/// SQLite waits this long for another process's write lock before failing with `BUSY`
/// (retryable, see [`StoreError::is_retryable`]). Calls run in the calling thread, so no
/// client-side timeout can bound them (PostgreSQL calls have one); this bounds the only wait
/// that is not CPU or local disk.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Page size of a new state database, in bytes (SQLite's default is 4096). The WAL logs whole
/// pages, and a task's completion changes a few rows in four B-trees (the task, its cells, its
/// event, the next task's lease): at 4 KiB that is 16 KiB written, checksummed and later synced
/// per task, for about 300 bytes of data. At 1 KiB the same transaction takes a fifth less time
/// (`python3 bench/state-sql.py`), and a run's WAL holds under a third of the bytes (measured
/// when the page size was chosen: 53 MB against 16 MB for a run of 3,000 tasks).
/// The store's rows are small (a task is about 150 bytes), so the deeper trees cost little.
pub(crate) const PAGE_SIZE: i64 = 1024;

/// Prepared statements kept per connection: more than the store has, so none is ever re-parsed.
const STATEMENT_CACHE: usize = 64;

/// How SQLite commits reach the disk. PostgreSQL ignores it: its durability is the server's.
///
/// The state store is a checkpoint over the truth, which lives in the warehouse: `resume`
/// re-probes every cell before it runs anything, so a task commit lost to a power failure costs
/// re-work (a task runs again), never a wrong answer. That is why [`SyncMode::Normal`] is the
/// default: it takes the fsync out of the per-task commits (claim, heartbeat, complete), about
/// 100 µs each on a fast disk and milliseconds on a slow one.
///
/// In both modes the journal is WAL, and these commit durably anyway (the connection switches to
/// `synchronous=FULL` for their transaction): [`Store::create_run`], [`Store::set_run_state`],
/// [`Store::finish_run`] and [`Store::migrate`]. A FULL commit fsyncs the whole WAL, so every
/// transaction committed before it becomes durable too. [`Store::flush`] does the same on
/// demand: call it before a fencing token or a completion leaves the machine (an HTTP request,
/// an acknowledged message), so a power loss cannot roll back what someone else already saw.
///
/// [`Store::create_run`]: crate::Store::create_run
/// [`Store::set_run_state`]: crate::Store::set_run_state
/// [`Store::finish_run`]: crate::Store::finish_run
/// [`Store::migrate`]: crate::Store::migrate
/// [`Store::flush`]: crate::Store::flush
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `PRAGMA synchronous=NORMAL`: a commit is written to the WAL without an fsync; the WAL is
    /// synced at checkpoints. Every committed transaction survives a crash of the process
    /// (`kill -9`): its pages are in the OS page cache. On an OS crash or power loss the last
    /// commits may roll back; the database is never corrupted.
    #[default]
    Normal,
    /// `PRAGMA synchronous=FULL`: every commit fsyncs the WAL before it returns.
    Full,
}

impl SyncMode {
    /// The value `PRAGMA synchronous` reports for this mode.
    pub fn pragma_value(self) -> i64 {
        match self {
            Self::Normal => 1,
            Self::Full => 2,
        }
    }

    fn pragma(self) -> &'static str {
        // Run with `execute_batch`, not cached: SQLite applies `PRAGMA synchronous = …` while
        // preparing the statement and marks every PRAGMA statement run-once (`OP_Expire`), so
        // a cached one would be re-prepared on every run anyway.
        match self {
            Self::Normal => "PRAGMA synchronous = NORMAL",
            Self::Full => "PRAGMA synchronous = FULL",
        }
    }
}

/// How a write transaction commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// With the store's [`SyncMode`].
    Configured,
    /// With an fsync of the WAL (`synchronous=FULL` for this transaction), whatever the mode.
    Durable,
}

/// Where the database lives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Location<'a> {
    /// A private in-memory database: it lives as long as the store's connection.
    Memory,
    /// A file; its parent directory exists.
    File(&'a Path),
}

/// The SQLite state store: one connection, called in the calling thread. Cheap to clone (the
/// connection is shared); [`crate::Store::close`] closes it for every clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None` once closed.
    connection: Mutex<Option<Connection>>,
    sync: SyncMode,
}

impl SqliteStore {
    /// Opens the database: WAL (files), `synchronous` per `sync`, 10 s busy timeout, foreign keys
    /// on. Does not migrate.
    pub(crate) fn open(location: Location<'_>, sync: SyncMode) -> Result<Self, StoreError> {
        let connect = |error| StoreError::Connect(BackendError::Sqlite(error));
        // No `SQLITE_OPEN_URI`: the path is a path, even if it starts with `file:`. No mutex in
        // SQLite either: the store's own `Mutex` serializes every use of the connection.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = match location {
            Location::Memory => Connection::open_in_memory_with_flags(flags),
            Location::File(path) => Connection::open_with_flags(path, flags),
        }
        .map_err(connect)?;
        // The busy timeout first: switching the journal to WAL needs a lock another process may
        // hold.
        connection.busy_timeout(BUSY_TIMEOUT).map_err(connect)?;
        if let Location::File(path) = location {
            // Before the first table exists (an existing database keeps its size): see
            // [`PAGE_SIZE`].
            connection
                .execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE}"))
                .map_err(connect)?;
            let journal: String = connection
                .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
                .map_err(connect)?;
            if !journal.eq_ignore_ascii_case("wal") {
                // SQLite keeps the old mode where WAL is impossible (some network file
                // systems); commits still work, but `Normal` then risks more than re-work.
                tracing::warn!(path = %path.display(), journal, "state store is not in WAL mode");
            }
        }
        connection.execute_batch(sync.pragma()).map_err(connect)?;
        connection
            .execute_batch("PRAGMA foreign_keys = ON")
            .map_err(connect)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Self {
            inner: Arc::new(Inner {
                connection: Mutex::new(Some(connection)),
                sync,
            }),
        })
    }

    /// The durability mode the store was opened with.
    pub fn sync_mode(&self) -> SyncMode {
        self.inner.sync
    }

    /// Runs `f` on the store's connection, in the calling thread, holding the store's lock
    /// (every other call on this store waits meanwhile, so keep it short). For tests and
    /// diagnostics: `PRAGMA`s, raw SQL. Writes made here bypass the store's compare-and-set
    /// guards. A transaction `f` leaves open is rolled back; `f` must not change the
    /// connection's settings (`synchronous`, `foreign_keys`).
    pub fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> Result<T, StoreError> {
        self.call(|connection| {
            let out = f(connection);
            roll_back_if_open(connection);
            Ok(out)
        })
    }

    /// Closes the connection; later calls on any clone fail with [`StoreError::Closed`]. The
    /// last connection to a file checkpoints the WAL into it.
    pub(crate) fn close(&self) {
        let connection = self.lock().take();
        if let Some(connection) = connection
            && let Err((_, error)) = connection.close()
        {
            tracing::warn!(%error, "closing the SQLite state store failed");
        }
    }

    /// Runs `body` on the connection, statements in autocommit mode. A single write statement
    /// is a transaction of its own that takes the write lock before it reads anything (SQLite
    /// begins it as a write transaction), so it needs no `BEGIN IMMEDIATE … COMMIT` around it:
    /// that would be two more statements on the hot path for the same guarantee.
    pub(crate) fn call<T>(
        &self,
        body: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.lock();
        let connection = guard.as_ref().ok_or(StoreError::Closed)?;
        body(connection)
    }

    /// Runs `body` in one `BEGIN IMMEDIATE` transaction, committed when it returns `Ok` and rolled
    /// back otherwise. `BEGIN IMMEDIATE` takes the write lock up front, so the busy timeout queues
    /// writers of other processes; a deferred transaction that reads first and writes later
    /// fails at once with `SQLITE_BUSY_SNAPSHOT` when another writer got in between.
    pub(crate) fn transaction<T>(
        &self,
        commit: Commit,
        body: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.call(|connection| {
            let switch = commit == Commit::Durable && self.inner.sync == SyncMode::Normal;
            if switch {
                // Outside the transaction: SQLite refuses to change it inside one.
                connection.execute_batch(SyncMode::Full.pragma())?;
            }
            let outcome = in_transaction(connection, body);
            if switch && let Err(error) = connection.execute_batch(SyncMode::Normal.pragma()) {
                // Left at FULL: slower, never less safe; the next durable commit tries again.
                tracing::warn!(%error, "cannot restore `synchronous=NORMAL` on the state store");
            }
            outcome
        })
    }

    /// Makes every transaction committed so far durable. A FULL commit fsyncs the WAL up to its
    /// own frame, and the WAL is append-only, so that covers all earlier commits. It has to
    /// write something: a transaction that changes no page appends no frame, and SQLite then
    /// syncs nothing. It rewrites the header's `user_version` with its current value (one page,
    /// no row touched). A WAL checkpoint is no substitute: it skips frames that readers of other
    /// processes still use, and with them their sync.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        if self.inner.sync == SyncMode::Full {
            return Ok(()); // every commit was synced when it was made
        }
        self.transaction(Commit::Durable, |connection| {
            let version = user_version(connection)?;
            connection.pragma_update(None, "user_version", version)?;
            Ok(())
        })
    }

    /// Applies the embedded migrations that are not applied yet, all in one durable
    /// transaction, and records the new version in `PRAGMA user_version`. A no-op when current;
    /// a database newer than this binary is refused ([`StoreError::SchemaNewer`]).
    ///
    /// Migrations therefore must be transactional: no `VACUUM`, no `PRAGMA foreign_keys` (a
    /// table rebuild can use `PRAGMA defer_foreign_keys` instead).
    pub(crate) fn migrate(&self) -> Result<(), StoreError> {
        // Every CLI command migrates on start: keep the current case a read.
        if self.call(schema_version)? == SCHEMA_VERSION {
            return Ok(());
        }
        self.transaction(Commit::Durable, |connection| {
            // Again under the write lock: another process may have migrated meanwhile.
            let found = schema_version(connection)?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::SchemaNewer {
                    found,
                    expected: SCHEMA_VERSION,
                });
            }
            if found == SCHEMA_VERSION {
                return Ok(());
            }
            for &(version, sql) in SQLITE_MIGRATIONS
                .iter()
                .filter(|(version, _)| *version > found)
            {
                connection
                    .execute_batch(sql)
                    .map_err(|error| StoreError::MigrationFailed {
                        version,
                        source: BackendError::Sqlite(error),
                    })?;
            }
            connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            Ok(())
        })
    }

    /// Locks the connection. A panic during an earlier call poisons the lock; the connection
    /// is still usable once a transaction the panic left open is rolled back and the sync mode
    /// is restored.
    fn lock(&self) -> MutexGuard<'_, Option<Connection>> {
        self.inner.connection.lock().unwrap_or_else(|poisoned| {
            self.inner.connection.clear_poison();
            let guard = poisoned.into_inner();
            if let Some(connection) = guard.as_ref() {
                roll_back_if_open(connection);
                if let Err(error) = connection.execute_batch(self.inner.sync.pragma()) {
                    tracing::warn!(%error, "cannot restore the state store's sync mode");
                }
            }
            guard
        })
    }
}

// --- migrations ---------------------------------------------------------------------------------

/// Highest applied migration: `PRAGMA user_version`, or for a database migrated by an older
/// gapless (sqlx's migrator, which left `user_version` at 0) the highest successful version in
/// `_sqlx_migrations`. 0 for an empty database.
pub(crate) fn schema_version(connection: &Connection) -> Result<i64, StoreError> {
    let version = user_version(connection)?;
    if version != 0 {
        return Ok(version);
    }
    let legacy: i64 = scalar(connection, crate::sql::HAS_MIGRATIONS_TABLE_SQLITE, [])?;
    if legacy == 0 {
        return Ok(0);
    }
    scalar(connection, crate::sql::SCHEMA_VERSION, [])
}

fn user_version(connection: &Connection) -> Result<i64, StoreError> {
    Ok(connection.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}

// --- statements ---------------------------------------------------------------------------------

fn in_transaction<T>(
    connection: &Connection,
    body: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    execute(connection, "BEGIN IMMEDIATE", [])?;
    let outcome = body(connection).and_then(|out| {
        execute(connection, "COMMIT", [])?;
        Ok(out)
    });
    if outcome.is_err() {
        roll_back_if_open(connection);
    }
    outcome
}

/// Rolls back the open transaction, if any. Some errors (`SQLITE_FULL`, `SQLITE_IOERR`, …) have
/// already rolled it back, and `ROLLBACK` without a transaction is an error: check first.
fn roll_back_if_open(connection: &Connection) {
    if !connection.is_autocommit()
        && let Err(error) = connection.execute_batch("ROLLBACK")
    {
        tracing::warn!(%error, "rolling back a state store transaction failed");
    }
}

/// Runs a statement that returns no rows; the number of rows it changed.
pub(crate) fn execute(
    connection: &Connection,
    sql: &str,
    params: impl Params,
) -> Result<usize, StoreError> {
    Ok(connection.prepare_cached(sql)?.execute(params)?)
}

/// Every row of a query (or of an `UPDATE … RETURNING`, stepped to the end), decoded.
pub(crate) fn rows<T>(
    connection: &Connection,
    sql: &str,
    params: impl Params,
    mut decode: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = connection.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

/// The first column of the single row a statement returns.
pub(crate) fn scalar<T: FromSql>(
    connection: &Connection,
    sql: &str,
    params: impl Params,
) -> Result<T, StoreError> {
    Ok(connection
        .prepare_cached(sql)?
        .query_row(params, |row| row.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(store: &SqliteStore) -> i64 {
        store
            .call(|connection| scalar(connection, "PRAGMA synchronous", []))
            .unwrap()
    }

    #[test]
    fn durable_transactions_commit_with_full_and_restore_normal() {
        let store = SqliteStore::open(Location::Memory, SyncMode::Normal).unwrap();
        assert_eq!(synchronous(&store), 1);
        let inside = store
            .transaction(Commit::Durable, |connection| {
                scalar::<i64>(connection, "PRAGMA synchronous", [])
            })
            .unwrap();
        assert_eq!(inside, 2, "FULL while the durable transaction commits");
        assert_eq!(synchronous(&store), 1, "NORMAL again afterwards");
        let inside = store
            .transaction(Commit::Configured, |connection| {
                scalar::<i64>(connection, "PRAGMA synchronous", [])
            })
            .unwrap();
        assert_eq!(inside, 1);

        // Restored after a failed durable transaction too, which is rolled back.
        let failed = store.transaction(Commit::Durable, |connection| {
            execute(connection, "CREATE TABLE t (x INTEGER)", [])?;
            execute(connection, "INSERT INTO nowhere VALUES (1)", [])
        });
        assert!(failed.is_err());
        assert_eq!(synchronous(&store), 1);
        let tables: i64 = store
            .call(|connection| {
                scalar(
                    connection,
                    "SELECT COUNT(*) FROM sqlite_master WHERE name = 't'",
                    [],
                )
            })
            .unwrap();
        assert_eq!(tables, 0, "the failed transaction was rolled back");
        store
            .call(|connection| {
                assert!(connection.is_autocommit());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn new_files_use_the_small_page_size_and_old_ones_keep_theirs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fresh = dir.path().join("fresh.db");
        let store = SqliteStore::open(Location::File(&fresh), SyncMode::Normal).expect("open");
        store.migrate().expect("migrate");
        let size = |store: &SqliteStore| -> i64 {
            store
                .call(|connection| scalar(connection, "PRAGMA page_size", []))
                .expect("page size")
        };
        assert_eq!(size(&store), PAGE_SIZE);

        // A database made before (SQLite's default page size) is opened as it is.
        let old = dir.path().join("old.db");
        let connection = rusqlite::Connection::open(&old).expect("create");
        connection
            .execute_batch("PRAGMA page_size = 4096; CREATE TABLE t (x INTEGER)")
            .expect("old file");
        drop(connection);
        let store = SqliteStore::open(Location::File(&old), SyncMode::Normal).expect("reopen");
        assert_eq!(size(&store), 4096);
    }

    #[test]
    fn full_mode_stays_full() {
        let store = SqliteStore::open(Location::Memory, SyncMode::Full).unwrap();
        assert_eq!(synchronous(&store), 2);
        store.transaction(Commit::Durable, |_| Ok(())).unwrap();
        store.flush().unwrap();
        assert_eq!(synchronous(&store), 2);
    }

    #[test]
    fn a_panic_inside_a_call_leaves_a_usable_connection() {
        let store = SqliteStore::open(Location::Memory, SyncMode::Normal).unwrap();
        let clone = store.clone();
        let panicked = std::thread::spawn(move || {
            clone.transaction(Commit::Durable, |_| -> Result<(), StoreError> {
                panic!("inside a transaction");
            })
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(synchronous(&store), 1, "sync mode restored");
        store
            .transaction(Commit::Configured, |connection| {
                execute(connection, "CREATE TABLE t (x INTEGER)", [])
            })
            .unwrap();
    }

    #[test]
    fn closed_stores_refuse_calls() {
        let store = SqliteStore::open(Location::Memory, SyncMode::Normal).unwrap();
        let clone = store.clone();
        store.close();
        assert!(matches!(clone.call(|_| Ok(())), Err(StoreError::Closed)));
    }
}
