//! Events out: every event of the log — each completed cell, whoever completed it, and the
//! events received — delivered to NATS JetStream and to a webhook when configured.
//!
//! The event log is the outbox: a completion is committed with its cell, in the same
//! transaction, and each delivery is a reader of the log that keeps its position in the state
//! store. An event is delivered after its commit, retried until it is delivered, and never
//! lost: the position moves past an event only once the sink acknowledged it (at least once;
//! JetStream drops a redelivery by its `Nats-Msg-Id`, a webhook by the `Idempotency-Key`
//! header). A `gapless backfill` run beside `serve` on the same state store writes the same
//! log, so its completions go out too.

use std::sync::Arc;
use std::time::Duration;

use gapless_store::EventRecord;
use serde_json::json;

use crate::app::App;
use crate::nats::NatsBus;

/// Events read per step.
const BATCH: i64 = 500;
/// The longest wait between two tries of a delivery that failed.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where events go.
#[derive(Clone)]
pub enum Sink {
    /// Published on `completions_subject` of a JetStream stream.
    Nats(Box<NatsBus>),
    /// POSTed as JSON to a URL.
    Webhook {
        /// The client (timeouts set).
        client: reqwest::Client,
        /// The URL.
        url: String,
    },
}

impl Sink {
    /// The consumer name of this sink's position in the state store.
    pub fn consumer(&self) -> &'static str {
        match self {
            Sink::Nats(_) => "deliver:nats",
            Sink::Webhook { .. } => "deliver:webhook",
        }
    }

    async fn deliver(&self, pipeline: &str, event: &EventRecord) -> Result<(), String> {
        let key = format!("gapless:{pipeline}:{}", event.id);
        let body = json!({
            "pipeline": pipeline,
            "id": event.id,
            "phase": event.phase,
            "date": event.date,
            "status": event.status,
            "source": event.source,
            "run_id": event.run_id,
            "created_at": event.created_at,
        });
        match self {
            Sink::Nats(bus) => {
                let subject = bus.config().completions_subject.clone();
                bus.publish(&subject, &key, body.to_string().into_bytes())
                    .await
                    .map_err(|error| error.to_string())
            }
            Sink::Webhook { client, url } => {
                let answer = client
                    .post(url)
                    .header("Idempotency-Key", &key)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|error| format!("POST {url}: {error}"))?;
                if answer.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("POST {url}: {}", answer.status()))
                }
            }
        }
    }
}

/// Delivers the event log to `sink` until `serve` stops.
pub async fn run(app: Arc<App>, sink: Sink) {
    let shutdown = app.shutdown_token();
    let mut woken = app.woken();
    let consumer = sink.consumer();
    let mut backoff = Duration::from_millis(100);
    loop {
        match step(&app, &sink).await {
            Ok(true) => {
                backoff = Duration::from_millis(100);
                continue;
            }
            Ok(false) => backoff = Duration::from_millis(100),
            Err(error) => {
                tracing::warn!(consumer, %error, retry_in_ms = backoff.as_millis() as u64, "delivery failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        tokio::select! {
            _ = woken.changed() => {}
            () = tokio::time::sleep(app.options.poll) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Delivers the next events in order and moves the position past the ones delivered. `true` when
/// a full batch was delivered.
async fn step(app: &App, sink: &Sink) -> Result<bool, String> {
    let consumer = sink.consumer();
    let position = app
        .store
        .consumer_position(consumer)
        .await
        .map_err(|error| error.to_string())?;
    let events = app
        .store
        .events(position, BATCH)
        .await
        .map_err(|error| error.to_string())?;
    // The position is saved once per step: after the last event delivered, also when a later
    // one fails (a crash in between only repeats deliveries, which the sinks drop by key).
    let mut delivered = None;
    let mut outcome = Ok(events.len() as i64 == BATCH);
    for event in &events {
        if let Err(error) = sink.deliver(&app.spec.name, event).await {
            outcome = Err(error);
            break;
        }
        delivered = Some(event.id);
    }
    if let Some(last) = delivered {
        app.store
            .save_consumer_position(consumer, last)
            .await
            .map_err(|error| error.to_string())?;
    }
    outcome
}
