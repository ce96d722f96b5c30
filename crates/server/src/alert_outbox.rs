//! Alert delivery: reads the alerts outbox (written by the healing policy in the same
//! transaction as the gaps' `alerted` status) and sends each message on its channel. A channel
//! that fails is retried with backoff and logged, and never holds back healing or the other
//! channels; a message is marked delivered only once its channel took it, so a crash between
//! the scan and the delivery loses nothing. Around a crash a message may go out twice, with the
//! same `Idempotency-Key` (webhook) or `Message-ID` (e-mail).

use std::sync::Arc;
use std::time::Duration;

use gapless_store::{AlertRecord, Fence, Store};

use crate::alerts::{AlertMessage, Channel, send};
use crate::app::{App, error_chain};

/// The longest wait between two tries of a channel that failed.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The channel named `name` (`slack`, `webhook`, `email`) among `channels`.
fn channel<'a>(channels: &'a [Channel], name: &str) -> Option<&'a Channel> {
    channels.iter().find(|channel| {
        matches!(
            (channel, name),
            (Channel::Slack { .. }, "slack")
                | (Channel::Webhook { .. }, "webhook")
                | (Channel::Email(_), "email")
        )
    })
}

/// What one pass over the outbox did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Messages delivered.
    pub delivered: usize,
    /// Messages whose channel failed (kept, to be tried again).
    pub failed: usize,
}

/// Tries every undelivered alert once. Under `fence` (the leader lease of `serve`), each
/// mark is refused once the lease moved on, and the pass stops there: the new leader delivers
/// the rest.
pub async fn deliver_pending(
    store: &Store,
    channels: &[Channel],
    fence: Option<&Fence>,
) -> anyhow::Result<Delivered> {
    let mut outcome = Delivered::default();
    for alert in store.undelivered_alerts(1_000).await? {
        let marked = match deliver(&alert, channels).await {
            Ok(()) => {
                outcome.delivered += 1;
                match fence {
                    Some(fence) => store.alert_delivered_fenced(alert.id, fence).await?,
                    None => store.alert_delivered(alert.id).await?,
                }
            }
            Err(error) => {
                tracing::warn!(alert = alert.id, channel = %alert.channel, %error, "alert not delivered; retrying later");
                outcome.failed += 1;
                match fence {
                    Some(fence) => store.alert_failed_fenced(alert.id, &error, fence).await?,
                    None => store.alert_failed(alert.id, &error).await?,
                }
            }
        };
        if !marked && fence.is_some() {
            tracing::warn!(
                alert = alert.id,
                "alert mark refused: already marked, or this node no longer leads"
            );
            break;
        }
    }
    Ok(outcome)
}

async fn deliver(alert: &AlertRecord, channels: &[Channel]) -> Result<(), String> {
    let Some(channel) = channel(channels, &alert.channel) else {
        return Err(format!(
            "no `{}` channel is configured in [alerts] any more",
            alert.channel
        ));
    };
    let message = AlertMessage::from_outbox(&alert.message)?;
    send(channel, &message, &format!("gapless-alert-{}", alert.id))
        .await
        .map_err(|error| error_chain(&error))
}

/// Delivers the outbox until `serve` stops: at once when woken, else every poll; a pass with
/// failures waits longer before the next, up to five minutes.
pub async fn run(app: Arc<App>, channels: Vec<Channel>) {
    let shutdown = app.shutdown_token();
    let mut woken = app.woken();
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some(fence) = app.until_leader().await else {
            return;
        };
        let wait = match deliver_pending(&app.store, &channels, Some(&fence)).await {
            Ok(outcome) if outcome.failed == 0 => {
                backoff = Duration::from_secs(1);
                app.options.poll * 10
            }
            Ok(_) => {
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "alerts outbox");
                backoff
            }
        };
        tokio::select! {
            _ = woken.changed() => {}
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
