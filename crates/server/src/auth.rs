//! Who may do what (SPEC.md, "HTTP API"), and the headers every response carries.
//!
//! - `GET /healthz` and the dashboard's static assets are public; `POST /login` checks the
//!   token it is given. Every other route needs a token: the admin token
//!   (`GAPLESS_API_TOKEN`) opens every route, the read-only token (`GAPLESS_API_READ_TOKEN`) the
//!   GET routes. Without an admin token `serve` listens on loopback only and every route is open.
//! - A token comes as `Authorization: Bearer <token>` (scripts, Prometheus, Pub/Sub), or in the
//!   dashboard's cookie, set by `POST /login`: `HttpOnly` (no script reads it) and
//!   `SameSite=Strict` (no other site's page sends it).
//! - A request that changes something and is authenticated by the cookie must also carry
//!   `X-CSRF-Token`, an HMAC of the token the dashboard page holds: a page from another site
//!   can neither read it nor send a custom header without CORS, which `serve` never grants.
//!   Any request that changes something and comes from another site's page (its `Origin` or
//!   `Sec-Fetch-Site` says so) is refused, whatever it carries: that covers the open
//!   loopback mode too.
//! - Tokens are compared in constant time.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::pubsub::OidcVerifier;

/// The dashboard's cookie.
pub const COOKIE: &str = "gapless_token";

/// The header that carries the anti-CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How long the dashboard's cookie lasts: a working day.
const COOKIE_MAX_AGE_SECONDS: u32 = 12 * 3600;

/// Who may call the API.
#[derive(Clone, Default)]
pub struct Auth {
    /// `GAPLESS_API_TOKEN`: every route. `None` (loopback only) leaves the API open.
    pub admin: Option<String>,
    /// `GAPLESS_API_READ_TOKEN`: the GET routes.
    pub read: Option<String>,
    /// Google's OIDC tokens on `POST /events/pubsub`, when configured.
    pub pubsub: Option<OidcVerifier>,
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every route: the admin token, or no token configured (loopback).
    Admin,
    /// The GET routes.
    Reader,
}

/// How a request was authenticated (a request extension the handlers read).
#[derive(Debug, Clone)]
pub struct Caller {
    /// What it may do.
    pub role: Role,
    /// The anti-CSRF token for its credential, which the dashboard puts in its page.
    pub csrf: String,
    /// Whether `serve` has tokens at all (the dashboard offers to log out only then).
    pub tokens: bool,
}

impl Auth {
    /// The role `token` gives, if any.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        if self
            .admin
            .as_deref()
            .is_some_and(|admin| constant_time_eq(token, admin))
        {
            Some(Role::Admin)
        } else if self
            .read
            .as_deref()
            .is_some_and(|read| constant_time_eq(token, read))
        {
            Some(Role::Reader)
        } else {
            None
        }
    }
}

/// Routes anyone may call.
fn is_public(method: &Method, path: &str) -> bool {
    path == "/healthz"
        || (method == Method::GET && path.starts_with("/assets/"))
        || (method == Method::POST && path == "/login")
}

/// Whether `method` changes something.
fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The middleware: refuses cross-site writes, then authenticates and authorizes, and records a
/// [`Caller`] for the handlers.
pub(crate) async fn authorize(
    State(auth): State<std::sync::Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if is_mutating(&method) && is_cross_site(request.headers()) {
        return refuse(
            StatusCode::FORBIDDEN,
            "cross-site request refused: this route changes state and the request came from another site's page",
        );
    }
    if is_public(&method, &path) {
        return next.run(request).await;
    }
    let Some(admin) = &auth.admin else {
        request.extensions_mut().insert(Caller {
            role: Role::Admin,
            csrf: csrf_token(""),
            tokens: false,
        });
        return next.run(request).await;
    };
    let headers = request.headers();
    let bearer_sent = headers.contains_key(header::AUTHORIZATION);
    let (token, by_cookie) = match (bearer(headers), cookie(headers, COOKIE)) {
        (Some(token), _) => (Some(token), false),
        (None, Some(value)) => (decode_cookie(&value), true),
        (None, None) => (None, false),
    };
    // Pub/Sub's push may bring Google's OIDC token instead: its handler checks it.
    if path == "/events/pubsub" && auth.pubsub.is_some() && !by_cookie {
        return next.run(request).await;
    }
    let role = token.as_deref().and_then(|token| auth.role_of(token));
    let Some(role) = role else {
        if path == "/" && method == Method::GET && !bearer_sent {
            // A person at the dashboard without a (valid) cookie: the login form.
            let error = token.is_some().then_some("That token is not valid here.");
            return crate::dashboard::login_page(StatusCode::UNAUTHORIZED, error);
        }
        return if token.is_some() {
            refuse(StatusCode::FORBIDDEN, "this token may not use this route")
        } else {
            let mut response = refuse(
                StatusCode::UNAUTHORIZED,
                "missing `Authorization: Bearer <token>`",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        };
    };
    if is_mutating(&method) {
        if role != Role::Admin {
            return refuse(
                StatusCode::FORBIDDEN,
                "the read-only token may not use this route",
            );
        }
        if by_cookie {
            let expected = csrf_token(admin);
            let presented = request
                .headers()
                .get(CSRF_HEADER)
                .and_then(|value| value.to_str().ok());
            if !presented.is_some_and(|presented| constant_time_eq(presented, &expected)) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "missing or wrong X-CSRF-Token: reload the dashboard and try again",
                );
            }
        }
    }
    let csrf = csrf_token(token.as_deref().unwrap_or_default());
    request.extensions_mut().insert(Caller {
        role,
        csrf,
        tokens: true,
    });
    next.run(request).await
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// Whether a browser says the request comes from another origin's page: `Sec-Fetch-Site` other
/// than `same-origin`, or (from browsers without Fetch Metadata) an `Origin` whose host and port
/// are not this request's `Host`. Clients that are not browsers send neither.
fn is_cross_site(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    // Browsers that send Fetch Metadata say it outright ("none": typed by the user).
    if let Some(site) = text("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = text(header::ORIGIN.as_str()) else {
        return false;
    };
    // A sandboxed frame or a privacy-sensitive redirect sends `null`: not ours.
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (authority, text(header::HOST.as_str())) {
        (Some(authority), Some(host)) => !authority.eq_ignore_ascii_case(host),
        _ => true,
    }
}

