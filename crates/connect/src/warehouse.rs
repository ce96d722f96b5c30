//! The SQL warehouse: probes (`counts`, `dates`, `scalar`) and the SQL runner
//! (`execute_script`, and `execute_script_gated`, which validates inside the script's own
//! transaction) on SQLite, PostgreSQL or BigQuery.
//!
//! SQLite runs on rusqlite ([`sqlite`]): each call is one job on a pooled connection, run in
//! the caller's thread when it takes under a millisecond and otherwise on a blocking thread,
//! with the timeout and the caller's cancellation interrupting the SQL. PostgreSQL
//! runs on sqlx ([`postgres`]). BigQuery runs on its REST API ([`bigquery`]), a script in a
//! session's transaction.
//!
//! User SQL only ever gets values as bound parameters: [`crate::named::prepare`] rewrites
//! `:start`, `:end` and `:date` into placeholders, and only that text reaches the database.

mod bigquery;
mod ddl;
mod postgres;
mod sqlite;

pub use bigquery::{BigQueryError, Rows, Usage};
pub use ddl::SchemaChanges;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use sqlx::postgres::PgPool;
use tokio::time::Instant;

use crate::named::{self, Dialect, Param, SqlError, Statement};

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

    /// The parameters of a probe over `[start, end]`: no `:date`.
    fn range(start: NaiveDate, end: NaiveDate) -> Self {
        Self {
            start,
            end,
            date: None,
        }
    }
}

/// The database's own error, from whichever backend the warehouse runs on.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// From SQLite (through rusqlite).
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// From PostgreSQL (through sqlx).
    #[error(transparent)]
    Postgres(#[from] sqlx::Error),
    /// From BigQuery's API.
    #[error(transparent)]
    BigQuery(#[from] BigQueryError),
}

impl DatabaseError {
    /// The database's own words, without the driver's wrapping: SQLite's message (no error
    /// code, no echo of the statement), PostgreSQL's message.
    pub fn message(&self) -> String {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(_, Some(message))) => message.clone(),
            Self::Sqlite(rusqlite::Error::SqlInputError { msg, .. }) => msg.clone(),
            Self::Postgres(sqlx::Error::Database(db)) => db.message().to_owned(),
            Self::BigQuery(error) => error.message.clone(),
            other => other.to_string(),
        }
    }

    /// Whether the error is one a later attempt may not meet: lock contention, a lost or
    /// refused connection, a server that cancelled the statement.
    fn is_transient(&self) -> bool {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(error, _)) => matches!(
                error.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            Self::Sqlite(_) => false,
            Self::Postgres(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed,
            ) => true,
            Self::Postgres(sqlx::Error::Database(db)) => {
                // Serialization failure, deadlock, query canceled (statement_timeout), and the
                // connection / operator-intervention / insufficient-resources classes.
                db.code().is_some_and(|code| {
                    matches!(code.as_ref(), "40001" | "40P01" | "57014")
                        || code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                })
            }
            Self::Postgres(_) => false,
            Self::BigQuery(error) => error.is_transient(),
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
    /// The SQLite database file of the warehouse URL does not exist. [`Warehouse::open`] never
    /// creates one: SQLite would, and every probe would then count zero.
    #[error("the SQLite warehouse `{}` does not exist (check `[warehouse] url`)", .path.display())]
    DatabaseMissing {
        /// The resolved file path.
        path: PathBuf,
    },
    /// Attachments were configured for a PostgreSQL or BigQuery warehouse.
    #[error(
        "`attach` is supported only for SQLite warehouses; PostgreSQL has schemas and BigQuery datasets"
    )]
    AttachUnsupported,
    /// Connecting (or configuring a fresh connection) failed.
    #[error("cannot connect to the warehouse at `{url}`")]
    Connect {
        /// The URL, with any password replaced by `****`.
        url: String,
        /// The database error.
        #[source]
        source: DatabaseError,
    },
    /// Connecting did not finish in time.
    #[error("connecting to the warehouse at `{url}` timed out after {after:?}")]
    ConnectTimeout {
        /// The URL, with any password replaced by `****`.
        url: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The warehouse was closed ([`Warehouse::close`]) before this call.
    #[error("the warehouse connection pool is closed")]
    Closed,
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
        source: DatabaseError,
    },
    /// A statement does not prepare (a syntax error, a missing table or column); nothing ran.
    #[error("statement {index} of {total} does not prepare: `{statement}`")]
    Prepare {
        /// 1-based position of the statement in the text.
        index: usize,
        /// Number of statements in the text.
        total: usize,
        /// The start of the statement.
        statement: String,
        /// The database error.
        #[source]
        source: DatabaseError,
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
        source: DatabaseError,
    },
    /// Rows to insert that cannot be ([`Warehouse::execute_script_and_insert`]).
    #[error("cannot insert the rows: {reason}")]
    InvalidRows {
        /// What is wrong.
        reason: String,
    },
    /// `maximum_bytes_billed` was set for a warehouse that does not bill by bytes.
    #[error("`maximum_bytes_billed` applies only to BigQuery warehouses")]
    BytesBilledUnsupported,
    /// The query did not finish in time. A script that times out is rolled back.
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
    /// `sql` (shortened for the message) failed in the database.
    fn query(sql: &str, source: DatabaseError) -> Self {
        Self::Query {
            query: snippet(sql),
            source,
        }
    }

    /// `sql` (shortened for the message) did not finish within `after`.
    fn timed_out(sql: &str, after: Duration) -> Self {
        Self::Timeout {
            after,
            query: snippet(sql),
        }
    }

    /// Whether trying again later may succeed: timeouts and connection trouble, not bad SQL or
    /// bad data.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::ConnectTimeout { .. } | Self::Connect { .. } => true,
            Self::Query { source, .. } | Self::Statement { source, .. } => source.is_transient(),
            _ => false,
        }
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
    Sqlite(Arc<sqlite::SqlitePool>),
    Postgres(PgPool),
    BigQuery(Arc<bigquery::BigQuery>),
}

