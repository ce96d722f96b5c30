//! Events in and out over NATS JetStream.
//!
//! [`connect`] opens the connection and creates (or updates) one stream that holds both subjects:
//! events in ([`NatsConfig::subject`]) and completions out ([`NatsConfig::completions_subject`]).
//! [`NatsBus::publish`] waits for the server's acknowledgement, so a published message is stored;
//! [`NatsBus::consume`] runs a durable pull consumer over the events subject and acknowledges a
//! message only after the handler (which stores the event) has returned `Ok`.
//!
//! Delivery is at least once: a message whose acknowledgement is lost comes again, with the same
//! [`Delivery::dedup_key`], and the store counts it once.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, stream};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long the server keeps a `Nats-Msg-Id` to drop a second message carrying it.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the server waits for an acknowledgement before it delivers a message again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// While a handler runs, we tell the server it is still working this often, well inside
/// [`ACK_WAIT`], so a slow store does not get the message redelivered under it.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Delay before the server redelivers a message the handler failed on: a message that always
/// fails comes back once a second, not in a tight loop.
const NAK_DELAY: Duration = Duration::from_secs(1);
/// How long one pull request waits on the server, and how often an idle server says it is
/// still there; two missed heartbeats end the messages stream and we pull again.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// Backoff between attempts to pull again after the messages stream failed.
const REOPEN_BACKOFF_FIRST: Duration = Duration::from_millis(250);
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the JetStream bus lives and which names it uses.
///
/// `Debug` hides the password or token a `nats://user:password@host` URL may carry.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URL(s), e.g. `nats://127.0.0.1:4222`; several are separated by commas.
    pub url: String,
    /// The JetStream stream that stores both subjects.
    pub stream: String,
    /// Events in: the subject [`NatsBus::consume`] reads.
    pub subject: String,
    /// Name of the durable consumer; every `gapless serve` node shares it, so each event is
    /// handled by one of them.
    pub durable: String,
    /// Events out: the subject gapless publishes completions on.
    pub completions_subject: String,
}

impl NatsConfig {
    /// The default names (stream `GAPLESS_EVENTS`, subjects `gapless.events` and
    /// `gapless.completions`, durable `gapless`) on the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "GAPLESS_EVENTS".to_owned(),
            subject: "gapless.events".to_owned(),
            durable: "gapless".to_owned(),
            completions_subject: "gapless.completions".to_owned(),
        }
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redacted(&self.url))
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .field("durable", &self.durable)
            .field("completions_subject", &self.completions_subject)
            .finish()
    }
}

/// What went wrong talking to NATS, naming the server, stream, subject or consumer involved.
///
/// URLs in messages have their credentials replaced by `***`.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The first connection to the server failed (later drops are reconnected by the client).
    #[error("cannot connect to NATS at `{url}`")]
    Connect {
        /// The server URL, without credentials.
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The stream could not be created or brought to our configuration.
    #[error(
        "cannot create or update JetStream stream `{stream}` (subjects `{subject}`, `{completions_subject}`) at `{url}`"
    )]
    Stream {
        /// The server URL, without credentials.
        url: String,
        /// The stream's name.
        stream: String,
        /// Events in.
        subject: String,
        /// Events out.
        completions_subject: String,
        /// The server's or client's error.
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    /// The server did not store a published message (no stream on that subject, a timeout, ...).
    #[error("cannot publish message `{msg_id}` to `{subject}` (stream `{stream}`)")]
    Publish {
        /// The subject published to.
        subject: String,
        /// The stream expected to store it.
        stream: String,
        /// The message's `Nats-Msg-Id`.
        msg_id: String,
        /// The client's error, or the server's refusal.
        #[source]
        source: jetstream::context::PublishError,
    },
    /// A message id is what the server deduplicates by: an empty one would not be.
    #[error("cannot publish to `{subject}` without a message id (`Nats-Msg-Id` must not be empty)")]
    EmptyMessageId {
        /// The subject published to.
        subject: String,
    },
    /// The durable consumer could not be created on the stream.
    #[error("cannot create durable consumer `{durable}` on stream `{stream}` (filter `{subject}`)")]
    Consumer {
        /// The consumer's name.
        durable: String,
        /// The stream's name.
        stream: String,
        /// The subject it reads.
        subject: String,
        /// The server's or client's error.
        #[source]
        source: jetstream::stream::ConsumerError,
    },
    /// The consumer exists but pulling messages from it could not start.
    #[error("cannot pull messages for durable consumer `{durable}` on stream `{stream}`")]
    Pull {
        /// The consumer's name.
        durable: String,
        /// The stream's name.
        stream: String,
        /// The client's error.
        #[source]
        source: jetstream::consumer::StreamError,
    },
}

