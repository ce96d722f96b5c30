//! Alert channels: the message a scan sends about the gaps a person must look at, and its
//! delivery to Slack (incoming webhook), a generic webhook and e-mail over SMTP (SPEC.md,
//! Semantics 8 and `[alerts]`).
//!
//! This module only renders and delivers one message; which gaps are alerted, when, and how often
//! a failed delivery is retried is the caller's (the outbox in the state store). So every
//! [`ChannelError`] says whether retrying may help, and every delivery takes an idempotency key
//! that a receiver can use to drop a retried duplicate.

use std::fmt;
use std::time::Duration;

use chrono::NaiveDate;
use serde_json::{Value, json};

/// How long one delivery may take before it fails as retryable.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Env var with the SMTP user name, when the relay wants one.
pub const SMTP_USERNAME_ENV: &str = "GAPLESS_SMTP_USERNAME";
/// Env var with the SMTP password.
pub const SMTP_PASSWORD_ENV: &str = "GAPLESS_SMTP_PASSWORD";

/// Longest last error shown in the text, in characters.
const ERROR_CHARS: usize = 300;
/// Slack: longest text of a section block.
const SLACK_SECTION_CHARS: usize = 3000;
/// Slack: most blocks in one message.
const SLACK_MAX_BLOCKS: usize = 50;
/// Slack cuts a message's `text` beyond this.
const SLACK_TEXT_CHARS: usize = 40_000;
/// Longest response body quoted in an error, in characters.
const BODY_CHARS: usize = 200;

/// The gaps of one phase that need a person, for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertItem {
    /// The phase's id.
    pub phase: u32,
    /// The phase's name.
    pub phase_name: String,
    /// The dates of its gaps, sorted.
    pub dates: Vec<NaiveDate>,
    /// Age in days of the oldest of them.
    pub oldest_age_days: i64,
    /// Why no automatic heal takes care of them.
    pub reason: AlertReason,
}

/// Why gaps are alerted instead of healed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertReason {
    /// Older than `[healing] auto_heal_max_age`: only `gapless heal --include-old` heals them.
    TooOld {
        /// `auto_heal_max_age`, in days.
        max_age_days: i64,
    },
    /// Healing failed `[healing] max_attempts` times.
    GaveUp {
        /// Heal attempts made.
        attempts: i64,
        /// The last attempt's error, if one was recorded.
        last_error: Option<String>,
    },
}

/// One alert message: everything one scan alerts about, for one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertMessage {
    /// The pipeline's name.
    pub pipeline: String,
    /// One item per phase and reason.
    pub items: Vec<AlertItem>,
}

