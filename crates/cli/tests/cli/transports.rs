//! Events in and out of `gapless serve` beyond HTTP: a real nats-server (JetStream) and a
//! webhook receiver on loopback.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use gapless_server::nats::{self, NatsConfig};

use crate::serve::{Serve, cascade, eventually};
use crate::util::{Project, exec, scalar};

fn unique_config(url: &str) -> NatsConfig {
    let tag = format!("{:08x}", fastrand::u32(..));
    let mut config = NatsConfig::new(url);
    config.stream = format!("GAPLESS_CLI_{tag}");
    config.subject = format!("cli{tag}.events");
    config.completions_subject = format!("cli{tag}.completions");
    config.durable = format!("cli{tag}");
    config
}

fn nats_env(config: &NatsConfig) -> Vec<(&'static str, String)> {
    vec![
        ("GAPLESS_NATS_URL", config.url.clone()),
        ("GAPLESS_NATS_STREAM", config.stream.clone()),
        ("GAPLESS_NATS_SUBJECT", config.subject.clone()),
        (
            "GAPLESS_NATS_COMPLETIONS_SUBJECT",
            config.completions_subject.clone(),
        ),
        ("GAPLESS_NATS_DURABLE", config.durable.clone()),
    ]
}

/// The cascade pipeline with phase 2's table filled for 2024-03-01..20, on a NATS stream of its
/// own (`config`), and a subscription to its completions subject.
struct NatsScene {
    config: NatsConfig,
    project: Project,
    warehouse: sqlx::SqlitePool,
    client: async_nats::Client,
    completions: async_nats::Subscriber,
}

impl NatsScene {
    async fn new(url: &str) -> Self {
        let config = unique_config(url);
        let project = cascade().await;
        let warehouse = project.sqlite("warehouse.db").await;
        exec(
            &warehouse,
            "INSERT INTO loaded SELECT d, v FROM raw WHERE d BETWEEN '2024-03-01' AND '2024-03-20'",
        )
        .await;
        let client = async_nats::connect(url).await.unwrap();
        let completions = client
            .subscribe(config.completions_subject.clone())
            .await
            .unwrap();
        Self {
            config,
            project,
            warehouse,
            client,
            completions,
        }
    }

    /// The `GAPLESS_NATS_*` environment of `serve` for this stream.
    fn env(&self) -> Vec<(&'static str, String)> {
        nats_env(&self.config)
    }

    /// Deletes the stream.
    async fn finish(self) {
        self.warehouse.close().await;
        let js = async_nats::jetstream::new(self.client);
        js.delete_stream(&self.config.stream).await.unwrap();
    }
}

/// The completion messages read from `completions` until `expected` distinct event ids were
/// seen, or a minute passed: how many times each id came.
async fn completions_seen(
    completions: &mut async_nats::Subscriber,
    expected: i64,
) -> BTreeMap<String, usize> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seen.len() as i64) < expected && Instant::now() < deadline {
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(1), completions.next()).await
        {
            let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            *seen.entry(body["id"].to_string()).or_default() += 1;
        }
    }
    seen
}