/// One message from the events subject, as [`NatsBus::consume`] hands it to its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message body: the event JSON as published.
    pub payload: Vec<u8>,
    /// What the store deduplicates by: the publisher's `Nats-Msg-Id` when it set one, else
    /// `nats:{stream}:{stream_sequence}`, which is the same on every redelivery.
    pub dedup_key: String,
    /// How many times the server delivered this message before (0 on the first delivery).
    pub redelivered: u64,
}

/// A connection to NATS with the stream in place; cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct NatsBus {
    jetstream: jetstream::Context,
    config: NatsConfig,
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Connects to `config.url` and creates the stream, or updates it to hold
/// `[subject, completions_subject]` in file storage with a two-minute `Nats-Msg-Id` duplicate
/// window.
///
/// Fails if the server is not reachable now; once connected, the client reconnects on its own
/// for as long as the process runs.
pub async fn connect(config: &NatsConfig) -> Result<NatsBus, NatsError> {
    let url = redacted(&config.url);
    let logged_url = url.clone();
    let client = async_nats::ConnectOptions::new()
        .name("gapless")
        .event_callback(move |event| {
            let url = logged_url.clone();
            async move {
                match event {
                    async_nats::Event::Connected => info!(%url, "connected to NATS"),
                    async_nats::Event::Disconnected => {
                        warn!(%url, "disconnected from NATS, reconnecting");
                    }
                    other => warn!(%url, event = %other, "NATS connection event"),
                }
            }
        })
        .connect(config.url.as_str())
        .await
        .map_err(|source| NatsError::Connect {
            url: url.clone(),
            source,
        })?;
    let jetstream = jetstream::new(client);
    jetstream
        .create_or_update_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![config.subject.clone(), config.completions_subject.clone()],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|source| NatsError::Stream {
            url,
            stream: config.stream.clone(),
            subject: config.subject.clone(),
            completions_subject: config.completions_subject.clone(),
            source,
        })?;
    Ok(NatsBus {
        jetstream,
        config: config.clone(),
    })
}

