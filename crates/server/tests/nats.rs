//! The JetStream bus against a real nats-server (`GAPLESS_TEST_NATS_URL`, started by `.ci/run`).
//!
//! Every test gets its own stream, subjects and durable (a unique suffix) and deletes the stream
//! at the end, also when an assertion fails.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures::FutureExt as _;
use gapless_server::nats::{Delivery, NatsBus, NatsConfig, NatsError, connect};
use tokio_util::sync::CancellationToken;

/// A consume that has not seen what it waits for by then has failed.
const DEADLINE: Duration = Duration::from_secs(60);

fn nats_url() -> Option<String> {
    gapless_testkit::external("GAPLESS_TEST_NATS_URL")
}

/// Names no other test (or earlier run) uses.
fn unique_config(url: &str) -> NatsConfig {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let suffix = format!(
        "{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    NatsConfig {
        url: url.to_owned(),
        stream: format!("GAPLESS_TEST_{suffix}"),
        subject: format!("gapless.test.{suffix}.events"),
        durable: format!("gapless_test_{suffix}"),
        completions_subject: format!("gapless.test.{suffix}.completions"),
    }
}

/// A plain JetStream context, to look at the stream the way an operator would.
async fn inspector(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

/// Runs `body` with a fresh bus, then deletes its stream whether `body` passed or panicked.
async fn with_bus<B, Fut>(url: &str, body: B)
where
    B: FnOnce(NatsBus, jetstream::Context) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = unique_config(url);
    let bus = connect(&config).await.unwrap();
    let js = inspector(url).await;
    let outcome = AssertUnwindSafe(body(bus, js.clone())).catch_unwind().await;
    js.delete_stream(&config.stream).await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn stored_messages(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

async fn consumer_info(js: &jetstream::Context, config: &NatsConfig) -> jetstream::consumer::Info {
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream(&config.stream)
        .await
        .unwrap()
        .get_consumer(&config.durable)
        .await
        .unwrap();
    consumer.info().await.unwrap().clone()
}

/// Runs `bus.consume` until the handler cancels it, failing the test after [`DEADLINE`].
async fn consume_until_cancelled<F, Fut>(bus: &NatsBus, handler: F, cancel: CancellationToken)
where
    F: Fn(Delivery) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    tokio::time::timeout(DEADLINE, bus.consume(handler, cancel))
        .await
        .expect("the consumer did not see what the test waits for in time")
        .unwrap();
}

#[tokio::test]
async fn the_same_message_id_is_stored_once() {
    let Some(url) = nats_url() else { return };
    with_bus(&url, |bus, js| async move {
        let config = bus.config().clone();
        bus.publish(&config.subject, "evt-1", b"first".to_vec())
            .await
            .unwrap();
        bus.publish(&config.subject, "evt-1", b"second".to_vec())
            .await
            .unwrap();
        // Without a Nats-Msg-Id the stream sequence is the key.
        js.publish(config.subject.clone(), "third".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(stored_messages(&js, &config.stream).await, 2);
        let stream = js.get_stream(&config.stream).await.unwrap();
        let stored = &stream.cached_info().config;
        assert_eq!(stored.duplicate_window, Duration::from_secs(120));
        assert_eq!(stored.storage, jetstream::stream::StorageType::File);
        assert_eq!(
            stored.subjects,
            vec![config.subject.clone(), config.completions_subject.clone()]
        );

        // Connecting again finds the stream and updates it in place; nothing is lost.
        connect(&config).await.unwrap();
        assert_eq!(stored_messages(&js, &config.stream).await, 2);

        let seen = Mutex::new(Vec::new());
        let cancel = CancellationToken::new();
        let handler = |delivery: Delivery| {
            let (seen, cancel) = (&seen, &cancel);
            async move {
                let mut seen = seen.lock().unwrap();
                seen.push((delivery.dedup_key, delivery.payload));
                if seen.len() == 2 {
                    cancel.cancel();
                }
                Ok(())
            }
        };
        consume_until_cancelled(&bus, handler, cancel.clone()).await;
        assert_eq!(
            seen.into_inner().unwrap(),
            vec![
                ("evt-1".to_owned(), b"first".to_vec()),
                (format!("nats:{}:2", config.stream), b"third".to_vec()),
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn a_failed_message_is_redelivered_and_acted_on_once() {
    let Some(url) = nats_url() else { return };
    with_bus(&url, |bus, js| async move {
        let config = bus.config().clone();
        let ids: Vec<String> = (0..5).map(|i| format!("evt-{i}")).collect();
        for id in &ids {
            bus.publish(&config.subject, id, id.clone().into_bytes())
                .await
                .unwrap();
        }

        #[derive(Default)]
        struct Seen {
            attempts: HashMap<String, u32>,
            /// dedup key -> the `redelivered` of each successful handling.
            successes: HashMap<String, Vec<u64>>,
        }
        let seen = Mutex::new(Seen::default());
        let cancel = CancellationToken::new();
        let handler = |delivery: Delivery| {
            let (seen, cancel) = (&seen, &cancel);
            async move {
                let mut seen = seen.lock().unwrap();
                assert_eq!(delivery.payload, delivery.dedup_key.as_bytes());
                let attempt = seen.attempts.entry(delivery.dedup_key.clone()).or_default();
                *attempt += 1;
                if *attempt == 1 {
                    return Err("the store is down (first attempt)".to_owned());
                }
                seen.successes
                    .entry(delivery.dedup_key)
                    .or_default()
                    .push(delivery.redelivered);
                if seen.successes.len() == 5 {
                    cancel.cancel();
                }
                Ok(())
            }
        };
        consume_until_cancelled(&bus, handler, cancel.clone()).await;

        let seen = seen.into_inner().unwrap();
        for id in &ids {
            assert_eq!(seen.attempts[id], 2, "attempts of {id}");
            assert_eq!(
                seen.successes[id],
                vec![1],
                "successes of {id} (and their redelivered)"
            );
        }
        // Everything is acknowledged on the server: nothing more will come.
        let info = consumer_info(&js, &config).await;
        assert_eq!(info.num_ack_pending, 0);
        assert_eq!(info.num_pending, 0);
        assert_eq!(info.num_redelivered, 0);
        assert_eq!(info.ack_floor.stream_sequence, 5);
    })
    .await;
}

#[tokio::test]
async fn a_restarted_consumer_continues_where_the_acknowledged_messages_end() {
    let Some(url) = nats_url() else { return };
    with_bus(&url, |bus, js| async move {
        let config = bus.config().clone();
        let ids: BTreeSet<String> = (0..50).map(|i| format!("evt-{i:02}")).collect();
        for id in &ids {
            bus.publish(&config.subject, id, id.clone().into_bytes())
                .await
                .unwrap();
        }

        // Like the store: counts every successful handling per dedup key.
        let first_run = Mutex::new(BTreeMap::<String, u32>::new());
        let cancel = CancellationToken::new();
        let handler = |delivery: Delivery| {
            let (handled, cancel) = (&first_run, &cancel);
            async move {
                let mut handled = handled.lock().unwrap();
                *handled.entry(delivery.dedup_key).or_default() += 1;
                if handled.len() == 25 {
                    cancel.cancel();
                }
                Ok(())
            }
        };
        consume_until_cancelled(&bus, handler, cancel.clone()).await;
        let first_run = first_run.into_inner().unwrap();
        assert_eq!(first_run.len(), 25);
        let info = consumer_info(&js, &config).await;
        assert_eq!(
            info.num_ack_pending, 0,
            "the cancelled consumer left nothing unacked"
        );
        assert_eq!(info.num_pending, 25);

        let second_run = Mutex::new(BTreeMap::<String, (u32, u64)>::new());
        let cancel = CancellationToken::new();
        let handler = |delivery: Delivery| {
            let (handled, cancel) = (&second_run, &cancel);
            async move {
                let mut handled = handled.lock().unwrap();
                let entry = handled.entry(delivery.dedup_key).or_default();
                entry.0 += 1;
                entry.1 = entry.1.max(delivery.redelivered);
                if handled.len() == 25 {
                    cancel.cancel();
                }
                Ok(())
            }
        };
        consume_until_cancelled(&bus, handler, cancel.clone()).await;
        let second_run = second_run.into_inner().unwrap();

        let came_back: Vec<&String> = second_run
            .keys()
            .filter(|key| first_run.contains_key(*key))
            .collect();
        assert!(
            came_back.is_empty(),
            "acknowledged messages came back: {came_back:?}"
        );
        let distinct: BTreeSet<String> =
            first_run.keys().chain(second_run.keys()).cloned().collect();
        assert_eq!(distinct, ids);
        assert!(first_run.values().all(|&count| count == 1), "{first_run:?}");
        assert!(
            second_run
                .values()
                .all(|&(count, redelivered)| count == 1 && redelivered == 0),
            "{second_run:?}"
        );
        let info = consumer_info(&js, &config).await;
        assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    })
    .await;
}

#[tokio::test]
async fn completions_do_not_reach_the_events_consumer() {
    let Some(url) = nats_url() else { return };
    with_bus(&url, |bus, js| async move {
        let config = bus.config().clone();
        bus.publish(
            &config.completions_subject,
            "done-1",
            b"completion".to_vec(),
        )
        .await
        .unwrap();
        bus.publish(&config.subject, "evt-1", b"event".to_vec())
            .await
            .unwrap();
        // Both are stored: the completion is in the stream, for whoever reads that subject.
        assert_eq!(stored_messages(&js, &config.stream).await, 2);

        // As `serve` runs it: on a task of its own, with shared state behind an `Arc`.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let consumer = tokio::spawn({
            let (bus, seen, stop) = (bus.clone(), Arc::clone(&seen), cancel.clone());
            let handler = move |delivery: Delivery| {
                let (seen, cancel) = (Arc::clone(&seen), stop.clone());
                async move {
                    seen.lock().unwrap().push(delivery.dedup_key);
                    // The completion has the lower stream sequence: had the filter let it
                    // through, it would have come before the event.
                    cancel.cancel();
                    Ok(())
                }
            };
            let cancel = cancel.clone();
            async move { bus.consume(handler, cancel).await }
        });
        tokio::time::timeout(DEADLINE, consumer)
            .await
            .expect("the consumer did not see the event in time")
            .unwrap()
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec!["evt-1".to_owned()]);
        let info = consumer_info(&js, &config).await;
        assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    })
    .await;
}

#[tokio::test]
async fn errors_name_what_failed() {
    let Some(url) = nats_url() else { return };
    with_bus(&url, |bus, _js| async move {
        let stray = format!("{}.stray", bus.config().subject);
        let error = bus
            .publish(&stray, "evt-1", b"x".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(error, NatsError::Publish { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains(&stray) && message.contains(&bus.config().stream),
            "{message}"
        );

        let error = bus
            .publish(&bus.config().subject, "", b"x".to_vec())
            .await
            .unwrap_err();
        assert!(
            matches!(error, NatsError::EmptyMessageId { .. }),
            "{error:?}"
        );
    })
    .await;

    // A closed port, with credentials that must not show.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let error = connect(&NatsConfig::new(format!(
        "nats://gapless:hunter2@127.0.0.1:{port}"
    )))
    .await
    .unwrap_err();
    assert!(matches!(error, NatsError::Connect { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("nats://***@127.0.0.1:{port}")),
        "{message}"
    );
    assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
}

/// A nats-server of this test's own, on a loopback port with its store in a temporary directory,
/// so the test can stop and start it. Killed when dropped.
struct OwnServer {
    program: String,
    port: u16,
    store: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnServer {
    /// `None` means skip: the program (`GAPLESS_NATS_SERVER`, default `nats-server`) is not
    /// there; with `GAPLESS_REQUIRE_EXTERNAL=1` that fails instead.
    async fn start() -> Option<Self> {
        let program =
            std::env::var("GAPLESS_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_owned());
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut server = Self {
            program,
            port,
            store: tempfile::tempdir().unwrap(),
            child: None,
        };
        if let Err(error) = server.run().await {
            gapless_testkit::skip(&format!("`{}` ({error})", server.program));
            return None;
        }
        Some(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the process and waits until the port answers.
    async fn run(&mut self) -> std::io::Result<()> {
        let child = std::process::Command::new(&self.program)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops the server the way an operator's restart does (SIGTERM, so it flushes its store)
    /// and waits for it to exit.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// Waits until the consumer's acknowledgement floor reaches `sequence` (the acks are stored).
/// Counts every successful handling per dedup key, as the store would, and wakes waiters
/// with the number of distinct keys.
struct Tally {
    handled: Mutex<BTreeMap<String, u32>>,
    keys: tokio::sync::watch::Sender<usize>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            handled: Mutex::default(),
            keys: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Tally {
    fn record(&self, key: String) {
        let mut handled = self.handled.lock().unwrap();
        *handled.entry(key).or_default() += 1;
        self.keys.send_replace(handled.len());
    }

    /// Waits until `keys` distinct keys were handled, failing with `why` after [`DEADLINE`].
    async fn wait_for(&self, keys: usize, why: &str) {
        let mut seen = self.keys.subscribe();
        tokio::time::timeout(DEADLINE, seen.wait_for(|&count| count == keys))
            .await
            .expect(why)
            .unwrap();
    }

    fn into_counts(self) -> BTreeMap<String, u32> {
        self.handled.into_inner().unwrap()
    }
}

async fn wait_for_ack_floor(js: &jetstream::Context, config: &NatsConfig, sequence: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while consumer_info(js, config).await.ack_floor.stream_sequence < sequence {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acks not stored in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_consumer_keeps_going_across_a_server_restart() {
    if nats_url().is_none() {
        return;
    }
    let Some(mut server) = OwnServer::start().await else {
        return;
    };
    let config = unique_config(&server.url());
    let bus = connect(&config).await.unwrap();
    for i in 0..3 {
        bus.publish(&config.subject, &format!("evt-{i}"), b"x".to_vec())
            .await
            .unwrap();
    }

    let tally = Tally::default();
    let cancel = CancellationToken::new();
    let handler = |delivery: Delivery| {
        let tally = &tally;
        async move {
            tally.record(delivery.dedup_key);
            Ok(())
        }
    };
    let driver = async {
        tally.wait_for(3, "the consumer did not handle them").await;
        let js = inspector(&server.url()).await;
        wait_for_ack_floor(&js, &config, 3).await;
        drop(js);

        server.stop();
        server.run().await.unwrap();

        // Published while the bus reconnects: a publish may time out until it has.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        for i in 3..6 {
            let id = format!("evt-{i}");
            while let Err(error) = bus.publish(&config.subject, &id, b"x".to_vec()).await {
                assert!(tokio::time::Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tally
            .wait_for(
                6,
                "the consumer did not pick up the events published after the restart",
            )
            .await;
        cancel.cancel();
    };
    let (consumed, ()) = tokio::join!(bus.consume(handler, cancel.clone()), driver);
    consumed.unwrap();

    let handled = tally.into_counts();
    let expected: BTreeMap<String, u32> = (0..6).map(|i| (format!("evt-{i}"), 1)).collect();
    assert_eq!(handled, expected);
}

#[tokio::test]
async fn a_deleted_consumer_is_created_again() {
    let Some(url) = nats_url() else { return };
    with_bus(&url, |bus, js| async move {
        let config = bus.config().clone();
        for i in 0..3 {
            bus.publish(&config.subject, &format!("evt-{i}"), b"x".to_vec())
                .await
                .unwrap();
        }

        let tally = Tally::default();
        let cancel = CancellationToken::new();
        let handler = |delivery: Delivery| {
            let tally = &tally;
            async move {
                tally.record(delivery.dedup_key);
                Ok(())
            }
        };
        let driver = async {
            tally.wait_for(3, "the consumer did not handle them").await;
            wait_for_ack_floor(&js, &config, 3).await;
            // An operator deletes the durable: the pull in flight ends with `consumer deleted`.
            js.delete_consumer_from_stream(&config.durable, &config.stream)
                .await
                .unwrap();
            for i in 3..6 {
                bus.publish(&config.subject, &format!("evt-{i}"), b"x".to_vec())
                    .await
                    .unwrap();
            }
            tally
                .wait_for(6, "the consumer was not created again")
                .await;
            wait_for_ack_floor(&js, &config, 6).await;
            cancel.cancel();
        };
        let (consumed, ()) = tokio::join!(bus.consume(handler, cancel.clone()), driver);
        consumed.unwrap();

        // The new durable starts from the stream's beginning, so the first three come again:
        // the store's dedup by key is what makes them count once.
        let handled = tally.into_counts();
        let keys: Vec<&String> = handled.keys().collect();
        assert_eq!(keys, ["evt-0", "evt-1", "evt-2", "evt-3", "evt-4", "evt-5"]);
        assert!(
            handled["evt-3"] == 1 && handled["evt-5"] == 1,
            "{handled:?}"
        );
    })
    .await;
}
