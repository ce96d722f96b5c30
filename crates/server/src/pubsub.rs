//! Google Cloud Pub/Sub push, the pieces behind `POST /events/pubsub`: the envelope Google posts
//! ([`parse_push`], [`PushMessage`], [`dedup_key`]) and the OIDC token it signs each push with
//! ([`OidcVerifier`], [`OidcConfig`], [`GoogleClaims`], [`AuthError`]).
//!
//! Nothing here knows about axum: the route hands over the body bytes and the `Authorization`
//! header, and maps [`AuthError::status`] and [`EnvelopeError`] to its responses.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------------------------
// The push envelope
// ---------------------------------------------------------------------------------------------

/// One Pub/Sub message as delivered by a push subscription, with `message.data` decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    /// `message.messageId` (or `message.message_id`): the same on every redelivery.
    pub message_id: String,
    /// The full subscription name, `projects/{project}/subscriptions/{name}`.
    pub subscription: String,
    /// `message.attributes`; empty when Google sent none.
    pub attributes: BTreeMap<String, String>,
    /// `message.data`, base64-decoded: for gapless, the event JSON.
    pub data: Vec<u8>,
    /// `message.publishTime` as Google wrote it (RFC 3339), when present.
    pub publish_time: Option<String>,
}

/// Why a push body is not a usable Pub/Sub push envelope. Each message names the field.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not JSON at all.
    #[error("push body is not JSON")]
    NotJson(#[source] serde_json::Error),
    /// A required field is absent, `null`, or (for the ids) an empty string.
    #[error("{field} is missing")]
    Missing {
        /// Dotted path of the field, e.g. `message.messageId`.
        field: &'static str,
    },
    /// A field is present with the wrong JSON type.
    #[error("{field} is not {expected}")]
    WrongType {
        /// Dotted path of the field, e.g. `message.attributes.origin`.
        field: String,
        /// What the field should have been, e.g. `a string`.
        expected: &'static str,
    },
    /// `message.data` is not standard base64.
    #[error("message.data is not base64: {reason}")]
    NotBase64 {
        /// What the decoder tripped over.
        reason: base64::DecodeError,
    },
}

/// Standard alphabet, padding optional: Google pads, hand-written test pushes often do not.
const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parses Google's push envelope:
/// `{"message":{"data":"<base64>","attributes":{..},"messageId":"..","publishTime":".."},
/// "subscription":"projects/p/subscriptions/s"}`.
///
/// Google sends the id both as `messageId` and `message_id`; either is enough. `attributes` and
/// `publishTime` may be absent. `data` is required: a gapless event lives there, so an
/// attributes-only message is not one.
pub fn parse_push(body: &[u8]) -> Result<PushMessage, EnvelopeError> {
    let root: Value = serde_json::from_slice(body).map_err(EnvelopeError::NotJson)?;
    let root = root.as_object().ok_or_else(|| EnvelopeError::WrongType {
        field: "push body".to_owned(),
        expected: "a JSON object",
    })?;
    let message = match root.get("message") {
        None | Some(Value::Null) => return Err(EnvelopeError::Missing { field: "message" }),
        Some(Value::Object(message)) => message,
        Some(_) => {
            return Err(EnvelopeError::WrongType {
                field: "message".to_owned(),
                expected: "an object",
            });
        }
    };

    let message_id = match non_empty(optional_string(message, "messageId", "message.messageId")?) {
        Some(id) => id,
        None => non_empty(optional_string(
            message,
            "message_id",
            "message.message_id",
        )?)
        .ok_or(EnvelopeError::Missing {
            field: "message.messageId",
        })?,
    };
    let subscription = non_empty(optional_string(root, "subscription", "subscription")?).ok_or(
        EnvelopeError::Missing {
            field: "subscription",
        },
    )?;
    let data = optional_string(message, "data", "message.data")?.ok_or(EnvelopeError::Missing {
        field: "message.data",
    })?;
    let data = STANDARD_ANY_PADDING
        .decode(data)
        .map_err(|reason| EnvelopeError::NotBase64 { reason })?;
    let publish_time = match optional_string(message, "publishTime", "message.publishTime")? {
        Some(time) => Some(time),
        None => optional_string(message, "publish_time", "message.publish_time")?,
    };

    let attributes = match message.get("attributes") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(attributes)) => attributes
            .iter()
            .map(|(key, value)| match value {
                Value::String(value) => Ok((key.clone(), value.clone())),
                _ => Err(EnvelopeError::WrongType {
                    field: format!("message.attributes.{key}"),
                    expected: "a string",
                }),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(EnvelopeError::WrongType {
                field: "message.attributes".to_owned(),
                expected: "an object",
            });
        }
    };

    Ok(PushMessage {
        message_id: message_id.to_owned(),
        subscription: subscription.to_owned(),
        attributes,
        data,
        publish_time: publish_time.map(str::to_owned),
    })
}