/// Where a `sqlite:` URL points.
#[derive(Debug)]
enum SqliteTarget {
    Memory,
    File(PathBuf),
}

fn sqlite_target(
    url: &str,
    base_dir: &Path,
    create: Create,
) -> Result<SqliteTarget, WarehouseError> {
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
    let path = resolve_path(base_dir, Path::new(rest));
    if create == Create::Never && !path.is_file() {
        return Err(WarehouseError::DatabaseMissing { path });
    }
    Ok(SqliteTarget::File(path))
}

/// Whether connecting may create a missing SQLite database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    IfMissing,
    Never,
}

/// What preparing a SQL text found: every statement prepared, or was left to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// Statements in the text.
    pub statements: usize,
    /// Statements that could not be prepared only because they use a table or column the
    /// pipeline creates (see [`SchemaChanges`]): the run will tell.
    pub deferred: usize,
}

fn resolve_path(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base_dir.join(path)
    }
}

/// Checks the `(name, path)` attachments of a SQLite warehouse and resolves their paths.
fn sqlite_attachments(
    url: &str,
    attach: &[(String, PathBuf)],
    base_dir: &Path,
) -> Result<Vec<(String, String)>, WarehouseError> {
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
    Ok(attachments)
}

/// One statement of a script with the values of the parameters it uses, in placeholder order.
#[derive(Debug, Clone)]
struct BoundStatement {
    text: String,
    values: Vec<NaiveDate>,
    /// The parameter each value is bound to (BigQuery binds by name).
    names: Vec<Param>,
}

/// A script ready to run: its statements, bound, and its text for error messages.
#[derive(Debug)]
struct Script {
    sql: String,
    statements: Vec<BoundStatement>,
}

impl Script {
    /// A failure of statement `index` (0-based).
    fn statement_error(&self, index: usize, source: DatabaseError) -> WarehouseError {
        WarehouseError::Statement {
            index: index + 1,
            total: self.statements.len(),
            statement: snippet(&self.statements[index].text),
            source,
        }
    }