impl AlertMessage {
    /// The message as the alerts outbox keeps it (`gapless_runtime::heal::alert_message`):
    /// `{"pipeline", "items": [{"phase", "phase_name", "dates", "oldest_age_days", "reason":
    /// {"kind": "too_old", "max_age_days"} | {"kind": "gave_up", "attempts", "last_error"}}]}`.
    pub fn from_outbox(value: &serde_json::Value) -> Result<Self, String> {
        let field = |item: &serde_json::Value, name: &str| {
            item.get(name)
                .cloned()
                .ok_or_else(|| format!("alert message: `{name}` is missing"))
        };
        let pipeline = field(value, "pipeline")?
            .as_str()
            .ok_or("alert message: `pipeline` is not a string")?
            .to_owned();
        let mut items = Vec::new();
        for item in field(value, "items")?
            .as_array()
            .ok_or("alert message: `items` is not an array")?
        {
            let number = |name: &str| -> Result<i64, String> {
                field(item, name)?
                    .as_i64()
                    .ok_or_else(|| format!("alert message: `{name}` is not a number"))
            };
            let dates: Vec<chrono::NaiveDate> = serde_json::from_value(field(item, "dates")?)
                .map_err(|error| format!("alert message: `dates`: {error}"))?;
            let reason = field(item, "reason")?;
            let reason = match reason.get("kind").and_then(serde_json::Value::as_str) {
                Some("too_old") => AlertReason::TooOld {
                    max_age_days: reason
                        .get("max_age_days")
                        .and_then(serde_json::Value::as_i64)
                        .unwrap_or_default(),
                },
                Some("gave_up") => AlertReason::GaveUp {
                    attempts: reason
                        .get("attempts")
                        .and_then(serde_json::Value::as_i64)
                        .unwrap_or_default(),
                    last_error: reason
                        .get("last_error")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_owned),
                },
                other => return Err(format!("alert message: unknown reason {other:?}")),
            };
            items.push(AlertItem {
                phase: u32::try_from(number("phase")?)
                    .map_err(|_| "alert message: `phase` out of range".to_owned())?,
                phase_name: field(item, "phase_name")?
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                dates,
                oldest_age_days: number("oldest_age_days")?,
                reason,
            });
        }
        Ok(Self { pipeline, items })
    }

    /// Number of gaps (phase × date) in the message.
    pub fn gap_count(&self) -> usize {
        self.items.iter().map(|item| item.dates.len()).sum()
    }

    /// `gapless PIPELINE: N gaps need a person`: the e-mail subject.
    pub fn subject(&self) -> String {
        format!("gapless {}: {}", self.pipeline, self.need_a_person())
    }

    fn need_a_person(&self) -> String {
        match self.gap_count() {
            1 => "1 gap needs a person".to_owned(),
            count => format!("{count} gaps need a person"),
        }
    }

    /// The message as plain text: a header line, then one line per item.
    pub fn text(&self) -> String {
        let mut text = format!("gapless `{}`: {}\n", self.pipeline, self.need_a_person());
        for item in &self.items {
            text.push_str(&format!(
                "- {}: {} ({}); {}\n",
                item.title(),
                date_ranges(&item.dates),
                item.age(),
                item.reason.explain(),
            ));
        }
        text
    }

    /// The body for a Slack incoming webhook: `text` (the plain text, for notifications and
    /// clients without blocks) and `blocks` (a header section, then one section per item), both
    /// mrkdwn. Slack takes at most 50 blocks of at most 3000 characters: longer sections are
    /// cut, and items beyond the 49th are folded into a last "… and N more" block.
    pub fn slack_payload(&self) -> Value {
        let header = format!(
            "*gapless `{}`: {}*",
            slack_escape(&self.pipeline),
            self.need_a_person()
        );
        let mut blocks = vec![slack_section(&header)];
        let shown = if self.items.len() < SLACK_MAX_BLOCKS {
            self.items.len()
        } else {
            // The header, 48 items and the fold block.
            SLACK_MAX_BLOCKS - 2
        };
        for item in &self.items[..shown] {
            let section = format!(
                "*{}*: {}\n{}\n{}",
                slack_escape(&item.title()),
                item.age(),
                slack_escape(&item.reason.explain()),
                date_ranges(&item.dates),
            );
            blocks.push(slack_section(&section));
        }
        let folded = &self.items[shown..];
        if !folded.is_empty() {
            let gaps: usize = folded.iter().map(|item| item.dates.len()).sum();
            blocks.push(slack_section(&format!(
                "… and {} more, with {}: `gapless gaps --status alerted` lists them all",
                folded.len(),
                plural(gaps, "gap", "gaps"),
            )));
        }
        json!({
            "text": cut(&slack_escape(&self.text()), SLACK_TEXT_CHARS),
            "blocks": blocks,
        })
    }

    /// The body for the generic webhook: the same facts as structured JSON.
    ///
    /// ```json
    /// {"pipeline": "nba", "gaps": 3, "items": [{"phase": 2, "phase_name": "load",
    ///   "dates": ["2024-04-16", "2024-04-17", "2024-07-01"],
    ///   "ranges": [{"start": "2024-04-16", "end": "2024-04-17"}, {"start": "2024-07-01", "end": "2024-07-01"}],
    ///   "oldest_age_days": 230, "reason": {"kind": "too_old", "max_age_days": 30}}]}
    /// ```
    ///
    /// A `gave_up` reason carries `attempts` and `last_error` (verbatim, or null).
    pub fn webhook_payload(&self) -> Value {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|item| {
                let ranges: Vec<Value> = ranges(&item.dates)
                    .into_iter()
                    .map(|(start, end)| json!({ "start": start, "end": end }))
                    .collect();
                let reason = match &item.reason {
                    AlertReason::TooOld { max_age_days } => {
                        json!({ "kind": "too_old", "max_age_days": max_age_days })
                    }
                    AlertReason::GaveUp {
                        attempts,
                        last_error,
                    } => json!({
                        "kind": "gave_up",
                        "attempts": attempts,
                        "last_error": last_error,
                    }),
                };
                json!({
                    "phase": item.phase,
                    "phase_name": item.phase_name,
                    "dates": item.dates,
                    "ranges": ranges,
                    "oldest_age_days": item.oldest_age_days,
                    "reason": reason,
                })
            })
            .collect();
        json!({
            "pipeline": self.pipeline,
            "gaps": self.gap_count(),
            "items": items,
        })
    }
}

