//! Buckets on loopback for the files probe's `s3://` and `gs://` patterns.
//!
//! - [`Moto`]: a real S3-compatible server, `moto_server` from PyPI (`pip install 'moto[server]'`),
//!   started per test on a free port and killed when dropped.
//! - [`FakeGcs`]: Google Cloud Storage has no local emulator here, so this is a small server that
//!   speaks the two calls gapless makes, exactly as GCS answers them: the XML API's bucket listing
//!   (`GET /BUCKET?list-type=2&prefix=…&delimiter=/`, paged with `continuation-token`) and the
//!   object lookup (`HEAD /BUCKET/OBJECT`). It refuses any request whose bearer token is not a
//!   JWT issued by the service account it was given, so a test proves credentials were used.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::skip;

/// Environment variable naming the `moto_server` program (default: `moto_server` on `PATH`).
pub const MOTO_VAR: &str = "GAPLESS_MOTO_SERVER";

/// A `moto_server` process on a loopback port.
pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts `moto_server` and waits until it answers. `None` means skip (it is not installed),
    /// unless `GAPLESS_REQUIRE_EXTERNAL=1`, where that panics.
    pub fn start() -> Option<Self> {
        let program = std::env::var(MOTO_VAR).unwrap_or_else(|_| "moto_server".to_owned());
        let port = crate::free_port();
        let child = match Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(error) => {
                skip(&format!(
                    "`{program}` ({error}; `pip install 'moto[server]'`, or set {MOTO_VAR})"
                ));
                return None;
            }
        };
        let mut moto = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if request(port, "GET", "/", &[]).is_ok_and(|(status, _)| status == 200) {
                return Some(moto);
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("`{program}` exited before answering: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "`{program}` did not answer on port {port} within a minute"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = request(self.port, "PUT", &format!("/{bucket}"), &[])
            .unwrap_or_else(|error| panic!("create bucket `{bucket}`: {error}"));
        assert_eq!(status, 200, "create bucket `{bucket}`: {body}");
    }

    /// Stores an object.
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let (status, answer) = request(self.port, "PUT", &format!("/{bucket}/{key}"), body)
            .unwrap_or_else(|error| panic!("put `{bucket}/{key}`: {error}"));
        assert_eq!(status, 200, "put `{bucket}/{key}`: {answer}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One unsigned HTTP/1.1 request on loopback: its status and body.
fn request(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {answer:?}")))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// What a [`FakeGcs`] was asked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcsCalls {
    /// Listing pages served.
    pub list_pages: usize,
    /// Object lookups served.
    pub heads: usize,
    /// Requests refused for a missing or wrong bearer token.
    pub refused: usize,
}

struct GcsState {
    /// Object names per bucket.
    buckets: BTreeMap<String, Vec<String>>,
    calls: GcsCalls,
}

/// A loopback server answering GCS's XML listing and object lookups (see the module docs).
pub struct FakeGcs {
    port: u16,
    state: Arc<Mutex<GcsState>>,
}

/// Entries per listing page: small, so that a test walks several pages.
const GCS_PAGE: usize = 2;

impl FakeGcs {
    /// Starts the server. It accepts only bearer JWTs whose `iss` is `client_email`.
    pub fn start(client_email: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let state = Arc::new(Mutex::new(GcsState {
            buckets: BTreeMap::new(),
            calls: GcsCalls::default(),
        }));
        let (shared, issuer) = (Arc::clone(&state), client_email.to_owned());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (shared, issuer) = (Arc::clone(&shared), issuer.clone());
                std::thread::spawn(move || serve_gcs(stream, &shared, &issuer));
            }
        });
        Self { port, state }
    }

    /// `http://127.0.0.1:PORT`, for `STORAGE_EMULATOR_HOST`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Adds an object.
    pub fn put(&self, bucket: &str, name: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let objects = state.buckets.entry(bucket.to_owned()).or_default();
        objects.push(name.to_owned());
        objects.sort();
    }

    /// The calls served so far.
    pub fn calls(&self) -> GcsCalls {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .calls
            .clone()
    }
}

