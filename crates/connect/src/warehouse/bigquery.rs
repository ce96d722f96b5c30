//! The BigQuery side of the warehouse, over BigQuery's REST API on the `reqwest` client.
//!
//! - A query is one `jobs.query` call, then `jobs.getQueryResults` until the job is complete
//!   and for every further page. `:start`, `:end` and `:date` reach BigQuery as named `DATE`
//!   query parameters (`@start`, …), never as text.
//! - A script runs statement by statement in a session, inside `BEGIN TRANSACTION` …
//!   `COMMIT TRANSACTION`, each statement with its parameters bound (BigQuery refuses a
//!   multi-statement text with query parameters). A failure, the gate's refusal, the timeout or
//!   the caller dropping the future ends in `ROLLBACK TRANSACTION`. BigQuery allows no DDL
//!   (`CREATE`, `DROP`, `ALTER`, `TRUNCATE`) in a transaction: a script holding one runs its
//!   statements one by one, each committed as it ends, and cannot be rolled back.
//! - Rate limits and backend errors (`rateLimitExceeded`, `backendError`, HTTP 429 and 5xx)
//!   are retried here with exponential backoff, within the call's timeout; what still fails is
//!   reported as retryable.
//! - Validation (`prepare_each`) is a `dryRun` of each statement: syntax, tables and columns,
//!   without running or billing anything.
//! - Every query's bytes processed are logged at debug level and added up ([`Usage`]).
//!
//! Credentials are in [`auth`]; the emulator (`BIGQUERY_EMULATOR_HOST`, or `?endpoint=`) gets
//! none.

mod auth;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::NaiveDate;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    BoundStatement, Cell, DatabaseError, Finish, GatedScript, Query, WarehouseError, snippet,
};
use crate::named::{Param, Statement};

/// Google's endpoint, used unless the URL or `BIGQUERY_EMULATOR_HOST` names another.
const DEFAULT_ENDPOINT: &str = "https://bigquery.googleapis.com";
/// The longest the server is asked to hold one call open waiting for a job to complete.
const LONG_POLL: Duration = Duration::from_secs(10);
/// The first pause before a retry; it doubles each time, up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Tries of one call on rate limits and backend errors.
const MAX_ATTEMPTS: u32 = 6;
/// How long a rollback left to a background task (after a timeout or a dropped call) may take.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(30);
/// The error reasons worth another try (BigQuery's troubleshooting guide).
const RETRIED_REASONS: &[&str] = &[
    "rateLimitExceeded",
    "backendError",
    "internalError",
    "jobRateLimitExceeded",
];

/// An error as BigQuery reports it: the HTTP status, the first error's `reason` and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({reason})")]
pub struct BigQueryError {
    /// The HTTP status of the answer; 0 when there was none (connection refused or cut).
    pub status: u16,
    /// BigQuery's reason code (`invalidQuery`, `notFound`, `rateLimitExceeded`, …), or
    /// `transport` and `auth` for failures before BigQuery answered.
    pub reason: String,
    /// The message.
    pub message: String,
}

impl BigQueryError {
    fn new(status: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// Whether BigQuery asks the caller to try again (retried here first).
    fn is_retried_here(&self) -> bool {
        RETRIED_REASONS.contains(&self.reason.as_str())
            || matches!(self.status, 429 | 500 | 502 | 503 | 504)
    }

    /// Whether a later attempt may succeed: what is retried here, a lost connection, and
    /// BigQuery's job timeout.
    pub(super) fn is_transient(&self) -> bool {
        self.is_retried_here() || self.reason == "transport" || self.reason == "timeout"
    }

    /// The reason and message of `errors[0]` (or `error`) of an answer's JSON.
    fn from_body(status: u16, body: &Value) -> Self {
        let error = &body["error"];
        let first = error["errors"]
            .get(0)
            .or_else(|| body["errors"].get(0))
            .or_else(|| {
                body["status"]["errorResult"]
                    .as_object()
                    .map(|_| &body["status"]["errorResult"])
            });
        let reason = first
            .and_then(|first| first["reason"].as_str())
            .or_else(|| error["status"].as_str())
            .unwrap_or("unknown");
        let message = first
            .and_then(|first| first["message"].as_str())
            .or_else(|| error["message"].as_str())
            .unwrap_or("no message");
        Self::new(status, reason, message)
    }
}

/// What the queries of a BigQuery warehouse have cost so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Query jobs run (dry runs included).
    pub queries: u64,
    /// Bytes processed by them, as BigQuery reports (`totalBytesProcessed`).
    pub bytes_processed: u64,
}

/// Where a `bigquery://` URL points and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Config {
    project: String,
    location: Option<String>,
    dataset: Option<String>,
    /// The API root, `…/bigquery/v2`.
    api: String,
    credentials: Credentials,
    /// Rows per page of results (`maxResults`); BigQuery's own limit (10 MB) when `None`.
    page_rows: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Credentials {
    /// An emulator: no `Authorization` header.
    None,
    /// Application Default Credentials, or this file first.
    Adc(Option<PathBuf>),
}

