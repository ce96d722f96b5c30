//! The SQL warehouse: probes (`counts`, `dates`, `scalar`) and the SQL runner
//! (`execute_script`) on SQLite or PostgreSQL.
//!
//! User SQL only ever gets values as bound parameters: [`crate::named::prepare`] rewrites
//! `:start`, `:end` and `:date` into placeholders, and the text is handed to sqlx through
//! `AssertSqlSafe` on that basis.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection as _, Row, TypeInfo, ValueRef};
use tokio::time::Instant;

use crate::named::{self, Dialect, Param, SqlError, Statement};

/// How long SQLite waits for another writer's lock before failing with "database is locked".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a query is quoted in errors.
const SNIPPET_CHARS: usize = 80;
/// How long after the server's `statement_timeout` the client gives up on PostgreSQL.
const SERVER_TIMEOUT_MARGIN: Duration = Duration::from_secs(2);

/// The dates and values bound to a script's `:start`, `:end` and `:date`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptParams {
    /// Bound to `:start`.
    pub start: NaiveDate,
    /// Bound to `:end`.
    pub end: NaiveDate,
    /// Bound to `:date`; a script that uses `:date` without one is refused before it runs.
    pub date: Option<NaiveDate>,
}

impl ScriptParams {
    fn value(&self, param: Param) -> Option<NaiveDate> {
        match param {
            Param::Start => Some(self.start),
            Param::End => Some(self.end),
            Param::Date => self.date,
        }
    }
}

/// Errors from the warehouse.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The warehouse URL is not one this crate can use.
    #[error("invalid warehouse url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, with any password replaced by `****`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An attachment name that is not a plain SQL identifier.
    #[error("invalid attachment name `{name}`: expected a name matching [A-Za-z_][A-Za-z0-9_]*")]
    InvalidAttachName {
        /// The name as configured.
        name: String,
    },
    /// An attached database file does not exist (SQLite would silently create an empty one).
    #[error("attached database `{name}` not found at `{}`", .path.display())]
    AttachmentMissing {
        /// The schema name it is attached as.
        name: String,
        /// The resolved file path.
        path: PathBuf,
    },
    /// Attachments were configured for a PostgreSQL warehouse.
    #[error("`attach` is supported only for SQLite warehouses; PostgreSQL has schemas")]
    AttachUnsupported,
    /// Connecting (or configuring a fresh connection) failed.
    #[error("cannot connect to the warehouse at `{url}`")]
    Connect {
        /// The URL, with any password replaced by `****`.
        url: String,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// Connecting did not finish in time.
    #[error("connecting to the warehouse at `{url}` timed out after {after:?}")]
    ConnectTimeout {
        /// The URL, with any password replaced by `****`.
        url: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The SQL could not be split or its parameters rewritten.
    #[error("invalid sql in `{query}`")]
    Sql {
        /// The start of the query.
        query: String,
        /// What is wrong with it.
        #[source]
        source: SqlError,
    },
    /// A probe query must be exactly one statement.
    #[error("expected exactly one statement, found {found}, in `{query}`")]
    NotOneStatement {
        /// How many statements the text held.
        found: usize,
        /// The start of the query.
        query: String,
    },
    /// The SQL uses a parameter that has no value in this context.
    #[error("parameter `:{name}` has no value here, in `{query}`", name = .param.name())]
    MissingParam {
        /// The parameter.
        param: Param,
        /// The start of the query.
        query: String,
    },
    /// A query (or its transaction bookkeeping) failed in the database.
    #[error("query failed: `{query}`")]
    Query {
        /// The start of the query.
        query: String,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// One statement of a script failed; the whole script was rolled back.
    #[error("statement {index} of {total} failed, script rolled back: `{statement}`")]
    Statement {
        /// 1-based position of the statement in the script.
        index: usize,
        /// Number of statements in the script.
        total: usize,
        /// The start of the failed statement.
        statement: String,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// The query did not finish in time.
    #[error("query timed out after {after:?}: `{query}`")]
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
        /// The start of the query.
        query: String,
    },
    /// The result has the wrong number of columns.
    #[error("query returned {found} column(s), expected {expected}: `{query}`")]
    Columns {
        /// Columns returned.
        found: usize,
        /// Columns expected.
        expected: &'static str,
        /// The start of the query.
        query: String,
    },
    /// A value in the date column is not a date.
    #[error("query returned `{value}` where a YYYY-MM-DD date was expected: `{query}`")]
    BadDate {
        /// The value, rendered as text with its type.
        value: String,
        /// The start of the query.
        query: String,
    },
    /// A value in the count column is not an integer.
    #[error("query returned `{value}` where an integer was expected: `{query}`")]
    BadCount {
        /// The value, rendered as text with its type.
        value: String,
        /// The start of the query.
        query: String,
    },
    /// A scalar query returned no row.
    #[error("query returned no row, expected one integer: `{query}`")]
    NoRow {
        /// The start of the query.
        query: String,
    },
}

impl WarehouseError {
    /// Whether trying again later may succeed: timeouts and connection trouble, not bad SQL or
    /// bad data.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::ConnectTimeout { .. } | Self::Connect { .. } => true,
            Self::Query { source, .. } | Self::Statement { source, .. } => is_transient(source),
            _ => false,
        }
    }
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => {
            // SQLite: SQLITE_BUSY (5) / SQLITE_LOCKED (6), possibly extended codes.
            // PostgreSQL: serialization failure, deadlock, query canceled (statement_timeout),
            // and the connection / operator-intervention / insufficient-resources classes.
            db.code().is_some_and(|code| {
                matches!(code.as_ref(), "40001" | "40P01" | "57014")
                    || code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || code
                        .parse::<i64>()
                        .is_ok_and(|sqlite| matches!(sqlite & 0xff, 5 | 6))
            })
        }
        _ => false,
    }
}

