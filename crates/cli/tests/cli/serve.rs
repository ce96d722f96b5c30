//! `gapless serve` as a user runs it: a real process on loopback, the state store shared with
//! `gapless backfill` run beside it, and the HTTP API spoken over TCP.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Project, exec, scalar};

/// Raw rows land (phase 1, a source); a loader copies them (2); a daily roll-up (3, batches of
/// up to 7 days); a rolling 3-day window over the roll-up (4).
const CASCADE: &str = r#"
[pipeline]
name = "cascade"
start = "2024-03-01"

[warehouse]
url = "sqlite://warehouse.db"

[[phase]]
id = 1
name = "raw"
check.sql = "SELECT d, COUNT(*) FROM raw WHERE d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 2
name = "load"
needs = [1]
run.sql = "DELETE FROM loaded WHERE d BETWEEN :start AND :end; INSERT INTO loaded SELECT d, v FROM raw WHERE d BETWEEN :start AND :end"
check.sql = "SELECT d, COUNT(*) FROM loaded WHERE d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 3
name = "daily"
needs = [2]
batch_days = 7
run.sql = "DELETE FROM daily WHERE d BETWEEN :start AND :end; INSERT INTO daily SELECT d, SUM(v) FROM loaded WHERE d BETWEEN :start AND :end GROUP BY d"
check.sql = "SELECT d, COUNT(*) FROM daily WHERE d BETWEEN :start AND :end GROUP BY d"

[[phase]]
id = 4
name = "rolling"
needs = [{ phase = 3, lookback_days = 2 }]
batch_days = 7
run.sql = "DELETE FROM rolling WHERE d BETWEEN :start AND :end; INSERT INTO rolling SELECT a.d, (SELECT SUM(b.total) FROM daily b WHERE b.d BETWEEN date(a.d, '-2 days') AND a.d) FROM daily a WHERE a.d BETWEEN :start AND :end"
check.sql = "SELECT d, COUNT(*) FROM rolling WHERE d BETWEEN :start AND :end GROUP BY d"
"#;

/// Raw rows for every day of March 2024 up to the 30th (today is the 31st).
pub(crate) async fn cascade() -> Project {
    cascade_from("2024-03-01").await
}

/// The cascade pipeline starting on `start`, with raw rows for every day from `start` to
/// March 30, 2024.
async fn cascade_from(start: &str) -> Project {
    let project = Project::new();
    project.write("gapless.toml", &CASCADE.replace("2024-03-01", start));
    let warehouse = project.sqlite("warehouse.db").await;
    exec(
        &warehouse,
        "CREATE TABLE raw (d TEXT, v INTEGER);
         CREATE TABLE loaded (d TEXT, v INTEGER);
         CREATE TABLE daily (d TEXT, total INTEGER);
         CREATE TABLE rolling (d TEXT, total INTEGER);
         WITH RECURSIVE days(d) AS (SELECT 'START' UNION ALL
             SELECT date(d, '+1 day') FROM days WHERE d < '2024-03-30')
         INSERT INTO raw SELECT d, 1 FROM days UNION ALL SELECT d, 2 FROM days;"
            .replace("START", start)
            .as_str(),
    )
    .await;
    warehouse.close().await;
    project
}

/// A running `gapless serve`, stopped with SIGTERM when dropped.
pub(crate) struct Serve {
    child: Child,
    base: String,
}

impl Serve {
    pub(crate) fn start(project: &Project, env: &[(&str, &str)]) -> Self {
        Self::start_with(project, &[], env)
    }

    /// `gapless ARGS… serve` with `env`.
    pub(crate) fn start_with(project: &Project, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_full(project, args, &[], env)
    }

    /// `gapless serve SERVE_ARGS…` with `env`.
    pub(crate) fn start_after(
        project: &Project,
        serve_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_full(project, &[], serve_args, env)
    }

