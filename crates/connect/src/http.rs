//! The HTTP runner: one request that starts a phase's work elsewhere (a Cloud Run job, an
//! internal service), with an optional bearer token from a command and an idempotency key.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

pub use reqwest::Method;

use crate::command::{Capture, ProcessSpec, TAIL_BYTES, check_status, run_process};
use crate::runner::RunError;

/// Most bytes of a token command's output that are read.
const TOKEN_LIMIT: usize = 64 * 1024;

/// One HTTP call, fully substituted by the caller (which keeps the host from the spec and puts
/// only validated dates into the URL and body).
#[derive(Debug, Clone)]
pub struct HttpSpec {
    /// The method; `Method::POST` unless the pipeline says otherwise.
    pub method: Method,
    /// An `http://` or `https://` URL.
    pub url: String,
    /// The request body, sent as `application/json` unless `headers` set a `Content-Type`.
    pub body: Option<String>,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// A command (argv, no shell) whose trimmed stdout is sent as `Authorization: Bearer …`,
    /// e.g. `gcloud auth print-identity-token`. It runs in `cwd` within the same timeout.
    pub token_command: Option<Vec<String>>,
    /// Bounds the whole call: the token command, the request and reading the response.
    pub timeout: Duration,
    /// Sent as `Idempotency-Key`; the caller keeps it the same on every retry of a task, so
    /// the receiver can drop duplicates.
    pub idempotency_key: String,
    /// Where the token command runs (the pipeline file's directory).
    pub cwd: PathBuf,
}

/// A call answered with a 2xx status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOutcome {
    /// The status code.
    pub status: u16,
    /// The last few KiB of the response body.
    pub body_tail: String,
    /// How long the call took, token command included.
    pub elapsed: Duration,
}

/// Builds the HTTP client the runner and alerts share: rustls, no redirects (the host a task
/// talks to stays the one in the spec), a gapless user agent. Installs ring as the process's
/// rustls provider if none is installed yet.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only when another thread installed one first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("gapless/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Makes one HTTP call. 2xx succeeds; 5xx and 429 fail retryably, as do timeouts and
/// connection errors; any other status (including 3xx) fails for good.
pub async fn run_http(spec: &HttpSpec, client: &reqwest::Client) -> Result<HttpOutcome, RunError> {
    let started = Instant::now();
    let deadline = started + spec.timeout;
    let timeout = RunError::Timeout {
        after: spec.timeout,
    };
    let invalid = |reason: String| RunError::InvalidRequest { reason };

    let url = url::Url::parse(&spec.url)
        .map_err(|error| invalid(format!("bad url `{}`: {error}", spec.url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "url `{}` is not http:// or https://",
            spec.url
        )));
    }
    // Built as a map so that the runner's own headers replace any the spec sets by the same
    // name instead of being sent twice.
    let mut headers = HeaderMap::new();
    for (name, value) in &spec.headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("bad header name `{name}`")))?;
        // The value may be a secret: it stays out of the message.
        let value = HeaderValue::from_str(value)
            .map_err(|_| invalid(format!("bad value for header `{name}`")))?;
        headers.append(header, value);
    }
    if !spec.idempotency_key.is_empty() {
        let key = HeaderValue::from_str(&spec.idempotency_key)
            .map_err(|_| invalid(format!("bad idempotency key `{}`", spec.idempotency_key)))?;
        headers.insert(HeaderName::from_static("idempotency-key"), key);
    }
    if spec.body.is_some() && !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(argv) = &spec.token_command {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let token = fetch_token(argv, spec, remaining).await?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            invalid("the token command printed a token that is not a valid header value".into())
        })?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    let mut request = client
        .request(spec.method.clone(), url)
        .timeout(deadline.saturating_duration_since(Instant::now()))
        .headers(headers);
    if let Some(body) = &spec.body {
        request = request.body(body.clone());
    }

    let transport = |source: reqwest::Error| {
        if source.is_timeout() {
            return RunError::Timeout {
                after: spec.timeout,
            };
        }
        let retryable = !source.is_builder() && !source.is_redirect();
        RunError::Http {
            url: spec.url.clone(),
            source: source.without_url(),
            retryable,
        }
    };
    let mut response = tokio::time::timeout_at(deadline, request.send())
        .await
        .map_err(|_| timeout)?
        .map_err(transport)?;
    let status = response.status();
    let mut body = Capture::tail(TAIL_BYTES);
    loop {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .map_err(|_| RunError::Timeout {
                after: spec.timeout,
            })?
            .map_err(transport)?;
        let Some(chunk) = chunk else { break };
        body.push(&chunk);
    }
    let body_tail = body.into_string();
    if status.is_success() {
        return Ok(HttpOutcome {
            status: status.as_u16(),
            body_tail,
            elapsed: started.elapsed(),
        });
    }
    let code = status.as_u16();
    Err(RunError::HttpStatus {
        status: code,
        body_tail,
        retryable: status.is_server_error() || code == 429 || code == 408,
    })
}

async fn fetch_token(
    argv: &[String],
    spec: &HttpSpec,
    timeout: Duration,
) -> Result<String, RunError> {
    let token_error = |source| RunError::TokenCommand {
        source: Box::new(source),
    };
    let output = run_process(&ProcessSpec {
        argv,
        cwd: &spec.cwd,
        env: &[],
        timeout,
        cancel: None,
        log_path: None,
        log_limit: crate::command::DEFAULT_LOG_LIMIT,
        started: None,
        die_with_parent: true,
        stdout_limit: Some(TOKEN_LIMIT),
    })
    .await
    .map_err(|error| match error {
        // The whole call's timeout ran out while getting the token.
        RunError::Timeout { .. } => RunError::Timeout {
            after: spec.timeout,
        },
        other => token_error(other),
    })?;
    check_status(output.status, output.stderr.into_string()).map_err(token_error)?;
    let token = String::from_utf8_lossy(output.stdout.bytes())
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(RunError::EmptyToken);
    }
    Ok(token)
}