/// The key under which a push is deduplicated: `pubsub:{subscription}:{message_id}`. Google
/// redelivers with the same `messageId`, and ids are unique per topic, so the subscription
/// keeps two subscriptions of one topic (or two topics) apart.
pub fn dedup_key(message: &PushMessage) -> String {
    format!("pubsub:{}:{}", message.subscription, message.message_id)
}

/// `object[key]` as a string; absent and `null` are `None`, any other type is an error.
fn optional_string<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<&'a str>, EnvelopeError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(EnvelopeError::WrongType {
            field: field.to_owned(),
            expected: "a string",
        }),
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|value| !value.is_empty())
}

// ---------------------------------------------------------------------------------------------
// OIDC: Google's push token
// ---------------------------------------------------------------------------------------------

/// Google's signing keys for its OIDC tokens.
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// The `iss` values Google puts in its OIDC tokens.
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// At most one JWKS fetch per this interval is caused by tokens naming an unknown `kid`: enough
/// to pick up a rotated key quickly, too few for forged tokens to turn into a flood of fetches.
const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// After a failed fetch with nothing cached, requests are refused with [`AuthError::Jwks`] for
/// this long before the next attempt, so that an outage of the key source is not hammered.
const FAILED_FETCH_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// One JWKS fetch, connect to last byte.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Google's key set is about 2 KiB; anything near this is not a key set.
const JWKS_MAX_BYTES: usize = 1024 * 1024;

/// Where the JSON Web Key Set that signs the tokens comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A local file holding the key set (tests, air-gapped setups).
    File(PathBuf),
    /// An `http://` or `https://` URL; Google's is [`GOOGLE_JWKS_URL`].
    Url(String),
}

impl JwksSource {
    /// Google's own key set, [`GOOGLE_JWKS_URL`].
    pub fn google() -> Self {
        Self::Url(GOOGLE_JWKS_URL.to_owned())
    }
}

impl fmt::Display for JwksSource {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(formatter, "`{}`", path.display()),
            Self::Url(url) => write!(formatter, "`{url}`"),
        }
    }
}

/// What a push token must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The `aud` the push subscription was configured with (by default its push endpoint URL);
    /// the token's `aud` must equal it exactly.
    pub audience: String,
    /// The service account the push subscription authenticates as; the token's `email`.
    pub service_account: String,
    /// Where the signing keys come from.
    pub jwks: JwksSource,
    /// Accepted `iss` values; [`GOOGLE_ISSUERS`] by default.
    pub issuers: Vec<String>,
    /// Clock skew allowed on `exp` and `iat`; 60 s by default.
    pub leeway: Duration,
    /// How long a fetched key set is used before it is fetched again; 1 h by default.
    pub jwks_ttl: Duration,
}

impl OidcConfig {
    /// A configuration with the defaults: Google's issuers, 60 s leeway, keys kept for 1 h.
    pub fn new(
        audience: impl Into<String>,
        service_account: impl Into<String>,
        jwks: JwksSource,
    ) -> Self {
        Self {
            audience: audience.into(),
            service_account: service_account.into(),
            jwks,
            issuers: GOOGLE_ISSUERS
                .iter()
                .map(|&issuer| issuer.to_owned())
                .collect(),
            leeway: Duration::from_secs(60),
            jwks_ttl: Duration::from_secs(3600),
        }
    }
}

/// The claims of a verified Google OIDC token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GoogleClaims {
    /// Issuer, one of [`OidcConfig::issuers`].
    pub iss: String,
    /// Audience, equal to [`OidcConfig::audience`].
    pub aud: String,
    /// The service account's unique numeric id.
    pub sub: String,
    /// The service account's e-mail, equal to [`OidcConfig::service_account`].
    pub email: String,
    /// Always `true` once verified.
    #[serde(default)]
    pub email_verified: bool,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Authorized party, when Google sets it.
    #[serde(default)]
    pub azp: Option<String>,
}