impl NatsBus {
    /// The configuration this bus was connected with.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    /// Publishes `payload` on `subject` with header `Nats-Msg-Id: {msg_id}` and waits until the
    /// stream has stored it. A message the stream already holds under the same id (within the
    /// duplicate window) is not stored again and counts as published.
    pub async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Vec<u8>,
    ) -> Result<(), NatsError> {
        if msg_id.is_empty() {
            return Err(NatsError::EmptyMessageId {
                subject: subject.to_owned(),
            });
        }
        let error = |source| NatsError::Publish {
            subject: subject.to_owned(),
            stream: self.config.stream.clone(),
            msg_id: msg_id.to_owned(),
            source,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        let ack = self
            .jetstream
            .publish_with_headers(subject.to_owned(), headers, payload.into())
            .await
            .map_err(error)?
            .await
            .map_err(error)?;
        if ack.duplicate {
            debug!(
                subject,
                msg_id,
                sequence = ack.sequence,
                "duplicate message not stored again"
            );
        }
        Ok(())
    }

    /// Runs the durable pull consumer on the events subject until `cancel` fires.
    ///
    /// Each message goes to `handler`; `Ok` acknowledges it (the server confirms before the next
    /// message is pulled), `Err(reason)` asks for redelivery after about a second. The message in
    /// hand when `cancel` fires is finished first. Messages are pulled one at a time, so on
    /// return none is left delivered-but-unhandled waiting out the ack timeout: a new consumer
    /// on the same durable gets the rest at once.
    ///
    /// Returns an error only if the consumer cannot be set up at the start (e.g. the stream is
    /// gone, or the durable exists with an incompatible configuration). After that, failures
    /// (a dropped connection, missed heartbeats, a deleted consumer) are logged and the consumer
    /// is opened again with a growing backoff, never in a tight loop.
    pub async fn consume<F, Fut>(
        &self,
        handler: F,
        cancel: CancellationToken,
    ) -> Result<(), NatsError>
    where
        F: Fn(Delivery) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let mut messages = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            opened = self.open_messages() => opened?,
        };
        let mut backoff = REOPEN_BACKOFF_FIRST;
        loop {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    backoff = REOPEN_BACKOFF_FIRST;
                    self.handle(&handler, message).await;
                    continue;
                }
                Some(Err(error)) => warn!(
                    stream = %self.config.stream,
                    durable = %self.config.durable,
                    error = %error,
                    "pulling JetStream messages failed, pulling again"
                ),
                None => warn!(
                    stream = %self.config.stream,
                    durable = %self.config.durable,
                    "JetStream messages ended, pulling again"
                ),
            }
            // The old stream's background task keeps pulling until dropped.
            drop(messages);
            messages = loop {
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(REOPEN_BACKOFF_MAX);
                let opened = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    opened = self.open_messages() => opened,
                };
                match opened {
                    Ok(messages) => break messages,
                    Err(error) => warn!(
                        error = %error,
                        retry_in = ?backoff,
                        "cannot pull JetStream messages yet"
                    ),
                }
            };
        }
    }

    /// Creates (or updates) the durable consumer and starts pulling one message at a time.
    ///
    /// One at a time: a prefetched batch would sit in this process, delivered but unhandled,
    /// when `consume` is cancelled, and another node could have it only after [`ACK_WAIT`].
    /// Events are few, so the round trip per message costs nothing that matters.
    async fn open_messages(&self) -> Result<pull::Stream, NatsError> {
        let config = &self.config;
        let consumer = self
            .jetstream
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(config.durable.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    filter_subject: config.subject.clone(),
                    ..Default::default()
                },
                config.stream.as_str(),
            )
            .await
            .map_err(|source| NatsError::Consumer {
                durable: config.durable.clone(),
                stream: config.stream.clone(),
                subject: config.subject.clone(),
                source,
            })?;
        consumer
            .stream()
            .max_messages_per_batch(1)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|source| NatsError::Pull {
                durable: config.durable.clone(),
                stream: config.stream.clone(),
                source,
            })
    }

    /// Hands one message to `handler`, then acknowledges it or asks for it again.
    async fn handle<F, Fut>(&self, handler: &F, message: jetstream::Message)
    where
        F: Fn(Delivery) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let (sequence, redelivered) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                u64::try_from(info.delivered.saturating_sub(1)).unwrap_or(0),
            ),
            Err(error) => {
                // Only a message without a JetStream reply subject lacks this; it cannot be
                // acknowledged either, so there is nothing sound to hand on.
                warn!(subject = %message.subject, error = %error, "not a JetStream message, skipped");
                return;
            }
        };
        let dedup_key = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|id| id.as_str().to_owned())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("nats:{}:{sequence}", self.config.stream));
        let delivery = Delivery {
            payload: message.payload.to_vec(),
            dedup_key: dedup_key.clone(),
            redelivered,
        };

        let handling = handler(delivery);
        tokio::pin!(handling);
        let mut progress =
            tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        let outcome = loop {
            tokio::select! {
                outcome = &mut handling => break outcome,
                _ = progress.tick() => {
                    if let Err(error) = message.ack_with(AckKind::Progress).await {
                        warn!(dedup_key, error = %error, "cannot extend the ack deadline");
                    }
                }
            }
        };

        match outcome {
            Ok(()) => {
                if let Err(error) = message.double_ack().await {
                    // The server redelivers after the ack timeout; the store counts it once.
                    warn!(dedup_key, sequence, error = %error, "acknowledgement not confirmed");
                }
            }
            Err(reason) => {
                warn!(
                    dedup_key,
                    sequence, redelivered, reason, "event not stored, redelivering"
                );
                if let Err(error) = message.ack_with(AckKind::Nak(Some(NAK_DELAY))).await {
                    warn!(dedup_key, error = %error, "cannot ask for redelivery");
                }
            }
        }
    }
}

/// `url` with the user, password or token of each server replaced by `***`, for logs and errors.
fn redacted(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let authority_start = server.find("://").map_or(0, |at| at + 3);
            let authority_end = server[authority_start..]
                .find('/')
                .map_or(server.len(), |at| authority_start + at);
            match server[authority_start..authority_end].rfind('@') {
                Some(at) => format!(
                    "{}***{}",
                    &server[..authority_start],
                    &server[authority_start + at..]
                ),
                None => server.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn credentials_are_hidden_from_logged_urls() {
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redacted("nats://user:secret@host:4222,tls://token@other/x@y"),
            "nats://***@host:4222,tls://***@other/x@y"
        );
        assert_eq!(redacted("user:secret@host"), "***@host");
    }
}
