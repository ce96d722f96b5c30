//! `gapless serve`: the HTTP API, the event consumers and the trigger in one process, until
//! SIGINT or SIGTERM; then runs in flight are recorded interrupted and resumed on the next start.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use gapless_server::nats::NatsConfig;
use gapless_server::pubsub::{JwksSource, OidcConfig, OidcVerifier};
use gapless_server::{App, AppOptions, Auth, Transports};
use tokio_util::sync::CancellationToken;

use crate::cli::{Global, ServeArgs};
use crate::commands::note;
use crate::exit::{Exit, UsageError};
use crate::settings;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

pub(crate) async fn run(global: &Global, args: &ServeArgs) -> anyhow::Result<Exit> {
    let loaded = settings::load(global)?;
    let text = args
        .listen
        .clone()
        .or_else(|| loaded.spec.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = text.parse().map_err(|_| {
        UsageError::new(format!(
            "--listen: `{text}` is not an address and port, e.g. 127.0.0.1:8080"
        ))
    })?;
    if args.jobs == 0 {
        return Err(UsageError::new("--jobs: must be at least 1").into());
    }
    let lease = gapless_core::dates::parse_duration(&args.lease)
        .map_err(|error| UsageError::new(format!("--lease: {error}")))?;
    if lease < std::time::Duration::from_secs(1) {
        return Err(UsageError::new(format!(
            "--lease: `{}` is too short; at least 1s (renewed every third of it)",
            args.lease
        ))
        .into());
    }
    let auth = auth_from_env()?;
    gapless_server::check_listen(listen, &auth)
        .map_err(|error| UsageError::new(error.to_string()))?;
    // A node stalled inside a transaction (paused, cut off) must not hold the other nodes'
    // locks, the leader lease's among them, for longer than half a lease.
    let stall_limit = (lease / 2).min(gapless_store::ConnectOptions::DEFAULT_STALL_LIMIT);
    let store = loaded.store_stalling_at(stall_limit).await?;
    let context = loaded.context().await?;
    let clock: gapless_server::Clock =
        Arc::new(|| settings::now().unwrap_or_else(|_| chrono::Utc::now().naive_utc()));
    let options = AppOptions {
        jobs: args.jobs,
        store_outage: loaded.store_outage,
        lease,
        ..AppOptions::default()
    };
    let mut transports = transports_from_env().await?;
    transports.alerts = alert_channels(&loaded.spec)?;
    let app = App::new(context, store, loaded.owner.clone(), clock, options);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr().unwrap_or(listen);
    if !global.quiet {
        note(format_args!(
            "gapless serve: pipeline `{}` on http://{bound} ({})",
            loaded.spec.name,
            if auth.admin.is_some() {
                "token required"
            } else {
                "no token: loopback only"
            }
        ));
    }
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(stop_on_signal(shutdown.clone()));
    gapless_server::serve(app, listener, auth, transports, shutdown).await?;
    signals.abort();
    if !global.quiet {
        note(format_args!("gapless serve: stopped"));
    }
    Ok(Exit::Success)
}

/// The tokens and the Pub/Sub OIDC settings, from the environment.
fn auth_from_env() -> anyhow::Result<Auth> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let admin = var("GAPLESS_API_TOKEN");
    let read = var("GAPLESS_API_READ_TOKEN");
    if read.is_some() && admin.is_none() {
        return Err(UsageError::new(
            "GAPLESS_API_READ_TOKEN is set without GAPLESS_API_TOKEN: set the admin token too",
        )
        .into());
    }
    let pubsub = match (
        var("GAPLESS_PUBSUB_AUDIENCE"),
        var("GAPLESS_PUBSUB_SERVICE_ACCOUNT"),
    ) {
        (Some(audience), Some(account)) => {
            let jwks = match var("GAPLESS_PUBSUB_JWKS") {
                None => JwksSource::google(),
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    JwksSource::Url(url)
                }
                Some(path) => JwksSource::File(path.into()),
            };
            Some(OidcVerifier::new(OidcConfig::new(audience, account, jwks)))
        }
        (None, None) => None,
        _ => {
            return Err(UsageError::new(
                "Pub/Sub OIDC needs both GAPLESS_PUBSUB_AUDIENCE and GAPLESS_PUBSUB_SERVICE_ACCOUNT",
            )
            .into());
        }
    };
    Ok(Auth {
        admin,
        read,
        pubsub,
    })
}

/// NATS JetStream (`GAPLESS_NATS_URL`, with `GAPLESS_NATS_STREAM`, `GAPLESS_NATS_SUBJECT`,
/// `GAPLESS_NATS_DURABLE`, `GAPLESS_NATS_COMPLETIONS_SUBJECT`) and the events webhook
/// (`GAPLESS_EVENTS_WEBHOOK_URL`), from the environment.
async fn transports_from_env() -> anyhow::Result<Transports> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let nats = match var("GAPLESS_NATS_URL") {
        None => None,
        Some(url) => {
            let mut config = NatsConfig::new(url);
            if let Some(stream) = var("GAPLESS_NATS_STREAM") {
                config.stream = stream;
            }
            if let Some(subject) = var("GAPLESS_NATS_SUBJECT") {
                config.subject = subject;
            }
            if let Some(durable) = var("GAPLESS_NATS_DURABLE") {
                config.durable = durable;
            }
            if let Some(subject) = var("GAPLESS_NATS_COMPLETIONS_SUBJECT") {
                config.completions_subject = subject;
            }
            Some(gapless_server::nats::connect(&config).await?)
        }
    };
    let webhook = var("GAPLESS_EVENTS_WEBHOOK_URL");
    if let Some(url) = &webhook
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(UsageError::new(format!(
            "GAPLESS_EVENTS_WEBHOOK_URL: `{url}` is not an http:// or https:// URL"
        ))
        .into());
    }
    Ok(Transports {
        nats,
        webhook,
        alerts: Vec::new(),
    })
}

/// The `[alerts]` channels, their URLs and credentials from the environment.
pub(crate) fn alert_channels(
    spec: &gapless_core::spec::Spec,
) -> anyhow::Result<Vec<gapless_server::alerts::Channel>> {
    gapless_server::alerts::channels_from(&spec.alerts, |name| {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    })
    .map_err(|error| UsageError::new(format!("[alerts]: {error}")).into())
}

/// Stops `serve` on the first SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot handle SIGINT/SIGTERM; they will end gapless at once");
        return;
    };
    let name = tokio::select! {
        _ = interrupt.recv() => "interrupted",
        _ = terminate.recv() => "terminated",
    };
    note(format_args!(
        "{name}: stopping; runs in flight are recorded interrupted and resumed on the next start"
    ));
    shutdown.cancel();
}