/// Why a push was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (401).
    #[error("`Authorization` header is missing")]
    Missing,
    /// The header or token is not acceptable: not `Bearer`, malformed, wrong algorithm, unknown
    /// key, bad signature, wrong issuer or audience, expired (401).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A genuine token, but not from the configured service account, or its e-mail is not
    /// verified (403).
    #[error("token not accepted: {0}")]
    Forbidden(String),
    /// The signing keys could not be loaded, so nothing can be verified (503: the pusher should
    /// retry). The message names the source; log it rather than sending it to the client.
    #[error("signing keys unavailable: {0}")]
    Jwks(String),
}

impl AuthError {
    /// The HTTP status to answer with: 401, 403 or 503.
    pub fn status(&self) -> u16 {
        match self {
            Self::Missing | Self::Invalid(_) => 401,
            Self::Forbidden(_) => 403,
            Self::Jwks(_) => 503,
        }
    }
}

/// Verifies Google's push tokens against a cached JWKS. Cheap to clone: clones share the cache.
#[derive(Clone)]
pub struct OidcVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: OidcConfig,
    /// A tokio mutex held across the fetch on purpose: concurrent requests that find the cache
    /// empty or stale wait for one fetch instead of each starting their own.
    cache: tokio::sync::Mutex<KeyCache>,
}

type KeySet = HashMap<String, DecodingKey>;

#[derive(Default)]
struct KeyCache {
    keys: Option<Arc<KeySet>>,
    loaded_at: Option<Instant>,
    /// Last fetch attempt that failed, and why.
    last_failure: Option<(Instant, String)>,
    last_unknown_kid_refetch: Option<Instant>,
    client: Option<reqwest::Client>,
}

impl fmt::Debug for OidcVerifier {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("OidcVerifier")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The JOSE header fields we decide on before touching any key.
#[derive(Deserialize)]
struct JoseHeader {
    alg: Option<String>,
    kid: Option<String>,
}

impl OidcVerifier {
    /// A verifier for `config`. Keys are fetched on the first [`verify`](Self::verify), not here.
    pub fn new(config: OidcConfig) -> Self {
        // jsonwebtoken 11 picks its crypto backend from its cargo features at the first use, and
        // falls back to one that panics on every verify when it cannot tell (both `rust_crypto`
        // and `aws_lc_rs` enabled by feature unification). Installing RustCrypto explicitly takes
        // that guess away; `Err` only means a provider is installed already, which is as good.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        Self {
            inner: Arc::new(Inner {
                config,
                cache: tokio::sync::Mutex::new(KeyCache::default()),
            }),
        }
    }

    /// The configuration this verifier checks against.
    pub fn config(&self) -> &OidcConfig {
        &self.inner.config
    }