impl AlertItem {
    fn title(&self) -> String {
        format!("phase {} `{}`", self.phase, self.phase_name)
    }

    fn age(&self) -> String {
        let count = plural(self.dates.len(), "date", "dates");
        let days = plural_i64(self.oldest_age_days, "day", "days");
        if self.dates.len() == 1 {
            format!("{count}, {days} old")
        } else {
            format!("{count}, oldest {days} old")
        }
    }
}

impl AlertReason {
    fn explain(&self) -> String {
        match self {
            Self::TooOld { max_age_days } => format!(
                "older than {}: heal with `gapless heal --include-old`",
                plural_i64(*max_age_days, "day", "days")
            ),
            Self::GaveUp {
                attempts,
                last_error,
            } => {
                let times = plural_i64(*attempts, "time", "times");
                match last_error {
                    Some(error) => format!("failed {times}: {}", one_line(error, ERROR_CHARS)),
                    None => format!("failed {times}"),
                }
            }
        }
    }
}

/// Runs of consecutive days, as inclusive (first, last) pairs, in date order.
fn ranges(dates: &[NaiveDate]) -> Vec<(NaiveDate, NaiveDate)> {
    let mut sorted = dates.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(NaiveDate, NaiveDate)> = Vec::new();
    for date in sorted {
        match ranges.last_mut() {
            Some((_, last)) if last.succ_opt() == Some(date) => *last = date,
            _ => ranges.push((date, date)),
        }
    }
    ranges
}