/// Parses `bigquery://PROJECT?location=L&dataset=D&endpoint=URL&credentials=PATH` with the
/// environment `vars` (`BIGQUERY_EMULATOR_HOST`). Relative credential paths are relative to
/// `base_dir`.
pub(super) fn parse_url(
    url: &str,
    base_dir: &Path,
    vars: &BTreeMap<String, String>,
) -> Result<Config, WarehouseError> {
    let invalid = |reason: String| WarehouseError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("bigquery://")
        .ok_or_else(|| invalid("expected `bigquery://PROJECT`".to_owned()))?;
    let (project, query) = rest.split_once('?').unwrap_or((rest, ""));
    let project = project.trim_end_matches('/');
    let is_project_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(c);
    if project.is_empty() || !project.chars().all(is_project_char) {
        return Err(invalid(format!(
            "`{project}` is not a project ID (lowercase letters, digits and `-`)"
        )));
    }
    let mut location = None;
    let mut dataset = None;
    let mut endpoint = None;
    let mut credentials = None;
    let mut page_rows = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let value = value.into_owned();
        if value.is_empty() {
            return Err(invalid(format!("`{key}` is empty")));
        }
        match key.as_ref() {
            "location" => location = Some(value),
            "dataset" => {
                if !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(invalid(format!(
                        "`{value}` is not a dataset name (letters, digits and `_`)"
                    )));
                }
                dataset = Some(value);
            }
            "endpoint" => {
                if !(value.starts_with("http://") || value.starts_with("https://")) {
                    return Err(invalid(format!(
                        "endpoint `{value}` is not an http:// or https:// URL"
                    )));
                }
                endpoint = Some(value);
            }
            "page_rows" => {
                page_rows = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|rows| *rows > 0)
                        .ok_or_else(|| {
                            invalid(format!("page_rows `{value}` is not a positive number"))
                        })?,
                );
            }
            "credentials" => {
                let path = Path::new(&value);
                credentials = Some(if path.is_absolute() {
                    path.to_owned()
                } else {
                    base_dir.join(path)
                });
            }
            other => {
                return Err(invalid(format!(
                    "unknown key `{other}` (expected location, dataset, endpoint, credentials or page_rows)"
                )));
            }
        }
    }
    let emulator = vars
        .get("BIGQUERY_EMULATOR_HOST")
        .filter(|host| !host.is_empty())
        .map(|host| {
            if host.contains("://") {
                host.clone()
            } else {
                format!("http://{host}")
            }
        });
    // An endpoint of one's own (an emulator) needs no credentials unless a file is named.
    let credentials = match (&credentials, endpoint.is_some() || emulator.is_some()) {
        (Some(path), _) => Credentials::Adc(Some(path.clone())),
        (None, true) => Credentials::None,
        (None, false) => Credentials::Adc(None),
    };
    let base = endpoint
        .or(emulator)
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    let base = base.trim_end_matches('/');
    let api = if base.ends_with("/bigquery/v2") {
        base.to_owned()
    } else {
        format!("{base}/bigquery/v2")
    };
    Ok(Config {
        project: project.to_owned(),
        location,
        dataset,
        api,
        credentials,
        page_rows,
    })
}

/// The client of one BigQuery warehouse: its HTTP client, its credentials and what it cost.
#[derive(Debug)]
pub(super) struct BigQuery {
    client: reqwest::Client,
    config: Config,
    auth: Option<auth::Auth>,
    /// 0: no limit.
    maximum_bytes_billed: AtomicU64,
    closed: AtomicBool,
    queries: AtomicU64,
    bytes_processed: AtomicU64,
}

/// Which session a query runs in.
#[derive(Debug, Clone, Copy)]
enum Session<'a> {
    None,
    Create,
    Use(&'a str),
}

/// A complete query: its rows (every page), rows affected and the session it made.
#[derive(Debug, Default)]
struct Outcome {
    rows: Vec<Vec<Cell>>,
    affected: u64,
    session: Option<String>,
}

impl BigQuery {
    /// A client for `url`; with credentials, one token is fetched now so that bad credentials
    /// are reported when connecting.
    pub(super) async fn connect(
        url: &str,
        base_dir: &Path,
        timeout: Duration,
    ) -> Result<Arc<Self>, WarehouseError> {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        let config = parse_url(url, base_dir, &vars)?;
        let connect_error = |error: BigQueryError| WarehouseError::Connect {
            url: url.to_owned(),
            source: DatabaseError::BigQuery(error),
        };
        let client = crate::http_client().map_err(|error| {
            connect_error(BigQueryError::new(0, "transport", error.to_string()))
        })?;
        let auth = match &config.credentials {
            Credentials::None => None,
            Credentials::Adc(explicit) => {
                let home = vars.get("HOME").map(PathBuf::from);
                let auth = auth::Auth::discover(explicit.as_deref(), &vars, home.as_deref())
                    .map_err(|error| connect_error(BigQueryError::new(0, "auth", error.0)))?;
                tokio::time::timeout(timeout, auth.token(&client, false))
                    .await
                    .map_err(|_| WarehouseError::ConnectTimeout {
                        url: url.to_owned(),
                        after: timeout,
                    })?
                    .map_err(|error| connect_error(BigQueryError::new(0, "auth", error.0)))?;
                Some(auth)
            }
        };
        Ok(Arc::new(Self {
            client,
            config,
            auth,
            maximum_bytes_billed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            queries: AtomicU64::new(0),
            bytes_processed: AtomicU64::new(0),
        }))
    }