/// The bearer token of `Authorization`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|token| token.trim().to_owned())
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

fn decode_cookie(value: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(value).ok()?;
    String::from_utf8(bytes).ok()
}

/// The `Set-Cookie` value that keeps `token` for the dashboard (`secure` behind HTTPS).
pub(crate) fn session_cookie(token: &str, secure: bool) -> String {
    let value = URL_SAFE_NO_PAD.encode(token);
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_SECONDS}{secure}"
    )
}

/// The `Set-Cookie` value that forgets the token.
pub(crate) fn cleared_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The anti-CSRF token for `token`: HMAC-SHA256 keyed by the token, so only a holder of the
/// token (or its page) knows it, and every node of a deployment agrees on it.
pub fn csrf_token(token: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    let tag = ring::hmac::sign(&key, b"gapless dashboard csrf v1");
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without stopping at the first difference, so the time taken does not tell how much
/// of a guessed token was right.
pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The Content-Security-Policy of every response: scripts, styles and requests from this
/// origin only, no inline script, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every response.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        // Not `no-referrer`: with it, a form's POST carries `Origin: null`.
        HeaderValue::from_static("same-origin"),
    );
    if !is_asset && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn another_sites_page_is_cross_site() {
        let same = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(!is_cross_site(&same));
        let other = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
        ]);
        assert!(is_cross_site(&other));
        let null = headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]);
        assert!(is_cross_site(&null));
        let fetch = headers(&[("host", "a"), ("sec-fetch-site", "cross-site")]);
        assert!(is_cross_site(&fetch));
        let sibling = headers(&[("host", "a"), ("sec-fetch-site", "same-site")]);
        assert!(is_cross_site(&sibling));
        let own = headers(&[
            ("host", "a"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(!is_cross_site(&own));
        // curl, Prometheus, Pub/Sub: no browser headers.
        assert!(!is_cross_site(&headers(&[("host", "127.0.0.1:8080")])));
    }

    #[test]
    fn the_cookie_round_trips_any_token_and_is_locked_down() {
        let token = "s3cret; with=odd \"chars\"";
        let set = session_cookie(token, false);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(!set.contains("Secure"));
        assert!(session_cookie(token, true).ends_with("; Secure"));
        let value = set.split(';').next().unwrap().split_once('=').unwrap().1;
        let sent = headers(&[("cookie", &format!("other=1; {COOKIE}={value}"))]);
        assert_eq!(
            decode_cookie(&cookie(&sent, COOKIE).unwrap()).as_deref(),
            Some(token)
        );
    }

    #[test]
    fn csrf_tokens_depend_on_the_token() {
        assert_eq!(csrf_token("a"), csrf_token("a"));
        assert_ne!(csrf_token("a"), csrf_token("b"));
        assert_eq!(csrf_token("a").len(), 64);
    }

    #[test]
    fn roles_come_from_exact_tokens() {
        let auth = Auth {
            admin: Some("admin-token".into()),
            read: Some("read-token".into()),
            pubsub: None,
        };
        assert_eq!(auth.role_of("admin-token"), Some(Role::Admin));
        assert_eq!(auth.role_of("read-token"), Some(Role::Reader));
        assert_eq!(auth.role_of("admin-toke"), None);
        assert_eq!(auth.role_of(""), None);
    }
}