/// Serves one connection's requests (keep-alive) until the client closes it.
fn serve_gcs(stream: TcpStream, state: &Mutex<GcsState>, issuer: &str) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = BTreeMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
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
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let answer = answer_gcs(method, target, &headers, state, issuer);
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn answer_gcs(
    method: &str,
    target: &str,
    headers: &BTreeMap<String, String>,
    state: &Mutex<GcsState>,
    issuer: &str,
) -> String {
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let authorized = headers
        .get("authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(jwt_issuer)
        .is_some_and(|iss| iss == issuer);
    if !authorized {
        state.calls.refused += 1;
        return http(
            401,
            "application/xml",
            "<Error><Code>AuthenticationRequired</Code></Error>",
        );
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .splitn(2, '/')
        .map(percent_decode)
        .collect();
    match (method, segments.as_slice()) {
        ("GET", [bucket]) => {
            let query: BTreeMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let Some(objects) = state.buckets.get(bucket.as_str()) else {
                return http(
                    404,
                    "application/xml",
                    "<Error><Code>NoSuchBucket</Code></Error>",
                );
            };
            let body = list_page(bucket, objects, &query);
            state.calls.list_pages += 1;
            http(200, "application/xml", &body)
        }
        ("HEAD", [bucket, name]) => {
            state.calls.heads += 1;
            let exists = state
                .buckets
                .get(bucket.as_str())
                .is_some_and(|objects| objects.contains(name));
            if exists {
                // HEAD: the length of the body a GET would return, and no body.
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1\r\nETag: \"e1\"\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nx-goog-generation: 1\r\n\r\n".to_owned()
            } else {
                http(404, "application/xml", "")
            }
        }
        _ => http(400, "text/plain", "unsupported by this stand-in"),
    }
}

/// One page of `ListObjectsV2`-style XML for `objects` under `prefix`, grouped at `delimiter`.
fn list_page(bucket: &str, objects: &[String], query: &BTreeMap<String, String>) -> String {
    let prefix = query.get("prefix").map_or("", String::as_str);
    let delimiter = query.get("delimiter").map(String::as_str);
    // Objects and common prefixes, in name order, as one sequence to page through.
    let mut entries: Vec<(String, bool)> = Vec::new();
    for name in objects.iter().filter(|name| name.starts_with(prefix)) {
        let rest = &name[prefix.len()..];
        match delimiter.and_then(|d| rest.find(d).map(|at| (at, d.len()))) {
            Some((at, len)) => {
                let common = format!("{prefix}{}", &rest[..at + len]);
                if entries.last().is_none_or(|(last, _)| *last != common) {
                    entries.push((common, true));
                }
            }
            None => entries.push((name.clone(), false)),
        }
    }
    let first: usize = query
        .get("continuation-token")
        .and_then(|token| token.parse().ok())
        .unwrap_or(0);
    let page: Vec<_> = entries.iter().skip(first).take(GCS_PAGE).collect();
    let mut xml = format!(
        "<?xml version='1.0' encoding='UTF-8'?><ListBucketResult xmlns='http://doc.s3.amazonaws.com/2006-03-01'><Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>{}</KeyCount><MaxKeys>{GCS_PAGE}</MaxKeys>",
        page.len()
    );
    let next = first + page.len();
    xml.push_str(&format!(
        "<IsTruncated>{}</IsTruncated>",
        next < entries.len()
    ));
    if next < entries.len() {
        xml.push_str(&format!(
            "<NextContinuationToken>{next}</NextContinuationToken>"
        ));
    }
    for (name, is_prefix) in page {
        if *is_prefix {
            xml.push_str(&format!(
                "<CommonPrefixes><Prefix>{name}</Prefix></CommonPrefixes>"
            ));
        } else {
            xml.push_str(&format!(
                "<Contents><Key>{name}</Key><Generation>1</Generation><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>\"e1\"</ETag><Size>1</Size></Contents>"
            ));
        }
    }
    xml.push_str("</ListBucketResult>");
    xml
}

fn http(status: u16, content_type: &str, body: &str) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    answer.push_str("\r\n");
    answer.push_str(body);
    answer
}

/// The `iss` claim of a JWT, unverified: the test only needs to know whose token it is.
fn jwt_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["iss"].as_str().map(str::to_owned)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| {
            bytes
                .get(at..at + 2)
                .and_then(|pair| std::str::from_utf8(pair).ok())
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        };
        match (bytes[index], hex(index + 1)) {
            (b'%', Some(byte)) => {
                out.push(byte);
                index += 3;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A service-account key file, as `gcloud iam service-accounts keys create` writes it, with a
/// fresh RSA key (from `openssl`). Returns its JSON text.
pub fn service_account_json(client_email: &str) -> String {
    let output = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("run `openssl genpkey` (Debian package `openssl`)");
    assert!(output.status.success(), "openssl genpkey failed");
    let key = String::from_utf8(output.stdout).expect("PEM is text");
    serde_json::json!({
        "type": "service_account",
        "project_id": "gapless-test",
        "private_key_id": "0123456789abcdef",
        "private_key": key,
        "client_email": client_email,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    })
    .to_string()
}
