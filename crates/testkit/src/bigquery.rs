//! BigQuery on loopback for the warehouse tests.
//!
//! - [`BqEmulator`]: a real BigQuery REST API, `bqemulator` from PyPI (on DuckDB), started per
//!   test on a free port with a temporary data directory and killed when dropped. Its log
//!   counts the queries a test made ([`BqEmulator::queries`]).
//! - [`TokenEndpoint`]: Google's OAuth token endpoint for a service account: it accepts only an
//!   RS256 JWT signed with the account's key, for its `token_uri`, asking for BigQuery's scope,
//!   issued and expiring within the hour, and hands out opaque tokens that expire when it says.
//! - [`ApiGate`]: a proxy in front of the emulator that lets through only requests bearing a
//!   live token from the [`TokenEndpoint`] (else HTTP 401, as Google's front end answers), and
//!   can answer the next requests with an error of its choosing (a rate limit, a backend error).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::rsa::RsaKey;
use crate::skip;

/// Environment variable naming the `bqemulator` program (default: `bqemulator` on `PATH`).
pub const BQEMULATOR_VAR: &str = "GAPLESS_BQEMULATOR";

/// The project every emulator serves.
pub const PROJECT: &str = "gapless-test";

/// BigQuery's OAuth scope.
pub const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// A `bqemulator` process on a loopback port.
pub struct BqEmulator {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl BqEmulator {
    /// Starts `bqemulator` and waits until it answers. `None` means skip (it is not installed),
    /// unless `GAPLESS_REQUIRE_EXTERNAL=1`, where that panics.
    pub fn start() -> Option<Self> {
        let program = std::env::var(BQEMULATOR_VAR).unwrap_or_else(|_| "bqemulator".to_owned());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("emulator.log");
        let port = crate::free_port();
        let output = std::fs::File::create(&log).expect("the emulator's log file");
        let errors = output.try_clone().expect("the log file, twice");
        let child = match Command::new(&program)
            .args(["start", "--rest-host", "127.0.0.1", "--rest-port"])
            .arg(port.to_string())
            .args(["--grpc-port", "0", "--project", PROJECT, "--ephemeral"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--log-format", "json", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
        {
            Ok(child) => child,
            Err(error) => {
                skip(&format!(
                    "`{program}` ({error}; see .ci/run for its install, or set {BQEMULATOR_VAR})"
                ));
                return None;
            }
        };
        let mut emulator = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let path = format!("/bigquery/v2/projects/{PROJECT}/datasets");
            if http_json(port, "GET", &path, None, &[]).is_ok_and(|(status, _)| status == 200) {
                return Some(emulator);
            }
            if let Ok(Some(status)) = emulator.child.try_wait() {
                panic!(
                    "`{program}` exited before answering ({status}): {}",
                    emulator.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "`{program}` did not answer on port {port} within 90 s: {}",
                emulator.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`, for `?endpoint=` or `BIGQUERY_EMULATOR_HOST`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `bigquery://PROJECT?location=US&endpoint=…`: the warehouse URL of this emulator.
    pub fn url(&self) -> String {
        format!(
            "bigquery://{PROJECT}?location=US&endpoint={}",
            self.endpoint()
        )
    }

    /// [`BqEmulator::url`] with results in pages of two rows, so that every query with more
    /// rows walks `getQueryResults` pages.
    pub fn paged_url(&self) -> String {
        format!("{}&page_rows=2", self.url())
    }

    /// Creates dataset `name`.
    pub fn create_dataset(&self, name: &str) {
        let body = json!({"datasetReference": {"projectId": PROJECT, "datasetId": name}});
        let (status, answer) = http_json(
            self.port,
            "POST",
            &format!("/bigquery/v2/projects/{PROJECT}/datasets"),
            Some(&body),
            &[],
        )
        .unwrap_or_else(|error| panic!("create dataset `{name}`: {error}"));
        assert_eq!(status, 200, "create dataset `{name}`: {answer}");
    }

    /// Runs `sql` (no parameters) and returns the answer; panics on any error.
    pub fn query(&self, sql: &str) -> Value {
        let body = json!({"query": sql, "useLegacySql": false});
        let (status, answer) = http_json(
            self.port,
            "POST",
            &format!("/bigquery/v2/projects/{PROJECT}/queries"),
            Some(&body),
            &[],
        )
        .unwrap_or_else(|error| panic!("query `{sql}`: {error}"));
        assert!(
            status == 200 && answer.get("errors").is_none_or(Value::is_null),
            "query `{sql}`: {answer}"
        );
        answer
    }

    /// The emulator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many `jobs.getQueryResults` calls (`GET …/queries/JOB`: pages after the first, or
    /// polls of a job still running) the emulator has served.
    pub fn result_pages(&self) -> usize {
        self.requests("GET", "/queries/")
    }

    fn requests(&self, method: &str, path_part: &str) -> usize {
        self.log_text()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| {
                event["event"] == "http.request"
                    && event["method"] == method
                    && event["path"]
                        .as_str()
                        .is_some_and(|path| path.contains(path_part))
            })
            .count()
    }

    /// How many `jobs.query` calls (`POST …/queries`, dry runs included) the emulator has
    /// served, read from its request log.
    pub fn queries(&self) -> usize {
        self.log_text()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| {
                event["event"] == "http.request"
                    && event["method"] == "POST"
                    && event["path"]
                        .as_str()
                        .is_some_and(|path| path.ends_with("/queries"))
            })
            .count()
    }
}

impl Drop for BqEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One JSON request on loopback (`Connection: close`): its status and JSON body (`Null` when
/// the body is not JSON).
pub fn http_json(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, Value)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let (status, _, body) =
        split_response(&answer).ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    Ok((status, serde_json::from_slice(body).unwrap_or(Value::Null)))
}

/// Status, head and body of a complete HTTP/1.1 response (body by `Content-Length` or to the
/// end).
fn split_response(answer: &[u8]) -> Option<(u16, &str, &[u8])> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..split]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = &answer[split + 4..];
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let body = length.map_or(body, |length| &body[..length.min(body.len())]);
    Some((status, head, body))
}

/// One request read from a connection.
struct Request {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|length| length.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut parts = line.split_whitespace();
    Some(Request {
        method: parts.next()?.to_owned(),
        target: parts.next()?.to_owned(),
        headers,
        body,
    })
}

fn respond(stream: &mut TcpStream, status: u16, body: &Value) {
    let body = body.to_string();
    let answer = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes());
}

/// Serves each connection of `listener` on its own thread with `handle`.
fn serve(listener: TcpListener, handle: impl Fn(Request, &mut TcpStream) + Send + Sync + 'static) {
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handle = Arc::clone(&handle);
            std::thread::spawn(move || {
                let Ok(mut writer) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                // One request per connection: every answer says `Connection: close`.
                if let Some(request) = read_request(&mut reader) {
                    handle(request, &mut writer);
                }
            });
        }
    });
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[derive(Default)]
struct TokenState {
    /// Every token issued, with when it expires (seconds since the epoch) and whether it was
    /// revoked.
    tokens: BTreeMap<String, (u64, bool)>,
    /// Why each refused assertion was refused.
    refusals: Vec<String>,
}