/// The first characters of a query, whitespace collapsed, for error messages.
pub(crate) fn snippet(sql: &str) -> String {
    let collapsed = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut chars = collapsed.chars();
    let head: String = chars.by_ref().take(SNIPPET_CHARS).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// Replaces the password of a URL, if any, so it can appear in messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Setting a password fails only for URLs that cannot have one.
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

fn is_plain_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A connection pool to the warehouse, SQLite or PostgreSQL, with the timeout every call gets.
#[derive(Debug, Clone)]
pub struct Warehouse {
    pool: Pool,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

enum SqliteTarget {
    Memory,
    File(PathBuf),
}

fn sqlite_target(url: &str, base_dir: &Path) -> Result<SqliteTarget, WarehouseError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let invalid = |reason: &str| WarehouseError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    if rest == ":memory:" {
        return Ok(SqliteTarget::Memory);
    }
    if rest.is_empty() {
        return Err(invalid("no database file"));
    }
    if rest.contains('?') {
        return Err(invalid("query parameters are not supported"));
    }
    Ok(SqliteTarget::File(resolve_path(base_dir, Path::new(rest))))
}

fn resolve_path(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base_dir.join(path)
    }
}

impl Warehouse {
    /// Connects to `url`: `sqlite://relative/path.db` (relative to `base_dir`, the pipeline
    /// file's directory; created if missing), `sqlite:///absolute/path.db`, `sqlite::memory:`,
    /// or `postgres://…`.
    ///
    /// On SQLite every pooled connection attaches each `(name, path)` of `attach` (paths relative
    /// to `base_dir`; the files must exist) so that `name.table` works as a PostgreSQL schema
    /// would, and uses WAL with a 10 s busy timeout. On PostgreSQL each connection gets
    /// `statement_timeout = timeout`. `timeout` also bounds connecting and every later call.
    pub async fn connect(
        url: &str,
        attach: &[(String, PathBuf)],
        base_dir: &Path,
        timeout: Duration,
    ) -> Result<Self, WarehouseError> {
        let redacted = redact(url);
        let pool = if url.starts_with("sqlite:") {
            Pool::Sqlite(connect_sqlite(url, attach, base_dir, timeout).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if !attach.is_empty() {
                return Err(WarehouseError::AttachUnsupported);
            }
            let options =
                PgConnectOptions::from_str(url).map_err(|source| WarehouseError::InvalidUrl {
                    url: redacted.clone(),
                    reason: source.to_string(),
                })?;
            let options = options.options([("statement_timeout", statement_timeout_ms(timeout))]);
            // One direct connection first: the pool retries failed connects until its acquire
            // timeout and then reports only `PoolTimedOut`, losing "connection refused" or
            // "password authentication failed".
            let first = tokio::time::timeout(timeout, options.connect())
                .await
                .map_err(|_| WarehouseError::ConnectTimeout {
                    url: redacted.clone(),
                    after: timeout,
                })?
                .map_err(|source| WarehouseError::Connect {
                    url: redacted,
                    source,
                })?;
            // Closing politely is best effort; the connection is dropped either way.
            let _ = first.close().await;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(timeout)
                .connect_lazy_with(options);
            Pool::Postgres(pool)
        } else {
            return Err(WarehouseError::InvalidUrl {
                url: redacted,
                reason: "expected `sqlite://…`, `sqlite::memory:` or `postgres://…`".into(),
            });
        };
        Ok(Self { pool, timeout })
    }

    /// The dialect SQL for this warehouse is prepared in.
    pub fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::Sqlite(_) => Dialect::Sqlite,
            Pool::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The timeout every call on this warehouse gets unless it takes its own.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }

