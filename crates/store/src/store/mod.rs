//! The [`Store`] handle, one module per concern: connecting and migrating ([`connect`]), runs
//! ([`runs`]), tasks and their leases ([`tasks`]), cells and progress ([`cells`]), the gap ledger
//! ([`gaps`]) and the event log ([`events`]).
//!
//! Each method computes its values once (clock, JSON text) and then has one arm per backend,
//! side by side, binding the same SQL text ([`crate::sql`]): SQLite in the calling thread
//! through [`SqliteStore`], PostgreSQL through sqlx under [`CALL_TIMEOUT`].

use std::future::Future;
use std::time::Duration;

use sqlx::postgres::PgPool;

use crate::codec::RowExt;
use crate::error::StoreError;
use crate::sql;
use crate::sqlite::{self, SqliteStore};

/// Client-side bound on every PostgreSQL call, for hangs no server-side timeout sees (a dead
/// TCP peer). Longer than the server-side timeouts, so those fire first when they can. SQLite
/// calls run in the calling thread, where no timeout can interrupt them; SQLite's busy timeout
/// (10 s) bounds their lock waits instead.
const CALL_TIMEOUT: Duration = Duration::from_secs(45);

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

/// Runs `body` (an expression that may use `?` and evaluates to the result value) as one
/// PostgreSQL call under [`CALL_TIMEOUT`].
///
/// Boxed, here and in `pg_tx!`: sqlx's futures are kilobytes, and an unboxed branch makes every
/// store method's future that large on SQLite too, which the executor then copies whenever it
/// spawns or joins a task (a task's future was 61 KB).
macro_rules! pg_call {
    ($body:expr) => {
        $crate::store::bounded(Box::pin(async move { Ok::<_, $crate::StoreError>($body) })).await
    };
}

/// Like `pg_call!`, inside one transaction on `$pool` bound to `$tx` and committed after
/// `body`. An error (or the timeout) drops the transaction, which rolls it back.
macro_rules! pg_tx {
    ($pool:expr, |$tx:ident| $body:expr) => {
        $crate::store::bounded(Box::pin(async move {
            let mut $tx = $pool.begin().await?;
            let out = $body;
            $tx.commit().await?;
            Ok::<_, $crate::StoreError>(out)
        }))
        .await
    };
}

mod alerts;
mod cells;
mod connect;
mod events;
mod gaps;
mod nodes;
mod owners;
mod runs;
mod split;
mod tasks;

pub use self::connect::ConnectOptions;
pub use self::nodes::LEADER;
pub use self::tasks::NextClaims;

pub(crate) async fn bounded<T>(
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_elapsed| StoreError::Timeout {
            after: CALL_TIMEOUT,
        })?
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

pub(crate) fn log_outcome(operation: &'static str, won: bool) {
    if !won {
        tracing::debug!(
            operation,
            "compare-and-set lost: state or lease epoch moved on"
        );
    }
}

pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