/// `2024-04-16..2024-06-16, 2024-07-01`.
fn date_ranges(dates: &[NaiveDate]) -> String {
    ranges(dates)
        .into_iter()
        .map(|(first, last)| {
            if first == last {
                first.to_string()
            } else {
                format!("{first}..{last}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

fn plural_i64(count: i64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// `text` on one line (every run of whitespace, newlines included, becomes one space), cut to
/// `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    cut(&joined, max)
}

/// `text` cut to at most `max` characters, the last of them `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Slack reads `&`, `<` and `>` as markup (links, mentions) in mrkdwn and in `text`.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn slack_section(text: &str) -> Value {
    json!({
        "type": "section",
        "text": { "type": "mrkdwn", "text": cut(text, SLACK_SECTION_CHARS) },
    })
}

/// Where alerts go.
#[derive(Clone)]
pub enum Channel {
    /// A Slack incoming webhook.
    Slack {
        /// The webhook URL: a secret, so never shown whole.
        url: String,
        /// Longest time one delivery may take.
        timeout: Duration,
    },
    /// A generic webhook: the structured JSON, with an `Idempotency-Key` header.
    Webhook {
        /// Where to POST. Only its scheme, host and port are ever shown.
        url: String,
        /// Longest time one delivery may take.
        timeout: Duration,
    },
    /// E-mail over SMTP.
    Email(EmailChannel),
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Email(email) => f.debug_tuple("Email").field(email).finish(),
            Self::Slack { timeout, .. } | Self::Webhook { timeout, .. } => f
                .debug_struct(if matches!(self, Self::Slack { .. }) {
                    "Slack"
                } else {
                    "Webhook"
                })
                .field("url", &self.name())
                .field("timeout", timeout)
                .finish(),
        }
    }
}

/// E-mail over SMTP.
#[derive(Clone)]
pub struct EmailChannel {
    /// `smtp://host[:port]` (port 25 by default; STARTTLS when the server offers it, required
    /// when credentials are sent to a host that is not loopback) or `smtps://host[:port]`
    /// (implicit TLS, port 465 by default).
    pub smtp: String,
    /// The sender's address.
    pub from: String,
    /// The recipients' addresses.
    pub to: Vec<String>,
    /// SMTP user name (`GAPLESS_SMTP_USERNAME`).
    pub username: Option<String>,
    /// SMTP password (`GAPLESS_SMTP_PASSWORD`).
    pub password: Option<String>,
    /// Longest time one SMTP command may take.
    pub timeout: Duration,
}

impl fmt::Debug for EmailChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailChannel")
            .field("smtp", &self.smtp)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Channel {
    /// The channel as errors and logs name it, with no secret in it: a Slack webhook shows its
    /// host only, a webhook its scheme, host and port (webhook paths and queries often hold
    /// tokens), e-mail its SMTP server.
    pub fn name(&self) -> String {
        match self {
            Self::Slack { url, .. } => match url::Url::parse(url) {
                Ok(parsed) => format!(
                    "Slack webhook at {}",
                    parsed.host_str().unwrap_or("an unparsable URL")
                ),
                Err(_) => "Slack webhook at an unparsable URL".to_owned(),
            },
            Self::Webhook { url, .. } => match url::Url::parse(url) {
                Ok(parsed) => format!("webhook {}", parsed.origin().ascii_serialization()),
                Err(_) => "webhook at an unparsable URL".to_owned(),
            },
            Self::Email(email) => match SmtpServer::parse(&email.smtp) {
                Ok(server) => format!("e-mail via {server}"),
                Err(_) => "e-mail via an unparsable SMTP URL".to_owned(),
            },
        }
    }
}

/// Why an alert could not be delivered, or a channel not set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// `[alerts]` names an env var that is not set.
    #[error("`[alerts] {field}` names env var `{var}`, which is not set")]
    EnvUnset {
        /// The `[alerts]` field.
        field: &'static str,
        /// The env var it names.
        var: String,
    },
    /// One SMTP credential is set without the other.
    #[error(
        "`{set}` is set but `{unset}` is not: SMTP credentials need both, or neither for a relay without authentication"
    )]
    HalfCredentials {
        /// The variable that is set.
        set: &'static str,
        /// The one that is missing.
        unset: &'static str,
    },
    /// A channel's URL cannot be used.
    #[error("{channel}: {reason}")]
    InvalidUrl {
        /// The channel.
        channel: String,
        /// What is wrong with the URL.
        reason: String,
    },
    /// An e-mail address that does not parse.
    #[error("{channel}: `{address}` is not an e-mail address")]
    InvalidAddress {
        /// The channel.
        channel: String,
        /// The address as configured.
        address: String,
        /// Why it does not parse.
        #[source]
        source: lettre::address::AddressError,
    },
    /// The HTTP server could not be reached.
    #[error("{channel}: could not connect")]
    Connect {
        /// The channel.
        channel: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// No complete answer within the timeout.
    #[error("{channel}: no answer within {after:?}")]
    Timeout {
        /// The channel.
        channel: String,
        /// The timeout.
        after: Duration,
    },
    /// The HTTP request failed on the way (connection reset, body not sent).
    #[error("{channel}: request failed")]
    Request {
        /// The channel.
        channel: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a status other than 2xx.
    #[error("{channel}: answered HTTP {status}: {body}")]
    Status {
        /// The channel.
        channel: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body, on one line.
        body: String,
    },
    /// The e-mail could not be put together.
    #[error("{channel}: could not build the message")]
    Message {
        /// The channel.
        channel: String,
        /// lettre's reason.
        #[source]
        source: lettre::error::Error,
    },
    /// The SMTP exchange failed.
    #[error("{channel}: SMTP delivery failed")]
    Smtp {
        /// The channel.
        channel: String,
        /// lettre's reason, with the server's reply when it gave one.
        #[source]
        source: lettre::transport::smtp::Error,
    },
}

impl ChannelError {
    /// Whether sending again later may succeed: connection errors, timeouts, HTTP 5xx, 408 and
    /// 429, transient (4xx) SMTP replies. A 4xx answer, a permanent SMTP reply, a TLS failure or
    /// a configuration error will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } | Self::Request { .. } => true,
            Self::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            Self::Smtp { source, .. } => {
                !(source.is_permanent()
                    || source.is_tls()
                    || source.is_client()
                    || is_invalid_data(source))
            }
            Self::EnvUnset { .. }
            | Self::HalfCredentials { .. }
            | Self::InvalidUrl { .. }
            | Self::InvalidAddress { .. }
            | Self::Message { .. } => false,
        }
    }
}