    /// Checks that the warehouse answers `SELECT 1`.
    pub async fn ping(&self) -> Result<(), WarehouseError> {
        const PING: &str = "SELECT 1";
        let query_error = |source| WarehouseError::Query {
            query: PING.to_owned(),
            source,
        };
        let deadline = self.deadline(self.timeout);
        let mut connection = self.acquire(deadline, self.timeout, PING).await?;
        let outcome = tokio::time::timeout_at(deadline, async {
            match &mut connection {
                Connection::Sqlite(connection) => {
                    sqlx::query(PING).execute(&mut **connection).await.map(drop)
                }
                Connection::Postgres(connection) => {
                    sqlx::query(PING).execute(&mut **connection).await.map(drop)
                }
            }
            .map_err(query_error)
        })
        .await;
        settle(connection, outcome, self.timeout, PING)
    }

    /// Runs a probe query once for the whole range and returns the count per date.
    ///
    /// The query returns rows `(date, count)`; `:start` and `:end` are bound to the range (as
    /// `YYYY-MM-DD` text on SQLite, as `DATE` on PostgreSQL). The date column may be a DATE,
    /// a TIMESTAMP (its date; TIMESTAMPTZ in UTC) or `YYYY-MM-DD…` text; the count any integer
    /// type, a NUMERIC or REAL holding an integer, or integer text, NULL meaning 0. Rows with a
    /// NULL date or a date outside `[start, end]` are ignored; counts of the same date are summed.
    pub async fn counts(
        &self,
        sql: &str,
        start: NaiveDate,
        end: NaiveDate,
    ) -> Result<BTreeMap<NaiveDate, i64>, WarehouseError> {
        let params = ScriptParams {
            start,
            end,
            date: None,
        };
        let rows = self.fetch_cells(sql, &params, 2).await?;
        let mut counts = BTreeMap::new();
        for row in rows {
            let mut cells = row.into_iter();
            let (Some(date), Some(count)) = (cells.next(), cells.next()) else {
                continue;
            };
            let Some(date) = date.to_date(sql)? else {
                continue;
            };
            if date < start || date > end {
                continue;
            }
            let count = count.to_count(sql)?.unwrap_or(0);
            let total: &mut i64 = counts.entry(date).or_default();
            *total = total.saturating_add(count);
        }
        Ok(counts)
    }

    /// Runs a calendar query: the dates of its first column within `[start, end]`. `:start` and
    /// `:end` may be used in it; NULL dates are ignored.
    pub async fn dates(
        &self,
        sql: &str,
        start: NaiveDate,
        end: NaiveDate,
    ) -> Result<BTreeSet<NaiveDate>, WarehouseError> {
        let params = ScriptParams {
            start,
            end,
            date: None,
        };
        let rows = self.fetch_cells(sql, &params, 1).await?;
        let mut dates = BTreeSet::new();
        for row in rows {
            if let Some(cell) = row.into_iter().next()
                && let Some(date) = cell.to_date(sql)?
                && date >= start
                && date <= end
            {
                dates.insert(date);
            }
        }
        Ok(dates)
    }

    /// Runs a query that returns one integer (the first column of the first row), such as a
    /// validation or report query. It takes no parameters.
    pub async fn scalar(&self, sql: &str) -> Result<i64, WarehouseError> {
        let statement = self.single_statement(sql)?;
        if let Some(&param) = statement.params.first() {
            return Err(WarehouseError::MissingParam {
                param,
                query: snippet(sql),
            });
        }
        let query_error = |source| WarehouseError::Query {
            query: snippet(sql),
            source,
        };
        let no_columns = || WarehouseError::Columns {
            found: 0,
            expected: "1",
            query: snippet(sql),
        };
        let deadline = self.deadline(self.timeout);
        let mut connection = self.acquire(deadline, self.timeout, sql).await?;
        let outcome = tokio::time::timeout_at(deadline, async {
            let text = AssertSqlSafe(statement.text.as_str());
            match &mut connection {
                Connection::Sqlite(connection) => {
                    match sqlx::query(text)
                        .fetch_optional(&mut **connection)
                        .await
                        .map_err(query_error)?
                    {
                        None => Ok(None),
                        Some(row) if row.is_empty() => Err(no_columns()),
                        Some(row) => sqlite_cell(&row, 0).map(Some).map_err(query_error),
                    }
                }
                Connection::Postgres(connection) => {
                    match sqlx::query(text)
                        .fetch_optional(&mut **connection)
                        .await
                        .map_err(query_error)?
                    {
                        None => Ok(None),
                        Some(row) if row.is_empty() => Err(no_columns()),
                        Some(row) => pg_cell(&row, 0).map(Some).map_err(query_error),
                    }
                }
            }
        })
        .await;
        let cell = settle(connection, outcome, self.timeout, sql)?.ok_or_else(|| {
            WarehouseError::NoRow {
                query: snippet(sql),
            }
        })?;
        cell.to_count(sql)?.ok_or_else(|| WarehouseError::BadCount {
            value: "NULL".into(),
            query: snippet(sql),
        })
    }