    pub(super) fn set_maximum_bytes_billed(&self, limit: Option<u64>) {
        self.maximum_bytes_billed
            .store(limit.unwrap_or(0), Ordering::Relaxed);
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    pub(super) fn usage(&self) -> Usage {
        Usage {
            queries: self.queries.load(Ordering::Relaxed),
            bytes_processed: self.bytes_processed.load(Ordering::Relaxed),
        }
    }

    fn check_open(&self) -> Result<(), WarehouseError> {
        if self.closed.load(Ordering::Relaxed) {
            Err(WarehouseError::Closed)
        } else {
            Ok(())
        }
    }

    pub(super) async fn ping(
        self: &Arc<Self>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), WarehouseError> {
        const PING: &str = "SELECT 1";
        self.check_open()?;
        let statement = unbound(PING);
        tokio::time::timeout_at(
            deadline,
            self.query(&statement, Session::None, false, timeout),
        )
        .await
        .map_err(|_| WarehouseError::timed_out(PING, timeout))?
        .map(drop)
        .map_err(|error| WarehouseError::query(PING, error.into()))
    }

    /// The first column of the first row, if there is a row.
    pub(super) async fn first_cell(
        self: &Arc<Self>,
        deadline: Instant,
        timeout: Duration,
        query: &Query,
    ) -> Result<Option<Cell>, WarehouseError> {
        self.check_open()?;
        let outcome = tokio::time::timeout_at(
            deadline,
            self.query(&query.statement, Session::None, false, timeout),
        )
        .await
        .map_err(|_| query.timed_out(timeout))?
        .map_err(|error| query.error(error.into()))?;
        match outcome.rows.into_iter().next() {
            None => Ok(None),
            Some(row) => row
                .into_iter()
                .next()
                .map(Some)
                .ok_or_else(|| WarehouseError::Columns {
                    found: 0,
                    expected: "1",
                    query: snippet(&query.sql),
                }),
        }
    }

    /// Runs a one-statement query and decodes the first `columns` columns of every row.
    pub(super) async fn fetch_cells(
        self: &Arc<Self>,
        deadline: Instant,
        timeout: Duration,
        query: &Query,
        columns: usize,
    ) -> Result<Vec<Vec<Cell>>, WarehouseError> {
        self.check_open()?;
        let outcome = tokio::time::timeout_at(
            deadline,
            self.query(&query.statement, Session::None, false, timeout),
        )
        .await
        .map_err(|_| query.timed_out(timeout))?
        .map_err(|error| query.error(error.into()))?;
        width(query, outcome.rows, columns)
    }

    /// Validates each statement with a dry run, its parameters bound to a date; the outcome of
    /// each, in order. Transient failures end the whole call.
    pub(super) async fn prepare_each(
        self: &Arc<Self>,
        deadline: Instant,
        timeout: Duration,
        sql: &str,
        statements: &[Statement],
    ) -> Result<Vec<Result<(), DatabaseError>>, WarehouseError> {
        self.check_open()?;
        let some_date = NaiveDate::default();
        tokio::time::timeout_at(deadline, async {
            let mut outcomes = Vec::with_capacity(statements.len());
            for statement in statements {
                let bound = BoundStatement {
                    text: statement.text.clone(),
                    values: vec![some_date; statement.params.len()],
                    names: statement.params.clone(),
                };
                match self.query(&bound, Session::None, true, timeout).await {
                    Ok(_) => outcomes.push(Ok(())),
                    Err(error) if error.is_transient() => {
                        return Err(WarehouseError::query(&statement.text, error.into()));
                    }
                    Err(error) => outcomes.push(Err(error.into())),
                }
            }
            Ok(outcomes)
        })
        .await
        .map_err(|_| WarehouseError::timed_out(sql, timeout))?
    }

    /// See [`super::Warehouse::execute_script_gated`] and the module documentation.
    pub(super) async fn transact<R>(
        self: &Arc<Self>,
        deadline: Instant,
        timeout: Duration,
        gated: &GatedScript,
        rows: Option<&RowsInsert>,
        finish: impl FnOnce(u64, Vec<BTreeMap<NaiveDate, i64>>) -> Finish<R>,
    ) -> Result<R, WarehouseError> {
        self.check_open()?;
        let script = &gated.script;
        let atomic = !script
            .statements
            .iter()
            .any(|statement| is_ddl(&statement.text));
        // Rolls back in the background if this call ends (timeout, dropped future) with the
        // transaction open.
        let mut open = OpenTransaction {
            bigquery: Arc::clone(self),
            session: None,
        };
        let outcome = tokio::time::timeout_at(deadline, async {
            if atomic {
                let begun = self
                    .query(&unbound("BEGIN TRANSACTION"), Session::Create, false, timeout)
                    .await
                    .map_err(|error| script.transaction_error(error.into()))?;
                let session = begun.session.ok_or_else(|| {
                    script.transaction_error(DatabaseError::BigQuery(BigQueryError::new(
                        0,
                        "noSession",
                        "BigQuery returned no session for the transaction",
                    )))
                })?;
                open.session = Some(session);
            } else {
                tracing::debug!(
                    script = %snippet(&script.sql),
                    "bigquery: the script holds DDL, which BigQuery runs outside transactions: its statements commit one by one"
                );
            }
            let session = open.session.clone();
            let mode = session.as_deref().map_or(Session::None, Session::Use);
            let ran = async {
                let mut affected = 0u64;
                for (index, statement) in script.statements.iter().enumerate() {
                    let done = self
                        .query(statement, mode, false, timeout)
                        .await
                        .map_err(|error| script.statement_error(index, error.into()))?;
                    affected += done.affected;
                }
                if let Some(rows) = rows {
                    let done = self
                        .query_with(&rows.statement, Some(&rows.parameter), mode, false, timeout)
                        .await
                        .map_err(|error| {
                            WarehouseError::query(&rows.statement.text, error.into())
                        })?;
                    affected += done.affected;
                }
                let mut observed = Vec::with_capacity(gated.probes.len());
                for probe in &gated.probes {
                    let done = self
                        .query(&probe.statement, mode, false, timeout)
                        .await
                        .map_err(|error| probe.error(error.into()))?;
                    let rows = width(probe, done.rows, 2)?;
                    observed.push(gated.tally(probe, rows)?);
                }
                Ok(finish(affected, observed))
            }
            .await;
            let Some(session) = session else {
                return match ran {
                    Ok(Finish::Commit(value)) => Ok(value),
                    Ok(Finish::RollBack(value)) => {
                        tracing::warn!(
                            script = %snippet(&script.sql),
                            "bigquery: the validation refused a script that holds DDL; its statements were not in a transaction and stay committed"
                        );
                        Ok(value)
                    }
                    Err(error) => Err(error),
                };
            };
            match ran {
                Ok(Finish::Commit(value)) => {
                    self.query(
                        &unbound("COMMIT TRANSACTION"),
                        Session::Use(&session),
                        false,
                        timeout,
                    )
                    .await
                    .map_err(|error| script.transaction_error(error.into()))?;
                    open.session = None;
                    Ok(value)
                }
                Ok(Finish::RollBack(value)) => {
                    self.rollback(&session, timeout).await;
                    open.session = None;
                    Ok(value)
                }
                Err(error) => {
                    self.rollback(&session, timeout).await;
                    open.session = None;
                    Err(error)
                }
            }
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(script.timed_out(timeout)),
        }
    }

    /// `ROLLBACK TRANSACTION` in `session`; a failure is logged, as the transaction then ends
    /// with the session anyway.
    async fn rollback(self: &Arc<Self>, session: &str, timeout: Duration) {
        let statement = unbound("ROLLBACK TRANSACTION");
        if let Err(error) = self
            .query(&statement, Session::Use(session), false, timeout)
            .await
        {
            tracing::warn!(%error, "bigquery: rolling back the script's transaction failed");
        }
    }

    /// Runs one statement to completion: `jobs.query`, then `jobs.getQueryResults` until the job
    /// is done and for every further page. A job that fails with a reason worth retrying runs
    /// again, as a new job, with backoff.
    async fn query(
        self: &Arc<Self>,
        statement: &BoundStatement,
        session: Session<'_>,
        dry_run: bool,
        timeout: Duration,
    ) -> Result<Outcome, BigQueryError> {
        self.query_with(statement, None, session, dry_run, timeout)
            .await
    }

    /// [`BigQuery::query`] with one more named query parameter, `extra` (its JSON).
    async fn query_with(
        self: &Arc<Self>,
        statement: &BoundStatement,
        extra: Option<&Value>,
        session: Session<'_>,
        dry_run: bool,
        timeout: Duration,
    ) -> Result<Outcome, BigQueryError> {
        let mut attempt = 1;
        loop {
            match self
                .query_once(statement, extra, session, dry_run, timeout)
                .await
            {
                Ok(outcome) => return Ok(outcome),
                // Calls refused are retried in `call`; here, jobs that ran and failed.
                Err(Failure::Job(error)) if error.is_retried_here() && attempt < MAX_ATTEMPTS => {
                    let pause = backoff(attempt);
                    tracing::debug!(%error, attempt, pause_ms = pause.as_millis(), "bigquery: job failed, trying again");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(Failure::Job(error) | Failure::Call(error)) => return Err(error),
            }
        }
    }

    async fn query_once(
        self: &Arc<Self>,
        statement: &BoundStatement,
        extra: Option<&Value>,
        session: Session<'_>,
        dry_run: bool,
        timeout: Duration,
    ) -> Result<Outcome, Failure> {
        let timeout_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut body = json!({
            "query": statement.text,
            "useLegacySql": false,
            "timeoutMs": timeout_ms.min(u64::try_from(LONG_POLL.as_millis()).unwrap_or(u64::MAX)),
            "requestId": request_id(),
            "formatOptions": { "useInt64Timestamp": true },
        });
        if let Some(rows) = self.config.page_rows {
            body["maxResults"] = json!(rows);
        }
        if !statement.names.is_empty() || extra.is_some() {
            body["parameterMode"] = json!("NAMED");
            body["queryParameters"] = statement
                .names
                .iter()
                .zip(&statement.values)
                .map(|(param, value)| parameter(*param, *value))
                .chain(extra.cloned())
                .collect();
        }
        if dry_run {
            body["dryRun"] = json!(true);
        } else {
            body["jobTimeoutMs"] = json!(timeout_ms.to_string());
        }
        if let Some(location) = &self.config.location {
            body["location"] = json!(location);
        }
        if let Some(dataset) = &self.config.dataset {
            body["defaultDataset"] =
                json!({ "projectId": self.config.project, "datasetId": dataset });
        }
        let limit = self.maximum_bytes_billed.load(Ordering::Relaxed);
        if limit > 0 {
            body["maximumBytesBilled"] = json!(limit.to_string());
        }
        match session {
            Session::None => {}
            Session::Create => body["createSession"] = json!(true),
            Session::Use(id) => {
                body["connectionProperties"] = json!([{ "key": "session_id", "value": id }]);
            }
        }
        let path = format!("/projects/{}/queries", self.config.project);
        self.queries.fetch_add(1, Ordering::Relaxed);
        let mut answer = self
            .call(reqwest::Method::POST, &path, Some(&body))
            .await
            .map_err(Failure::Call)?;
        let session_id = answer["sessionInfo"]["sessionId"]
            .as_str()
            .map(str::to_owned);
        // A job still running: ask for its results until it completes. Dropping this call (a
        // timeout) cancels the job.
        let mut job = RunningJob {
            bigquery: Arc::clone(self),
            id: None,
        };
        if answer["jobComplete"] != json!(true) {
            let id = job_id(&answer).map_err(Failure::Call)?;
            job.id = Some((
                id.clone(),
                answer["jobReference"]["location"]
                    .as_str()
                    .map(str::to_owned),
            ));
            while answer["jobComplete"] != json!(true) {
                answer = self.results(&id, &answer, None).await?;
            }
        }
        job.id = None;
        if answer["errors"]
            .as_array()
            .is_some_and(|errors| !errors.is_empty())
        {
            return Err(Failure::Job(BigQueryError::from_body(400, &answer)));
        }
        let bytes = count(&answer["totalBytesProcessed"]);
        self.bytes_processed.fetch_add(bytes, Ordering::Relaxed);
        let types: Vec<String> = answer["schema"]["fields"]
            .as_array()
            .map(|fields| {
                fields
                    .iter()
                    .map(|field| field["type"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let mut outcome = Outcome {
            rows: Vec::new(),
            affected: count(&answer["numDmlAffectedRows"]),
            session: session_id,
        };
        let mut pages = 1;
        loop {
            decode_rows(&answer, &types, &mut outcome.rows);
            let Some(token) = answer["pageToken"].as_str().map(str::to_owned) else {
                break;
            };
            let id = job_id(&answer).map_err(Failure::Call)?;
            answer = self.results(&id, &answer, Some(&token)).await?;
            pages += 1;
        }
        tracing::debug!(
            statement = %snippet(&statement.text),
            job_id = answer["jobReference"]["jobId"].as_str().unwrap_or(""),
            bytes_processed = bytes,
            rows = outcome.rows.len(),
            pages,
            dry_run,
            "bigquery query"
        );
        Ok(outcome)
    }

    /// One `jobs.getQueryResults` call for the job of `previous` (waiting up to [`LONG_POLL`]
    /// for it to complete), at `page` when given.
    async fn results(
        &self,
        job: &str,
        previous: &Value,
        page: Option<&str>,
    ) -> Result<Value, Failure> {
        // Built in a block: the serializer is not `Send` and must not live across an await.
        let query = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("timeoutMs", &LONG_POLL.as_millis().to_string());
            query.append_pair("formatOptions.useInt64Timestamp", "true");
            let location = previous["jobReference"]["location"]
                .as_str()
                .or(self.config.location.as_deref());
            if let Some(location) = location {
                query.append_pair("location", location);
            }
            if let Some(page) = page {
                query.append_pair("pageToken", page);
            }
            if let Some(rows) = self.config.page_rows {
                query.append_pair("maxResults", &rows.to_string());
            }
            query.finish()
        };
        let path = format!("/projects/{}/queries/{job}?{query}", self.config.project);
        let answer = self
            .call(reqwest::Method::GET, &path, None)
            .await
            .map_err(Failure::Call)?;
        if answer["errors"]
            .as_array()
            .is_some_and(|errors| !errors.is_empty())
            && answer["jobComplete"] == json!(true)
        {
            return Err(Failure::Job(BigQueryError::from_body(400, &answer)));
        }
        Ok(answer)
    }

    /// One API call with the current token: a 401 fetches a new token and tries once more; rate
    /// limits and backend errors are tried again with backoff.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, BigQueryError> {
        let url = format!("{}{path}", self.config.api);
        let mut refreshed = false;
        let mut attempt = 1;
        loop {
            let mut request = self.client.request(method.clone(), &url);
            if let Some(auth) = &self.auth {
                let token = auth
                    .token(&self.client, false)
                    .await
                    .map_err(|error| BigQueryError::new(0, "auth", error.0))?;
                request = request.header(reqwest::header::AUTHORIZATION, token.bearer());
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let error = match send(request).await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            if error.status == 401
                && !refreshed
                && let Some(auth) = &self.auth
            {
                refreshed = true;
                tracing::debug!("bigquery: the API refused the token; fetching a new one");
                auth.token(&self.client, true)
                    .await
                    .map_err(|error| BigQueryError::new(0, "auth", error.0))?;
                continue;
            }
            if error.is_retried_here() && attempt < MAX_ATTEMPTS {
                let pause = backoff(attempt);
                tracing::debug!(%error, attempt, pause_ms = pause.as_millis(), "bigquery: call refused, trying again");
                tokio::time::sleep(pause).await;
                attempt += 1;
                continue;
            }
            return Err(error);
        }
    }

    /// Asks BigQuery to stop a job (best effort: the job may be done already).
    async fn cancel(&self, job: &str, location: Option<&str>) {
        let mut path = format!("/projects/{}/jobs/{job}/cancel", self.config.project);
        if let Some(location) = location.or(self.config.location.as_deref()) {
            path.push_str("?location=");
            path.push_str(
                &url::form_urlencoded::byte_serialize(location.as_bytes()).collect::<String>(),
            );
        }
        if let Err(error) = self.call(reqwest::Method::POST, &path, None).await {
            tracing::debug!(%error, job, "bigquery: cancelling a job failed");
        }
    }
}

/// An `INSERT … SELECT … FROM UNNEST(@rows)` and its `@rows` parameter.
pub(super) struct RowsInsert {
    statement: BoundStatement,
    parameter: Value,
}

impl RowsInsert {
    /// The insert of `rows` into `table`, refused when a name is not a plain identifier.
    pub(super) fn new(table: &str, rows: &Rows) -> Result<Self, WarehouseError> {
        let invalid = |what: &str, name: &str| WarehouseError::InvalidRows {
            reason: format!("{what} `{name}` is not a plain name"),
        };
        let is_name = |name: &str, extra: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(c))
        };
        if !is_name(table, ".-") {
            return Err(invalid("table", table));
        }
        let mut types = Vec::with_capacity(rows.fields.len());
        for (name, kind) in &rows.fields {
            if !is_name(name, "") {
                return Err(invalid("field", name));
            }
            if ![
                "STRING",
                "INT64",
                "FLOAT64",
                "NUMERIC",
                "BOOL",
                "DATE",
                "TIMESTAMP",
            ]
            .contains(&kind.as_str())
            {
                return Err(WarehouseError::InvalidRows {
                    reason: format!("field `{name}` has type `{kind}`, not a BigQuery scalar type"),
                });
            }
            types.push(json!({ "name": name, "type": { "type": kind } }));
        }
        let mut values = Vec::with_capacity(rows.values.len());
        for row in &rows.values {
            if row.len() != rows.fields.len() {
                return Err(WarehouseError::InvalidRows {
                    reason: format!(
                        "a row has {} values for {} fields",
                        row.len(),
                        rows.fields.len()
                    ),
                });
            }
            let fields: serde_json::Map<String, Value> = rows
                .fields
                .iter()
                .zip(row)
                .map(|((name, _), value)| (name.clone(), json!({ "value": value })))
                .collect();
            values.push(json!({ "structValues": fields }));
        }
        let columns = rows
            .fields
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let selected = rows
            .fields
            .iter()
            .map(|(name, _)| format!("row.{name}"))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Self {
            statement: BoundStatement {
                text: format!(
                    "INSERT INTO {table} ({columns}) SELECT {selected} FROM UNNEST(@rows) AS row"
                ),
                values: Vec::new(),
                names: Vec::new(),
            },
            parameter: json!({
                "name": "rows",
                "parameterType": {
                    "type": "ARRAY",
                    "arrayType": { "type": "STRUCT", "structTypes": types },
                },
                "parameterValue": { "arrayValues": values },
            }),
        })
    }
}

/// Rows for [`super::Warehouse::execute_script_and_insert`]: field names with their BigQuery
/// types (`STRING`, `INT64`, `FLOAT64`, `NUMERIC`, `BOOL`, `DATE`, `TIMESTAMP`), and each row's
/// values as text in field order (`None`: NULL). They reach BigQuery as one
/// `ARRAY<STRUCT<…>>` query parameter, never as SQL text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    /// `(name, type)` of each field.
    pub fields: Vec<(String, String)>,
    /// The rows.
    pub values: Vec<Vec<Option<String>>>,
}

/// How a query failed: a call BigQuery refused (already retried in [`BigQuery::call`]) or a
/// job that ran and failed (retried as a new job when the reason says so).
enum Failure {
    Call(BigQueryError),
    Job(BigQueryError),
}

/// A job that has not completed: dropped before [`RunningJob::id`] is cleared (a timeout or a
/// cancelled task), it cancels the job in the background.
struct RunningJob {
    bigquery: Arc<BigQuery>,
    id: Option<(String, Option<String>)>,
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        if let Some((id, location)) = self.id.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let bigquery = Arc::clone(&self.bigquery);
            runtime.spawn(async move {
                let _ = tokio::time::timeout(
                    ROLLBACK_TIMEOUT,
                    bigquery.cancel(&id, location.as_deref()),
                )
                .await;
            });
        }
    }
}