    /// Verifies the `Authorization` header of a push: `Bearer <JWT>`, RS256-signed by a key of
    /// the JWKS, from an accepted issuer, for exactly the configured audience, not expired, not
    /// issued in the future, for the configured service account with a verified e-mail.
    pub async fn verify(
        &self,
        authorization_header: Option<&str>,
    ) -> Result<GoogleClaims, AuthError> {
        let header = authorization_header.ok_or(AuthError::Missing)?;
        let token = bearer_token(header)?;
        let jose = jose_header(token)?;
        // Decided here, before any key is looked at: the algorithm comes from the attacker, and
        // `none` or HS256 keyed with the public key are the classic ways around a signature.
        match jose.alg.as_deref() {
            Some("RS256") => {}
            Some(alg) => {
                return Err(AuthError::Invalid(format!(
                    "token `alg` is `{}`, only `RS256` is accepted",
                    shown(alg)
                )));
            }
            None => return Err(AuthError::Invalid("token header has no `alg`".to_owned())),
        }
        let kid = jose
            .kid
            .filter(|kid| !kid.is_empty())
            .ok_or_else(|| AuthError::Invalid("token header has no `kid`".to_owned()))?;
        let key = self.key_for(&kid).await?;

        // The claims are checked below, by us, so that each failure says what was wrong.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<GoogleClaims>(token, &key, &validation)
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidSignature => AuthError::Invalid(format!(
                    "signature does not verify with key `{}`",
                    shown(&kid)
                )),
                ErrorKind::Json(_) => AuthError::Invalid(format!(
                    "token claims are not Google's OIDC claims: {error}"
                )),
                _ => AuthError::Invalid(format!("token cannot be verified: {error}")),
            })?
            .claims;
        self.check_claims(&claims, chrono::Utc::now().timestamp())?;
        Ok(claims)
    }

    fn check_claims(&self, claims: &GoogleClaims, now: i64) -> Result<(), AuthError> {
        let config = &self.inner.config;
        if !config.issuers.contains(&claims.iss) {
            return Err(AuthError::Invalid(format!(
                "issuer `{}` is not one of {:?}",
                shown(&claims.iss),
                config.issuers
            )));
        }
        if claims.aud != config.audience {
            return Err(AuthError::Invalid(format!(
                "audience `{}` is not the configured `{}`",
                shown(&claims.aud),
                config.audience
            )));
        }
        let leeway = i64::try_from(config.leeway.as_secs()).unwrap_or(i64::MAX);
        if claims.exp.saturating_add(leeway) < now {
            return Err(AuthError::Invalid(format!(
                "token expired at {} ({} s ago)",
                claims.exp,
                now.saturating_sub(claims.exp)
            )));
        }
        if claims.iat > now.saturating_add(leeway) {
            return Err(AuthError::Invalid(format!(
                "token issued in the future, at {} ({} s from now)",
                claims.iat,
                claims.iat.saturating_sub(now)
            )));
        }
        if claims.email != config.service_account {
            return Err(AuthError::Forbidden(format!(
                "email `{}` is not the configured service account `{}`",
                shown(&claims.email),
                config.service_account
            )));
        }
        if !claims.email_verified {
            return Err(AuthError::Forbidden(format!(
                "email `{}` is not verified",
                shown(&claims.email)
            )));
        }
        Ok(())
    }

    /// The key named `kid`: from the cache while it is fresh; an unknown `kid` refetches the
    /// set at most once per [`UNKNOWN_KID_REFETCH_INTERVAL`].
    async fn key_for(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        let config = &self.inner.config;
        let mut cache = self.inner.cache.lock().await;
        let now = Instant::now();

        let is_fresh = cache
            .loaded_at
            .is_some_and(|at| now.duration_since(at) < config.jwks_ttl);
        let mut fetched = false;
        if !is_fresh {
            let recently_failed = cache
                .last_failure
                .as_ref()
                .is_some_and(|(at, _)| now.duration_since(*at) < FAILED_FETCH_RETRY_INTERVAL);
            if !recently_failed {
                fetched = true;
                // On failure, a stale set (if any) goes on being used: Google's keys outlive
                // the TTL by far, and refusing every push during a blip would be worse.
                let _ = self.refresh(&mut cache, now).await;
            }
        }
        let Some(keys) = cache.keys.clone() else {
            let why = cache
                .last_failure
                .as_ref()
                .map_or_else(|| "not loaded yet".to_owned(), |(_, why)| why.clone());
            return Err(AuthError::Jwks(why));
        };
        if let Some(key) = keys.get(kid) {
            return Ok(key.clone());
        }

        let may_refetch = !fetched
            && cache
                .last_unknown_kid_refetch
                .is_none_or(|at| now.duration_since(at) >= UNKNOWN_KID_REFETCH_INTERVAL);
        if may_refetch {
            cache.last_unknown_kid_refetch = Some(now);
            tracing::info!(kid = %shown(kid), source = %config.jwks, "unknown key id, fetching the JWKS again");
            let keys = self
                .refresh(&mut cache, now)
                .await
                .map_err(AuthError::Jwks)?;
            if let Some(key) = keys.get(kid) {
                return Ok(key.clone());
            }
        }
        Err(AuthError::Invalid(format!(
            "key `{}` is not in the JWKS from {}",
            shown(kid),
            config.jwks
        )))
    }

    /// Fetches the key set into the cache. The error says which source failed and how.
    async fn refresh(&self, cache: &mut KeyCache, now: Instant) -> Result<Arc<KeySet>, String> {
        let source = &self.inner.config.jwks;
        match fetch_jwks(source, &mut cache.client).await {
            Ok(keys) => {
                tracing::debug!(%source, keys = keys.len(), "loaded JWKS");
                let keys = Arc::new(keys);
                cache.keys = Some(Arc::clone(&keys));
                cache.loaded_at = Some(now);
                cache.last_failure = None;
                Ok(keys)
            }
            Err(why) => {
                tracing::warn!(%source, error = %why, "cannot load JWKS");
                cache.last_failure = Some((now, why.clone()));
                Err(why)
            }
        }
    }
}