/// Whether `error`'s chain holds an I/O error of kind `InvalidData`: what a failed TLS
/// handshake (an untrusted or wrong certificate) becomes, which lettre reports as a connection
/// error, and which fails the same way on every retry.
fn is_invalid_data(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// The channels `[alerts]` configures, their URLs and SMTP credentials read through `env`
/// (`std::env::var(..).ok()` in `serve`; a map in tests). Fails on a named env var that is
/// unset, a URL that is not http(s), or only one of the two SMTP credentials.
pub fn channels_from(
    alerts: &gapless_core::spec::Alerts,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Channel>, ChannelError> {
    let resolve = |field: &'static str, var: &str| {
        env(var)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| ChannelError::EnvUnset {
                field,
                var: var.to_owned(),
            })
    };
    let mut channels = Vec::new();
    if let Some(var) = &alerts.slack_webhook_env {
        let url = resolve("slack_webhook_env", var)?;
        channels.push(Channel::Slack {
            url,
            timeout: DEFAULT_TIMEOUT,
        });
    }
    if let Some(var) = &alerts.webhook_url_env {
        let url = resolve("webhook_url_env", var)?;
        channels.push(Channel::Webhook {
            url,
            timeout: DEFAULT_TIMEOUT,
        });
    }
    if let Some(email) = &alerts.email {
        let username = env(SMTP_USERNAME_ENV).filter(|value| !value.is_empty());
        let password = env(SMTP_PASSWORD_ENV).filter(|value| !value.is_empty());
        match (&username, &password) {
            (Some(_), None) => {
                return Err(ChannelError::HalfCredentials {
                    set: SMTP_USERNAME_ENV,
                    unset: SMTP_PASSWORD_ENV,
                });
            }
            (None, Some(_)) => {
                return Err(ChannelError::HalfCredentials {
                    set: SMTP_PASSWORD_ENV,
                    unset: SMTP_USERNAME_ENV,
                });
            }
            _ => {}
        }
        channels.push(Channel::Email(EmailChannel {
            smtp: email.smtp.clone(),
            from: email.from.clone(),
            to: email.to.clone(),
            username,
            password,
            timeout: DEFAULT_TIMEOUT,
        }));
    }
    for channel in &channels {
        check(channel)?;
    }
    Ok(channels)
}

/// Checks what can be checked without sending: URLs and addresses.
fn check(channel: &Channel) -> Result<(), ChannelError> {
    match channel {
        Channel::Slack { url, .. } | Channel::Webhook { url, .. } => {
            http_url(channel, url).map(drop)
        }
        Channel::Email(email) => email_parts(channel, email).map(drop),
    }
}

/// Delivers `message` on `channel` once. `idempotency_key` identifies this message across
/// retries: the webhook gets it as `Idempotency-Key`, e-mail as its `Message-ID`; Slack has no
/// such thing.
pub async fn send(
    channel: &Channel,
    message: &AlertMessage,
    idempotency_key: &str,
) -> Result<(), ChannelError> {
    match channel {
        Channel::Slack { url, timeout } => {
            post(channel, url, *timeout, &message.slack_payload(), None).await
        }
        Channel::Webhook { url, timeout } => {
            post(
                channel,
                url,
                *timeout,
                &message.webhook_payload(),
                Some(idempotency_key),
            )
            .await
        }
        Channel::Email(email) => send_email(channel, email, message, idempotency_key).await,
    }
}

fn http_url(channel: &Channel, url: &str) -> Result<url::Url, ChannelError> {
    let invalid = |reason: String| ChannelError::InvalidUrl {
        channel: channel.name(),
        reason,
    };
    // The URL itself may be a secret: the reason never quotes it.
    let parsed = url::Url::parse(url).map_err(|error| invalid(format!("bad URL: {error}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the URL's scheme is `{}`, not http or https",
            parsed.scheme()
        )));
    }
    Ok(parsed)
}

async fn post(
    channel: &Channel,
    url: &str,
    timeout: Duration,
    body: &Value,
    idempotency_key: Option<&str>,
) -> Result<(), ChannelError> {
    let url = http_url(channel, url)?;
    let client = gapless_connect::http_client().map_err(|source| ChannelError::Request {
        channel: channel.name(),
        source,
    })?;
    let mut request = client.post(url).timeout(timeout).json(body);
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let classify = |error: reqwest::Error| {
        // reqwest strips nothing from the URL it puts in its errors.
        let error = error.without_url();
        if error.is_timeout() {
            ChannelError::Timeout {
                channel: channel.name(),
                after: timeout,
            }
        } else if error.is_connect() {
            ChannelError::Connect {
                channel: channel.name(),
                source: error,
            }
        } else {
            ChannelError::Request {
                channel: channel.name(),
                source: error,
            }
        }
    };
    let response = request.send().await.map_err(classify)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // The body explains a refusal (Slack: `invalid_payload`, `no_service`); best effort.
    let body = response.text().await.unwrap_or_default();
    Err(ChannelError::Status {
        channel: channel.name(),
        status: status.as_u16(),
        body: one_line(&body, BODY_CHARS),
    })
}

/// An SMTP server from `smtp://host[:port]` or `smtps://host[:port]`.
struct SmtpServer {
    is_implicit_tls: bool,
    host: String,
    port: u16,
}