    /// A failure of the transaction around the statements (`BEGIN`, `COMMIT`).
    fn transaction_error(&self, source: DatabaseError) -> WarehouseError {
        WarehouseError::query(&self.sql, source)
    }

    fn timed_out(&self, after: Duration) -> WarehouseError {
        WarehouseError::timed_out(&self.sql, after)
    }
}

/// A one-statement query ready to run, with its text for error messages.
#[derive(Debug)]
struct Query {
    sql: String,
    statement: BoundStatement,
}

impl Query {
    fn error(&self, source: DatabaseError) -> WarehouseError {
        WarehouseError::query(&self.sql, source)
    }

    fn timed_out(&self, after: Duration) -> WarehouseError {
        WarehouseError::timed_out(&self.sql, after)
    }

    /// Checks that a row of `found` columns is what a probe reading `columns` expects: exactly
    /// two for counts, at least one for dates.
    fn check_width(&self, columns: usize, found: usize) -> Result<(), WarehouseError> {
        let (fits, expected) = if columns == 1 {
            (found >= 1, "at least 1")
        } else {
            (found == columns, "2")
        };
        if fits {
            Ok(())
        } else {
            Err(WarehouseError::Columns {
                found,
                expected,
                query: snippet(&self.sql),
            })
        }
    }
}

/// How a transaction ends once its statements have run.
enum Finish<T> {
    Commit(T),
    RollBack(T),
}

impl Warehouse {
    /// Connects like [`Warehouse::connect`], except that a SQLite database file that does not
    /// exist is an error ([`WarehouseError::DatabaseMissing`]) instead of a new empty database.
    /// This is how a pipeline's warehouse is opened: a typo in its URL must not read as a
    /// warehouse where nothing has been loaded.
    pub async fn open(
        url: &str,
        attach: &[(String, PathBuf)],
        base_dir: &Path,
        timeout: Duration,
    ) -> Result<Self, WarehouseError> {
        Self::connect_with(url, attach, base_dir, timeout, Create::Never).await
    }

    /// Connects to `url`: `sqlite://relative/path.db` (relative to `base_dir`, the pipeline
    /// file's directory; created if missing, see [`Warehouse::open`] for a warehouse that must
    /// exist), `sqlite:///absolute/path.db`, `sqlite::memory:`, `postgres://…`, or
    /// `bigquery://PROJECT?location=…&dataset=…&endpoint=…&credentials=…` (credentials found as
    /// Google's tools find them, and one token fetched now, unless `BIGQUERY_EMULATOR_HOST` or
    /// `endpoint` names an emulator; see the pipeline-file reference).
    ///
    /// On SQLite every pooled connection (up to 4; one for `:memory:`, where each connection
    /// would be a database of its own) attaches each `(name, path)` of `attach` (paths relative
    /// to `base_dir`; the files must exist) so that `name.table` works as a PostgreSQL schema
    /// would, and uses WAL with a 10 s busy timeout; `synchronous` stays at SQLite's default
    /// (FULL). On PostgreSQL each connection gets `statement_timeout = timeout`. `timeout`
    /// also bounds connecting and every later call.
    pub async fn connect(
        url: &str,
        attach: &[(String, PathBuf)],
        base_dir: &Path,
        timeout: Duration,
    ) -> Result<Self, WarehouseError> {
        Self::connect_with(url, attach, base_dir, timeout, Create::IfMissing).await
    }

