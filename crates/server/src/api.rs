//! The HTTP API (SPEC.md, "HTTP API"): JSON in and out, a JSON error naming the field for any
//! bad input, never a 500 for the caller's mistake, and never a panic.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gapless_core::dates::{DateRange, parse_duration};
use gapless_core::plan::Request;
use gapless_store::{GapFilter, GapStatus, Ingested, RunId, RunKind};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::{App, error_chain};
use crate::auth;
pub use crate::auth::Auth;
use crate::event::{self, FieldError};
use crate::pubsub;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Longest wait for the next piece of a request body: a client that trickles its body is cut
/// off (408) instead of holding a connection forever.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) app: Arc<App>,
    pub(crate) auth: Arc<Auth>,
}

/// The router of every route of this API.
pub fn router(app: Arc<App>, auth: Auth) -> Router {
    let shared = Shared {
        app,
        auth: Arc::new(auth),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/events", post(post_events).get(get_events))
        .route("/events/pubsub", post(post_pubsub))
        .route("/scan-gaps", post(post_scan))
        .route("/backfills", post(post_backfill))
        .route("/backfills/{id}", get(get_backfill))
        .route("/runs", get(get_runs))
        .route("/gaps", get(get_gaps))
        .route("/metrics", get(get_metrics))
        .route("/", get(crate::dashboard::page))
        .route("/ui/runs", get(crate::dashboard::runs_fragment))
        .route("/login", post(crate::dashboard::login))
        .route("/logout", post(crate::dashboard::logout))
        .route("/assets/{name}", get(crate::dashboard::asset))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared.auth),
            auth::authorize,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_TIMEOUT,
        ))
        .layer(middleware::from_fn(auth::security_headers))
        // gzip for clients that ask (browsers, Prometheus): the dashboard of a few years of
        // dates is about 1 MB of HTML and 66 kB gzipped. The fastest level: on so repetitive a
        // page the default level sends 30 % fewer bytes but takes tens of ms. Event streams and
        // tiny bodies are left alone (the layer's default predicate).
        .layer(
            tower_http::compression::CompressionLayer::new()
                .quality(tower_http::CompressionLevel::Fastest),
        )
        .with_state(shared)
}

/// An API error: a status and `{"error": …, "field": …}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    fn bad(field: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// A failure on gapless's side (the state store, the warehouse): 503, as it may pass.
    fn unavailable(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::warn!(error = %error_chain(error), "request failed");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, error_chain(error))
    }
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        Self::bad(&error.field, error.to_string())
    }
}

impl From<gapless_store::StoreError> for ApiError {
    fn from(error: gapless_store::StoreError) -> Self {
        Self::unavailable(&error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(field) = self.field {
            body["field"] = Value::String(field);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

/// The body as JSON: 413 over [`BODY_LIMIT`], 408 when it trickles, 400 naming the position of
/// a syntax error.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(body_error)?;
    serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::bad("body", format!("the body is not valid JSON: {error}")))
}

/// The error for a body that could not be read.
fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(status, format!("the body is over {BODY_LIMIT} bytes"));
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(error) = source {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body stopped arriving for {} s", BODY_TIMEOUT.as_secs()),
            );
        }
        source = error.source();
    }
    ApiError::new(status, rejection.body_text())
}

async fn healthz() -> ApiResult {
    ok(StatusCode::OK, json!({ "status": "ok" }))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// `POST /events`: one event or an array; all stored (once per `id`) or none.
async fn post_events(
    State(shared): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let value = json_body(body)?;
    let items: Vec<&Value> = match &value {
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::bad("body", "an empty array: no events"));
        }
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    let spec = &shared.app.spec;
    let events = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            event::parse(spec, item, "http", None).map_err(|error| {
                if value.is_array() {
                    error.at(index)
                } else {
                    error
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outcome = shared.app.store.ingest_events(&events).await?;
    let ids: Vec<Value> = outcome
        .iter()
        .map(|ingested| match ingested {
            Ingested::Stored(id) => json!(id),
            Ingested::Duplicate => Value::Null,
        })
        .collect();
    let stored = outcome
        .iter()
        .filter(|i| matches!(i, Ingested::Stored(_)))
        .count();
    let duplicates = outcome.len() - stored;
    shared.app.stored("http", stored as u64);
    ok(
        StatusCode::ACCEPTED,
        json!({ "stored": stored, "duplicates": duplicates, "ids": ids }),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    status: Option<String>,
    limit: Option<i64>,
}

/// `GET /events?status=quarantined`: events kept but not acted on, newest first; without
/// `status`, the newest events stored.
async fn get_events(
    State(shared): State<Shared>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|rejection| ApiError::bad("query", rejection.body_text()))?;
    let limit = limit(query.limit)?;
    match query.status.as_deref() {
        Some("quarantined") => {
            let events = shared.app.store.quarantined(limit).await?;
            ok(StatusCode::OK, json!({ "events": events }))
        }
        None | Some("stored") => {
            let events = shared.app.store.recent_events(limit).await?;
            ok(StatusCode::OK, json!({ "events": events }))
        }
        Some(other) => Err(ApiError::bad(
            "status",
            format!("`{other}`: expected `stored` or `quarantined`"),
        )),
    }
}

fn limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(100),
        Some(n) if (1..=10_000).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad("limit", format!("{n}: expected 1 to 10000"))),
    }
}