    /// Runs every statement of a script in one transaction with the warehouse timeout; see
    /// [`Warehouse::execute_script_with_timeout`].
    pub async fn execute_script(
        &self,
        sql: &str,
        params: &ScriptParams,
    ) -> Result<u64, WarehouseError> {
        self.execute_script_with_timeout(sql, params, self.timeout)
            .await
    }

    /// Runs every statement of a script in one transaction, each with only the parameters it
    /// uses bound, and returns the total of rows affected. Any failure, or `timeout` passing,
    /// rolls the whole script back. On PostgreSQL the transaction's `statement_timeout` is set
    /// to `timeout` too, so that a long runner is not cut by the probe timeout of the pool.
    ///
    /// The script must not manage transactions itself (`BEGIN`/`COMMIT`).
    pub async fn execute_script_with_timeout(
        &self,
        sql: &str,
        params: &ScriptParams,
        timeout: Duration,
    ) -> Result<u64, WarehouseError> {
        let statements = self.prepare(sql)?;
        let mut bound = Vec::with_capacity(statements.len());
        for statement in &statements {
            bound.push(bind_values(statement, params, &statement.text)?);
        }
        let total = statements.len();
        let statement_error = |index: usize, source| WarehouseError::Statement {
            index: index + 1,
            total,
            statement: snippet(&statements[index].text),
            source,
        };
        let transaction_error = |source| WarehouseError::Query {
            query: snippet(sql),
            source,
        };
        let deadline = self.deadline(timeout);
        let mut connection = self.acquire(deadline, timeout, sql).await?;
        let outcome = tokio::time::timeout_at(deadline, async {
            let mut affected = 0u64;
            match &mut connection {
                Connection::Sqlite(connection) => {
                    // IMMEDIATE takes the write lock up front: a deferred transaction that
                    // reads first can fail to upgrade with SQLITE_BUSY under a concurrent writer.
                    let mut transaction = connection
                        .begin_with("BEGIN IMMEDIATE")
                        .await
                        .map_err(transaction_error)?;
                    for (index, (statement, values)) in statements.iter().zip(&bound).enumerate() {
                        let mut query = sqlx::query(AssertSqlSafe(statement.text.as_str()));
                        for value in values {
                            query = query.bind(iso(*value));
                        }
                        match query.execute(&mut *transaction).await {
                            Ok(result) => affected += result.rows_affected(),
                            Err(source) => {
                                // A failed rollback leaves the connection to sqlx, which
                                // closes it rather than reuse it.
                                let _ = transaction.rollback().await;
                                return Err(statement_error(index, source));
                            }
                        }
                    }
                    transaction.commit().await.map_err(transaction_error)?;
                }
                Connection::Postgres(connection) => {
                    let mut transaction = connection.begin().await.map_err(transaction_error)?;
                    // An integer we format ourselves: no user text reaches this statement.
                    let set_timeout = format!(
                        "SET LOCAL statement_timeout = {}",
                        statement_timeout_ms(timeout)
                    );
                    sqlx::query(AssertSqlSafe(set_timeout))
                        .execute(&mut *transaction)
                        .await
                        .map_err(transaction_error)?;
                    for (index, (statement, values)) in statements.iter().zip(&bound).enumerate() {
                        let mut query = sqlx::query(AssertSqlSafe(statement.text.as_str()));
                        for value in values {
                            query = query.bind(*value);
                        }
                        match query.execute(&mut *transaction).await {
                            Ok(result) => affected += result.rows_affected(),
                            Err(source) => {
                                let _ = transaction.rollback().await;
                                return Err(statement_error(index, source));
                            }
                        }
                    }
                    transaction.commit().await.map_err(transaction_error)?;
                }
            }
            Ok(affected)
        })
        .await;
        settle(connection, outcome, timeout, sql)
    }

    fn prepare(&self, sql: &str) -> Result<Vec<Statement>, WarehouseError> {
        named::prepare(sql, self.dialect()).map_err(|source| WarehouseError::Sql {
            query: snippet(sql),
            source,
        })
    }

    fn single_statement(&self, sql: &str) -> Result<Statement, WarehouseError> {
        let mut statements = self.prepare(sql)?;
        match statements.len() {
            1 => Ok(statements.remove(0)),
            found => Err(WarehouseError::NotOneStatement {
                found,
                query: snippet(sql),
            }),
        }
    }

