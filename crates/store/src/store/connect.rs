//! Connecting, closing and durability, and the schema: migrations and version checks.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::error::{BackendError, StoreError};
use crate::schema::{POSTGRES_MIGRATIONS, SCHEMA_VERSION, migrator};
use crate::sql;
use crate::sqlite::{self, Location, SqliteStore, SyncMode};
use crate::store::Store;

/// PostgreSQL cancels any statement running longer than this (server side).
const PG_STATEMENT_TIMEOUT: &str = "30s";
/// Bound on establishing a connection (and on waiting for a free one in the pool).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How [`Store::connect_with`] opens a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The durability of SQLite commits; PostgreSQL ignores it.
    pub sync: SyncMode,
    /// PostgreSQL ends a session that sits idle inside a transaction this long (its client
    /// stalled: paused, swapped out, cut off), so that the locks it holds (the leader lease's
    /// row, a task's) cannot hold up the other nodes for longer. Every transaction of the store
    /// is a few statements sent back to back, so only a stalled client reaches it. At least
    /// 100 ms. SQLite ignores it.
    pub stall_limit: Duration,
}

impl ConnectOptions {
    /// The stall limit unless told otherwise: well under the default lease of `serve` (30 s).
    pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(10);
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            sync: SyncMode::Normal,
            stall_limit: Self::DEFAULT_STALL_LIMIT,
        }
    }
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
    /// - `postgres://…`, `postgresql://…`: 10 s connect timeout, 30 s `statement_timeout`,
    ///   and `idle_in_transaction_session_timeout` set to the [stall
    ///   limit](ConnectOptions::stall_limit).
    pub async fn connect(url: &str, base_dir: &Path) -> Result<Self, StoreError> {
        Self::connect_with(url, base_dir, ConnectOptions::default()).await
    }

    /// [`Store::connect`] with the durability of SQLite commits and PostgreSQL's stall limit
    /// chosen.
    pub async fn connect_with(
        url: &str,
        base_dir: &Path,
        options: ConnectOptions,
    ) -> Result<Self, StoreError> {
        if let Some(rest) = url.strip_prefix("sqlite:") {
            Self::connect_sqlite(rest, base_dir, options.sync)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::connect_postgres(url, options.stall_limit).await
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

    async fn connect_postgres(url: &str, stall_limit: Duration) -> Result<Self, StoreError> {
        let connect_error = |error| StoreError::Connect(BackendError::Postgres(error));
        let stall_limit = format!("{}ms", stall_limit.as_millis().max(100));
        let options = PgConnectOptions::from_str(url)
            .map_err(connect_error)?
            .application_name("gapless")
            .options([
                ("statement_timeout", PG_STATEMENT_TIMEOUT),
                ("idle_in_transaction_session_timeout", stall_limit.as_str()),
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
}