    fn start_full(
        project: &Project,
        args: &[&str],
        serve_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut all = args.to_vec();
        all.extend(["serve", "--listen", "127.0.0.1:0"]);
        all.extend(serve_args);
        let mut command = project.command(&all);
        command.stderr(Stdio::piped()).stdout(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let first = lines.next().unwrap().unwrap();
        let base = first
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in `{first}`"))
            .to_owned();
        // Keep draining stderr so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, base }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` (with `token` as the bearer), its JSON body.
    pub(crate) async fn get_json(
        &self,
        http: &reqwest::Client,
        path: &str,
        token: Option<&str>,
    ) -> Value {
        let mut request = http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// `GET /metrics` as curl asks for it (no `Accept`): Prometheus's classic text format.
    pub(crate) async fn metrics(&self, http: &reqwest::Client) -> String {
        let response = http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4"),
        );
        response.text().await.unwrap()
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as the OOM killer or a crash would end it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status; -1 when it had to be killed (see [`terminate`]).
    pub(crate) fn stop(mut self) -> i32 {
        terminate(&mut self.child).code().unwrap_or(-1)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            terminate(&mut self.child);
        }
    }
}

/// How long a `serve` has to stop after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// SIGCONT (a test may have paused it) and SIGTERM, then waits for the exit; SIGKILL after
/// [`STOP_LIMIT`], so that a node that does not stop fails its test instead of hanging it.
fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    for signal in ["-CONT", "-TERM"] {
        let _ = std::process::Command::new("kill")
            .args([signal, &pid])
            .status();
    }
    let deadline = Instant::now() + STOP_LIMIT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("serve (pid {pid}) did not stop within {STOP_LIMIT:?} of SIGTERM; killed");
    let _ = child.kill();
    child.wait().unwrap()
}

pub(crate) fn client() -> reqwest::Client {
    gapless_connect::http_client().unwrap()
}

/// Backfills every phase from `start` to March 30.
pub(crate) fn backfill_all(project: &Project, start: &str) {
    let output = project.run(&[
        "backfill",
        "--start-date",
        start,
        "--end-date",
        "2024-03-30",
        "--yes",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

/// Waits until the trigger has read every event stored so far.
pub(crate) async fn trigger_caught_up(state: &sqlx::SqlitePool) {
    eventually("the trigger to catch up", || async {
        scalar(
            state,
            "SELECT COALESCE(MAX(event_id), 0) FROM consumers WHERE name = 'trigger'",
        )
        .await
            == scalar(state, "SELECT MAX(id) FROM events").await
    })
    .await;
}

/// Waits until `done` holds, for up to a minute.
pub(crate) async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn backfilling_phase_2_alone_is_enough_downstream_follows() {
    // Sixty days: January 31 to March 30.
    let project = cascade_from("2024-01-31").await;
    let serve = Serve::start(&project, &[]);
    let output = project.run(&[
        "backfill",
        "--start-date",
        "2024-01-31",
        "--end-date",
        "2024-03-30",
        "--phases",
        "2",
        "--yes",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    let warehouse = project.sqlite("warehouse.db").await;
    eventually("phases 3 and 4 to fill the sixty days", || async {
        scalar(&warehouse, "SELECT COUNT(DISTINCT d) FROM rolling").await == 60
            && scalar(&warehouse, "SELECT COUNT(DISTINCT d) FROM daily").await == 60
    })
    .await;
    // The rolling window of the 30th holds its two days before.
    assert_eq!(
        scalar(
            &warehouse,
            "SELECT total FROM rolling WHERE d = '2024-03-30'"
        )
        .await,
        9
    );
    let state = project.sqlite(".gapless/state.db").await;
    // Sixty phase-2 completions made phase 3 run in batches of up to 7 days, never once per
    // date.
    let daily_tasks = scalar(&state, "SELECT COUNT(*) FROM tasks WHERE phase = 3").await;
    println!("{daily_tasks} phase-3 tasks for 60 dates");
    assert!(
        (9..30).contains(&daily_tasks),
        "{daily_tasks} phase-3 tasks for 60 dates"
    );
    // Every cell ran once: no cell was planned by two triggers.
    assert_eq!(
        scalar(
            &state,
            "SELECT COUNT(*) FROM (SELECT phase, date FROM run_cells WHERE phase IN (3, 4) \
             GROUP BY phase, date HAVING COUNT(*) > 1)"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(
            &state,
            "SELECT COUNT(*) FROM runs WHERE kind = 'trigger' AND state <> 'succeeded'"
        )
        .await,
        0
    );

    // The status agrees: nothing missing up to the 30th.
    let status = project.run(&["status", "--end-date", "2024-03-30", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    for phase in status["phases"].as_array().unwrap() {
        assert_eq!(phase["complete"], 60, "{phase}");
    }
    assert_eq!(serve.stop(), 0);
}

#[tokio::test]
async fn an_event_from_the_live_pipeline_runs_what_it_makes_runnable() {
    let project = cascade().await;
    // Phase 2 done by hand for the 10th, as the live loader would, then reported.
    let warehouse = project.sqlite("warehouse.db").await;
    exec(
        &warehouse,
        "INSERT INTO loaded SELECT d, v FROM raw WHERE d BETWEEN '2024-03-08' AND '2024-03-10'",
    )
    .await;
    let serve = Serve::start(&project, &[]);
    let http = client();
    let answer = http
        .post(serve.url("/events"))
        .json(&json!([
            {"phase": 2, "date": "2024-03-08", "id": "load-8"},
            {"phase": "load", "date": "2024-03-09", "status": "complete", "id": "load-9"},
            {"phase": 2, "date": "2024-03-10", "id": "load-10"},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["stored"], 3, "{body}");
    // The same events again: stored once.
    let again: Value = http
        .post(serve.url("/events"))
        .json(&json!({"phase": 2, "date": "2024-03-10", "id": "load-10"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, json!({"stored": 0, "duplicates": 1, "ids": [null]}));

    eventually("phase 4 for the 10th", || async {
        scalar(
            &warehouse,
            "SELECT COUNT(*) FROM rolling WHERE d = '2024-03-10'",
        )
        .await
            == 1
    })
    .await;
    // Phase 3 ran for the three dates; phase 4 only where its window is whole (the 10th:
    // the 8th to the 10th), not the 8th or 9th, whose windows reach before the 8th.
    assert_eq!(scalar(&warehouse, "SELECT COUNT(*) FROM daily").await, 3);
    assert_eq!(
        scalar(&warehouse, "SELECT COUNT(*) FROM rolling").await,
        1,
        "the 8th and 9th wait for the 6th and 7th"
    );
    let runs = serve.get_json(&http, "/runs", None).await;
    let kinds: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.iter().all(|kind| *kind == "trigger"), "{kinds:?}");
    assert!(!kinds.is_empty());
    assert_eq!(serve.stop(), 0);
}

#[tokio::test]
async fn bad_requests_get_a_json_error_naming_the_field() {
    let project = cascade().await;
    let serve = Serve::start(&project, &[]);
    let http = client();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{".to_vec(), 400, "body"),
        (b"[]".to_vec(), 400, "body"),
        (br#"{"phase": 2}"#.to_vec(), 400, "date"),
        (
            br#"{"phase": 2, "date": "2024-02-30"}"#.to_vec(),
            400,
            "date",
        ),
        (br#"{"phase": 2, "date": "2024-3-1"}"#.to_vec(), 400, "date"),
        (
            br#"{"phase": 9, "date": "2024-03-01"}"#.to_vec(),
            400,
            "phase",
        ),
        (
            br#"{"phase": "lod", "date": "2024-03-01"}"#.to_vec(),
            400,
            "phase",
        ),
        (
            br#"{"phase": 2, "date": "2024-03-01", "status": "done"}"#.to_vec(),
            400,
            "status",
        ),
        (
            br#"{"phase": 2, "date": "2024-03-01", "colour": 1}"#.to_vec(),
            400,
            "colour",
        ),
        (
            br#"[{"phase": 2, "date": "2024-03-01"}, {"phase": 2}]"#.to_vec(),
            400,
            "[1].date",
        ),
        (vec![b' '; 1024 * 1024 + 1], 413, ""),
    ];
    for (body, status, field) in cases {
        let answer = http
            .post(serve.url("/events"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        assert_eq!(answer.status().as_u16(), status, "{shown}");
        let error: Value = answer.json().await.unwrap();
        assert!(error["error"].is_string(), "{shown}: {error}");
        if !field.is_empty() {
            assert_eq!(error["field"], field, "{shown}: {error}");
        }
    }
    for (path, body, field) in [
        (
            "/backfills",
            json!({"start_date": "2024-03-05"}),
            "end_date",
        ),
        (
            "/backfills",
            json!({"start_date": "2024-13-01", "end_date": "2024-03-05"}),
            "start_date",
        ),
        (
            "/backfills",
            json!({"start_date": "2024-03-05", "end_date": "2024-03-01"}),
            "end_date",
        ),
        (
            "/backfills",
            json!({"start_date": "2024-03-01", "end_date": "2024-03-02", "phases": [7]}),
            "phases",
        ),
        ("/scan-gaps", json!({"lookback": "soon"}), "lookback"),
        ("/scan-gaps", json!({"heal": "yes"}), "body"),
    ] {
        let answer = http.post(serve.url(path)).json(&body).send().await.unwrap();
        assert_eq!(answer.status(), 400, "{path} {body}");
        let error: Value = answer.json().await.unwrap();
        assert_eq!(error["field"], field, "{path} {body}: {error}");
    }
    let answer = http
        .get(serve.url("/gaps?status=closed"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let answer = http
        .get(serve.url("/backfills/no-such-run"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let answer = http.get(serve.url("/nowhere")).send().await.unwrap();
    assert_eq!(answer.status(), 404);
    // Nothing was stored by any of it.
    let state = project.sqlite(".gapless/state.db").await;
    assert_eq!(scalar(&state, "SELECT COUNT(*) FROM events").await, 0);
    assert_eq!(scalar(&state, "SELECT COUNT(*) FROM runs").await, 0);
    assert_eq!(serve.stop(), 0);
}

#[tokio::test]
async fn tokens_guard_every_route_but_healthz() {
    let project = cascade().await;
    let serve = Serve::start(
        &project,
        &[
            ("GAPLESS_API_TOKEN", "admin-secret"),
            ("GAPLESS_API_READ_TOKEN", "read-secret"),
        ],
    );
    let http = client();
    let event = json!({"phase": 2, "date": "2024-03-01"});
    assert_eq!(
        http.get(serve.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(serve.url("/runs")).send().await.unwrap().status(),
        401
    );
    let post = |token: &'static str| {
        http.post(serve.url("/events"))
            .bearer_auth(token)
            .json(&event)
            .send()
    };
    assert_eq!(post("wrong").await.unwrap().status(), 403);
    assert_eq!(
        post("read-secret").await.unwrap().status(),
        403,
        "the read token only reads"
    );
    let get = http
        .get(serve.url("/gaps"))
        .bearer_auth("read-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(post("admin-secret").await.unwrap().status(), 202);
    // Every route but /healthz, without a token and with a wrong one.
    for (method, path) in [
        ("GET", "/events"),
        ("GET", "/events?status=quarantined"),
        ("POST", "/events"),
        ("POST", "/events/pubsub"),
        ("POST", "/scan-gaps"),
        ("POST", "/backfills"),
        ("GET", "/backfills/20240101T000000-abcdef"),
        ("GET", "/runs"),
        ("GET", "/gaps"),
        ("GET", "/metrics"),
        ("GET", "/nowhere"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let bare = http
            .request(method.clone(), serve.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(bare.status(), 401, "{method} {path}");
        let wrong = http
            .request(method.clone(), serve.url(path))
            .bearer_auth("admin-secreT")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 403, "{method} {path}");
    }
    // A body that stops arriving is cut off: 408, not a connection held forever.
    let mut slow = tokio::net::TcpStream::connect(serve.base.trim_start_matches("http://"))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    slow.write_all(
        b"POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-secret\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"phase\"",
    )
    .await
    .unwrap();
    let mut answer = vec![0; 12];
    tokio::time::timeout(Duration::from_secs(20), slow.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 408");
    assert_eq!(serve.stop(), 0);

    // Listening beyond loopback without a token is refused before anything starts.
    let output = project
        .command(&["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("without GAPLESS_API_TOKEN"),
        "{output:?}"
    );
}

#[tokio::test]
async fn pubsub_pushes_act_once_and_malformed_ones_are_quarantined() {
    use base64::Engine as _;
    let project = cascade().await;
    let serve = Serve::start(&project, &[("GAPLESS_API_TOKEN", "admin-secret")]);
    let http = client();
    let push = |data: &[u8], id: &str| {
        json!({
            "message": {
                "data": base64::engine::general_purpose::STANDARD.encode(data),
                "attributes": {"origin": "loader"},
                "messageId": id,
                "publishTime": "2024-03-31T10:00:00Z",
            },
            "subscription": "projects/p/subscriptions/gapless",
        })
    };
    let send = |body: Value| {
        http.post(serve.url("/events/pubsub"))
            .bearer_auth("admin-secret")
            .json(&body)
            .send()
    };
    let event = br#"{"phase": 2, "date": "2024-03-05", "status": "complete"}"#;
    for _ in 0..100 {
        let answer = send(push(event, "m-1")).await.unwrap();
        assert_eq!(answer.status(), 200);
    }
    let quarantined = send(push(b"{\"phase\": 2", "m-2")).await.unwrap();
    assert_eq!(
        quarantined.status(),
        200,
        "acknowledged, so Pub/Sub stops redelivering"
    );
    let unknown = send(push(br#"{"phase": 8, "date": "2024-03-05"}"#, "m-3"))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 200);
    let no_envelope = send(json!({"subscription": "s"})).await.unwrap();
    assert_eq!(no_envelope.status(), 200);
    let refused = http
        .post(serve.url("/events/pubsub"))
        .json(&push(event, "m-4"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let state = project.sqlite(".gapless/state.db").await;
    assert_eq!(
        scalar(
            &state,
            "SELECT COUNT(*) FROM events WHERE source = 'pubsub'"
        )
        .await,
        1,
        "100 deliveries of one messageId act once"
    );
    let kept = serve
        .get_json(&http, "/events?status=quarantined", Some("admin-secret"))
        .await;
    let reasons: Vec<&str> = kept["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{kept}");
    assert!(
        reasons.iter().any(|r| r.contains("no phase has id 8")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("message.data")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("message")), "{reasons:?}");
    assert_eq!(serve.stop(), 0);
}

/// Deletes random cells of a middle phase of a filled warehouse: `scan` finds exactly those
/// (what the original plan's `LEFT JOIN … WHERE downstream IS NULL` finds on the same data),
/// and `scan --heal` restores them and everything downstream, closing their ledger rows.
#[tokio::test]
async fn scan_finds_exactly_the_deleted_cells_and_heal_restores_them_and_downstream() {
    let project = cascade().await;
    backfill_all(&project, "2024-03-01");
    let warehouse = project.sqlite("warehouse.db").await;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut days: Vec<u32> = (1..=30).collect();
    rng.shuffle(&mut days);
    let deleted: Vec<String> = days[..6]
        .iter()
        .map(|day| format!("2024-03-{day:02}"))
        .collect();
    for date in &deleted {
        exec(&warehouse, &format!("DELETE FROM daily WHERE d = '{date}'")).await;
        exec(
            &warehouse,
            &format!("DELETE FROM rolling WHERE d = '{date}'"),
        )
        .await;
    }
    let mut expected: Vec<String> = sqlx::query_scalar(
        "SELECT l.d FROM (SELECT DISTINCT d FROM loaded) l \
         LEFT JOIN (SELECT DISTINCT d FROM daily) x ON x.d = l.d \
         WHERE x.d IS NULL ORDER BY l.d",
    )
    .fetch_all(&warehouse)
    .await
    .unwrap();
    let mut sorted = deleted.clone();
    sorted.sort();
    assert_eq!(expected, sorted);

    let output = project.run(&["scan", "--lookback", "31d", "--json"]);
    assert_eq!(output.status.code(), Some(1), "gaps found");
    let scan: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut found: Vec<String> = scan["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|gap| {
            assert_eq!(gap["phase_to"], 3, "{gap}");
            gap["date"].as_str().unwrap().to_owned()
        })
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "exactly the deleted cells, nothing else");

    let output = project.run(&["scan", "--lookback", "31d", "--heal"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("healed 6 of 6 gaps"), "{text}");
    assert_eq!(
        scalar(&warehouse, "SELECT COUNT(DISTINCT d) FROM daily").await,
        30
    );
    assert_eq!(
        scalar(&warehouse, "SELECT COUNT(DISTINCT d) FROM rolling").await,
        30,
        "downstream restored too"
    );
    let state = project.sqlite(".gapless/state.db").await;
    assert_eq!(
        scalar(
            &state,
            "SELECT COUNT(*) FROM gaps WHERE healing_status = 'complete' AND attempts = 1 \
             AND run_id IS NOT NULL AND healed_at IS NOT NULL"
        )
        .await,
        6
    );
    let output = project.run(&["scan", "--lookback", "31d"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[tokio::test]
async fn post_scan_gaps_heals_and_the_ledger_follows() {
    let project = cascade().await;
    backfill_all(&project, "2024-03-01");
    let warehouse = project.sqlite("warehouse.db").await;
    let state = project.sqlite(".gapless/state.db").await;
    let serve = Serve::start(&project, &[]);
    // Once the trigger has read the backfill's events (nothing to do: all complete), three
    // cells are lost; no event says so, only a scan finds them.
    trigger_caught_up(&state).await;
    exec(
        &warehouse,
        "DELETE FROM daily WHERE d IN ('2024-03-10', '2024-03-11', '2024-03-20')",
    )
    .await;
    let http = client();
    // A scan alone: the ledger and the metrics both show the three gaps.
    let answer = http
        .post(serve.url("/scan-gaps"))
        .json(&json!({"lookback": "31d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let open = serve.get_json(&http, "/gaps", None).await;
    let open_3 = open["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|gap| gap["phase_to"] == 3)
        .count();
    assert_eq!(open_3, 3, "{open}");
    let text = serve.metrics(&http).await;
    assert!(
        text.lines()
            .any(|l| l == "gapless_gaps_open{phase=\"3\"} 3"),
        "{text}"
    );
    let answer = http
        .post(serve.url("/scan-gaps"))
        .json(&json!({"lookback": "31d", "heal": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["found"], 3, "{body}");
    assert_eq!(body["healed"]["gaps"], 3, "{body}");
    assert!(body["healed"]["run_id"].is_string(), "{body}");
    eventually("the three gaps closed in the ledger", || async {
        let gaps = serve.get_json(&http, "/gaps?status=complete", None).await;
        gaps["gaps"].as_array().unwrap().len() == 3
    })
    .await;
    assert_eq!(
        scalar(&warehouse, "SELECT COUNT(DISTINCT d) FROM daily").await,
        30
    );
    let open = serve.get_json(&http, "/gaps", None).await;
    assert_eq!(open["gaps"], json!([]));

    // Prometheus scrapes the same truth as the ledger and the runs.
    let metrics = http
        .get(serve.url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = metrics.text().await.unwrap();
    let complete_3 = scalar(
        &state,
        "SELECT COUNT(*) FROM tasks WHERE phase = 3 AND state = 'complete'",
    )
    .await;
    for line in [
        "gapless_heals_total{result=\"healed\"} 3".to_owned(),
        "gapless_gaps_open{phase=\"3\"} 0".to_owned(),
        "gapless_gaps_open{phase=\"1\"} 0".to_owned(),
        "gapless_gap_oldest_age_seconds 0".to_owned(),
        "gapless_scan_duration_seconds_count 2".to_owned(),
        format!("gapless_tasks_total{{phase=\"3\",status=\"complete\"}} {complete_3}"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "`{line}` missing from:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("gapless_task_duration_seconds_count{phase=\"3\"}")),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    // Without asking for OpenMetrics: the classic text format, which promtool checks.
    let classic = serve.metrics(&http).await;
    assert!(
        classic.contains("# TYPE gapless_heals_total counter"),
        "{classic}"
    );
    promtool_check(&classic);
    // Asked as Prometheus asks (`Accept-Encoding: gzip`): the same text, gzipped.
    let zipped = http
        .get(serve.url("/metrics"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let zipped = zipped.bytes().await.unwrap();
    let unzipped = gunzip(&zipped);
    assert!(zipped.len() < unzipped.len(), "{} bytes", zipped.len());
    promtool_check(&unzipped);
    assert_eq!(serve.stop(), 0);
}

/// `gzip -dc` of `bytes`, as text.
fn gunzip(bytes: &[u8]) -> String {
    use std::io::Write as _;
    let mut gzip = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    gzip.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = gzip.wait_with_output().unwrap();
    assert!(output.status.success(), "gzip -dc: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// `promtool check metrics` (Debian's `prometheus` package) passes `text`: it parses, and
/// breaks none of Prometheus's naming rules.
pub(crate) fn promtool_check(text: &str) {
    use std::io::Write as _;
    let promtool = std::env::var("GAPLESS_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let spawned = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = spawned else {
        gapless_testkit::skip("promtool (Debian's prometheus package)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// SIGTERM while a runner is running: the run is recorded interrupted, and the next `serve`
/// resumes it to the end.
#[tokio::test]
async fn a_stopped_serve_resumes_its_runs_on_the_next_start() {
    let project = Project::new();
    project.count_script();
    project.write(
        "gapless.toml",
        r#"
[pipeline]
name = "slow"
start = "2024-03-28"

[[phase]]
id = 1
name = "slow"
run.command = ["sh", "-c", "sleep 1.5; mkdir -p out; touch out/{date}"]
check.command = ["bin/count.sh", "out"]
"#,
    );
    let serve = Serve::start(&project, &[]);
    let http = client();
    let answer = http
        .post(serve.url("/backfills"))
        .json(&json!({"start_date": "2024-03-28", "end_date": "2024-03-30", "phases": "slow"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let body: Value = answer.json().await.unwrap();
    let run_id = body["run_id"].as_str().unwrap().to_owned();
    assert_eq!(body["cells"], 3, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(serve.stop(), 0);
    let state = project.sqlite(".gapless/state.db").await;
    let recorded: String = sqlx::query_scalar("SELECT state FROM runs WHERE id = ?")
        .bind(&run_id)
        .fetch_one(&state)
        .await
        .unwrap();
    assert_eq!(recorded, "interrupted");

    let serve = Serve::start(&project, &[]);
    eventually("the resumed run to succeed", || async {
        let run = serve
            .get_json(&http, &format!("/backfills/{run_id}"), None)
            .await;
        run["run"]["state"] == "succeeded"
    })
    .await;
    assert_eq!(
        std::fs::read_dir(project.path().join("out"))
            .unwrap()
            .count(),
        3
    );
    assert_eq!(serve.stop(), 0);
}

/// The original plan's P2 acceptance on the NBA example: the broken example (phase 2 loaded,
/// playoffs and a season of grading never reached downstream) heals itself once `serve` runs,
/// through the events of its phase-2 loads, with no backfill of phases 3 to 6.
#[tokio::test]
async fn the_nba_example_follows_its_phase_2_events_under_serve() {
    let project = Project::new();
    let dir = project.path().join("nba");
    let output = project
        .command(&["demo", "--dir", dir.to_str().unwrap(), "--no-backfill"])
        .env("GAPLESS_TODAY", "2025-07-01")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let pipeline = dir.join("gapless.toml");
    let pipeline = pipeline.to_str().unwrap();
    let downstream = || {
        let output = project
            .command(&[
                "--pipeline",
                pipeline,
                "status",
                "--phases",
                "3-6",
                "--json",
            ])
            .env("GAPLESS_TODAY", "2025-07-01")
            .output()
            .unwrap();
        let status: Value = serde_json::from_slice(&output.stdout).unwrap();
        status["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|phase| {
                phase["missing"].as_i64().unwrap()
                    + phase["partial"].as_i64().unwrap()
                    + phase["blocked"].as_i64().unwrap()
            })
            .sum::<i64>()
    };
    assert!(downstream() > 300, "the example starts broken");
    let serve = Serve::start_with(
        &project,
        &["--pipeline", pipeline],
        &[("GAPLESS_TODAY", "2025-07-01")],
    );
    eventually("phases 3 to 6 to be whole", || async { downstream() == 0 }).await;
    assert_eq!(serve.stop(), 0);
}

/// Pub/Sub push authenticated by Google's OIDC token instead of the API token: verified against
/// the configured JWKS (a file here), and a token for another audience changes nothing.
#[tokio::test]
async fn pubsub_push_with_googles_oidc_token() {
    use base64::Engine as _;
    use gapless_testkit::rsa::{RsaKey, jwks};
    let project = cascade().await;
    let key = RsaKey::generate();
    let jwks_file = project.write("keys/jwks.json", &jwks(&[("k1", &key)]));
    let account = "pusher@gapless-test.iam.gserviceaccount.com";
    let audience = "https://gapless.example.org/events/pubsub";
    let serve = Serve::start(
        &project,
        &[
            ("GAPLESS_API_TOKEN", "admin-secret"),
            ("GAPLESS_PUBSUB_AUDIENCE", audience),
            ("GAPLESS_PUBSUB_SERVICE_ACCOUNT", account),
            ("GAPLESS_PUBSUB_JWKS", jwks_file.to_str().unwrap()),
        ],
    );
    let token = |aud: &str| {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": "https://accounts.google.com", "aud": aud, "sub": "1", "email": account,
            "email_verified": true, "iat": now, "exp": now + 300,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("k1".to_owned());
        let signing = jsonwebtoken::EncodingKey::from_rsa_pem(&key.private_pem).unwrap();
        jsonwebtoken::encode(&header, &claims, &signing).unwrap()
    };
    let push = |id: &str| {
        json!({
            "message": {
                "data": base64::engine::general_purpose::STANDARD
                    .encode(br#"{"phase": 2, "date": "2024-03-05"}"#),
                "messageId": id,
            },
            "subscription": "projects/p/subscriptions/gapless",
        })
    };
    let http = client();
    let wrong = http
        .post(serve.url("/events/pubsub"))
        .bearer_auth(token("https://elsewhere.example.org"))
        .json(&push("m-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let state = project.sqlite(".gapless/state.db").await;
    assert_eq!(scalar(&state, "SELECT COUNT(*) FROM events").await, 0);
    let right = http
        .post(serve.url("/events/pubsub"))
        .bearer_auth(token(audience))
        .json(&push("m-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(
        scalar(
            &state,
            "SELECT COUNT(*) FROM events WHERE source = 'pubsub'"
        )
        .await,
        1
    );
    // The OIDC token opens this route only.
    let elsewhere = http
        .get(serve.url("/runs"))
        .bearer_auth(token(audience))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 403);
    assert_eq!(serve.stop(), 0);
}

/// Left running, `serve` heals what is recent by itself and tells a person, once, about the
/// rest: a scan every two seconds, a gap five days old and one fifty days old.
#[tokio::test]
async fn the_scheduler_heals_recent_gaps_and_alerts_old_ones_once() {
    let project = cascade_from("2024-01-31").await;
    let pipeline = std::fs::read_to_string(project.path().join("gapless.toml")).unwrap();
    project.write(
        "gapless.toml",
        &format!(
            "{pipeline}\n[healing]\nscan = \"*/2 * * * * *\"\nlookback = \"90d\"\nauto_heal_max_age = \"10d\"\n"
        ),
    );
    backfill_all(&project, "2024-01-31");
    let warehouse = project.sqlite("warehouse.db").await;
    let state = project.sqlite(".gapless/state.db").await;
    let serve = Serve::start(&project, &[]);
    trigger_caught_up(&state).await;
    exec(
        &warehouse,
        "DELETE FROM daily WHERE d IN ('2024-03-25', '2024-02-10');
         DELETE FROM rolling WHERE d IN ('2024-03-25', '2024-02-10');",
    )
    .await;
    eventually("the recent gap healed and the old one alerted", || async {
        scalar(&state, "SELECT COUNT(*) FROM gaps WHERE healing_status = 'complete' AND partition_date = '2024-03-25'").await == 1
            && scalar(&state, "SELECT COUNT(*) FROM gaps WHERE healing_status = 'alerted' AND partition_date = '2024-02-10'").await == 1
    })
    .await;
    // Healed through every downstream phase; the old one waits for a person.
    assert_eq!(
        scalar(
            &warehouse,
            "SELECT COUNT(*) FROM daily WHERE d = '2024-03-25'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &warehouse,
            "SELECT COUNT(*) FROM rolling WHERE d = '2024-03-25'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &warehouse,
            "SELECT COUNT(*) FROM daily WHERE d = '2024-02-10'"
        )
        .await,
        0
    );
    let alerted_at = scalar(
        &state,
        "SELECT alerted_at FROM gaps WHERE partition_date = '2024-02-10'",
    )
    .await;
    assert_eq!(serve.stop(), 0);

    // Restarted: more ticks go by, nothing is healed or alerted twice.
    let serve = Serve::start(&project, &[]);
    let before = scalar(&state, "SELECT last_at FROM ticks").await;
    eventually("two more ticks", || async {
        scalar(&state, "SELECT last_at FROM ticks").await >= before + 4_000
    })
    .await;
    assert_eq!(
        scalar(&state, "SELECT COUNT(*) FROM runs WHERE kind = 'heal'").await,
        1
    );
    assert_eq!(
        scalar(
            &state,
            "SELECT alerted_at FROM gaps WHERE partition_date = '2024-02-10'"
        )
        .await,
        alerted_at,
        "not alerted again within realert_after"
    );
    assert_eq!(
        scalar(&state, "SELECT COUNT(*) FROM gaps WHERE partition_date = '2024-03-25' AND attempts = 1 AND healed_at IS NOT NULL").await,
        1
    );
    assert_eq!(serve.stop(), 0);

    // A person reads the alert and asks.
    let output = project.run(&["heal", "--include-old"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        scalar(
            &warehouse,
            "SELECT COUNT(*) FROM daily WHERE d = '2024-02-10'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &state,
            "SELECT COUNT(*) FROM gaps WHERE healing_status <> 'complete'"
        )
        .await,
        0
    );
}

/// An alert recorded while its channel is down is not lost: `heal` keeps it in the outbox, a
/// `serve` killed -9 while still failing to send it loses nothing, and the next `serve`
/// delivers it once, through a refusal, and never again after a restart.
#[tokio::test]
async fn an_alert_survives_a_channel_that_is_down_and_goes_out_once() {
    let project = cascade_from("2024-01-31").await;
    let pipeline = std::fs::read_to_string(project.path().join("gapless.toml")).unwrap();
    project.write(
        "gapless.toml",
        &format!(
            "{pipeline}\n[healing]\nauto_heal_max_age = \"10d\"\n\n[alerts]\nwebhook_url_env = \"ALERT_HOOK\"\n"
        ),
    );
    backfill_all(&project, "2024-01-31");
    let warehouse = project.sqlite("warehouse.db").await;
    exec(&warehouse, "DELETE FROM daily WHERE d = '2024-02-10'").await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    };
    let output = project
        .command(&["heal"])
        .env("ALERT_HOOK", &closed)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "a gap is left for a person");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("1 gap needs a person"), "{text}");
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        errors.contains("1 alert message not delivered yet"),
        "{errors}"
    );
    let state = project.sqlite(".gapless/state.db").await;
    assert_eq!(
        scalar(
            &state,
            "SELECT COUNT(*) FROM alerts WHERE delivered_at IS NULL AND last_error IS NOT NULL"
        )
        .await,
        1
    );

    // A serve whose channel is still down tries again, and is killed -9 meanwhile.
    let mut doomed = Serve::start(&project, &[("ALERT_HOOK", closed.as_str())]);
    eventually("a second failed try", || async {
        scalar(&state, "SELECT attempts FROM alerts").await >= 2
    })
    .await;
    doomed.kill();
    assert_eq!(
        scalar(
            &state,
            "SELECT COUNT(*) FROM alerts WHERE delivered_at IS NULL"
        )
        .await,
        1
    );

    let (url, received) = crate::transports::webhook();
    let serve = Serve::start(&project, &[("ALERT_HOOK", url.as_str())]);
    eventually("the alert delivered", || async {
        scalar(
            &state,
            "SELECT COUNT(*) FROM alerts WHERE delivered_at IS NOT NULL",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(serve.stop(), 0);
    let serve = Serve::start(&project, &[("ALERT_HOOK", url.as_str())]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(serve.stop(), 0);
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "{received:?}");
    let (key, body) = &received[0];
    assert!(key.starts_with("gapless-alert-"), "{key}");
    assert_eq!(body["pipeline"], "cascade");
    assert_eq!(body["items"][0]["phase"], 3, "{body}");
    assert_eq!(body["items"][0]["dates"], json!(["2024-02-10"]), "{body}");
}
