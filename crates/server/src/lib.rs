//! `gapless serve`: the HTTP API, the event consumers and the trigger in one process.
//!
//! - [`api`]: the routes (SPEC.md, "HTTP API"), with [`pubsub`] for Google Pub/Sub's push.
//! - [`trigger`]: every completed cell, from any source, runs the downstream cells it makes
//!   runnable.
//! - [`nats`]: NATS JetStream, events in and completions out.
//! - [`app`]: what they share, and the runs `serve` executes.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod alert_outbox;
pub mod alerts;
pub mod api;
pub mod app;
pub mod auth;
pub mod dashboard;
pub mod event;
mod heal;
pub mod metrics;
pub mod nats;
pub mod node;
pub mod outbox;
pub mod pubsub;
pub mod scheduler;
pub mod share;
pub mod trigger;

pub use crate::api::Auth;
pub use crate::app::{App, AppOptions, Clock};

/// How long requests in flight may take to finish once `serve` is asked to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why `serve` cannot listen where asked.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A non-loopback address without an API token.
    #[error(
        "refusing to listen on {0} without GAPLESS_API_TOKEN: anyone who can reach it could start runs; set the token, or listen on 127.0.0.1"
    )]
    OpenToNetwork(SocketAddr),
}

/// Refuses a non-loopback `listen` address unless an admin token is set.
pub fn check_listen(listen: SocketAddr, auth: &Auth) -> Result<(), ListenError> {
    if listen.ip().is_loopback() || auth.admin.is_some() {
        Ok(())
    } else {
        Err(ListenError::OpenToNetwork(listen))
    }
}

/// Event transports beyond HTTP.
#[derive(Default)]
pub struct Transports {
    /// NATS JetStream: events in from its events subject, every event out to its completions
    /// subject.
    pub nats: Option<nats::NatsBus>,
    /// Every event out, POSTed to this URL.
    pub webhook: Option<String>,
    /// Where alerts go (`[alerts]`).
    pub alerts: Vec<alerts::Channel>,
}

/// Serves `app` on `listener` until `shutdown` fires: resumes the runs a previous `serve` left
/// unfinished, runs the trigger, the event consumers and deliveries, answers the API; then
/// stops taking requests, interrupts the runs in flight (recorded `interrupted`, resumed on the
/// next start) and returns when they have recorded it.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    auth: Auth,
    transports: Transports,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    app.store
        .register_node(&app.owner.as_store(), app.options.lease)
        .await?;
    let mut background = tokio::task::JoinSet::new();
    background.spawn(node::run(Arc::clone(&app)));
    let resumed = app.resume_unfinished().await?;
    if resumed > 0 {
        tracing::info!(resumed, "resumed runs a previous serve left unfinished");
    }
    background.spawn(trigger::run(Arc::clone(&app)));
    background.spawn(share::run(Arc::clone(&app)));
    background.spawn(share::listen(Arc::clone(&app)));
    background.spawn(scheduler::run(Arc::clone(&app)));
    if let Some(bus) = &transports.nats {
        background.spawn(outbox::run(
            Arc::clone(&app),
            outbox::Sink::Nats(Box::new(bus.clone())),
        ));
        let (app, bus) = (Arc::clone(&app), bus.clone());
        background.spawn(async move { consume_nats(app, bus).await });
    }
    if let Some(url) = transports.webhook {
        let client = gapless_connect::http_client()?;
        background.spawn(outbox::run(
            Arc::clone(&app),
            outbox::Sink::Webhook { client, url },
        ));
    }
    if !transports.alerts.is_empty() {
        background.spawn(alert_outbox::run(Arc::clone(&app), transports.alerts));
    }
    let router = api::router(Arc::clone(&app), auth);
    let served =
        axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    // Requests in flight get a moment to finish; a client that holds its connection open (a
    // dashboard tab) does not hold up the stop.
    let served = tokio::select! {
        served = served => served,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("connections still open {} s after the stop: closing them", SHUTDOWN_GRACE.as_secs());
            Ok(())
        }
    };
    app.stop_runs().await;
    while background.join_next().await.is_some() {}
    served?;
    Ok(())
}

/// Stores each event from NATS once (by its `Nats-Msg-Id`, else its stream sequence), and
/// quarantines the malformed ones; both are acknowledged. A state store that does not answer
/// leaves the message unacknowledged, to be redelivered.
async fn consume_nats(app: Arc<App>, bus: nats::NatsBus) {
    let handler = |delivery: nats::Delivery| {
        let app = Arc::clone(&app);
        async move {
            let parsed = serde_json::from_slice::<serde_json::Value>(&delivery.payload)
                .map_err(|error| event::FieldError::new("event", format!("not JSON: {error}")))
                .and_then(|value| {
                    event::parse(&app.spec, &value, "nats", Some(delivery.dedup_key.clone()))
                });
            match parsed {
                Ok(event) => {
                    let outcome = app
                        .store
                        .ingest_events(std::slice::from_ref(&event))
                        .await
                        .map_err(|error| error.to_string())?;
                    let stored = matches!(outcome[0], gapless_store::Ingested::Stored(_));
                    app.stored("nats", u64::from(stored));
                }
                Err(error) => {
                    let payload = String::from_utf8_lossy(&delivery.payload);
                    app.store
                        .quarantine(
                            "nats",
                            Some(&delivery.dedup_key),
                            &payload,
                            &error.to_string(),
                        )
                        .await
                        .map_err(|error| error.to_string())?;
                }
            }
            Ok(())
        }
    };
    if let Err(error) = bus.consume(handler, app.shutdown_token()).await {
        tracing::error!(error = %app::error_chain(&error), "NATS consumer stopped");
    }
}