/// Google's token endpoint for one service account (see the module docs).
pub struct TokenEndpoint {
    port: u16,
    state: Arc<Mutex<TokenState>>,
}

impl TokenEndpoint {
    /// Starts the endpoint for the service account `client_email` whose key is `key`; tokens
    /// it issues say they expire in `expires_in` seconds, and do.
    pub fn start(key: &RsaKey, client_email: &str, expires_in: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let state = Arc::new(Mutex::new(TokenState::default()));
        let shared = Arc::clone(&state);
        let public = key.public_pem.clone();
        let email = client_email.to_owned();
        let audience = format!("http://127.0.0.1:{port}/token");
        serve(listener, move |request, stream| {
            let verdict = check_assertion(&request, &public, &email, &audience);
            let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
            match verdict {
                Ok(()) => {
                    let token =
                        format!("ya29.test-{}-{}", state.tokens.len() + 1, fastrand::u64(..));
                    state
                        .tokens
                        .insert(token.clone(), (now_s() + expires_in, false));
                    respond(
                        stream,
                        200,
                        &json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}),
                    );
                }
                Err(reason) => {
                    state.refusals.push(reason.clone());
                    respond(
                        stream,
                        400,
                        &json!({"error": "invalid_grant", "error_description": reason}),
                    );
                }
            }
        });
        Self { port, state }
    }

    /// `http://127.0.0.1:PORT/token`, the service account's `token_uri`.
    pub fn token_uri(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.lock().tokens.len()
    }

    /// Why each refused assertion was refused.
    pub fn refusals(&self) -> Vec<String> {
        self.lock().refusals.clone()
    }

    /// Makes every token issued so far invalid, as a revoked or rotated key would.
    pub fn revoke_all(&self) {
        for (_, revoked) in self.lock().tokens.values_mut() {
            *revoked = true;
        }
    }

    /// Whether `token` was issued here, is not revoked and has not expired.
    pub fn is_live(&self, token: &str) -> bool {
        self.lock()
            .tokens
            .get(token)
            .is_some_and(|&(expires, revoked)| !revoked && now_s() < expires)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shared(&self) -> Self {
        Self {
            port: self.port,
            state: Arc::clone(&self.state),
        }
    }

    /// A service-account key file for `client_email` with `key`, whose `token_uri` is this
    /// endpoint.
    pub fn service_account_json(&self, key: &RsaKey, client_email: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "0123456789abcdef",
            "private_key": String::from_utf8(key.private_pem.clone()).expect("PEM is text"),
            "client_email": client_email,
            "client_id": "100000000000000000001",
            "token_uri": self.token_uri(),
        })
        .to_string()
    }
}

#[derive(serde::Deserialize)]
struct Assertion {
    scope: Option<String>,
    iat: Option<u64>,
    exp: u64,
}

