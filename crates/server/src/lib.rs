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

pub mod api;
pub mod app;
pub mod event;
mod heal;
pub mod nats;
pub mod pubsub;
pub mod trigger;

pub use crate::api::Auth;
pub use crate::app::{App, AppOptions, Clock};

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

/// Serves `app` on `listener` until `shutdown` fires: resumes the runs a previous `serve` left
/// unfinished, runs the trigger, answers the API; then stops taking requests, interrupts the
/// runs in flight (recorded `interrupted`, resumed on the next start) and returns when they
/// have recorded it.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    auth: Auth,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let resumed = app.resume_unfinished().await?;
    if resumed > 0 {
        tracing::info!(resumed, "resumed runs a previous serve left unfinished");
    }
    let trigger = tokio::spawn(trigger::run(Arc::clone(&app)));
    let router = api::router(Arc::clone(&app), auth);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    app.stop_runs().await;
    let _ = trigger.await;
    served?;
    Ok(())
}