/// A transaction left open when its call ends early: rolled back in the background.
struct OpenTransaction {
    bigquery: Arc<BigQuery>,
    session: Option<String>,
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let bigquery = Arc::clone(&self.bigquery);
            runtime.spawn(async move {
                let _ = tokio::time::timeout(
                    ROLLBACK_TIMEOUT,
                    bigquery.rollback(&session, ROLLBACK_TIMEOUT),
                )
                .await;
            });
        }
    }
}

/// Sends a request and reads its JSON answer; any failure as [`BigQueryError`].
async fn send(request: reqwest::RequestBuilder) -> Result<Value, BigQueryError> {
    let transport = |error: reqwest::Error| BigQueryError::new(0, "transport", error.to_string());
    let response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(transport)?;
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        if body.is_null() && !bytes.is_empty() {
            return Err(BigQueryError::new(
                status,
                "invalidResponse",
                "the answer is not JSON",
            ));
        }
        return Ok(body);
    }
    if body.is_null() {
        let text = String::from_utf8_lossy(&bytes);
        return Err(BigQueryError::new(
            status,
            "http",
            format!("HTTP {status}: {}", snippet(&text)),
        ));
    }
    Err(BigQueryError::from_body(status, &body))
}

/// The pause before try `attempt + 1`: doubling from [`BACKOFF_FIRST`], capped, with up to
/// half of it added at random so that many clients do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    base + base.mul_f64(fastrand::f64() / 2.0)
}