#[tokio::test]
async fn nats_events_act_once_across_redeliveries_and_restarts_and_completions_go_out() {
    let Some(url) = gapless_testkit::external("GAPLESS_TEST_NATS_URL") else {
        return;
    };
    // Completions out are watched on the completions subject.
    let mut scene = NatsScene::new(&url).await;
    let (config, project, warehouse) = (&scene.config, &scene.project, &scene.warehouse);
    let env = scene.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let serve = Serve::start(project, &env);
    let bus = nats::connect(config).await.unwrap();
    let event = |date: &str| format!(r#"{{"phase": 2, "date": "{date}"}}"#).into_bytes();
    // The same message id three times (a publisher's retries), and ten distinct events.
    for _ in 0..3 {
        bus.publish(&config.subject, "load-2024-03-01", event("2024-03-01"))
            .await
            .unwrap();
    }
    for day in 2..=10 {
        let date = format!("2024-03-{day:02}");
        bus.publish(&config.subject, &format!("load-{date}"), event(&date))
            .await
            .unwrap();
    }
    bus.publish(&config.subject, "broken-1", b"{\"phase\": ".to_vec())
        .await
        .unwrap();
    let state = project.sqlite(".gapless/state.db").await;
    eventually("ten events from NATS", || async {
        scalar(&state, "SELECT COUNT(*) FROM events WHERE source = 'nats'").await == 10
    })
    .await;
    eventually("phase 3 for the ten dates", || async {
        scalar(warehouse, "SELECT COUNT(DISTINCT d) FROM daily").await == 10
    })
    .await;
    assert_eq!(
        scalar(
            &state,
            "SELECT COUNT(*) FROM quarantine WHERE source = 'nats'"
        )
        .await,
        1
    );
    assert_eq!(serve.stop(), 0);

    // A restarted serve goes on from the durable consumer: nothing acted on twice, and what
    // was published while it was down is acted on.
    for day in 11..=20 {
        let date = format!("2024-03-{day:02}");
        bus.publish(&config.subject, &format!("load-{date}"), event(&date))
            .await
            .unwrap();
    }
    // A redelivery of an early one with its id, after the restart.
    bus.publish(&config.subject, "load-2024-03-05", event("2024-03-05"))
        .await
        .unwrap();
    let serve = Serve::start(project, &env);
    eventually("phase 3 for the twenty dates", || async {
        scalar(warehouse, "SELECT COUNT(DISTINCT d) FROM daily").await == 20
    })
    .await;
    assert_eq!(
        scalar(&state, "SELECT COUNT(*) FROM events WHERE source = 'nats'").await,
        20,
        "every event stored once"
    );
    assert_eq!(
        scalar(
            &state,
            "SELECT COUNT(*) FROM (SELECT date FROM run_cells WHERE phase = 3 \
             GROUP BY date HAVING COUNT(*) > 1)"
        )
        .await,
        0,
        "no cell planned twice"
    );

    // Every event of the log went out on the completions subject, the phase-3 completions
    // included.
    let expected = scalar(&state, "SELECT COUNT(*) FROM events").await;
    let seen = completions_seen(&mut scene.completions, expected).await;
    assert_eq!(seen.len() as i64, expected, "{seen:?}");
    assert_eq!(serve.stop(), 0);
    scene.finish().await;
}

/// A webhook receiver: answers 503 to the first request, then 200, and keeps the bodies and
/// `Idempotency-Key`s of the accepted ones.
/// The accepted deliveries: `Idempotency-Key` and body.
pub(crate) type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

pub(crate) fn webhook() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&received);
    std::thread::spawn(move || {
        let mut first = true;
        for stream in listener.incoming().flatten() {
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let (mut length, mut key) = (0usize, String::new());
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    let header = header.trim_end().to_owned();
                    if header.is_empty() {
                        break;
                    }
                    let (name, value) = header.split_once(':').unwrap();
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap(),
                        "idempotency-key" => key = value.trim().to_owned(),
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let status = if first {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                if !first {
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    kept.lock().unwrap().push((key, body));
                }
                first = false;
                let _ = write!(writer, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        }
    });
    (url, received)
}

#[tokio::test]
async fn every_event_goes_to_the_webhook_once_in_order_after_a_refusal() {
    let project = cascade().await;
    let (url, received) = webhook();
    let serve = Serve::start(&project, &[("GAPLESS_EVENTS_WEBHOOK_URL", url.as_str())]);
    let output = project.run(&[
        "backfill",
        "--start-date",
        "2024-03-01",
        "--end-date",
        "2024-03-05",
        "--phases",
        "2",
        "--yes",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let state = project.sqlite(".gapless/state.db").await;
    // Five phase-2 completions from the backfill, five of phase 3 and five of phase 4 (a
    // window reaching before the pipeline's start needs nothing there) from the trigger.
    eventually("15 events delivered", || async {
        scalar(&state, "SELECT COUNT(*) FROM events").await == 15
            && received.lock().unwrap().len() == 15
    })
    .await;
    let received = received.lock().unwrap().clone();
    let ids: Vec<i64> = received
        .iter()
        .map(|(_, body)| body["id"].as_i64().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ids, sorted, "in order, each once");
    for (key, body) in &received {
        assert_eq!(key, &format!("gapless:cascade:{}", body["id"]));
        assert_eq!(body["status"], "complete");
    }
    let sources: Vec<&str> = received
        .iter()
        .map(|(_, b)| b["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources.iter().filter(|s| **s == "backfill").count(), 5);
    assert_eq!(sources.iter().filter(|s| **s == "trigger").count(), 10);
    assert_eq!(serve.stop(), 0);
}

/// Several nodes on one PostgreSQL take events from one NATS durable consumer: whichever node
/// a message reaches stores it in the shared event log, the leader plans the cells it makes
/// runnable, any node runs them, and every completion goes out on NATS.
#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_one_nats_consumer_and_act_on_each_event_once() {
    let Some(url) = gapless_testkit::external("GAPLESS_TEST_NATS_URL") else {
        return;
    };
    let Some(pg) = gapless_testkit::pg_url() else {
        return;
    };
    let db = gapless_testkit::fresh_pg_database(&pg).await.unwrap();
    let mut scene = NatsScene::new(&url).await;
    let (config, project, warehouse) = (&scene.config, &scene.project, &scene.warehouse);
    let text = std::fs::read_to_string(project.path().join("gapless.toml")).unwrap();
    project.write(
        "gapless.toml",
        &format!("{text}\n[state]\nurl = \"{}\"\n", db.url()),
    );
    let output = project.run(&["migrate"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let env = scene.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let nodes: Vec<Serve> = (0..3)
        .map(|_| Serve::start_after(project, &["--lease", "3s"], &env))
        .collect();
    let bus = nats::connect(config).await.unwrap();
    for day in 1..=20 {
        let date = format!("2024-03-{day:02}");
        let event = format!(r#"{{"phase": 2, "date": "{date}"}}"#).into_bytes();
        bus.publish(&config.subject, &format!("load-{date}"), event)
            .await
            .unwrap();
    }
    let state = sqlx::PgPool::connect(db.url()).await.unwrap();
    let pg_count = |query: &'static str| {
        let state = state.clone();
        async move {
            sqlx::query_scalar::<_, i64>(query)
                .fetch_one(&state)
                .await
                .unwrap()
        }
    };
    eventually("phase 3 for the twenty dates", || async {
        scalar(warehouse, "SELECT COUNT(DISTINCT d) FROM daily").await == 20
    })
    .await;
    assert_eq!(
        pg_count("SELECT COUNT(*) FROM events WHERE source = 'nats'").await,
        20,
        "every event stored once, whichever node took it"
    );
    assert_eq!(
        pg_count(
            "SELECT COUNT(*) FROM (SELECT phase, date FROM run_cells WHERE phase > 2 \
             GROUP BY phase, date HAVING COUNT(*) > 1) c"
        )
        .await,
        0,
        "no cell planned twice"
    );
    assert_eq!(
        scalar(
            warehouse,
            "SELECT COUNT(*) FROM (SELECT d FROM daily GROUP BY d HAVING COUNT(*) > 1)"
        )
        .await,
        0,
        "no phase-3 row written twice"
    );

    // Every event of the shared log goes out on the completions subject.
    let expected = pg_count("SELECT COUNT(*) FROM events").await;
    let seen = completions_seen(&mut scene.completions, expected).await;
    assert_eq!(seen.len() as i64, expected, "{seen:?}");
    for serve in nodes {
        assert_eq!(serve.stop(), 0);
    }
    state.close().await;
    scene.finish().await;
    db.drop_db().await.unwrap();
}
