//! The store's error boundary.

use std::time::Duration;

use chrono::NaiveDate;

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
    /// Opening the connection pool failed.
    #[error("cannot connect to the state store")]
    Connect(#[source] sqlx::Error),
    /// Running the embedded migrations failed.
    #[error("state store migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
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
    Duplicate(#[source] sqlx::Error),
    /// Any other database error.
    #[error("state store query failed")]
    Query(#[source] sqlx::Error),
    /// The call did not finish in time. It may or may not have been applied: re-read before
    /// acting on its outcome.
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

impl StoreError {
    /// Whether retrying the same call later may succeed: lost connections, pool and call
    /// timeouts, SQLite `BUSY`/`LOCKED`, PostgreSQL serialization failures, deadlocks, statement
    /// timeouts, lock timeouts and server restarts. The runtime retries these with backoff; all
    /// other errors are permanent for the call.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } => true,
            Self::Connect(error) | Self::Query(error) => is_transient(error),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Duplicate(error),
            _ => Self::Query(error),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(error)
    }
}

const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => {
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // `code()` is SQLite's extended result code; the primary code is its low byte.
                let primary = db
                    .code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .map(|code| code & 0xff);
                matches!(primary, Some(SQLITE_BUSY | SQLITE_LOCKED))
            } else if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                let code = pg.code();
                // 08: connection exception; 40001 serialization failure; 40P01 deadlock;
                // 55P03 lock not available; 57014 query canceled (statement_timeout);
                // 57P01..57P03 shutdown / cannot connect now; 53300 too many connections.
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
                    )
            } else {
                false
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_retryable_and_others_are_not() {
        assert!(StoreError::Query(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(
            StoreError::Timeout {
                after: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(!StoreError::Query(sqlx::Error::RowNotFound).is_retryable());
        assert!(!StoreError::Duplicate(sqlx::Error::RowNotFound).is_retryable());
        assert!(
            !StoreError::SchemaOutdated {
                found: 0,
                expected: 1
            }
            .is_retryable()
        );
    }
}