impl SmtpServer {
    fn parse(smtp: &str) -> Result<Self, String> {
        let url = url::Url::parse(smtp)
            .map_err(|error| format!("`{smtp}` is not smtp://host:port: {error}"))?;
        let is_implicit_tls = match url.scheme() {
            "smtp" => false,
            "smtps" => true,
            other => {
                return Err(format!(
                    "`email.smtp` has scheme `{other}`: use smtp:// (STARTTLS when offered) or smtps:// (implicit TLS)"
                ));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "`email.smtp` holds credentials: set `{SMTP_USERNAME_ENV}` and `{SMTP_PASSWORD_ENV}` instead"
            ));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(address)) => address.to_string(),
            Some(host) => host.to_string(),
            None => return Err(format!("`{smtp}` names no host")),
        };
        let port = url.port().unwrap_or(if is_implicit_tls { 465 } else { 25 });
        Ok(Self {
            is_implicit_tls,
            host,
            port,
        })
    }

    fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|address| address.is_loopback())
    }
}

impl fmt::Display for SmtpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.is_implicit_tls {
            "smtps"
        } else {
            "smtp"
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

struct EmailParts {
    server: SmtpServer,
    from: lettre::message::Mailbox,
    to: Vec<lettre::message::Mailbox>,
}

fn email_parts(channel: &Channel, email: &EmailChannel) -> Result<EmailParts, ChannelError> {
    let server = SmtpServer::parse(&email.smtp).map_err(|reason| ChannelError::InvalidUrl {
        channel: channel.name(),
        reason,
    })?;
    let mailbox = |address: &String| {
        address
            .parse::<lettre::message::Mailbox>()
            .map_err(|source| ChannelError::InvalidAddress {
                channel: channel.name(),
                address: address.clone(),
                source,
            })
    };
    let from = mailbox(&email.from)?;
    let to = email
        .to
        .iter()
        .map(mailbox)
        .collect::<Result<Vec<_>, _>>()?;
    if to.is_empty() {
        return Err(ChannelError::InvalidUrl {
            channel: channel.name(),
            reason: "`email.to` lists no recipient".to_owned(),
        });
    }
    Ok(EmailParts { server, from, to })
}

/// `<gapless.KEY@DOMAIN>`, with the sender's domain and every byte of the key outside
/// `[A-Za-z0-9_-]` written as `=XX`, so that distinct keys give distinct ids.
fn message_id(idempotency_key: &str, from: &lettre::message::Mailbox) -> String {
    let mut local = String::from("gapless.");
    for byte in idempotency_key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_') {
            local.push(char::from(byte));
        } else {
            local.push_str(&format!("={byte:02X}"));
        }
    }
    format!("<{local}@{}>", from.email.domain())
}

async fn send_email(
    channel: &Channel,
    email: &EmailChannel,
    message: &AlertMessage,
    idempotency_key: &str,
) -> Result<(), ChannelError> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

    let parts = email_parts(channel, email)?;
    let smtp_error = |source| ChannelError::Smtp {
        channel: channel.name(),
        source,
    };
    let mut builder = lettre::Message::builder()
        .from(parts.from.clone())
        .subject(message.subject())
        .message_id(Some(message_id(idempotency_key, &parts.from)))
        .header(lettre::message::header::ContentType::TEXT_PLAIN);
    for to in parts.to {
        builder = builder.to(to);
    }
    let mail = builder
        .body(message.text())
        .map_err(|source| ChannelError::Message {
            channel: channel.name(),
            source,
        })?;

    // lettre uses the process's rustls provider, or ring when none is installed.
    let tls_parameters = TlsParameters::new(parts.server.host.clone()).map_err(smtp_error)?;
    let credentials = email.username.clone().zip(email.password.clone());
    let tls = if parts.server.is_implicit_tls {
        Tls::Wrapper(tls_parameters)
    } else if credentials.is_some() && !parts.server.is_loopback() {
        // A password never crosses a network in clear text.
        Tls::Required(tls_parameters)
    } else {
        Tls::Opportunistic(tls_parameters)
    };
    let mut transport =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(parts.server.host.clone())
            .port(parts.server.port)
            .tls(tls)
            .timeout(Some(email.timeout));
    if let Some((username, password)) = credentials {
        transport = transport.credentials(Credentials::new(username, password));
    }
    transport
        .build()
        .send(mail)
        .await
        .map(drop)
        .map_err(smtp_error)
}