    /// When a call started now must be over. On PostgreSQL the server's `statement_timeout`
    /// (the same `timeout`) should end a slow statement first, leaving the connection clean;
    /// the client-side deadline is the backstop for a server or network that stops answering.
    fn deadline(&self, timeout: Duration) -> Instant {
        let margin = match self.pool {
            Pool::Sqlite(_) => Duration::ZERO,
            Pool::Postgres(_) => SERVER_TIMEOUT_MARGIN,
        };
        Instant::now() + timeout + margin
    }

    async fn acquire(
        &self,
        deadline: Instant,
        timeout: Duration,
        sql: &str,
    ) -> Result<Connection, WarehouseError> {
        let query_error = |source| WarehouseError::Query {
            query: snippet(sql),
            source,
        };
        let acquired = match &self.pool {
            Pool::Sqlite(pool) => tokio::time::timeout_at(deadline, pool.acquire())
                .await
                .map(|result| result.map(Connection::Sqlite)),
            Pool::Postgres(pool) => tokio::time::timeout_at(deadline, pool.acquire())
                .await
                .map(|result| result.map(Connection::Postgres)),
        };
        acquired
            .map_err(|_| WarehouseError::Timeout {
                after: timeout,
                query: snippet(sql),
            })?
            .map_err(query_error)
    }

    /// Runs a one-statement query and decodes the first `min_columns` columns of every row.
    async fn fetch_cells(
        &self,
        sql: &str,
        params: &ScriptParams,
        columns: usize,
    ) -> Result<Vec<Vec<Cell>>, WarehouseError> {
        let statement = self.single_statement(sql)?;
        let values = bind_values(&statement, params, sql)?;
        let query_error = |source| WarehouseError::Query {
            query: snippet(sql),
            source,
        };
        let expected = if columns == 1 { "at least 1" } else { "2" };
        let check_width = |found: usize| {
            let fits = if columns == 1 {
                found >= 1
            } else {
                found == columns
            };
            if fits {
                Ok(())
            } else {
                Err(WarehouseError::Columns {
                    found,
                    expected,
                    query: snippet(sql),
                })
            }
        };
        let deadline = self.deadline(self.timeout);
        let mut connection = self.acquire(deadline, self.timeout, sql).await?;
        let outcome = tokio::time::timeout_at(deadline, async {
            let text = AssertSqlSafe(statement.text.as_str());
            let mut decoded = Vec::new();
            match &mut connection {
                Connection::Sqlite(connection) => {
                    let mut query = sqlx::query(text);
                    for value in &values {
                        query = query.bind(iso(*value));
                    }
                    for row in query
                        .fetch_all(&mut **connection)
                        .await
                        .map_err(query_error)?
                    {
                        check_width(row.len())?;
                        let cells = (0..columns)
                            .map(|index| sqlite_cell(&row, index))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(query_error)?;
                        decoded.push(cells);
                    }
                }
                Connection::Postgres(connection) => {
                    let mut query = sqlx::query(text);
                    for value in &values {
                        query = query.bind(*value);
                    }
                    for row in query
                        .fetch_all(&mut **connection)
                        .await
                        .map_err(query_error)?
                    {
                        check_width(row.len())?;
                        let cells = (0..columns)
                            .map(|index| pg_cell(&row, index))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(query_error)?;
                        decoded.push(cells);
                    }
                }
            }
            Ok(decoded)
        })
        .await;
        settle(connection, outcome, self.timeout, sql)
    }
}

