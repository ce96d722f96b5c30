//! The dashboard (`GET /`): where the pipeline has holes (a phase × date heatmap of cell states,
//! counted in the warehouse as `status` counts them), how the ledger changed over the last
//! weeks, what runs, and buttons that call the API. Server-rendered HTML and SVG, a little plain
//! JavaScript for the buttons and the live runs; nothing from elsewhere.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{Days, NaiveTime};
use gapless_core::dates::{DateRange, parse_date};
use gapless_store::TaskState;
use serde::Deserialize;

use crate::api::Shared;
use crate::app::App;
use crate::auth::{self, Caller, Role};

pub mod html;

use html::{Heatmap, Page, RunView, Runs};

/// The most cells the heatmap shows by default; a longer pipeline shows its latest days and
/// offers a range.
const DEFAULT_CELLS: usize = 40_000;

/// Runs listed.
const RUNS: i64 = 12;

/// Days of the trend.
const TREND_DAYS: u64 = 30;

/// Failed tasks listed under a run.
const FAILURES: usize = 5;

const HTML: &str = "text/html; charset=utf-8";

/// The heatmap's range, from the page's form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RangeQuery {
    start: Option<String>,
    end: Option<String>,
}

/// `GET /`: the dashboard.
pub(crate) async fn page(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let app = &shared.app;
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return bad_request(&rejection.body_text()),
    };
    let context = app.context();
    let today = context.today;
    let (range, truncated_to) = match heatmap_range(app, &query, today) {
        Ok(range) => range,
        Err(message) => return bad_request(&message),
    };
    let matrix = match range {
        Some(range) => Some(
            gapless_runtime::lifecycle::matrix(&context, range)
                .await
                .map_err(|error| crate::app::error_chain(&error)),
        ),
        None => None,
    };
    let data = match gather(app, today).await {
        Ok(data) => data,
        Err(error) => return unavailable(&error),
    };
    let phases = app
        .spec
        .phases
        .iter()
        .map(|phase| (i64::from(phase.id.0), phase.name.as_str()))
        .collect();
    let html = html::page(&Page {
        pipeline: &app.spec.name,
        now: context.now,
        admin: caller.role == Role::Admin,
        tokens: caller.tokens,
        csrf: &caller.csrf,
        phases,
        open_gaps: data.open_gaps,
        oldest_gap_seconds: data.oldest_gap_seconds,
        trend: data.trend,
        heatmap: Heatmap {
            range,
            cells: matrix.as_ref().map(|m| m.as_ref().map_err(Clone::clone)),
            truncated_to,
        },
        runs: &data.runs,
    });
    ([(header::CONTENT_TYPE, HTML)], html).into_response()
}

/// `GET /ui/runs`: the runs table alone, which the page fetches to show live progress.
pub(crate) async fn runs_fragment(State(shared): State<Shared>) -> Response {
    match runs(&shared.app).await {
        Ok(runs) => {
            let mut out = String::new();
            html::runs(&mut out, &runs);
            ([(header::CONTENT_TYPE, HTML)], out).into_response()
        }
        Err(error) => unavailable(&error),
    }
}

/// The dates the heatmap shows: the query's, else the pipeline's whole range up to today,
/// cut to its latest days when that would be more than [`DEFAULT_CELLS`] cells.
fn heatmap_range(
    app: &App,
    query: &RangeQuery,
    today: chrono::NaiveDate,
) -> Result<(Option<DateRange>, Option<i64>), String> {
    let date = |field: &str, text: &Option<String>| -> Result<Option<chrono::NaiveDate>, String> {
        match text.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(text) => parse_date(text)
                .map(Some)
                .map_err(|_| format!("{field}: `{text}` is not a date (YYYY-MM-DD)")),
        }
    };
    let start = date("start", &query.start)?;
    let end = date("end", &query.end)?;
    let end = end.unwrap_or(today).min(today);
    let explicit = start.is_some();
    let start = start.unwrap_or(app.spec.start).max(app.spec.start);
    if start > end {
        return if explicit {
            Err(format!("start: {start} is after the end, {end}"))
        } else {
            Ok((None, None))
        };
    }
    let range = DateRange::new(start, end).map_err(|error| error.to_string())?;
    let max_days = (DEFAULT_CELLS / app.spec.phases.len().max(1)).max(31);
    if !explicit && range.len() > max_days {
        let start = end - Days::new(max_days as u64 - 1);
        let range = DateRange::new(start, end).map_err(|error| error.to_string())?;
        return Ok((Some(range), Some(max_days as i64)));
    }
    Ok((Some(range), None))
}

