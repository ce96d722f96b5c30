//! The HTTP runner against a small HTTP/1.1 server on loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gapless_connect::{HttpSpec, Method, RunError, http_client, run_http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::support::script;

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Clone, Copy)]
enum Behaviour {
    Answer(u16, &'static str),
    /// Read the request, then never answer.
    Hang,
}

/// A server that records requests; it stops when dropped.
struct Server {
    address: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self._task.abort();
    }
}

impl Server {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            // Connections live as long as the server task: aborting it drops the set.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = Arc::clone(&recorded);
                connections.spawn(handle(stream, behaviour, recorded));
            }
        });
        Self {
            address,
            requests,
            _task: task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn handle(mut stream: TcpStream, behaviour: Behaviour, recorded: Arc<Mutex<Vec<Recorded>>>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[header_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    recorded.lock().unwrap().push(Recorded {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    match behaviour {
        Behaviour::Answer(status, text) => {
            let response = format!(
                "HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Behaviour::Hang => std::future::pending::<()>().await,
    }
}

fn spec(url: String, dir: &std::path::Path) -> HttpSpec {
    HttpSpec {
        method: Method::POST,
        url,
        body: Some(r#"{"start_date":"2024-01-01","end_date":"2024-01-31"}"#.into()),
        headers: vec![("X-Phase".into(), "analytics".into())],
        token_command: None,
        timeout: Duration::from_secs(20),
        idempotency_key: "run-7/phase-3/2024-01-01".into(),
        cwd: dir.to_owned(),
    }
}

#[tokio::test]
async fn success_sends_token_key_and_json_body() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = http_client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "token.sh", "printf '  secret-token-123\\n\\n'");
    let server = Server::start(Behaviour::Answer(200, "{\"accepted\":true}")).await;
    let mut spec = HttpSpec {
        token_command: Some(vec!["./token.sh".into()]),
        ..spec(server.url("/start"), dir.path())
    };
    // The runner's own headers win over the spec's.
    spec.headers
        .push(("Authorization".into(), "Bearer stale".into()));
    spec.headers
        .push(("Idempotency-Key".into(), "from-the-spec".into()));
    let outcome = run_http(&spec, &client).await.unwrap();
    assert_eq!(outcome.status, 200);
    assert_eq!(outcome.body_tail, "{\"accepted\":true}");

    // A retry sends the same idempotency key.
    run_http(&spec, &client).await.unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/start");
        assert_eq!(
            request.header("authorization"),
            Some("Bearer secret-token-123")
        );
        assert_eq!(
            request.header("idempotency-key"),
            Some("run-7/phase-3/2024-01-01")
        );
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("x-phase"), Some("analytics"));
        assert_eq!(
            request.body,
            r#"{"start_date":"2024-01-01","end_date":"2024-01-31"}"#
        );
    }
}

#[tokio::test]
async fn get_without_body_has_no_content_type() {
    let client = http_client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Behaviour::Answer(204, "")).await;
    let spec = HttpSpec {
        method: Method::GET,
        body: None,
        ..spec(server.url("/ping?x=1"), dir.path())
    };
    let outcome = run_http(&spec, &client).await.unwrap();
    assert_eq!(outcome.status, 204);
    let requests = server.requests();
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/ping?x=1");
    assert_eq!(requests[0].header("content-type"), None);
    assert!(requests[0].header("authorization").is_none());
}

#[tokio::test]
async fn statuses_decide_retries() {
    let client = http_client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (status, retryable) in [
        (503, true),
        (500, true),
        (429, true),
        (400, false),
        (404, false),
        (302, false),
    ] {
        let server = Server::start(Behaviour::Answer(status, "details of the failure")).await;
        let error = run_http(&spec(server.url("/start"), dir.path()), &client)
            .await
            .unwrap_err();
        match &error {
            RunError::HttpStatus {
                status: got,
                body_tail,
                retryable: got_retryable,
            } => {
                assert_eq!(*got, status);
                assert_eq!(body_tail, "details of the failure");
                assert_eq!(*got_retryable, retryable, "{status}");
            }
            other => panic!("{status}: expected an HTTP status error, got {other:?}"),
        }
        assert_eq!(error.is_retryable(), retryable, "{status}");
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let client = http_client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Behaviour::Hang).await;
    let spec = HttpSpec {
        timeout: Duration::from_millis(500),
        ..spec(server.url("/start"), dir.path())
    };
    let started = std::time::Instant::now();
    let error = run_http(&spec, &client).await.unwrap_err();
    assert!(matches!(error, RunError::Timeout { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5));
    // The request did arrive.
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn transport_and_spec_errors() {
    let client = http_client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on: connection refused, worth a retry.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let error = run_http(&spec(format!("http://{closed}/start"), dir.path()), &client)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            RunError::Http {
                retryable: true,
                ..
            }
        ),
        "{error:?}"
    );

    // The token command's failure is reported as such, with its stderr.
    script(dir.path(), "token.sh", "echo 'not logged in' >&2\nexit 1");
    let spec_with_token = HttpSpec {
        token_command: Some(vec!["./token.sh".into()]),
        ..spec(format!("http://{closed}/start"), dir.path())
    };
    let error = run_http(&spec_with_token, &client).await.unwrap_err();
    assert!(matches!(error, RunError::TokenCommand { .. }), "{error:?}");
    assert_eq!(error.output_tail(), Some("not logged in\n"));
    script(dir.path(), "empty.sh", "true");
    let spec_with_empty_token = HttpSpec {
        token_command: Some(vec!["./empty.sh".into()]),
        ..spec(format!("http://{closed}/start"), dir.path())
    };
    let error = run_http(&spec_with_empty_token, &client).await.unwrap_err();
    assert!(matches!(error, RunError::EmptyToken), "{error:?}");

    for url in ["ftp://127.0.0.1/x", "not a url"] {
        let error = run_http(&spec(url.into(), dir.path()), &client)
            .await
            .unwrap_err();
        assert!(
            matches!(error, RunError::InvalidRequest { .. }),
            "{url}: {error:?}"
        );
        assert!(!error.is_retryable());
    }
    let bad_header = HttpSpec {
        headers: vec![("X-Bad".into(), "line\nbreak".into())],
        ..spec(format!("http://{closed}/start"), dir.path())
    };
    let error = run_http(&bad_header, &client).await.unwrap_err();
    assert!(
        matches!(error, RunError::InvalidRequest { .. }),
        "{error:?}"
    );
    assert!(!error.to_string().contains("line"), "{error}");
}