/// The token of a `Bearer` header. The scheme is case-insensitive (RFC 9110).
fn bearer_token(header: &str) -> Result<&str, AuthError> {
    let header = header.trim();
    let (scheme, token) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Invalid(format!(
            "`Authorization` is not `Bearer <token>` (scheme `{}`)",
            shown(scheme)
        )));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Invalid(
            "`Authorization: Bearer` carries no token".to_owned(),
        ));
    }
    Ok(token)
}

fn jose_header(token: &str) -> Result<JoseHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Invalid(
            "token is not a JWT (three dot-separated parts)".to_owned(),
        ));
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|error| AuthError::Invalid(format!("token header is not base64url: {error}")))?;
    serde_json::from_slice(&header)
        .map_err(|error| AuthError::Invalid(format!("token header is not a JOSE header: {error}")))
}

/// Fetches and parses the key set, keeping the RS256 signing keys by `kid`.
async fn fetch_jwks(
    source: &JwksSource,
    client: &mut Option<reqwest::Client>,
) -> Result<KeySet, String> {
    let body = match source {
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .map_err(|error| format!("cannot read JWKS file {source}: {error}"))?,
        JwksSource::Url(url) => {
            let client = match client {
                Some(client) => client,
                None => client.insert(
                    gapless_connect::http_client()
                        .map_err(|error| format!("cannot build an HTTP client: {error}"))?,
                ),
            };
            tokio::time::timeout(JWKS_FETCH_TIMEOUT, fetch_body(client, url))
                .await
                .map_err(|_| {
                    format!("fetching JWKS {source} timed out after {JWKS_FETCH_TIMEOUT:?}")
                })?
                .map_err(|why| format!("cannot fetch JWKS {source}: {why}"))?
        }
    };
    if body.len() > JWKS_MAX_BYTES {
        return Err(format!("JWKS {source} is over {JWKS_MAX_BYTES} bytes"));
    }
    parse_jwks(&body).map_err(|why| format!("JWKS {source} {why}"))
}

async fn fetch_body(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
        if body.len() + chunk.len() > JWKS_MAX_BYTES {
            return Err(format!("body is over {JWKS_MAX_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<RawJwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// The RS256 signing keys of a JWKS document. Other keys (EC, encryption keys) are skipped, so
/// that a key type we do not use cannot make the whole set unusable; a set with no usable key
/// is an error. The error completes "JWKS `source` …".
fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    let raw: RawJwks = serde_json::from_slice(body)
        .map_err(|error| format!("is not a JSON Web Key Set: {error}"))?;
    let mut keys = KeySet::new();
    for jwk in raw.keys {
        let (Some("RSA"), Some(kid), Some(n), Some(e)) =
            (jwk.kty.as_deref(), jwk.kid, jwk.n, jwk.e)
        else {
            continue;
        };
        if jwk.alg.as_deref().is_some_and(|alg| alg != "RS256")
            || jwk.usage.as_deref().is_some_and(|usage| usage != "sig")
        {
            continue;
        }
        match DecodingKey::from_rsa_components(&n, &e) {
            Ok(key) => {
                keys.insert(kid, key);
            }
            Err(error) => {
                tracing::warn!(kid = %shown(&kid), %error, "skipping JWKS key with bad `n`/`e`");
            }
        }
    }
    if keys.is_empty() {
        return Err("has no RS256 signing key".to_owned());
    }
    Ok(keys)
}

/// An attacker-chosen string, cut short enough to put in a message or a log line.
fn shown(value: &str) -> String {
    const MAX_CHARS: usize = 80;
    if value.chars().count() <= MAX_CHARS {
        value.to_owned()
    } else {
        let cut: String = value.chars().take(MAX_CHARS).collect();
        format!("{cut}…")
    }
}