/// A connection taken from the pool for one call.
enum Connection {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

/// Ends a call: its result, or on timeout a [`WarehouseError::Timeout`] after throwing the
/// connection away. A connection whose query future was dropped midway is in an unknown state,
/// and sqlx's return-to-pool check of it can wait forever (and `Pool::close` with it).
fn settle<T>(
    connection: Connection,
    outcome: Result<Result<T, WarehouseError>, tokio::time::error::Elapsed>,
    timeout: Duration,
    sql: &str,
) -> Result<T, WarehouseError> {
    match outcome {
        Ok(result) => result,
        Err(_) => {
            match connection {
                Connection::Sqlite(connection) => drop(connection.detach()),
                Connection::Postgres(connection) => drop(connection.detach()),
            }
            Err(WarehouseError::Timeout {
                after: timeout,
                query: snippet(sql),
            })
        }
    }
}

async fn connect_sqlite(
    url: &str,
    attach: &[(String, PathBuf)],
    base_dir: &Path,
    timeout: Duration,
) -> Result<SqlitePool, WarehouseError> {
    let target = sqlite_target(url, base_dir)?;
    let mut attachments = Vec::with_capacity(attach.len());
    for (name, path) in attach {
        if !is_plain_identifier(name)
            || ["main", "temp"].contains(&name.to_ascii_lowercase().as_str())
        {
            return Err(WarehouseError::InvalidAttachName { name: name.clone() });
        }
        let path = resolve_path(base_dir, path);
        // ATTACH creates a missing file: check first, so a typo is an error and not an empty
        // schema whose probes all count zero.
        if !path.is_file() {
            return Err(WarehouseError::AttachmentMissing {
                name: name.clone(),
                path,
            });
        }
        let Some(text) = path.to_str() else {
            return Err(WarehouseError::InvalidUrl {
                url: url.to_owned(),
                reason: format!("attachment path `{}` is not UTF-8", path.display()),
            });
        };
        attachments.push((name.clone(), text.to_owned()));
    }
    let (options, max_connections) = match target {
        // Every connection to `:memory:` is a database of its own: keep exactly one, forever.
        SqliteTarget::Memory => (SqliteConnectOptions::new().in_memory(true), 1),
        SqliteTarget::File(path) => (
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal),
            4,
        ),
    };
    let options = options.busy_timeout(SQLITE_BUSY_TIMEOUT);
    let attachments = Arc::new(attachments);
    // A local file cannot drop a connection: no ping before every acquire.
    let connecting = SqlitePoolOptions::new()
        .max_connections(max_connections)
        .test_before_acquire(false)
        .min_connections(if max_connections == 1 { 1 } else { 0 })
        .idle_timeout(if max_connections == 1 {
            None
        } else {
            Some(Duration::from_secs(600))
        })
        .max_lifetime(if max_connections == 1 {
            None
        } else {
            Some(Duration::from_secs(1800))
        })
        .acquire_timeout(timeout)
        .after_connect(move |connection, _meta| {
            let attachments = Arc::clone(&attachments);
            Box::pin(async move {
                for (name, path) in attachments.iter() {
                    // The name is a validated plain identifier; the path is bound.
                    sqlx::query(AssertSqlSafe(format!("ATTACH DATABASE ? AS \"{name}\"")))
                        .bind(path.as_str())
                        .execute(&mut *connection)
                        .await?;
                    sqlx::query(AssertSqlSafe(format!(
                        "PRAGMA \"{name}\".journal_mode = WAL"
                    )))
                    .execute(&mut *connection)
                    .await?;
                }
                Ok(())
            })
        })
        .connect_with(options);
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| WarehouseError::ConnectTimeout {
            url: url.to_owned(),
            after: timeout,
        })?
        .map_err(|source| WarehouseError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// PostgreSQL's `statement_timeout` in milliseconds: at least 1 (0 would turn it off) and at most
/// what its int setting holds.
fn statement_timeout_ms(timeout: Duration) -> u128 {
    timeout.as_millis().clamp(1, i32::MAX.unsigned_abs().into())
}

fn bind_values(
    statement: &Statement,
    params: &ScriptParams,
    query: &str,
) -> Result<Vec<NaiveDate>, WarehouseError> {
    statement
        .params
        .iter()
        .map(|&param| {
            params
                .value(param)
                .ok_or_else(|| WarehouseError::MissingParam {
                    param,
                    query: snippet(query),
                })
        })
        .collect()
}

fn iso(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

/// One decoded value of a result row, whatever the backend's type.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Date(NaiveDate),
    /// A NUMERIC that is not an integer in `i64` range, rendered.
    Numeric(String),
    /// A type this crate does not read, by name.
    Other(String),
}

impl Cell {
    fn describe(&self) -> String {
        match self {
            Self::Null => "NULL".into(),
            Self::Int(value) => value.to_string(),
            Self::Real(value) => value.to_string(),
            Self::Text(value) => value.clone(),
            Self::Date(value) => iso(*value),
            Self::Numeric(value) => value.clone(),
            Self::Other(type_name) => format!("<value of type {type_name}>"),
        }
    }

    fn to_date(&self, sql: &str) -> Result<Option<NaiveDate>, WarehouseError> {
        match self {
            Self::Null => Ok(None),
            Self::Date(date) => Ok(Some(*date)),
            Self::Text(text) => {
                parse_date_text(text)
                    .map(Some)
                    .ok_or_else(|| WarehouseError::BadDate {
                        value: self.describe(),
                        query: snippet(sql),
                    })
            }
            _ => Err(WarehouseError::BadDate {
                value: self.describe(),
                query: snippet(sql),
            }),
        }
    }

    fn to_count(&self, sql: &str) -> Result<Option<i64>, WarehouseError> {
        let bad = || WarehouseError::BadCount {
            value: self.describe(),
            query: snippet(sql),
        };
        match self {
            Self::Null => Ok(None),
            Self::Int(value) => Ok(Some(*value)),
            // Integral and within ±2^53, so the cast is exact.
            Self::Real(value) if value.fract() == 0.0 && value.abs() < 9.007_199_254_740_992e15 => {
                Ok(Some(*value as i64))
            }
            Self::Text(text) => text.trim().parse().map(Some).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// `YYYY-MM-DD`, optionally followed by a time (`YYYY-MM-DD HH:MM:SS`, `YYYY-MM-DDTHH:MM…`).
fn parse_date_text(text: &str) -> Option<NaiveDate> {
    let text = text.trim();
    let head = text.get(..10)?;
    let tail = &text[10..];
    if !(tail.is_empty() || tail.starts_with(' ') || tail.starts_with('T')) {
        return None;
    }
    let shape_ok = head.bytes().enumerate().all(|(index, byte)| match index {
        4 | 7 => byte == b'-',
        _ => byte.is_ascii_digit(),
    });
    if !shape_ok {
        return None;
    }
    NaiveDate::parse_from_str(head, "%Y-%m-%d").ok()
}

fn sqlite_cell(row: &SqliteRow, index: usize) -> Result<Cell, sqlx::Error> {
    let raw = row.try_get_raw(index)?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    // The storage class of this value: SQLite types values, not columns.
    let type_name = raw.type_info().name().to_owned();
    Ok(match type_name.as_str() {
        "INTEGER" => Cell::Int(row.try_get_unchecked::<i64, _>(index)?),
        "REAL" => Cell::Real(row.try_get_unchecked::<f64, _>(index)?),
        "TEXT" => Cell::Text(row.try_get_unchecked::<String, _>(index)?),
        _ => Cell::Other(type_name),
    })
}

fn pg_cell(row: &PgRow, index: usize) -> Result<Cell, sqlx::Error> {
    let raw = row.try_get_raw(index)?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    let type_name = raw.type_info().name().to_owned();
    if type_name == "NUMERIC" {
        let bytes = raw.as_bytes().map_err(sqlx::Error::Decode)?;
        return Ok(decode_pg_numeric(bytes));
    }
    Ok(match type_name.as_str() {
        "INT2" => Cell::Int(row.try_get_unchecked::<i16, _>(index)?.into()),
        "INT4" => Cell::Int(row.try_get_unchecked::<i32, _>(index)?.into()),
        "INT8" => Cell::Int(row.try_get_unchecked::<i64, _>(index)?),
        "FLOAT4" => Cell::Real(row.try_get_unchecked::<f32, _>(index)?.into()),
        "FLOAT8" => Cell::Real(row.try_get_unchecked::<f64, _>(index)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "UNKNOWN" => {
            Cell::Text(row.try_get_unchecked::<String, _>(index)?)
        }
        "DATE" => Cell::Date(row.try_get_unchecked::<NaiveDate, _>(index)?),
        "TIMESTAMP" => Cell::Date(row.try_get_unchecked::<NaiveDateTime, _>(index)?.date()),
        "TIMESTAMPTZ" => Cell::Date(
            row.try_get_unchecked::<DateTime<Utc>, _>(index)?
                .date_naive(),
        ),
        _ => Cell::Other(type_name),
    })
}

/// Decodes PostgreSQL's binary NUMERIC: `ndigits, weight, sign, dscale` (each 16 bits) and then
/// `ndigits` base-10000 digits, most significant first. sqlx reads NUMERIC only with its
/// bigdecimal/rust_decimal features, which would be a dependency for this one conversion.
fn decode_pg_numeric(bytes: &[u8]) -> Cell {
    let word = |index: usize| -> Option<u16> {
        let at = index * 2;
        Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
    };
    let (Some(ndigits), Some(weight), Some(sign)) = (word(0), word(1), word(2)) else {
        return Cell::Other("NUMERIC".into());
    };
    let weight = i32::from(weight.cast_signed());
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Cell::Numeric("NaN".into()),
        0xD000 => return Cell::Numeric("Infinity".into()),
        0xF000 => return Cell::Numeric("-Infinity".into()),
        _ => return Cell::Other("NUMERIC".into()),
    };
    let mut digits = Vec::with_capacity(usize::from(ndigits));
    for index in 0..usize::from(ndigits) {
        match word(4 + index) {
            Some(digit) if digit < 10_000 => digits.push(i128::from(digit)),
            _ => return Cell::Other("NUMERIC".into()),
        }
    }
    // digits[i] has the place value 10000^(weight - i).
    let mut integer: Option<i128> = Some(0);
    let mut is_integral = true;
    let mut rendered = String::new();
    for (index, digit) in digits.iter().enumerate() {
        let exponent = weight - i32::try_from(index).unwrap_or(i32::MAX);
        if exponent < 0 {
            is_integral &= *digit == 0;
            continue;
        }
        let place = u32::try_from(exponent)
            .ok()
            .and_then(|exponent| 10_000i128.checked_pow(exponent));
        integer = match (integer, place) {
            (Some(total), Some(place)) => digit
                .checked_mul(place)
                .and_then(|value| total.checked_add(value)),
            _ => None,
        };
    }
    if is_integral
        && let Some(value) = integer
            .map(|value| if negative { -value } else { value })
            .and_then(|value| i64::try_from(value).ok())
    {
        return Cell::Int(value);
    }
    // Render for the error message: integer part, then the fraction.
    if negative {
        rendered.push('-');
    }
    let mut integer_part = String::new();
    for exponent in (0..=weight.max(0)).rev() {
        let index = weight - exponent;
        let digit = usize::try_from(index)
            .ok()
            .and_then(|index| digits.get(index))
            .copied()
            .unwrap_or(0);
        if integer_part.is_empty() {
            if digit != 0 || exponent == 0 {
                integer_part = digit.to_string();
            }
        } else {
            integer_part.push_str(&format!("{digit:04}"));
        }
    }
    rendered.push_str(&integer_part);
    let fraction: String = digits
        .iter()
        .enumerate()
        .filter(|(index, _)| weight - i32::try_from(*index).unwrap_or(i32::MAX) < 0)
        .map(|(_, digit)| format!("{digit:04}"))
        .collect();
    let leading_zeros = usize::try_from(-weight - 1).unwrap_or(0);
    if !fraction.is_empty() {
        rendered.push('.');
        rendered.push_str(&"0000".repeat(leading_zeros));
        rendered.push_str(fraction.trim_end_matches('0'));
    }
    Cell::Numeric(rendered)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::NaiveDate;

    use super::{Cell, decode_pg_numeric, parse_date_text, redact, snippet};

    fn numeric(ndigits: u16, weight: i16, sign: u16, digits: &[u16]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [ndigits, weight.cast_unsigned(), sign, 0] {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
        for digit in digits {
            bytes.extend_from_slice(&digit.to_be_bytes());
        }
        bytes
    }

    #[test]
    fn numeric_integers_decode() {
        assert_eq!(decode_pg_numeric(&numeric(0, 0, 0, &[])), Cell::Int(0));
        assert_eq!(decode_pg_numeric(&numeric(1, 0, 0, &[42])), Cell::Int(42));
        // 1_2345_6789 = [1, 2345, 6789] with weight 2.
        assert_eq!(
            decode_pg_numeric(&numeric(3, 2, 0, &[1, 2345, 6789])),
            Cell::Int(123_456_789)
        );
        // 20000 = [2] with weight 1 (trailing zero groups are dropped on the wire).
        assert_eq!(
            decode_pg_numeric(&numeric(1, 1, 0, &[2])),
            Cell::Int(20_000)
        );
        assert_eq!(
            decode_pg_numeric(&numeric(1, 0, 0x4000, &[7])),
            Cell::Int(-7)
        );
        // 5.0000 with an explicit zero fraction group.
        assert_eq!(decode_pg_numeric(&numeric(2, 0, 0, &[5, 0])), Cell::Int(5));
    }

    #[test]
    fn numeric_non_integers_render() {
        assert_eq!(
            decode_pg_numeric(&numeric(2, 0, 0, &[1, 5000])),
            Cell::Numeric("1.5".into())
        );
        assert_eq!(
            decode_pg_numeric(&numeric(1, -2, 0, &[25])),
            Cell::Numeric("0.00000025".into())
        );
        assert_eq!(
            decode_pg_numeric(&numeric(0, 0, 0xC000, &[])),
            Cell::Numeric("NaN".into())
        );
        assert_eq!(decode_pg_numeric(&[0, 1]), Cell::Other("NUMERIC".into()));
    }

    #[test]
    fn date_text_forms() {
        let day = NaiveDate::from_ymd_opt(2024, 1, 15);
        assert_eq!(parse_date_text("2024-01-15"), day);
        assert_eq!(parse_date_text(" 2024-01-15 "), day);
        assert_eq!(parse_date_text("2024-01-15 13:45:00"), day);
        assert_eq!(parse_date_text("2024-01-15T13:45:00Z"), day);
        for bad in [
            "2024-1-15",
            "2024-01-150",
            "15/01/2024",
            "2024-02-30",
            "",
            "20240115",
        ] {
            assert_eq!(parse_date_text(bad), None, "{bad}");
        }
    }

    #[test]
    fn snippets_and_redaction() {
        assert_eq!(snippet("SELECT\n   1"), "SELECT 1");
        let long = "x".repeat(100);
        assert_eq!(snippet(&long).chars().count(), 81);
        assert_eq!(
            redact("postgres://user:secret@host/db"),
            "postgres://user:****@host/db"
        );
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
    }
}