/// `POST /events/pubsub`: Google Pub/Sub's push. Authenticated by the API token or Google's
/// OIDC token; an authenticated message that cannot be acted on is quarantined and
/// acknowledged (2xx), so that Pub/Sub stops redelivering it.
async fn post_pubsub(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let auth = &shared.auth;
    let by_token = match (&auth.admin, auth::bearer(&headers)) {
        (Some(admin), Some(token)) => auth::constant_time_eq(&token, admin),
        (None, _) => auth.pubsub.is_none(),
        _ => false,
    };
    if !by_token {
        let Some(verifier) = &auth.pubsub else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token",
            ));
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        if let Err(error) = verifier.verify(presented).await {
            let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            return Err(ApiError::new(status, error.to_string()));
        }
    }
    let bytes =
        body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let app = &shared.app;
    let message = match pubsub::parse_push(&bytes) {
        Ok(message) => message,
        Err(error) => return quarantine(app, None, &bytes, &error.to_string()).await,
    };
    let key = pubsub::dedup_key(&message);
    let parsed = serde_json::from_slice::<Value>(&message.data)
        .map_err(|error| FieldError::new("message.data", format!("not JSON: {error}")))
        .and_then(|value| event::parse(&app.spec, &value, "pubsub", Some(key.clone())));
    match parsed {
        Ok(event) => {
            let outcome = app
                .store
                .ingest_events(std::slice::from_ref(&event))
                .await?;
            let stored = matches!(outcome[0], Ingested::Stored(_));
            app.stored("pubsub", u64::from(stored));
            ok(
                StatusCode::OK,
                json!({ "stored": stored, "duplicate": !stored }),
            )
        }
        Err(error) => quarantine(app, Some(&key), &message.data, &error.to_string()).await,
    }
}

