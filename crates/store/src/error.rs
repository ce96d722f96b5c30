//! The store's error boundary.

use std::time::Duration;

use chrono::NaiveDate;
use rusqlite::ffi;

/// Everything that can go wrong talking to the state store.
///
/// Variants carry typed fields; the underlying cause is only ever the `#[source]`, never repeated
/// in the message, so a printed error chain shows each cause once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL is neither `sqlite:` nor `postgres://` / `postgresql://`. Only the scheme is kept,
    /// so a password in the URL never reaches a log.
    #[error("unsupported state store URL scheme `{scheme}` (expected `sqlite:` or `postgres://`)")]
    UnsupportedUrl {
        /// The scheme found, up to the first `:`.
        scheme: String,
    },
    /// A `sqlite:` URL that this store cannot use (empty path, query parameters).
    #[error("invalid SQLite URL: {reason}")]
    InvalidSqliteUrl {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The directory for the SQLite file could not be created (the source names the path).
    #[error("cannot create the directory for the SQLite state store")]
    CreateDir(#[source] std::io::Error),
    /// Opening the SQLite file or the PostgreSQL pool failed.
    #[error("cannot connect to the state store")]
    Connect(#[source] BackendError),
    /// Running the embedded migrations failed (PostgreSQL, through sqlx's migrator).
    #[error("state store migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// An embedded SQLite migration failed; its transaction was rolled back, so the schema is
    /// still at the version before it.
    #[error("state store migration {version} failed")]
    MigrationFailed {
        /// The migration that failed.
        version: i64,
        /// The database error.
        #[source]
        source: BackendError,
    },
    /// The database is behind this binary: run `gapless migrate`.
    #[error(
        "state store schema is at version {found}, this gapless needs {expected}: run `gapless migrate`"
    )]
    SchemaOutdated {
        /// Highest applied migration (0: none).
        found: i64,
        /// Highest migration this binary embeds.
        expected: i64,
    },
    /// The database was migrated by a newer gapless than this one.
    #[error(
        "state store schema is at version {found}, newer than this gapless knows ({expected}): upgrade gapless"
    )]
    SchemaNewer {
        /// Highest applied migration.
        found: i64,
        /// Highest migration this binary embeds.
        expected: i64,
    },
    /// A unique key already holds this record, e.g. a task for the same (run, phase, start date)
    /// or a cell covered by two tasks of one run. Nothing of the operation was written.
    #[error("the state store already holds this record")]
    Duplicate(#[source] BackendError),
    /// Any other database error, including SQLite `BUSY` after the 10 s busy timeout (see
    /// [`StoreError::is_retryable`]).
    #[error("state store query failed")]
    Query(#[source] BackendError),
    /// The store was closed ([`crate::Store::close`]); open a new one.
    #[error("the state store is closed")]
    Closed,
    /// A PostgreSQL call did not finish in time. It may or may not have been applied: re-read
    /// before acting on its outcome. SQLite calls run in the calling thread and have no such
    /// bound; their lock waits are bounded by SQLite's busy timeout instead.
    #[error("state store call timed out after {after:?}")]
    Timeout {
        /// The bound that was exceeded.
        after: Duration,
    },
    /// A task given to `create_run` / `add_tasks` is inconsistent.
    #[error("invalid task for phase {phase} starting {start}: {reason}")]
    InvalidTask {
        /// Phase of the task.
        phase: i64,
        /// First date of the task.
        start: NaiveDate,
        /// What is inconsistent.
        reason: &'static str,
    },
    /// The run does not exist.
    #[error("run `{run_id}` not found")]
    UnknownRun {
        /// The id asked for.
        run_id: crate::RunId,
    },
    /// The pieces given to `split_task` do not replace the task exactly.
    #[error("invalid split of task {task_id}: {reason}")]
    InvalidSplit {
        /// The task to split.
        task_id: i64,
        /// What is wrong with the pieces.
        reason: &'static str,
    },
    /// `finish_run` was asked to "finish" into a non-terminal state.
    #[error("run state `{state}` is not terminal")]
    NotTerminal {
        /// The state asked for.
        state: crate::RunState,
    },
    /// A value read back from the database does not parse: the database was edited by hand or by
    /// an incompatible version.
    #[error("unexpected value {value:?} in column `{column}`")]
    Corrupt {
        /// Table and column, e.g. `tasks.state`.
        column: &'static str,
        /// The offending value.
        value: String,
    },
    /// A write of the lease holder `fence` presented was refused, and nothing of it was
    /// written: the lease moved on (it expired, or another holder took it under a newer term).
    /// The leader's work that carries its fence (creating runs, writing the gap ledger) stops
    /// here rather than going on as a leader it no longer is.
    #[error("the lease `{lease}` moved on from term {term}: this node no longer holds it")]
    Fenced {
        /// The lease's name.
        lease: String,
        /// The term the refused write was made under.
        term: i64,
    },
    /// A JSON column could not be encoded or decoded.
    #[error("invalid JSON in column `{column}`")]
    Json {
        /// Table and column, e.g. `runs.request`.
        column: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

/// The database driver's error, from either backend. Transparent: it shows the driver's message
/// and its causes, so a printed chain names each cause once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// From SQLite (rusqlite, in the calling thread).
    #[error(transparent)]
    Sqlite(rusqlite::Error),
    /// From PostgreSQL (sqlx).
    #[error(transparent)]
    Postgres(sqlx::Error),
}

impl StoreError {
    /// Whether a write was refused because the caller's lease moved on ([`StoreError::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced { .. })
    }

    /// Whether retrying the same call later may succeed: lost connections, pool and call
    /// timeouts, SQLite `BUSY`/`LOCKED`, PostgreSQL serialization failures, deadlocks, statement
    /// timeouts, lock timeouts and server restarts. The runtime retries these with backoff; all
    /// other errors are permanent for the call.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } => true,
            Self::Connect(error)
            | Self::Query(error)
            | Self::MigrationFailed { source: error, .. } => error.is_transient(),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::Duplicate(BackendError::Postgres(error))
            }
            _ => Self::Query(BackendError::Postgres(error)),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        // The primary code is `CONSTRAINT` for every constraint; only these two are "this key
        // is taken" (a CHECK or NOT NULL failure is a bug, not a duplicate).
        let extended = error.sqlite_error().map(|failure| failure.extended_code);
        match extended {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                Self::Duplicate(BackendError::Sqlite(error))
            }
            _ => Self::Query(BackendError::Sqlite(error)),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(error)
    }
}