/// Checks a token request: the grant type, then the JWT's RS256 signature against `public`,
/// its `iss`, `aud`, `scope` and lifetime.
fn check_assertion(
    request: &Request,
    public: &[u8],
    email: &str,
    audience: &str,
) -> Result<(), String> {
    if request.method != "POST" {
        return Err(format!("{} is not POST", request.method));
    }
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&request.body)
        .into_owned()
        .collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return Err("grant_type is not jwt-bearer".to_owned());
    }
    let assertion = form.get("assertion").ok_or("no assertion")?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(public).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[email]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Assertion>(assertion, &key, &validation)
        .map_err(|error| format!("invalid assertion: {error}"))?
        .claims;
    if claims.scope.as_deref() != Some(SCOPE) {
        return Err(format!("scope is {:?}, not BigQuery's", claims.scope));
    }
    let iat = claims.iat.ok_or("no iat")?;
    if claims.exp <= iat || claims.exp - iat > 3600 || iat > now_s() + 60 {
        return Err(format!(
            "lifetime iat={iat} exp={} is not within the hour",
            claims.exp
        ));
    }
    Ok(())
}

#[derive(Default)]
struct GateState {
    /// Requests let through.
    forwarded: usize,
    /// Requests refused with 401.
    refused: usize,
    /// Errors to answer the next requests with, in order: (status, reason).
    faults: Vec<(u16, String)>,
    /// Faults answered.
    faulted: usize,
    /// The JSON bodies of the `jobs.query` calls let through.
    queries: Vec<Value>,
}

/// What an [`ApiGate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateCalls {
    /// Requests passed to the emulator.
    pub forwarded: usize,
    /// Requests refused for a missing, unknown, revoked or expired token.
    pub refused: usize,
    /// Requests answered with an injected fault.
    pub faulted: usize,
}

/// A proxy in front of a [`BqEmulator`] that checks tokens (see the module docs).
pub struct ApiGate {
    port: u16,
    state: Arc<Mutex<GateState>>,
}

impl ApiGate {
    /// Starts the gate in front of `emulator`, accepting tokens `tokens` issued.
    pub fn start(emulator: &BqEmulator, tokens: &TokenEndpoint) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let state = Arc::new(Mutex::new(GateState::default()));
        let shared = Arc::clone(&state);
        let tokens = tokens.shared();
        let upstream = emulator.port;
        serve(listener, move |request, stream| {
            let live = request
                .headers
                .get("authorization")
                .and_then(|value| value.strip_prefix("Bearer "))
                .is_some_and(|token| tokens.is_live(token));
            {
                let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
                if !live {
                    state.refused += 1;
                    drop(state);
                    respond(
                        stream,
                        401,
                        &json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "errors": [{"reason": "authError", "message": "Invalid Credentials"}], "status": "UNAUTHENTICATED"}}),
                    );
                    return;
                }
                if !state.faults.is_empty() {
                    let (status, reason) = state.faults.remove(0);
                    state.faulted += 1;
                    drop(state);
                    respond(
                        stream,
                        status,
                        &json!({"error": {"code": status, "message": format!("injected {reason}"), "errors": [{"reason": reason, "message": format!("injected {reason}")}]}}),
                    );
                    return;
                }
                state.forwarded += 1;
                if request.method == "POST" && request.target.ends_with("/queries") {
                    state
                        .queries
                        .push(serde_json::from_slice(&request.body).unwrap_or(Value::Null));
                }
            }
            forward(upstream, &request, stream);
        });
        Self { port, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers the next requests (after the token check) with these errors, one each.
    pub fn fail_next(&self, faults: &[(u16, &str)]) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.faults.extend(
            faults
                .iter()
                .map(|(status, reason)| (*status, (*reason).to_owned())),
        );
    }

    /// The JSON bodies of the `jobs.query` calls passed to the emulator so far.
    pub fn queries(&self) -> Vec<Value> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queries
            .clone()
    }

    /// What the gate did so far.
    pub fn calls(&self) -> GateCalls {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        GateCalls {
            forwarded: state.forwarded,
            refused: state.refused,
            faulted: state.faulted,
        }
    }
}

/// Passes `request` to the emulator on `upstream` (without its `Authorization`) and its answer
/// back.
fn forward(upstream: u16, request: &Request, stream: &mut TcpStream) {
    let Ok(mut out) = TcpStream::connect(("127.0.0.1", upstream)) else {
        respond(
            stream,
            502,
            &json!({"error": {"message": "emulator unreachable"}}),
        );
        return;
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{upstream}\r\nContent-Length: {}\r\nConnection: close\r\n",
        request.method,
        request.target,
        request.body.len()
    );
    if let Some(kind) = request.headers.get("content-type") {
        head.push_str(&format!("Content-Type: {kind}\r\n"));
    }
    head.push_str("\r\n");
    let mut answer = Vec::new();
    let sent = out
        .write_all(head.as_bytes())
        .and_then(|()| out.write_all(&request.body))
        .and_then(|()| out.read_to_end(&mut answer));
    match (sent, split_response(&answer)) {
        (Ok(_), Some((status, _, body))) => {
            let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            respond(stream, status, &body);
        }
        _ => respond(
            stream,
            502,
            &json!({"error": {"message": "emulator gave no answer"}}),
        ),
    }
}