async fn quarantine(app: &App, key: Option<&str>, payload: &[u8], reason: &str) -> ApiResult {
    let text = String::from_utf8_lossy(payload);
    if app.store.quarantine("pubsub", key, &text, reason).await? {
        tracing::warn!(reason, "Pub/Sub message quarantined");
    }
    ok(
        StatusCode::OK,
        json!({ "stored": false, "quarantined": reason }),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanBody {
    lookback: Option<String>,
    #[serde(default)]
    heal: bool,
    #[serde(default)]
    include_old: bool,
}

/// `POST /scan-gaps`: scan now, and with `heal`, heal the healable gaps.
async fn post_scan(State(shared): State<Shared>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let app = &shared.app;
    let value = match body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => json!({}),
        other => json_body(other)?,
    };
    let request: ScanBody = serde_json::from_value(value)
        .map_err(|error| ApiError::bad(&field_of(&error.to_string()), error.to_string()))?;
    let lookback = match &request.lookback {
        Some(text) => {
            parse_duration(text).map_err(|error| ApiError::bad("lookback", error.to_string()))?
        }
        None => app.spec.healing.lookback,
    };
    if lookback < std::time::Duration::from_secs(86_400) {
        return Err(ApiError::bad(
            "lookback",
            "must be at least one day, e.g. `90d`",
        ));
    }
    if request.include_old && !request.heal {
        return Err(ApiError::bad("include_old", "needs `\"heal\": true`"));
    }
    let days = crate::scheduler::lookback_days(lookback);
    let (scan, policy) = crate::scheduler::scan_and_heal(
        app,
        days,
        request.heal.then_some(request.include_old),
        None,
    )
    .await
    .map_err(|error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{error:#}")))?;
    let policy = policy
        .unwrap_or_else(|| json!({"healed": null, "alerted": 0, "left": [], "in_progress": 0}));
    let gaps: Vec<Value> = scan
        .gaps
        .iter()
        .map(|gap| {
            json!({
                "phase_from": gap.phase_from.map(|p| p.0),
                "phase_to": gap.phase_to.0,
                "date": gap.date,
                "age_days": gap.age_days,
                "state": gap.state,
                "found": gap.found,
                "expected": gap.expected,
            })
        })
        .collect();
    ok(
        StatusCode::OK,
        json!({
            "range": scan.range.map(|r| json!({"start": r.start(), "end": r.end()})),
            "found": gaps.len(),
            "gaps": gaps,
            "opened": scan.recorded.opened,
            "still_open": scan.recorded.still_open,
            "closed": scan.recorded.closed,
            "healed": policy["healed"],
            "alerted": policy["alerted"],
            "left": policy["left"],
            "in_progress": policy["in_progress"],
        }),
    )
}

/// The field serde's error names (`unknown field `x``, `missing field `y``), else `body`.
fn field_of(message: &str) -> String {
    message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("field"))
        .unwrap_or("body")
        .to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillBody {
    start_date: String,
    end_date: String,
    phases: Option<Value>,
    #[serde(default)]
    force: bool,
}

/// `POST /backfills`: plan and start a backfill; 202 with its run id.
async fn post_backfill(
    State(shared): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let app = &shared.app;
    let body: BackfillBody = serde_json::from_value(json_body(body)?)
        .map_err(|error| ApiError::bad(&field_of(&error.to_string()), error.to_string()))?;
    let date = |field: &str, text: &str| {
        gapless_core::dates::parse_date(text)
            .map_err(|_| ApiError::bad(field, format!("`{text}` is not a date (YYYY-MM-DD)")))
    };
    let start = date("start_date", &body.start_date)?;
    let end = date("end_date", &body.end_date)?;
    let context = app.context();
    if start < app.spec.start {
        return Err(ApiError::bad(
            "start_date",
            format!("{start} is before the pipeline's start, {}", app.spec.start),
        ));
    }
    if end > context.today {
        return Err(ApiError::bad(
            "end_date",
            format!("{end} is after today, {}", context.today),
        ));
    }
    let range = DateRange::new(start, end)
        .map_err(|_| ApiError::bad("end_date", format!("{end} is before start_date {start}")))?;
    let list = match &body.phases {
        None | Some(Value::Null) => None,
        Some(Value::String(list)) => Some(list.clone()),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text.clone()),
                    Value::Number(number) => Ok(number.to_string()),
                    other => Err(ApiError::bad(
                        "phases",
                        format!("expected phase ids or names, found {other}"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
        ),
        Some(other) => {
            return Err(ApiError::bad(
                "phases",
                format!("expected a list like [3, 4] or \"3-6\", found {other}"),
            ));
        }
    };
    let phases: BTreeSet<_> = gapless_core::select::select(&app.spec, list.as_deref())
        .map_err(|error| ApiError::bad("phases", error.to_string()))?;
    let request = Request {
        range,
        phases,
        force: body.force,
    };
    let plan = gapless_runtime::lifecycle::plan(&context, &request)
        .await
        .map_err(|error| ApiError::unavailable(&error))?;
    let run_id = crate::heal::create_api_run(app, &request, &plan, RunKind::Backfill)
        .await
        .map_err(|error| ApiError::unavailable(&error))?;
    app.execute(run_id.clone(), RunKind::Backfill, None);
    ok(
        StatusCode::ACCEPTED,
        json!({
            "run_id": run_id,
            "tasks": plan.tasks.len(),
            "cells": plan.cell_count(),
            "blocked": plan.blocked.len(),
        }),
    )
}

/// `GET /backfills/{id}`: the run and its progress per phase.
async fn get_backfill(State(shared): State<Shared>, Path(id): Path<String>) -> ApiResult {
    let run_id = RunId::parse(&id).map_err(|error| ApiError::bad("id", error.to_string()))?;
    let store = &shared.app.store;
    let Some(run) = store.run(&run_id).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no run `{id}`"),
        ));
    };
    let progress = store.run_progress(&run_id).await?;
    ok(StatusCode::OK, json!({ "run": run, "phases": progress }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    limit: Option<i64>,
}

/// `GET /runs`: the newest runs.
async fn get_runs(
    State(shared): State<Shared>,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|rejection| ApiError::bad("query", rejection.body_text()))?;
    let runs = shared.app.store.list_runs(limit(query.limit)?).await?;
    ok(StatusCode::OK, json!({ "runs": runs }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GapsQuery {
    status: Option<String>,
}

/// `GET /gaps?status=open`: the gap ledger.
async fn get_gaps(
    State(shared): State<Shared>,
    query: Result<Query<GapsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|rejection| ApiError::bad("query", rejection.body_text()))?;
    let filter = match query.status.as_deref().unwrap_or("open") {
        "open" => GapFilter::Open,
        "all" => GapFilter::All,
        other => GapFilter::Status(other.parse::<GapStatus>().map_err(|_| {
            ApiError::bad(
                "status",
                format!(
                    "`{other}`: expected open, pending, triggered, complete, failed, alerted or all"
                ),
            )
        })?),
    };
    let gaps = shared.app.store.gaps(filter).await?;
    ok(StatusCode::OK, json!({ "gaps": gaps }))
}

/// `GET /metrics`: Prometheus text (OpenMetrics).
/// `GET /metrics`: OpenMetrics text when the scraper asks for it (Prometheus does), else
/// Prometheus's classic text format.
async fn get_metrics(State(shared): State<Shared>, headers: HeaderMap) -> ApiResult {
    use crate::metrics;
    let text = metrics::render(&shared.app)
        .await
        .map_err(|error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{error:#}")))?;
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    if metrics::wants_openmetrics(accept) {
        Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
    } else {
        let text = metrics::classic(&text);
        Ok((
            [(header::CONTENT_TYPE, metrics::CONTENT_TYPE_CLASSIC)],
            text,
        )
            .into_response())
    }
}