impl BackendError {
    fn is_transient(&self) -> bool {
        match self {
            // `BUSY` reaches the caller only after the busy timeout: another process held the
            // write lock that long. The primary code covers `BUSY_SNAPSHOT` and friends.
            Self::Sqlite(error) => matches!(
                error.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Self::Postgres(error) => is_transient_postgres(error),
        }
    }
}

fn is_transient_postgres(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some_and(|pg| {
                let code = pg.code();
                // 08: connection exception; 40001 serialization failure; 40P01 deadlock;
                // 55P03 lock not available; 57014 query canceled (statement_timeout);
                // 57P01..57P03 shutdown / cannot connect now; 53300 too many connections;
                // 25P03 the session stalled in a transaction past the stall limit.
                code.starts_with("08")
                    || matches!(
                        code,
                        "40001"
                            | "40P01"
                            | "55P03"
                            | "57014"
                            | "57P01"
                            | "57P02"
                            | "57P03"
                            | "53300"
                            | "25P03"
                    )
            }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_retryable_and_others_are_not() {
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(
            StoreError::Timeout {
                after: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_retryable());
        assert!(
            !StoreError::Duplicate(BackendError::Postgres(sqlx::Error::RowNotFound)).is_retryable()
        );
        assert!(!StoreError::Closed.is_retryable());
        let fenced = StoreError::Fenced {
            lease: "leader".to_owned(),
            term: 3,
        };
        assert!(fenced.is_fenced() && !fenced.is_retryable());
        assert!(
            !StoreError::SchemaOutdated {
                found: 0,
                expected: 1
            }
            .is_retryable()
        );
    }
}