/// A fresh `requestId`: BigQuery runs a `jobs.query` call retried with the same one only once.
fn request_id() -> String {
    format!(
        "gapless-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

fn job_id(answer: &Value) -> Result<String, BigQueryError> {
    answer["jobReference"]["jobId"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| BigQueryError::new(0, "invalidResponse", "the answer names no job"))
}

/// A named `DATE` query parameter.
fn parameter(param: Param, value: NaiveDate) -> Value {
    json!({
        "name": param.name(),
        "parameterType": { "type": "DATE" },
        "parameterValue": { "value": value.to_string() },
    })
}

/// A statement without parameters.
fn unbound(text: &str) -> BoundStatement {
    BoundStatement {
        text: text.to_owned(),
        values: Vec::new(),
        names: Vec::new(),
    }
}

/// An int64 that the API sends as a string (or a number); 0 when absent.
fn count(value: &Value) -> u64 {
    match value {
        Value::String(text) => text.parse().unwrap_or(0),
        Value::Number(number) => number.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// Checks and cuts each row to `columns` as the SQLite and PostgreSQL sides read them.
fn width(
    query: &Query,
    rows: Vec<Vec<Cell>>,
    columns: usize,
) -> Result<Vec<Vec<Cell>>, WarehouseError> {
    rows.into_iter()
        .map(|mut row| {
            query.check_width(columns, row.len())?;
            row.truncate(columns);
            Ok(row)
        })
        .collect()
}

/// Appends the rows of an answer (`rows[].f[].v`), decoded by the schema's `types`.
fn decode_rows(answer: &Value, types: &[String], rows: &mut Vec<Vec<Cell>>) {
    let Some(page) = answer["rows"].as_array() else {
        return;
    };
    for row in page {
        let cells = row["f"].as_array().map_or_else(Vec::new, |fields| {
            fields
                .iter()
                .enumerate()
                .map(|(index, field)| {
                    decode(types.get(index).map_or("", String::as_str), &field["v"])
                })
                .collect()
        });
        rows.push(cells);
    }
}

/// One value of BigQuery's JSON rows, by its column's type.
fn decode(kind: &str, value: &Value) -> Cell {
    let Value::String(text) = value else {
        return match value {
            Value::Null => Cell::Null,
            _ => Cell::Other(kind.to_owned()),
        };
    };
    match kind {
        "INTEGER" | "INT64" => text
            .parse()
            .map_or_else(|_| Cell::Numeric(text.clone()), Cell::Int),
        "FLOAT" | "FLOAT64" => text
            .parse()
            .map_or_else(|_| Cell::Other(kind.to_owned()), Cell::Real),
        "NUMERIC" | "BIGNUMERIC" | "DECIMAL" | "BIGDECIMAL" => numeric(text),
        "STRING" | "DATETIME" => Cell::Text(text.clone()),
        "DATE" => crate::parse_iso_date(text).map_or_else(|| Cell::Text(text.clone()), Cell::Date),
        "TIMESTAMP" => {
            timestamp_date(text).map_or_else(|| Cell::Other(kind.to_owned()), Cell::Date)
        }
        _ => Cell::Other(kind.to_owned()),
    }
}

/// A NUMERIC's text: an integer (`12`, `12.000`) or, for the error message, as it is.
fn numeric(text: &str) -> Cell {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.bytes().all(|b| b == b'0')
        && let Ok(value) = whole.parse()
    {
        return Cell::Int(value);
    }
    Cell::Numeric(text.to_owned())
}

/// The UTC date of a TIMESTAMP: microseconds since the epoch (`useInt64Timestamp`), or seconds
/// in floating point as the API sends them otherwise.
fn timestamp_date(text: &str) -> Option<NaiveDate> {
    let micros = match text.parse::<i64>() {
        Ok(micros) => micros,
        Err(_) => {
            let seconds: f64 = text.parse().ok()?;
            // Whole seconds are enough for a date.
            (seconds.floor() as i64).checked_mul(1_000_000)?
        }
    };
    chrono::DateTime::from_timestamp_micros(micros).map(|at| at.date_naive())
}

/// Whether a statement is DDL, which BigQuery does not allow in a transaction (temporary
/// tables excepted).
fn is_ddl(statement: &str) -> bool {
    let keyword = first_keyword(statement).to_ascii_lowercase();
    let after = statement
        .split_whitespace()
        .skip_while(|word| !word.eq_ignore_ascii_case(&keyword))
        .nth(1)
        .unwrap_or("")
        .to_ascii_lowercase();
    match keyword.as_str() {
        "create" => !matches!(after.as_str(), "temp" | "temporary"),
        "drop" | "alter" | "truncate" | "grant" | "revoke" | "undrop" => true,
        _ => false,
    }
}

/// The first word of a statement after whitespace and comments (`--`, `#`, `/* */`).
fn first_keyword(statement: &str) -> &str {
    let mut rest = statement;
    loop {
        rest = rest.trim_start();
        if rest.starts_with("--") || rest.starts_with('#') {
            rest = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    &rest[..end]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn urls() {
        let base = Path::new("/pipelines");
        let config = parse_url(
            "bigquery://my-proj?location=EU&dataset=nba_raw",
            base,
            &vars(&[]),
        )
        .unwrap();
        assert_eq!(config.project, "my-proj");
        assert_eq!(config.location.as_deref(), Some("EU"));
        assert_eq!(config.dataset.as_deref(), Some("nba_raw"));
        assert_eq!(config.api, "https://bigquery.googleapis.com/bigquery/v2");
        assert_eq!(config.credentials, Credentials::Adc(None));

        // The emulator variable, as Google's libraries read it: no credentials.
        let config = parse_url(
            "bigquery://p",
            base,
            &vars(&[("BIGQUERY_EMULATOR_HOST", "127.0.0.1:9050")]),
        )
        .unwrap();
        assert_eq!(config.api, "http://127.0.0.1:9050/bigquery/v2");
        assert_eq!(config.credentials, Credentials::None);
        // An endpoint in the URL wins; a credentials file still applies there.
        let config = parse_url(
            "bigquery://p/?endpoint=http://127.0.0.1:1/bigquery/v2/&credentials=keys/sa.json",
            base,
            &vars(&[("BIGQUERY_EMULATOR_HOST", "127.0.0.1:9050")]),
        )
        .unwrap();
        assert_eq!(config.api, "http://127.0.0.1:1/bigquery/v2");
        assert_eq!(
            config.credentials,
            Credentials::Adc(Some(PathBuf::from("/pipelines/keys/sa.json")))
        );

        for (url, wanted) in [
            ("bigquery://", "not a project ID"),
            ("bigquery://My_Proj", "not a project ID"),
            ("bigquery://p?region=US", "unknown key `region`"),
            ("bigquery://p?location=", "`location` is empty"),
            ("bigquery://p?dataset=a.b", "not a dataset name"),
            (
                "bigquery://p?endpoint=ftp://x",
                "not an http:// or https:// URL",
            ),
            ("bigquery://p?page_rows=0", "not a positive number"),
        ] {
            let error = parse_url(url, base, &vars(&[])).unwrap_err();
            assert!(error.to_string().contains(wanted), "{url}: {error}");
        }
    }

    #[test]
    fn values_decode_by_type() {
        let day = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        assert_eq!(decode("INTEGER", &json!("42")), Cell::Int(42));
        assert_eq!(decode("INT64", &Value::Null), Cell::Null);
        assert_eq!(decode("NUMERIC", &json!("2.000")), Cell::Int(2));
        assert_eq!(
            decode("NUMERIC", &json!("1.5")),
            Cell::Numeric("1.5".into())
        );
        assert_eq!(decode("FLOAT", &json!("2.0")), Cell::Real(2.0));
        assert_eq!(decode("DATE", &json!("2024-01-01")), Cell::Date(day));
        assert_eq!(
            decode("DATETIME", &json!("2024-01-01T12:00:00")),
            Cell::Text("2024-01-01T12:00:00".into())
        );
        assert_eq!(
            decode("TIMESTAMP", &json!("1704110400000000")),
            Cell::Date(day)
        );
        assert_eq!(decode("TIMESTAMP", &json!("1.7041104E9")), Cell::Date(day));
        assert_eq!(
            decode("BOOLEAN", &json!("true")),
            Cell::Other("BOOLEAN".into())
        );
        assert_eq!(
            decode("RECORD", &json!({"f": []})),
            Cell::Other("RECORD".into())
        );
    }

    #[test]
    fn ddl_is_found_past_comments() {
        assert!(is_ddl("CREATE TABLE d.t (x INT64)"));
        assert!(is_ddl("-- note\n# more\n/* a */ drop table d.t"));
        assert!(!is_ddl("INSERT INTO d.t VALUES (1)"));
        assert!(!is_ddl("CREATE TEMP TABLE x AS SELECT 1"));
        assert!(is_ddl("CREATE OR REPLACE TABLE d.t AS SELECT 1"));
        assert!(!is_ddl(
            "MERGE d.t USING s ON false WHEN NOT MATCHED THEN INSERT ROW"
        ));
        assert_eq!(first_keyword("  /* unterminated"), "");
    }

    #[test]
    fn errors_read_from_answers() {
        let body = json!({"error": {"code": 403, "message": "Exceeded rate limits", "errors": [{"reason": "rateLimitExceeded", "message": "Exceeded rate limits: too many"}]}});
        let error = BigQueryError::from_body(403, &body);
        assert_eq!(error.reason, "rateLimitExceeded");
        assert!(error.is_retried_here() && error.is_transient());
        let job = json!({"jobComplete": true, "errors": [{"reason": "notFound", "message": "Not found: Table p.d.t"}]});
        let error = BigQueryError::from_body(400, &job);
        assert_eq!(error.to_string(), "Not found: Table p.d.t (notFound)");
        assert!(!error.is_transient());
        assert!(BigQueryError::new(503, "http", "x").is_retried_here());
        assert!(backoff(1) >= BACKOFF_FIRST && backoff(1) <= BACKOFF_FIRST * 2);
        assert!(backoff(30) <= BACKOFF_MAX.mul_f64(1.5));
    }
}
