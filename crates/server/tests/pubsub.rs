//! Pub/Sub push: the envelope parser, and OIDC verification with real RSA keys (made by the
//! `openssl` CLI at test time), real RS256 signatures, and the JWKS served from a file and from a
//! real HTTP server on loopback that counts its fetches.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gapless_server::pubsub::{
    AuthError, EnvelopeError, GoogleClaims, JwksSource, OidcConfig, OidcVerifier, PushMessage,
    dedup_key, parse_push,
};
use gapless_testkit::rsa::{RsaKey, jwks};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const AUDIENCE: &str = "https://gapless.example.com/events/pubsub";
const SERVICE_ACCOUNT: &str = "pusher@proj.iam.gserviceaccount.com";

// ---------------------------------------------------------------------------------------------
// Keys, tokens and a JWKS server
// ---------------------------------------------------------------------------------------------

fn generate_key() -> RsaKey {
    RsaKey::generate()
}

/// The key the JWKS publishes.
fn key_a() -> &'static RsaKey {
    static KEY: OnceLock<RsaKey> = OnceLock::new();
    KEY.get_or_init(generate_key)
}

/// Another key: a forger's, or the next one after a rotation.
fn key_b() -> &'static RsaKey {
    static KEY: OnceLock<RsaKey> = OnceLock::new();
    KEY.get_or_init(generate_key)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims as Google sends them for a push by [`SERVICE_ACCOUNT`] to [`AUDIENCE`].