struct Gathered {
    open_gaps: BTreeMap<i64, usize>,
    oldest_gap_seconds: Option<i64>,
    trend: Vec<(chrono::NaiveDate, i64, i64, i64)>,
    runs: Runs,
}

/// What the page shows from the state store.
async fn gather(
    app: &App,
    today: chrono::NaiveDate,
) -> Result<Gathered, gapless_store::StoreError> {
    let open = app.open_gaps().await?;
    // The ledger's times are the state store's wall clock, not the pipeline's `today`.
    let wall_today = chrono::Utc::now().date_naive().max(today);
    let first = wall_today - Days::new(TREND_DAYS - 1);
    let since = first.and_time(NaiveTime::MIN).and_utc();
    let history = app.store.gap_history(since).await?;
    let trend = history.daily((0..TREND_DAYS).map(|i| first + Days::new(i)));
    Ok(Gathered {
        open_gaps: open.by_phase,
        oldest_gap_seconds: open.oldest_seconds,
        trend,
        runs: runs(app).await?,
    })
}

/// The newest runs, with their progress and first failures, and the nodes.
async fn runs(app: &App) -> Result<Runs, gapless_store::StoreError> {
    let nodes = app.store.nodes_report(chrono::Utc::now()).await?;
    Ok(Runs {
        runs: newest_runs(app).await?,
        nodes,
    })
}

async fn newest_runs(app: &App) -> Result<Vec<RunView>, gapless_store::StoreError> {
    let mut views = Vec::new();
    for record in app.store.list_runs(RUNS).await? {
        let progress = app.store.run_progress(&record.id).await?;
        let failed: i64 = progress.iter().map(|p| p.failed).sum();
        let (failures, failed_tasks) = if failed > 0 {
            let tasks = app.store.tasks(&record.id).await?;
            let failed: Vec<_> = tasks
                .into_iter()
                .filter(|task| task.state == TaskState::Failed)
                .collect();
            let count = failed.len();
            let listed = failed
                .into_iter()
                .take(FAILURES)
                .map(|task| {
                    (
                        task.phase,
                        task.start,
                        task.end,
                        task.error.unwrap_or_else(|| "no error recorded".to_owned()),
                    )
                })
                .collect();
            (listed, count)
        } else {
            (Vec::new(), 0)
        };
        views.push(RunView {
            record,
            progress,
            failures,
            failed: failed_tasks,
        });
    }
    Ok(views)
}

/// The login form, as `status`.
pub fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    (status, [(header::CONTENT_TYPE, HTML)], html::login(error)).into_response()
}

/// The login form's body.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// `POST /login`: a valid token is kept in the dashboard's cookie, then back to the page.
pub(crate) async fn login(
    State(shared): State<Shared>,
    headers: HeaderMap,
    form: Result<axum::Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if shared.auth.admin.is_none() {
        return see_other(None);
    }
    let Ok(axum::Form(form)) = form else {
        return login_page(StatusCode::BAD_REQUEST, Some("Send the token in the form."));
    };
    let token = form.token.trim();
    if shared.auth.role_of(token).is_none() {
        tracing::warn!("dashboard login with a wrong token");
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That token is not valid here."),
        );
    }
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
    see_other(Some(auth::session_cookie(token, secure)))
}

/// `POST /logout`: forgets the cookie.
pub(crate) async fn logout() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&auth::cleared_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

fn see_other(cookie: Option<String>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Some(value) = cookie.and_then(|cookie| HeaderValue::from_str(&cookie).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `GET /assets/{name}`: the stylesheet and the script, built into the binary.
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    let (body, content_type) = match name.as_str() {
        "dashboard.css" => (include_str!("dashboard.css"), "text/css; charset=utf-8"),
        "dashboard.js" => (
            include_str!("dashboard.js"),
            "text/javascript; charset=utf-8",
        ),
        "favicon.svg" => (include_str!("favicon.svg"), "image/svg+xml"),
        _ => {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({ "error": "no such asset" })),
            )
                .into_response();
        }
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

fn unavailable(error: &(dyn std::error::Error + 'static)) -> Response {
    let message = crate::app::error_chain(error);
    tracing::warn!(error = %message, "dashboard failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}
