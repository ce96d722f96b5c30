//! Alert channels against real servers on loopback: an HTTP server that records what Slack and
//! the webhook receive and answers what the test scripts, a port that refuses, a server that
//! never answers, and Python's aiosmtpd for e-mail (`GAPLESS_AIOSMTPD_PYTHON`).
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::NaiveDate;
use gapless_core::spec::{Alerts, Email};
use gapless_server::alerts::{
    AlertItem, AlertMessage, AlertReason, Channel, ChannelError, DEFAULT_TIMEOUT, EmailChannel,
    channels_from, send,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn date(text: &str) -> NaiveDate {
    text.parse().unwrap()
}

fn days(first: &str, last: &str) -> Vec<NaiveDate> {
    date(first)
        .iter_days()
        .take_while(|d| *d <= date(last))
        .collect()
}

/// Two phases: 62 old dates in two ranges, and two dates whose heals gave up.
fn message() -> AlertMessage {
    let mut old = days("2024-04-16", "2024-06-16");
    old.push(date("2024-07-01"));
    AlertMessage {
        pipeline: "nba".to_owned(),
        items: vec![
            AlertItem {
                phase: 2,
                phase_name: "load".to_owned(),
                dates: old,
                oldest_age_days: 230,
                reason: AlertReason::TooOld { max_age_days: 30 },
            },
            AlertItem {
                phase: 3,
                phase_name: "report".to_owned(),
                dates: vec![date("2024-11-02"), date("2024-11-04")],
                oldest_age_days: 12,
                reason: AlertReason::GaveUp {
                    attempts: 3,
                    last_error: Some(
                        "exit status 2:\n  table <games> & friends\n missing".to_owned(),
                    ),
                },
            },
        ],
    }
}

#[test]
fn text_folds_consecutive_days_into_ranges() {
    let expected = "gapless `nba`: 65 gaps need a person\n\
        - phase 2 `load`: 2024-04-16..2024-06-16, 2024-07-01 (63 dates, oldest 230 days old); \
        older than 30 days: heal with `gapless heal --include-old`\n\
        - phase 3 `report`: 2024-11-02, 2024-11-04 (2 dates, oldest 12 days old); \
        failed 3 times: exit status 2: table <games> & friends missing\n";
    assert_eq!(message().text(), expected);
    assert_eq!(message().subject(), "gapless nba: 65 gaps need a person");

    // Across a leap day and a year's end, unsorted and with a duplicate.
    let item = AlertItem {
        phase: 1,
        phase_name: "extract".to_owned(),
        dates: vec![
            date("2025-01-01"),
            date("2024-02-29"),
            date("2024-02-28"),
            date("2024-12-31"),
            date("2024-03-01"),
            date("2024-03-01"),
            date("2024-03-03"),
        ],
        oldest_age_days: 1,
        reason: AlertReason::GaveUp {
            attempts: 1,
            last_error: None,
        },
    };
    let single = AlertMessage {
        pipeline: "p".to_owned(),
        items: vec![AlertItem {
            dates: vec![date("2024-05-05")],
            ..item.clone()
        }],
    };
    assert_eq!(
        single.text(),
        "gapless `p`: 1 gap needs a person\n\
         - phase 1 `extract`: 2024-05-05 (1 date, 1 day old); failed 1 time\n"
    );
    let text = AlertMessage {
        pipeline: "p".to_owned(),
        items: vec![item],
    }
    .text();
    assert!(
        text.contains(": 2024-02-28..2024-03-01, 2024-03-03, 2024-12-31..2025-01-01 ("),
        "{text}"
    );
}

#[test]
fn text_puts_the_last_error_on_one_line_cut_to_300_characters() {
    let error = format!("first line\n{}\n{}", "é".repeat(400), "tail that is cut");
    let message = AlertMessage {
        pipeline: "nba".to_owned(),
        items: vec![AlertItem {
            phase: 2,
            phase_name: "load".to_owned(),
            dates: vec![date("2024-01-01")],
            oldest_age_days: 3,
            reason: AlertReason::GaveUp {
                attempts: 3,
                last_error: Some(error),
            },
        }],
    };
    let text = message.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let shown = lines[1].split_once("failed 3 times: ").unwrap().1;
    assert_eq!(shown.chars().count(), 300);
    assert_eq!(
        shown,
        format!("first line {}…", "é".repeat(300 - "first line ".len() - 1))
    );
    assert!(!text.contains("tail"));
}

#[test]
fn slack_payload_keeps_to_50_blocks_and_3000_characters() {
    let item = |phase: u32| AlertItem {
        phase,
        phase_name: format!("phase{phase}"),
        dates: vec![date("2024-01-01"), date("2024-01-02")],
        oldest_age_days: 40,
        reason: AlertReason::TooOld { max_age_days: 30 },
    };
    let many = AlertMessage {
        pipeline: "nba".to_owned(),
        items: (1..=60).map(item).collect(),
    };
    let payload = many.slack_payload();
    let blocks = payload["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 50);
    assert_eq!(
        blocks[1]["text"]["text"],
        "*phase 1 `phase1`*: 2 dates, oldest 40 days old\n\
         older than 30 days: heal with `gapless heal --include-old`\n\
         2024-01-01..2024-01-02"
    );
    assert!(
        blocks[48]["text"]["text"]
            .as_str()
            .unwrap()
            .starts_with("*phase 48 `phase48`*")
    );
    assert_eq!(
        blocks[49]["text"]["text"],
        "… and 12 more, with 24 gaps: `gapless gaps --status alerted` lists them all"
    );
    assert_eq!(payload["text"], many.text());

    // 49 items fit with the header: no fold.
    let exactly = AlertMessage {
        pipeline: "nba".to_owned(),
        items: (1..=49).map(item).collect(),
    };
    let blocks = exactly.slack_payload()["blocks"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(blocks.len(), 50);
    assert!(
        blocks[49]["text"]["text"]
            .as_str()
            .unwrap()
            .starts_with("*phase 49 `phase49`*")
    );

    // Every other day for six years: the ranges alone are ~33,000 characters.
    let scattered = AlertMessage {
        pipeline: "nba".to_owned(),
        items: vec![AlertItem {
            dates: date("2019-01-01")
                .iter_days()
                .step_by(2)
                .take(2200)
                .collect(),
            ..item(7)
        }],
    };
    let payload = scattered.slack_payload();
    let section = payload["blocks"][1]["text"]["text"].as_str().unwrap();
    assert_eq!(section.chars().count(), 3000);
    assert!(section.starts_with("*phase 7 `phase7`*: 2200 dates"));
    assert!(section.ends_with('…'));
    for block in payload["blocks"].as_array().unwrap() {
        assert_eq!(block["type"], "section");
        assert_eq!(block["text"]["type"], "mrkdwn");
    }
}

#[test]
fn webhook_payload_is_structured() {
    let payload = message().webhook_payload();
    let mut old: Vec<String> = days("2024-04-16", "2024-06-16")
        .iter()
        .map(ToString::to_string)
        .collect();
    old.push("2024-07-01".to_owned());
    assert_eq!(
        payload,
        json!({
            "pipeline": "nba",
            "gaps": 65,
            "items": [
                {
                    "phase": 2,
                    "phase_name": "load",
                    "dates": old,
                    "ranges": [
                        {"start": "2024-04-16", "end": "2024-06-16"},
                        {"start": "2024-07-01", "end": "2024-07-01"},
                    ],
                    "oldest_age_days": 230,
                    "reason": {"kind": "too_old", "max_age_days": 30},
                },
                {
                    "phase": 3,
                    "phase_name": "report",
                    "dates": ["2024-11-02", "2024-11-04"],
                    "ranges": [
                        {"start": "2024-11-02", "end": "2024-11-02"},
                        {"start": "2024-11-04", "end": "2024-11-04"},
                    ],
                    "oldest_age_days": 12,
                    "reason": {
                        "kind": "gave_up",
                        "attempts": 3,
                        "last_error": "exit status 2:\n  table <games> & friends\n missing",
                    },
                },
            ],
        })
    );
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

fn all_alerts() -> Alerts {
    Alerts {
        slack_webhook_env: Some("SLACK_WEBHOOK_URL".to_owned()),
        webhook_url_env: Some("GAPLESS_WEBHOOK_URL".to_owned()),
        email: Some(Email {
            smtp: "smtp://127.0.0.1:2525".to_owned(),
            from: "gapless@example.org".to_owned(),
            to: vec!["data@example.org".to_owned()],
        }),
    }
}

#[test]
fn channels_come_from_the_alerts_table_and_the_environment() {
    let channels = channels_from(
        &all_alerts(),
        env(&[
            (
                "SLACK_WEBHOOK_URL",
                "https://hooks.slack.com/services/T/B/SECRET",
            ),
            (
                "GAPLESS_WEBHOOK_URL",
                "https://ops.example.org/hooks/gapless?token=abc",
            ),
            ("GAPLESS_SMTP_USERNAME", "mailer"),
            ("GAPLESS_SMTP_PASSWORD", "hunter2"),
        ]),
    )
    .unwrap();
    assert_eq!(channels.len(), 3);
    assert!(matches!(&channels[0], Channel::Slack { url, timeout }
        if url == "https://hooks.slack.com/services/T/B/SECRET" && *timeout == DEFAULT_TIMEOUT));
    assert!(matches!(&channels[1], Channel::Webhook { url, .. }
        if url == "https://ops.example.org/hooks/gapless?token=abc"));
    let Channel::Email(email) = &channels[2] else {
        panic!("{channels:?}")
    };
    assert_eq!(email.smtp, "smtp://127.0.0.1:2525");
    assert_eq!(email.to, ["data@example.org"]);
    assert_eq!(email.username.as_deref(), Some("mailer"));
    assert_eq!(email.password.as_deref(), Some("hunter2"));

    // Names and Debug show no secret.
    assert_eq!(channels[0].name(), "Slack webhook at hooks.slack.com");
    assert_eq!(channels[1].name(), "webhook https://ops.example.org");
    assert_eq!(channels[2].name(), "e-mail via smtp://127.0.0.1:2525");
    let debug = format!("{channels:?}");
    for secret in ["SECRET", "token=abc", "hunter2"] {
        assert!(!debug.contains(secret), "{debug}");
    }

    assert!(
        channels_from(&Alerts::default(), env(&[]))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn channels_from_names_what_is_missing_or_wrong() {
    let error = channels_from(
        &all_alerts(),
        env(&[("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/x")]),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "`[alerts] webhook_url_env` names env var `GAPLESS_WEBHOOK_URL`, which is not set"
    );
    assert!(!error.is_retryable());

    let slack_only = Alerts {
        slack_webhook_env: Some("SLACK_WEBHOOK_URL".to_owned()),
        ..Alerts::default()
    };
    let error = channels_from(&slack_only, env(&[("SLACK_WEBHOOK_URL", "")])).unwrap_err();
    assert!(matches!(
        error,
        ChannelError::EnvUnset {
            field: "slack_webhook_env",
            ..
        }
    ));
    let error = channels_from(
        &slack_only,
        env(&[("SLACK_WEBHOOK_URL", "ftp://hooks.slack.com/services/SECRET")]),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "Slack webhook at hooks.slack.com: the URL's scheme is `ftp`, not http or https"
    );

    let email_only = |smtp: &str, from: &str| Alerts {
        email: Some(Email {
            smtp: smtp.to_owned(),
            from: from.to_owned(),
            to: vec!["data@example.org".to_owned()],
        }),
        ..Alerts::default()
    };
    let error = channels_from(
        &email_only("smtp://127.0.0.1:2525", "gapless@example.org"),
        env(&[("GAPLESS_SMTP_USERNAME", "mailer")]),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "`GAPLESS_SMTP_USERNAME` is set but `GAPLESS_SMTP_PASSWORD` is not: SMTP credentials need both, or neither for a relay without authentication"
    );
    let error = channels_from(
        &email_only("http://127.0.0.1:2525", "gapless@example.org"),
        env(&[]),
    )
    .unwrap_err();
    assert!(error.to_string().contains("scheme `http`"), "{error}");
    let error = channels_from(
        &email_only("smtp://user:pw@mail.example.org", "gapless@example.org"),
        env(&[]),
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("set `GAPLESS_SMTP_USERNAME`"),
        "{error}"
    );
    assert!(!error.to_string().contains("pw@"), "{error}");
    let error = channels_from(
        &email_only("smtps://mail.example.org", "not an address"),
        env(&[]),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "e-mail via smtps://mail.example.org:465: `not an address` is not an e-mail address"
    );
}

/// One request as the server saw it.
struct Received {
    path: String,
    headers: HeaderMap,
    body: Value,
}

struct Recorder {
    statuses: Mutex<VecDeque<StatusCode>>,
    received: mpsc::UnboundedSender<Received>,
}

/// An HTTP server on loopback that answers the given statuses in turn (then 200) and hands
/// every request to the test.
async fn recording_server(statuses: &[u16]) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let recorder = Arc::new(Recorder {
        statuses: Mutex::new(
            statuses
                .iter()
                .map(|s| StatusCode::from_u16(*s).unwrap())
                .collect(),
        ),
        received: sender,
    });
    async fn record(
        State(recorder): State<Arc<Recorder>>,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, &'static str) {
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let path = uri.path().to_owned();
        recorder
            .received
            .send(Received {
                path,
                headers,
                body,
            })
            .unwrap();
        let status = recorder
            .statuses
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(StatusCode::OK);
        let body = if status.is_success() {
            "ok"
        } else {
            "invalid_payload\nsee docs"
        };
        (status, body)
    }
    let router = axum::Router::new()
        .fallback(axum::routing::post(record))
        .with_state(recorder);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{address}"), receiver)
}

#[tokio::test]
async fn slack_gets_text_and_blocks_and_a_500_is_retryable() {
    let (base, mut received) = recording_server(&[500, 400]).await;
    let channel = Channel::Slack {
        url: format!("{base}/services/T000/B000/SECRETTOKEN"),
        timeout: DEFAULT_TIMEOUT,
    };
    let message = message();

    let error = send(&channel, &message, "scan-1").await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    let host = base
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap();
    assert_eq!(
        error.to_string(),
        format!("Slack webhook at {host}: answered HTTP 500: invalid_payload see docs")
    );
    assert!(!format!("{error:?}").contains("SECRETTOKEN"));
    let first = received.recv().await.unwrap();

    let error = send(&channel, &message, "scan-1").await.unwrap_err();
    assert!(
        matches!(error, ChannelError::Status { status: 400, .. }),
        "{error}"
    );
    assert!(!error.is_retryable(), "{error}");
    received.recv().await.unwrap();

    send(&channel, &message, "scan-1").await.unwrap();
    let delivered = received.recv().await.unwrap();
    assert_eq!(delivered.path, "/services/T000/B000/SECRETTOKEN");
    assert_eq!(delivered.body, first.body);
    assert_eq!(delivered.headers["content-type"], "application/json");
    assert!(delivered.headers.get("idempotency-key").is_none());
    assert_eq!(
        delivered.body,
        json!({
            "text": "gapless `nba`: 65 gaps need a person\n\
                - phase 2 `load`: 2024-04-16..2024-06-16, 2024-07-01 (63 dates, oldest 230 days old); \
                older than 30 days: heal with `gapless heal --include-old`\n\
                - phase 3 `report`: 2024-11-02, 2024-11-04 (2 dates, oldest 12 days old); \
                failed 3 times: exit status 2: table &lt;games&gt; &amp; friends missing\n",
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": "*gapless `nba`: 65 gaps need a person*"}},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": "*phase 2 `load`*: 63 dates, oldest 230 days old\n\
                        older than 30 days: heal with `gapless heal --include-old`\n\
                        2024-04-16..2024-06-16, 2024-07-01"}},
                {"type": "section", "text": {"type": "mrkdwn",
                    "text": "*phase 3 `report`*: 2 dates, oldest 12 days old\n\
                        failed 3 times: exit status 2: table &lt;games&gt; &amp; friends missing\n\
                        2024-11-02, 2024-11-04"}},
            ],
        })
    );
}

#[tokio::test]
async fn webhook_gets_the_structured_payload_and_the_idempotency_key() {
    let (base, mut received) = recording_server(&[503]).await;
    let channel = Channel::Webhook {
        url: format!("{base}/hooks/gapless?token=abc"),
        timeout: DEFAULT_TIMEOUT,
    };
    let message = message();
    let error = send(&channel, &message, "scan-42/alert-7")
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert_eq!(
        error.to_string(),
        format!("webhook {base}: answered HTTP 503: invalid_payload see docs")
    );
    send(&channel, &message, "scan-42/alert-7").await.unwrap();
    for _ in 0..2 {
        let delivered = received.recv().await.unwrap();
        assert_eq!(delivered.path, "/hooks/gapless");
        assert_eq!(delivered.headers["idempotency-key"], "scan-42/alert-7");
        assert_eq!(delivered.body, message.webhook_payload());
        assert_eq!(delivered.body["items"][1]["reason"]["kind"], "gave_up");
    }
}

#[tokio::test]
async fn a_refused_connection_is_retryable_and_names_the_host() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let channel = Channel::Webhook {
        url: format!("http://127.0.0.1:{port}/hook?token=abc"),
        timeout: DEFAULT_TIMEOUT,
    };
    let error = send(&channel, &message(), "k").await.unwrap_err();
    assert!(matches!(error, ChannelError::Connect { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert_eq!(
        error.to_string(),
        format!("webhook http://127.0.0.1:{port}: could not connect")
    );
    let chain = format!("{:?}", anyhow::Error::new(error));
    assert!(!chain.contains("token=abc"), "{chain}");
}

#[tokio::test]
async fn a_server_that_does_not_answer_times_out_retryably() {
    // Accepts connections and reads nothing, answers nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (held_sender, mut held) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            held_sender.send(stream).unwrap();
        }
    });
    let timeout = Duration::from_millis(300);
    let channel = Channel::Slack {
        url: format!("http://{address}/services/SECRET"),
        timeout,
    };
    let started = Instant::now();
    let error = send(&channel, &message(), "k").await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert!(
        matches!(error, ChannelError::Timeout { after, .. } if after == timeout),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(
        error.to_string(),
        "Slack webhook at 127.0.0.1: no answer within 300ms"
    );
    // The request did reach the server.
    assert!(held.try_recv().is_ok());
}

/// aiosmtpd writing what it receives into a Maildir; ended when dropped.
struct SmtpServer {
    port: u16,
    maildir: tempfile::TempDir,
    _child: tokio::process::Child,
}

async fn aiosmtpd(python: &str, tls: Option<(&Path, &Path)>) -> SmtpServer {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let maildir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(python);
    command.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
    if let Some((cert, key)) = tls {
        command
            .arg("--tlscert")
            .arg(cert)
            .arg("--tlskey")
            .arg(key)
            .arg("--no-requiretls");
    }
    command
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir.path().join("mail"))
        .kill_on_drop(true);
    // Its log (a failed TLS handshake prints a traceback there) is read only when it fails.
    let log_path = maildir.path().join("aiosmtpd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    command.stdout(log.try_clone().unwrap()).stderr(log);
    let child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "aiosmtpd did not listen on {port}: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    SmtpServer {
        port,
        maildir,
        _child: child,
    }
}

impl SmtpServer {
    fn delivered(&self) -> Vec<std::path::PathBuf> {
        match std::fs::read_dir(self.maildir.path().join("mail/new")) {
            Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn email_channel(smtp: String) -> Channel {
    Channel::Email(EmailChannel {
        smtp,
        from: "gapless@example.org".to_owned(),
        to: vec![
            "data@example.org".to_owned(),
            "oncall@example.org".to_owned(),
        ],
        username: None,
        password: None,
        timeout: Duration::from_secs(10),
    })
}

#[tokio::test]
async fn email_is_delivered_over_smtp() {
    let Some(python) = gapless_testkit::external("GAPLESS_AIOSMTPD_PYTHON") else {
        return;
    };
    let server = aiosmtpd(&python, None).await;
    let message = message();
    let channel = email_channel(format!("smtp://127.0.0.1:{}", server.port));
    send(&channel, &message, "scan-42/alert 7").await.unwrap();

    let delivered = server.delivered();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    // Python's own e-mail parser reads the message back: headers decoded, body un-encoded.
    let parse = "import email, json, sys\n\
        m = email.message_from_binary_file(open(sys.argv[1], 'rb'))\n\
        print(json.dumps({k: m[k] for k in ['From', 'To', 'Subject', 'Message-ID', 'X-MailFrom', 'X-RcptTo', 'Content-Type']} \
        | {'body': m.get_payload(decode=True).decode(m.get_content_charset())}))";
    let output = std::process::Command::new(&python)
        .args(["-c", parse])
        .arg(&delivered[0])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let mail: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(mail["From"], "gapless@example.org");
    assert_eq!(mail["To"], "data@example.org, oncall@example.org");
    assert_eq!(mail["X-MailFrom"], "gapless@example.org");
    assert_eq!(mail["X-RcptTo"], "data@example.org, oncall@example.org");
    assert_eq!(mail["Subject"], "gapless nba: 65 gaps need a person");
    assert_eq!(
        mail["Message-ID"],
        "<gapless.scan-42=2Falert=207@example.org>"
    );
    assert_eq!(mail["Content-Type"], "text/plain; charset=utf-8");
    // SMTP's end of data adds a line break of its own.
    assert_eq!(
        mail["body"]
            .as_str()
            .unwrap()
            .replace("\r\n", "\n")
            .trim_end(),
        message.text().trim_end()
    );
}

#[tokio::test]
async fn email_tries_starttls_when_offered_and_refuses_an_untrusted_certificate() {
    let Some(python) = gapless_testkit::external("GAPLESS_AIOSMTPD_PYTHON") else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (cert, key) = (keys.path().join("cert.pem"), keys.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let server = aiosmtpd(&python, Some((&cert, &key))).await;
    let channel = email_channel(format!("smtp://127.0.0.1:{}", server.port));

    let error = send(&channel, &message(), "k").await.unwrap_err();
    // The server offered STARTTLS, so the mail went no further than the TLS handshake, which a
    // self-signed certificate fails; no fallback to clear text.
    assert!(matches!(error, ChannelError::Smtp { .. }), "{error:?}");
    assert!(!error.is_retryable(), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "e-mail via smtp://127.0.0.1:{}: SMTP delivery failed",
            server.port
        )
    );
    let chain = format!("{:#}", anyhow::Error::new(error));
    assert!(chain.contains("invalid peer certificate"), "{chain}");
    assert!(server.delivered().is_empty());
}

#[tokio::test]
async fn an_smtp_server_that_refuses_is_retryable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let error = send(
        &email_channel(format!("smtp://127.0.0.1:{port}")),
        &message(),
        "k",
    )
    .await
    .unwrap_err();
    assert!(matches!(error, ChannelError::Smtp { .. }), "{error:?}");
    assert!(error.is_retryable(), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("e-mail via smtp://127.0.0.1:{port}: SMTP delivery failed")
    );
}