fn good_claims() -> Value {
    let now = now();
    json!({
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "1234567890",
        "sub": "1234567890",
        "email": SERVICE_ACCOUNT,
        "email_verified": true,
        "iat": now - 10,
        "exp": now + 3590,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn sign_rs256(key: &RsaKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(&key.private_pem).unwrap(),
    )
    .unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn config(jwks: JwksSource) -> OidcConfig {
    OidcConfig::new(AUDIENCE, SERVICE_ACCOUNT, jwks)
}

/// A JWKS endpoint on 127.0.0.1 that counts GETs; `None` as the body answers 500.
struct JwksServer {
    url: String,
    fetches: Arc<AtomicUsize>,
    body: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ServerState {
    fetches: Arc<AtomicUsize>,
    body: Arc<Mutex<Option<String>>>,
}

async fn serve_jwks(State(state): State<ServerState>) -> Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let body = state.body.lock().unwrap().clone();
    match body {
        Some(body) => ([("content-type", "application/json")], body).into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
    }
}

impl JwksServer {
    async fn start(body: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = ServerState {
            fetches: Arc::new(AtomicUsize::new(0)),
            body: Arc::new(Mutex::new(Some(body))),
        };
        let app = axum::Router::new()
            .route("/oauth2/v3/certs", axum::routing::get(serve_jwks))
            .with_state(state.clone());
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("http://{address}/oauth2/v3/certs"),
            fetches: state.fetches,
            body: state.body,
            task,
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn set_body(&self, body: Option<String>) {
        *self.body.lock().unwrap() = body;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The token matrix
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Missing,
    Invalid,
    Forbidden,
}

fn kind(error: &AuthError) -> Option<Kind> {
    match error {
        AuthError::Missing => Some(Kind::Missing),
        AuthError::Invalid(_) => Some(Kind::Invalid),
        AuthError::Forbidden(_) => Some(Kind::Forbidden),
        AuthError::Jwks(_) => None,
    }
}

/// Every way a push token can be wrong, each with the error kind and a word its message must
/// contain (so that the check meant to catch it is the one that did).
fn bad_tokens() -> Vec<(&'static str, Option<String>, Kind, &'static str)> {
    let a = key_a();
    let good = good_claims();
    let rs256 = |claims: &Value| Some(bearer(&sign_rs256(a, "k1", claims)));
    let now = now();

    let alg_none = {
        let header =
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": "k1"}).to_string());
        let claims = URL_SAFE_NO_PAD.encode(good.to_string());
        format!("{header}.{claims}.")
    };
    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".to_owned());
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(&a.public_pem)).unwrap()
    };

    vec![
        (
            "wrong audience",
            rs256(&with(
                good.clone(),
                "aud",
                json!("https://elsewhere.example.com/"),
            )),
            Kind::Invalid,
            "audience",
        ),
        (
            "audience as a list holding ours",
            rs256(&with(good.clone(), "aud", json!([AUDIENCE]))),
            Kind::Invalid,
            "claims",
        ),
        (
            "wrong email",
            rs256(&with(
                good.clone(),
                "email",
                json!("intruder@proj.iam.gserviceaccount.com"),
            )),
            Kind::Forbidden,
            "service account",
        ),
        (
            "email not verified",
            rs256(&with(good.clone(), "email_verified", json!(false))),
            Kind::Forbidden,
            "not verified",
        ),
        (
            "expired beyond the leeway",
            rs256(&with(
                with(good.clone(), "iat", json!(now - 3800)),
                "exp",
                json!(now - 200),
            )),
            Kind::Invalid,
            "expired",
        ),
        (
            "issued in the future beyond the leeway",
            rs256(&with(good.clone(), "iat", json!(now + 600))),
            Kind::Invalid,
            "future",
        ),
        (
            "wrong issuer",
            rs256(&with(
                good.clone(),
                "iss",
                json!("https://evil.example.com"),
            )),
            Kind::Invalid,
            "issuer",
        ),
        (
            "signed by another key under the same kid",
            Some(bearer(&sign_rs256(key_b(), "k1", &good))),
            Kind::Invalid,
            "signature",
        ),
        (
            "signature of one token on another's claims",
            {
                let real = sign_rs256(a, "k1", &good);
                let forged_claims = URL_SAFE_NO_PAD.encode(
                    with(
                        good.clone(),
                        "email",
                        json!("intruder@proj.iam.gserviceaccount.com"),
                    )
                    .to_string(),
                );
                let parts: Vec<&str> = real.split('.').collect();
                Some(bearer(&format!(
                    "{}.{forged_claims}.{}",
                    parts[0], parts[2]
                )))
            },
            Kind::Invalid,
            "signature",
        ),
        ("alg none", Some(bearer(&alg_none)), Kind::Invalid, "`none`"),
        (
            "HS256 keyed with the public key",
            Some(bearer(&hs256_with_public_key)),
            Kind::Invalid,
            "`HS256`",
        ),
        (
            "unknown kid",
            Some(bearer(&sign_rs256(a, "k-unknown", &good))),
            Kind::Invalid,
            "k-unknown",
        ),
        (
            "no kid",
            Some(bearer(
                &jsonwebtoken::encode(
                    &Header::new(Algorithm::RS256),
                    &good,
                    &EncodingKey::from_rsa_pem(&a.private_pem).unwrap(),
                )
                .unwrap(),
            )),
            Kind::Invalid,
            "kid",
        ),
        (
            "missing Authorization header",
            None,
            Kind::Missing,
            "missing",
        ),
        (
            "not a Bearer header",
            Some(format!("Basic {}", STANDARD.encode("user:password"))),
            Kind::Invalid,
            "Bearer",
        ),
        (
            "Bearer without a token",
            Some("Bearer ".to_owned()),
            Kind::Invalid,
            "no token",
        ),
        (
            "not a JWT",
            Some(bearer("not-a-jwt")),
            Kind::Invalid,
            "not a JWT",
        ),
    ]
}

async fn check_matrix(verifier: &OidcVerifier) {
    let claims = verifier
        .verify(Some(&bearer(&sign_rs256(key_a(), "k1", &good_claims()))))
        .await
        .unwrap();
    assert_eq!(claims.email, SERVICE_ACCOUNT);
    assert_eq!(claims.aud, AUDIENCE);
    assert!(claims.email_verified);

    // Within the leeway both ways: expired 30 s ago, issued 30 s ahead.
    let now = now();
    let skewed = with(
        with(good_claims(), "iat", json!(now + 30)),
        "exp",
        json!(now - 30),
    );
    let accepted: Result<GoogleClaims, AuthError> = verifier
        .verify(Some(&bearer(&sign_rs256(key_a(), "k1", &skewed))))
        .await;
    assert!(accepted.is_ok(), "within the leeway: {accepted:?}");
    let lowercase = format!("bearer {}", sign_rs256(key_a(), "k1", &good_claims()));
    assert!(verifier.verify(Some(&lowercase)).await.is_ok());
    let old_issuer = with(good_claims(), "iss", json!("accounts.google.com"));
    assert!(
        verifier
            .verify(Some(&bearer(&sign_rs256(key_a(), "k1", &old_issuer))))
            .await
            .is_ok()
    );

    for (name, header, expected, word) in bad_tokens() {
        let error = verifier
            .verify(header.as_deref())
            .await
            .expect_err(&format!("{name}: accepted"));
        assert_eq!(kind(&error), Some(expected), "{name}: {error}");
        assert!(
            error.to_string().contains(word),
            "{name}: `{error}` does not say `{word}`"
        );
        let status = match expected {
            Kind::Missing | Kind::Invalid => 401,
            Kind::Forbidden => 403,
        };
        assert_eq!(error.status(), status, "{name}");
    }
}

#[tokio::test]
async fn token_matrix_with_jwks_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs.json");
    std::fs::write(&path, jwks(&[("k1", key_a())])).unwrap();
    check_matrix(&OidcVerifier::new(config(JwksSource::File(path)))).await;
}

#[tokio::test]
async fn token_matrix_with_jwks_from_a_url() {
    let server = JwksServer::start(jwks(&[("k1", key_a())])).await;
    check_matrix(&OidcVerifier::new(config(JwksSource::Url(
        server.url.clone(),
    ))))
    .await;
}

// ---------------------------------------------------------------------------------------------
// The JWKS cache
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_hundred_verifies_fetch_the_jwks_once() {
    let server = JwksServer::start(jwks(&[("k1", key_a())])).await;
    let verifier = OidcVerifier::new(config(JwksSource::Url(server.url.clone())));
    let header = bearer(&sign_rs256(key_a(), "k1", &good_claims()));

    // Half at once from clones (one fetch serves all the waiters), half one after another.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let verifier = verifier.clone();
        let header = header.clone();
        tasks.spawn(async move { verifier.verify(Some(&header)).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    for _ in 0..50 {
        verifier.verify(Some(&header)).await.unwrap();
    }
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_but_unknown_kids_fetch_at_most_once_a_minute() {
    let server = JwksServer::start(jwks(&[("k1", key_a())])).await;
    let verifier = OidcVerifier::new(config(JwksSource::Url(server.url.clone())));
    verifier
        .verify(Some(&bearer(&sign_rs256(key_a(), "k1", &good_claims()))))
        .await
        .unwrap();
    assert_eq!(server.fetches(), 1);

    // Google rotates: the set now also holds k2, and tokens signed with it arrive.
    server.set_body(Some(jwks(&[("k1", key_a()), ("k2", key_b())])));
    let claims = verifier
        .verify(Some(&bearer(&sign_rs256(key_b(), "k2", &good_claims()))))
        .await
        .unwrap();
    assert_eq!(claims.email, SERVICE_ACCOUNT);
    assert_eq!(server.fetches(), 2);

    // A stream of tokens with made-up kids: rejected, and no further fetch within the minute.
    for attempt in 0..50 {
        let kid = format!("forged-{attempt}");
        let error = verifier
            .verify(Some(&bearer(&sign_rs256(key_b(), &kid, &good_claims()))))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, AuthError::Invalid(why) if why.contains(&kid)),
            "{error}"
        );
    }
    assert_eq!(server.fetches(), 2);
    // The known keys still work.
    verifier
        .verify(Some(&bearer(&sign_rs256(key_b(), "k2", &good_claims()))))
        .await
        .unwrap();
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn unknown_kids_first_thing_fetch_at_most_twice() {
    let server = JwksServer::start(jwks(&[("k1", key_a())])).await;
    let verifier = OidcVerifier::new(config(JwksSource::Url(server.url.clone())));
    for attempt in 0..50 {
        let kid = format!("forged-{attempt}");
        let error = verifier
            .verify(Some(&bearer(&sign_rs256(key_b(), &kid, &good_claims()))))
            .await
            .unwrap_err();
        assert_eq!(kind(&error), Some(Kind::Invalid), "{error}");
    }
    let fetches = server.fetches();
    assert!((1..=2).contains(&fetches), "{fetches} fetches");
}

#[tokio::test]
async fn the_jwks_is_fetched_again_once_its_ttl_has_passed() {
    let server = JwksServer::start(jwks(&[("k1", key_a())])).await;
    let mut config = config(JwksSource::Url(server.url.clone()));
    config.jwks_ttl = Duration::ZERO;
    let verifier = OidcVerifier::new(config);
    let header = bearer(&sign_rs256(key_a(), "k1", &good_claims()));
    for expected in 1..=3 {
        verifier.verify(Some(&header)).await.unwrap();
        assert_eq!(server.fetches(), expected);
    }
}

#[tokio::test]
async fn a_jwks_outage_keeps_the_stale_keys_and_is_not_hammered() {
    let server = JwksServer::start(jwks(&[("k1", key_a())])).await;
    let mut config = config(JwksSource::Url(server.url.clone()));
    config.jwks_ttl = Duration::ZERO;
    let verifier = OidcVerifier::new(config);
    let header = bearer(&sign_rs256(key_a(), "k1", &good_claims()));
    verifier.verify(Some(&header)).await.unwrap();
    assert_eq!(server.fetches(), 1);

    server.set_body(None);
    for _ in 0..20 {
        verifier.verify(Some(&header)).await.unwrap();
    }
    // One failed attempt, then the retry interval holds further attempts back.
    assert_eq!(server.fetches(), 2);
}

#[tokio::test]
async fn an_unreachable_jwks_is_a_503_naming_the_source() {
    let server = JwksServer::start(jwks(&[("k1", key_a())])).await;
    server.set_body(None);
    let verifier = OidcVerifier::new(config(JwksSource::Url(server.url.clone())));
    let header = bearer(&sign_rs256(key_a(), "k1", &good_claims()));
    for _ in 0..10 {
        let error = verifier.verify(Some(&header)).await.unwrap_err();
        assert_eq!(error.status(), 503);
        assert!(
            matches!(&error, AuthError::Jwks(why) if why.contains(&server.url) && why.contains("500")),
            "{error}"
        );
    }
    assert_eq!(
        server.fetches(),
        1,
        "failed fetches are not retried on every request"
    );

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-certs.json");
    let verifier = OidcVerifier::new(config(JwksSource::File(missing.clone())));
    let error = verifier.verify(Some(&header)).await.unwrap_err();
    assert!(
        matches!(&error, AuthError::Jwks(why) if why.contains(missing.to_str().unwrap())),
        "{error}"
    );

    let not_a_key_set = dir.path().join("certs.json");
    std::fs::write(
        &not_a_key_set,
        r#"{"keys":[{"kty":"EC","kid":"e1","crv":"P-256"}]}"#,
    )
    .unwrap();
    let verifier = OidcVerifier::new(config(JwksSource::File(not_a_key_set)));
    let error = verifier.verify(Some(&header)).await.unwrap_err();
    assert!(
        matches!(&error, AuthError::Jwks(why) if why.contains("no RS256 signing key")),
        "{error}"
    );
}

#[tokio::test]
async fn a_bad_header_costs_no_fetch() {
    let server = JwksServer::start(jwks(&[("k1", key_a())])).await;
    let verifier = OidcVerifier::new(config(JwksSource::Url(server.url.clone())));
    for header in [
        None,
        Some("Basic abc"),
        Some("Bearer x.y"),
        Some("Bearer a.b.c"),
    ] {
        assert!(verifier.verify(header).await.is_err());
    }
    assert_eq!(server.fetches(), 0);
}

#[test]
fn statuses() {
    assert_eq!(AuthError::Missing.status(), 401);
    assert_eq!(AuthError::Invalid("x".into()).status(), 401);
    assert_eq!(AuthError::Forbidden("x".into()).status(), 403);
    assert_eq!(AuthError::Jwks("x".into()).status(), 503);
    let defaults = OidcConfig::new("a", "s", JwksSource::google());
    assert_eq!(
        defaults.issuers,
        ["https://accounts.google.com", "accounts.google.com"]
    );
    assert_eq!(defaults.leeway, Duration::from_secs(60));
    assert_eq!(defaults.jwks_ttl, Duration::from_secs(3600));
    assert_eq!(
        defaults.jwks,
        JwksSource::Url("https://www.googleapis.com/oauth2/v3/certs".into())
    );
}

// ---------------------------------------------------------------------------------------------
// The envelope
// ---------------------------------------------------------------------------------------------

const EVENT: &str = r#"{"phase":"load","date":"2024-03-01"}"#;

fn envelope() -> Value {
    json!({
        "message": {
            "data": STANDARD.encode(EVENT),
            "attributes": {"origin": "warehouse", "kind": "done"},
            "messageId": "2070443601311540",
            "message_id": "2070443601311540",
            "publishTime": "2024-03-02T01:02:03.456Z",
            "publish_time": "2024-03-02T01:02:03.456Z",
        },
        "subscription": "projects/p/subscriptions/s",
    })
}

fn parse(value: &Value) -> Result<PushMessage, EnvelopeError> {
    parse_push(value.to_string().as_bytes())
}

#[test]
fn a_push_envelope_decodes() {
    let message = parse(&envelope()).unwrap();
    assert_eq!(
        message,
        PushMessage {
            message_id: "2070443601311540".to_owned(),
            subscription: "projects/p/subscriptions/s".to_owned(),
            attributes: [("kind", "done"), ("origin", "warehouse")]
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
            data: EVENT.as_bytes().to_vec(),
            publish_time: Some("2024-03-02T01:02:03.456Z".to_owned()),
        }
    );
    assert_eq!(
        dedup_key(&message),
        "pubsub:projects/p/subscriptions/s:2070443601311540"
    );
}

#[test]
fn either_id_spelling_and_optional_fields() {
    let mut only_snake = envelope();
    let message = only_snake["message"].as_object_mut().unwrap();
    message.remove("messageId");
    message.remove("attributes");
    message.remove("publishTime");
    message.remove("publish_time");
    let parsed = parse(&only_snake).unwrap();
    assert_eq!(parsed.message_id, "2070443601311540");
    assert!(parsed.attributes.is_empty());
    assert_eq!(parsed.publish_time, None);

    let mut only_camel = envelope();
    only_camel["message"]
        .as_object_mut()
        .unwrap()
        .remove("message_id");
    assert_eq!(parse(&only_camel).unwrap().message_id, "2070443601311540");

    let mut unpadded = envelope();
    unpadded["message"]["data"] = json!("eyJhIjoxfQ"); // {"a":1}, its "==" left off
    assert_eq!(parse(&unpadded).unwrap().data, br#"{"a":1}"#);
}

#[test]
fn each_missing_field_is_named() {
    /// Takes a field out of a good envelope.
    type Removal = fn(&mut Value);
    let cases: [(&str, Removal); 5] = [
        ("message", |v| {
            v.as_object_mut().unwrap().remove("message");
        }),
        ("message.messageId", |v| {
            let message = v["message"].as_object_mut().unwrap();
            message.remove("messageId");
            message.remove("message_id");
        }),
        ("message.messageId", |v| {
            v["message"]["messageId"] = json!("");
            v["message"]["message_id"] = json!("");
        }),
        ("message.data", |v| {
            v["message"].as_object_mut().unwrap().remove("data");
        }),
        ("subscription", |v| {
            v.as_object_mut().unwrap().remove("subscription");
        }),
    ];
    for (field, remove) in cases {
        let mut body = envelope();
        remove(&mut body);
        let error = parse(&body).unwrap_err();
        assert!(
            matches!(error, EnvelopeError::Missing { field: named } if named == field),
            "{field}: {error:?}"
        );
        assert_eq!(error.to_string(), format!("{field} is missing"));
    }
}

#[test]
fn bad_base64_and_wrong_types_are_named() {
    let mut body = envelope();
    body["message"]["data"] = json!("not base64!");
    let error = parse(&body).unwrap_err();
    assert!(
        matches!(error, EnvelopeError::NotBase64 { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("message.data is not base64: "),
        "{error}"
    );

    let mut body = envelope();
    body["message"]["data"] = json!(42);
    assert_eq!(
        parse(&body).unwrap_err().to_string(),
        "message.data is not a string"
    );

    let mut body = envelope();
    body["message"]["attributes"]["count"] = json!(3);
    assert_eq!(
        parse(&body).unwrap_err().to_string(),
        "message.attributes.count is not a string"
    );

    assert_eq!(
        parse(&json!({"message": "hi", "subscription": "s"}))
            .unwrap_err()
            .to_string(),
        "message is not an object"
    );
    assert!(matches!(
        parse_push(b"{not json").unwrap_err(),
        EnvelopeError::NotJson(_)
    ));
    assert_eq!(
        parse_push(b"[1]").unwrap_err().to_string(),
        "push body is not a JSON object"
    );
}