    async fn connect_with(
        url: &str,
        attach: &[(String, PathBuf)],
        base_dir: &Path,
        timeout: Duration,
        create: Create,
    ) -> Result<Self, WarehouseError> {
        let pool = if url.starts_with("sqlite:") {
            let target = sqlite_target(url, base_dir, create)?;
            let attachments = sqlite_attachments(url, attach, base_dir)?;
            Pool::Sqlite(sqlite::SqlitePool::connect(url, target, attachments, timeout).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if !attach.is_empty() {
                return Err(WarehouseError::AttachUnsupported);
            }
            Pool::Postgres(postgres::connect(url, timeout).await?)
        } else if url.starts_with("bigquery://") {
            if !attach.is_empty() {
                return Err(WarehouseError::AttachUnsupported);
            }
            Pool::BigQuery(bigquery::BigQuery::connect(url, base_dir, timeout).await?)
        } else {
            return Err(WarehouseError::InvalidUrl {
                url: redact(url),
                reason: "expected `sqlite://…`, `sqlite::memory:`, `postgres://…` or `bigquery://PROJECT`"
                    .into(),
            });
        };
        Ok(Self { pool, timeout })
    }

    /// The dialect SQL for this warehouse is prepared in.
    pub fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::Sqlite(_) => Dialect::Sqlite,
            Pool::Postgres(_) => Dialect::Postgres,
            Pool::BigQuery(_) => Dialect::BigQuery,
        }
    }

    /// Sets the most bytes one query may bill (BigQuery's `maximumBytesBilled`): a query that
    /// would bill more fails without running. `None` lifts the limit. Only BigQuery bills by
    /// bytes: a limit on another warehouse is [`WarehouseError::BytesBilledUnsupported`].
    pub fn with_maximum_bytes_billed(self, limit: Option<u64>) -> Result<Self, WarehouseError> {
        match (&self.pool, limit) {
            (Pool::BigQuery(client), _) => client.set_maximum_bytes_billed(limit),
            (_, None) => {}
            (_, Some(_)) => return Err(WarehouseError::BytesBilledUnsupported),
        }
        Ok(self)
    }

    /// What the queries of a BigQuery warehouse have cost so far (jobs run, bytes processed);
    /// `None` on SQLite and PostgreSQL.
    pub fn usage(&self) -> Option<Usage> {
        match &self.pool {
            Pool::BigQuery(client) => Some(client.usage()),
            _ => None,
        }
    }

    /// The timeout every call on this warehouse gets unless it takes its own.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Closes the pool, waiting for connections in use to come back. Later calls fail.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
            Pool::BigQuery(client) => client.close(),
        }
    }

    /// Checks that the warehouse answers `SELECT 1`.
    pub async fn ping(&self) -> Result<(), WarehouseError> {
        let deadline = self.deadline(self.timeout);
        match &self.pool {
            Pool::Sqlite(pool) => pool.ping(deadline, self.timeout).await,
            Pool::Postgres(pool) => Box::pin(postgres::ping(pool, deadline, self.timeout)).await,
            Pool::BigQuery(client) => Box::pin(client.ping(deadline, self.timeout)).await,
        }
    }

    /// Prepares every statement of `sql` without running it, so that a syntax error, a missing
    /// table or a missing column is found before anything runs: on SQLite each statement is
    /// prepared and never stepped; on PostgreSQL each is parsed and described (its parameters
    /// typed as `DATE`, as they are bound when it runs); on BigQuery each is a `dryRun` job
    /// (free). Nothing is written and no lock is taken beyond what reading the schema needs.
    ///
    /// A statement that fails only because it uses a table or column that `changes` holds
    /// (one the pipeline's own SQL creates, perhaps an earlier statement of this text) is
    /// counted in [`Prepared::deferred`], and so is a `CREATE` of a name an earlier statement
    /// of this text drops. The first other failure is the error,
    /// [`WarehouseError::Prepare`] (or [`WarehouseError::Sql`] for a text that does not split).
    pub async fn prepare_script(
        &self,
        sql: &str,
        changes: &SchemaChanges,
    ) -> Result<Prepared, WarehouseError> {
        let statements = self.prepare(sql)?;
        let prepared: Vec<(String, usize)> = statements
            .iter()
            .map(|statement| (statement.text.clone(), statement.params.len()))
            .collect();
        let deadline = self.deadline(self.timeout);
        let outcomes = match &self.pool {
            Pool::Sqlite(pool) => {
                pool.prepare_each(deadline, self.timeout, sql, prepared)
                    .await?
            }
            Pool::Postgres(pool) => {
                Box::pin(postgres::prepare_each(
                    pool,
                    deadline,
                    self.timeout,
                    sql,
                    &prepared,
                ))
                .await?
            }
            Pool::BigQuery(client) => {
                Box::pin(client.prepare_each(deadline, self.timeout, sql, &statements)).await?
            }
        };
        let texts: Vec<&str> = statements.iter().map(|s| s.text.as_str()).collect();
        let mut deferred = 0;
        for (index, outcome) in outcomes.into_iter().enumerate() {
            let Err(source) = outcome else { continue };
            if changes.explains(&source, &texts, index) {
                deferred += 1;
                continue;
            }
            return Err(WarehouseError::Prepare {
                index: index + 1,
                total: texts.len(),
                statement: snippet(texts[index]),
                source,
            });
        }
        Ok(Prepared {
            statements: texts.len(),
            deferred,
        })
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
        let query = self.query(sql, &ScriptParams::range(start, end))?;
        let rows = self.fetch_cells(query, 2).await?;
        tally_counts(rows, sql, start, end)
    }

    /// Runs a calendar query: the dates of its first column within `[start, end]`. `:start` and
    /// `:end` may be used in it; NULL dates are ignored.
    pub async fn dates(
        &self,
        sql: &str,
        start: NaiveDate,
        end: NaiveDate,
    ) -> Result<BTreeSet<NaiveDate>, WarehouseError> {
        let query = self.query(sql, &ScriptParams::range(start, end))?;
        let rows = self.fetch_cells(query, 1).await?;
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
        let query = Query {
            sql: sql.to_owned(),
            statement: BoundStatement {
                text: statement.text,
                values: Vec::new(),
                names: Vec::new(),
            },
        };
        let deadline = self.deadline(self.timeout);
        let cell = match &self.pool {
            Pool::Sqlite(pool) => pool.first_cell(deadline, self.timeout, query).await,
            Pool::Postgres(pool) => {
                Box::pin(postgres::first_cell(pool, deadline, self.timeout, &query)).await
            }
            Pool::BigQuery(client) => {
                Box::pin(client.first_cell(deadline, self.timeout, &query)).await
            }
        }?
        .ok_or_else(|| WarehouseError::NoRow {
            query: snippet(sql),
        })?;
        cell.to_count(sql)?.ok_or_else(|| WarehouseError::BadCount {
            value: "NULL".into(),
            query: snippet(sql),
        })
    }

    /// Runs every statement of a script in one transaction with the warehouse timeout (the one
    /// given to [`Warehouse::connect`], which bounds probes); see
    /// [`Warehouse::execute_script_with_timeout`]. A phase's runner or rollback has a timeout of
    /// its own and passes it there instead.
    pub async fn execute_script(
        &self,
        sql: &str,
        params: &ScriptParams,
    ) -> Result<u64, WarehouseError> {
        self.execute_script_with_timeout(sql, params, self.timeout)
            .await
    }

    /// Runs every statement of a script in one transaction, each with only the parameters it
    /// uses bound, and returns the total of rows affected. Any failure, `timeout` passing, or
    /// the returned future being dropped before the end (a cancelled task) rolls the whole
    /// script back. On SQLite the transaction is `BEGIN IMMEDIATE` and the timeout interrupts
    /// the running statement; on PostgreSQL the transaction's `statement_timeout` is set to
    /// `timeout` too, so that a long runner is not cut by the probe timeout of the pool.
    ///
    /// On BigQuery the statements run one job each in a session's transaction, rolled back the
    /// same way; a script holding DDL cannot be in a transaction there and commits statement by
    /// statement (see the `bigquery` module).
    ///
    /// The script must not manage transactions itself (`BEGIN`/`COMMIT`).
    pub async fn execute_script_with_timeout(
        &self,
        sql: &str,
        params: &ScriptParams,
        timeout: Duration,
    ) -> Result<u64, WarehouseError> {
        let gated = self.gated(sql, params, &[])?;
        self.transact(gated, timeout, |affected, _| Finish::Commit(affected))
            .await
    }

    /// Runs a script and validates it inside its own transaction: the script's statements run
    /// as in [`Warehouse::execute_script_with_timeout`], then each of `probes` runs in the same
    /// transaction over `[params.start, params.end]`, seeing the script's uncommitted rows, and
    /// `gate` gets their counts (one map per probe, in order). The transaction commits when
    /// `gate` returns `Ok` and rolls back when it returns `Err`, which comes back as `Ok(Err(_))`.
    ///
    /// Probes are count queries `(date, count)` read exactly as [`Warehouse::counts`] reads
    /// them; they may use `:start` and `:end`, not `:date`. Any SQL error, `timeout` passing
    /// (it covers the script, the probes and the gate), or the future being dropped rolls
    /// back and nothing is committed. This is the validation gate of a SQL phase: a runner
    /// whose rows fall short never commits, and the whole attempt is one trip to the warehouse.
    ///
    /// `gate` runs while the transaction holds the write lock: keep it a quick check of the
    /// counts. It may be called more than once: on SQLite an attempt that outruns its inline
    /// budget is rolled back and run again on a blocking thread, so `gate` must be a verdict on
    /// the counts alone, without side effects.
    pub async fn execute_script_gated<T, E>(
        &self,
        sql: &str,
        params: &ScriptParams,
        timeout: Duration,
        probes: &[&str],
        gate: impl Fn(Vec<BTreeMap<NaiveDate, i64>>) -> Result<T, E> + Send + 'static,
    ) -> Result<Result<T, E>, WarehouseError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let gated = self.gated(sql, params, probes)?;
        self.transact(gated, timeout, move |_, observed| match gate(observed) {
            Ok(value) => Finish::Commit(Ok(value)),
            Err(rejection) => Finish::RollBack(Err(rejection)),
        })
        .await
    }

    /// BigQuery only: runs `sql` as [`Warehouse::execute_script_with_timeout`] does (in one
    /// transaction), then, in the same transaction, inserts `rows` into `table` (`dataset.table`)
    /// with one `INSERT … SELECT … FROM UNNEST(@rows)`, the rows bound as a single
    /// `ARRAY<STRUCT<…>>` query parameter. Returns the rows affected by both. A loader uses it
    /// to replace a date range (`DELETE … BETWEEN :start AND :end`, then the new rows)
    /// atomically, without pasting a single value into SQL.
    pub async fn execute_script_and_insert(
        &self,
        sql: &str,
        params: &ScriptParams,
        timeout: Duration,
        table: &str,
        rows: &Rows,
    ) -> Result<u64, WarehouseError> {
        let Pool::BigQuery(client) = &self.pool else {
            return Err(WarehouseError::InvalidRows {
                reason: "rows are bound as a query parameter only on BigQuery".to_owned(),
            });
        };
        let gated = self.gated(sql, params, &[])?;
        let insert = bigquery::RowsInsert::new(table, rows)?;
        let deadline = self.deadline(timeout);
        Box::pin(
            client.transact(deadline, timeout, &gated, Some(&insert), |affected, _| {
                Finish::Commit(affected)
            }),
        )
        .await
    }

    /// A script with the probes that validate it, bound to `params`.
    fn gated(
        &self,
        sql: &str,
        params: &ScriptParams,
        probes: &[&str],
    ) -> Result<GatedScript, WarehouseError> {
        let script = self.script(sql, params)?;
        let range = ScriptParams::range(params.start, params.end);
        let probes = probes
            .iter()
            .map(|probe| self.query(probe, &range))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GatedScript {
            script,
            probes,
            start: params.start,
            end: params.end,
        })
    }

    /// Runs a gated script (probes may be none) in one transaction on either backend; `finish`
    /// gets the rows the script affected and each probe's counts, and decides the commit.
    async fn transact<R: Send + 'static>(
        &self,
        gated: GatedScript,
        timeout: Duration,
        finish: impl Fn(u64, Vec<BTreeMap<NaiveDate, i64>>) -> Finish<R> + Send + 'static,
    ) -> Result<R, WarehouseError> {
        let deadline = self.deadline(timeout);
        match &self.pool {
            Pool::Sqlite(pool) => pool.transact(deadline, timeout, gated, finish).await,
            Pool::Postgres(pool) => {
                Box::pin(postgres::transact(pool, deadline, timeout, &gated, finish)).await
            }
            Pool::BigQuery(client) => {
                Box::pin(client.transact(deadline, timeout, &gated, None, finish)).await
            }
        }
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

    /// A one-statement query with its parameters bound.
    fn query(&self, sql: &str, params: &ScriptParams) -> Result<Query, WarehouseError> {
        let statement = self.single_statement(sql)?;
        let values = bind_values(&statement, params, sql)?;
        Ok(Query {
            sql: sql.to_owned(),
            statement: BoundStatement {
                text: statement.text,
                values,
                names: statement.params,
            },
        })
    }

    /// A script split into statements, each with its parameters bound; refused before anything
    /// runs if a statement uses a parameter without a value.
    fn script(&self, sql: &str, params: &ScriptParams) -> Result<Script, WarehouseError> {
        let statements = self
            .prepare(sql)?
            .into_iter()
            .map(|statement| {
                let values = bind_values(&statement, params, &statement.text)?;
                Ok(BoundStatement {
                    text: statement.text,
                    values,
                    names: statement.params,
                })
            })
            .collect::<Result<_, WarehouseError>>()?;
        Ok(Script {
            sql: sql.to_owned(),
            statements,
        })
    }

    /// When a call started now must be over. On PostgreSQL the server's `statement_timeout`
    /// (the same `timeout`) should end a slow statement first, leaving the connection clean;
    /// the client-side deadline is the backstop for a server or network that stops answering.
    fn deadline(&self, timeout: Duration) -> Instant {
        // BigQuery's own job timeout is set to `timeout` too, but the client does not wait
        // for it: at the deadline it cancels the job (and rolls back a script's transaction).
        let margin = match self.pool {
            Pool::Sqlite(_) | Pool::BigQuery(_) => Duration::ZERO,
            Pool::Postgres(_) => SERVER_TIMEOUT_MARGIN,
        };
        Instant::now() + timeout + margin
    }

    /// Runs a one-statement query and decodes the first `columns` columns of every row.
    async fn fetch_cells(
        &self,
        query: Query,
        columns: usize,
    ) -> Result<Vec<Vec<Cell>>, WarehouseError> {
        let deadline = self.deadline(self.timeout);
        match &self.pool {
            Pool::Sqlite(pool) => {
                pool.fetch_cells(deadline, self.timeout, query, columns)
                    .await
            }
            Pool::Postgres(pool) => {
                Box::pin(postgres::fetch_cells(
                    pool,
                    deadline,
                    self.timeout,
                    &query,
                    columns,
                ))
                .await
            }
            Pool::BigQuery(client) => {
                Box::pin(client.fetch_cells(deadline, self.timeout, &query, columns)).await
            }
        }
    }
}

/// A script and the probes that validate it inside its transaction.
#[derive(Debug)]
struct GatedScript {
    script: Script,
    probes: Vec<Query>,
    start: NaiveDate,
    end: NaiveDate,
}

impl GatedScript {
    /// The counts per date of one probe's rows, as [`Warehouse::counts`] reads them.
    fn tally(
        &self,
        probe: &Query,
        rows: Vec<Vec<Cell>>,
    ) -> Result<BTreeMap<NaiveDate, i64>, WarehouseError> {
        tally_counts(rows, &probe.sql, self.start, self.end)
    }
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

/// Sums `(date, count)` rows per date within `[start, end]`; NULL dates are skipped, NULL
/// counts are 0.
fn tally_counts(
    rows: Vec<Vec<Cell>>,
    sql: &str,
    start: NaiveDate,
    end: NaiveDate,
) -> Result<BTreeMap<NaiveDate, i64>, WarehouseError> {
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

fn iso(date: NaiveDate) -> String {
    // `Display` writes `YYYY-MM-DD` directly; `format` would parse a format string each time.
    date.to_string()
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
    crate::parse_iso_date(head)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::NaiveDate;

    use super::{parse_date_text, redact, snippet};

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
