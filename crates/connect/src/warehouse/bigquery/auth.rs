//! OAuth 2.0 access tokens for the BigQuery API, found the way Google's own tools find them
//! (Application Default Credentials):
//!
//! 1. a credentials file named in the warehouse URL (`?credentials=PATH`), else
//!    `GOOGLE_APPLICATION_CREDENTIALS`;
//! 2. else gcloud's own file, `$CLOUDSDK_CONFIG/application_default_credentials.json` (by default
//!    `~/.config/gcloud/…`, written by `gcloud auth application-default login`);
//! 3. else the metadata server of the Google Cloud machine the process runs on
//!    (`GCE_METADATA_HOST`, by default `169.254.169.254`).
//!
//! A credentials file is a service account's key (`"type": "service_account"`: an RS256 JWT
//! signed with its key is exchanged at its `token_uri`) or a user's refresh token
//! (`"type": "authorized_user"`). A token is kept until a minute before it expires, and fetched
//! again when the API refuses it ([`Auth::token`] with `refresh`).
//!
//! Tokens, refresh tokens and keys never reach a log or an error: [`Token`] and [`Auth`] print
//! as `****`, and a token endpoint's refusal is reported by its `error` and
//! `error_description` only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The scope a token for BigQuery needs.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
/// Google's token endpoint, for files that do not name one.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// How long before its expiry a token is replaced.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// How long a signed assertion is valid (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;
/// A bound on each call to a token endpoint or the metadata server.
const TOKEN_CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// An access token. Prints as `****`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Token(String);

impl Token {
    /// The value, for the `Authorization` header only.
    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(****)")
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct AuthError(pub(crate) String);

/// Where tokens come from.
enum Source {
    /// A service account's key.
    ServiceAccount {
        email: String,
        key_id: Option<String>,
        key: Box<jsonwebtoken::EncodingKey>,
        token_uri: String,
    },
    /// A user's refresh token (gcloud's ADC file).
    AuthorizedUser {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        token_uri: String,
    },
    /// The metadata server at this base URL.
    Metadata { base: String },
}

/// A source of tokens and the token it last gave, shared by every call of a warehouse.
pub(crate) struct Auth {
    source: Source,
    /// What the source is, for messages (`service account x@y`, `the metadata server`).
    describe: String,
    cached: Mutex<Option<(Token, Instant)>>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("source", &self.describe)
            .finish_non_exhaustive()
    }
}

/// A credentials file as Google writes them; unused fields are ignored.
#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokenRefusal {
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

impl Auth {
    /// Finds the credentials as the module documentation says: `explicit` (a file named in the
    /// URL) first, then the variables `vars` and the files under `home`.
    pub(crate) fn discover(
        explicit: Option<&Path>,
        vars: &BTreeMap<String, String>,
        home: Option<&Path>,
    ) -> Result<Self, AuthError> {
        let var = |name: &str| vars.get(name).filter(|value| !value.is_empty());
        if let Some(path) = explicit {
            return Self::from_file(path);
        }
        if let Some(path) = var("GOOGLE_APPLICATION_CREDENTIALS") {
            return Self::from_file(Path::new(path)).map_err(|AuthError(reason)| {
                AuthError(format!("GOOGLE_APPLICATION_CREDENTIALS: {reason}"))
            });
        }
        let gcloud = var("CLOUDSDK_CONFIG")
            .map(PathBuf::from)
            .or_else(|| home.map(|home| home.join(".config").join("gcloud")))
            .map(|dir| dir.join("application_default_credentials.json"));
        if let Some(path) = gcloud.filter(|path| path.is_file()) {
            return Self::from_file(&path);
        }
        let host = var("GCE_METADATA_HOST").map_or("169.254.169.254", String::as_str);
        let base = if host.contains("://") {
            host.trim_end_matches('/').to_owned()
        } else {
            format!("http://{host}")
        };
        Ok(Self::new(
            Source::Metadata { base },
            "the metadata server (no GOOGLE_APPLICATION_CREDENTIALS nor gcloud application-default credentials were found; off Google Cloud, run `gcloud auth application-default login`, or set BIGQUERY_EMULATOR_HOST for an emulator)".to_owned(),
        ))
    }

    fn new(source: Source, describe: String) -> Self {
        Self {
            source,
            describe,
            cached: Mutex::new(None),
        }
    }

    /// Reads a service-account key file or a gcloud ADC file.
    pub(crate) fn from_file(path: &Path) -> Result<Self, AuthError> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|error| AuthError(format!("cannot read credentials file {shown}: {error}")))?;
        let file: CredentialsFile = serde_json::from_str(&text).map_err(|error| {
            // serde_json's message names a line and column, never the file's text.
            AuthError(format!(
                "credentials file {shown} is not valid JSON: {error}"
            ))
        })?;
        let missing = |field: &str| {
            AuthError(format!(
                "credentials file {shown} has no `{field}` (expected a service-account key or gcloud's application-default credentials)"
            ))
        };
        match file.kind.as_deref() {
            Some("service_account") => {
                let email = file.client_email.ok_or_else(|| missing("client_email"))?;
                let pem = file.private_key.ok_or_else(|| missing("private_key"))?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
                    AuthError(format!(
                        "credentials file {shown}: `private_key` is not an RSA private key in PEM"
                    ))
                })?;
                let describe = format!("service account {email}");
                Ok(Self::new(
                    Source::ServiceAccount {
                        email,
                        key_id: file.private_key_id,
                        key: Box::new(key),
                        token_uri: file
                            .token_uri
                            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned()),
                    },
                    describe,
                ))
            }
            Some("authorized_user") => Ok(Self::new(
                Source::AuthorizedUser {
                    client_id: file.client_id.ok_or_else(|| missing("client_id"))?,
                    client_secret: file.client_secret.ok_or_else(|| missing("client_secret"))?,
                    refresh_token: file.refresh_token.ok_or_else(|| missing("refresh_token"))?,
                    token_uri: file
                        .token_uri
                        .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned()),
                },
                format!("the user credentials in {shown}"),
            )),
            Some(other) => Err(AuthError(format!(
                "credentials file {shown} is of type `{other}`; gapless reads `service_account` and `authorized_user`"
            ))),
            None => Err(missing("type")),
        }
    }

    /// A token: the cached one while it has more than a minute left, unless `refresh` (the API
    /// refused it), else a new one.
    pub(crate) async fn token(
        &self,
        client: &reqwest::Client,
        refresh: bool,
    ) -> Result<Token, AuthError> {
        let mut cached = self.cached.lock().await;
        if !refresh
            && let Some((token, good_until)) = cached.as_ref()
            && Instant::now() < *good_until
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch(client).await.map_err(|AuthError(reason)| {
            AuthError(format!(
                "cannot get a token from {}: {reason}",
                self.describe
            ))
        })?;
        let good_until = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN);
        *cached = Some((token.clone(), good_until));
        tracing::debug!(source = %self.describe, lifetime_s = lifetime.as_secs(), "bigquery: new access token");
        Ok(token)
    }

    async fn fetch(&self, client: &reqwest::Client) -> Result<(Token, Duration), AuthError> {
        let request = match &self.source {
            Source::ServiceAccount {
                email,
                key_id,
                key,
                token_uri,
            } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_secs());
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
                header.kid.clone_from(key_id);
                let claims = Claims {
                    iss: email,
                    scope: SCOPE,
                    aud: token_uri,
                    iat: now,
                    exp: now + ASSERTION_LIFETIME,
                };
                let assertion = jsonwebtoken::encode(&header, &claims, key)
                    .map_err(|error| AuthError(format!("signing the assertion failed: {error}")))?;
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
                    .append_pair("assertion", &assertion)
                    .finish();
                form(client, token_uri, body)
            }
            Source::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
                token_uri,
            } => {
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("client_id", client_id)
                    .append_pair("client_secret", client_secret)
                    .append_pair("refresh_token", refresh_token)
                    .finish();
                form(client, token_uri, body)
            }
            Source::Metadata { base } => {
                let scopes = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("scopes", SCOPE)
                    .finish();
                client
                    .get(format!(
                        "{base}/computeMetadata/v1/instance/service-accounts/default/token?{scopes}"
                    ))
                    .header("Metadata-Flavor", "Google")
            }
        };
        let response = request
            .timeout(TOKEN_CALL_TIMEOUT)
            .send()
            .await
            .map_err(|error| AuthError(error.without_url().to_string()))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| AuthError(error.without_url().to_string()))?;
        if !status.is_success() {
            let refusal: Option<TokenRefusal> = serde_json::from_slice(&bytes).ok();
            let detail = refusal
                .map(|refusal| {
                    [refusal.error, refusal.error_description]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": ")
                })
                .filter(|detail| !detail.is_empty())
                .unwrap_or_else(|| "no reason given".to_owned());
            return Err(AuthError(format!("HTTP {status}: {detail}")));
        }
        let answer: TokenAnswer = serde_json::from_slice(&bytes)
            .map_err(|_| AuthError("the answer holds no `access_token`".to_owned()))?;
        Ok((
            Token(answer.access_token),
            Duration::from_secs(answer.expires_in.unwrap_or(ASSERTION_LIFETIME)),
        ))
    }
}

fn form(client: &reqwest::Client, uri: &str, body: String) -> reqwest::RequestBuilder {
    client
        .post(uri)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn adc_order_file_then_gcloud_then_metadata() {
        let home = tempfile::tempdir().unwrap();
        // Nothing configured: the metadata server, at the variable's host when set.
        let auth = Auth::discover(None, &vars(&[]), Some(home.path())).unwrap();
        assert!(
            matches!(&auth.source, Source::Metadata { base } if base == "http://169.254.169.254")
        );
        let auth = Auth::discover(
            None,
            &vars(&[("GCE_METADATA_HOST", "127.0.0.1:8080")]),
            Some(home.path()),
        )
        .unwrap();
        assert!(
            matches!(&auth.source, Source::Metadata { base } if base == "http://127.0.0.1:8080")
        );

        // gcloud's file, under HOME or CLOUDSDK_CONFIG.
        let gcloud = home.path().join(".config/gcloud");
        std::fs::create_dir_all(&gcloud).unwrap();
        let user = r#"{"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"}"#;
        std::fs::write(gcloud.join("application_default_credentials.json"), user).unwrap();
        let auth = Auth::discover(None, &vars(&[]), Some(home.path())).unwrap();
        assert!(
            matches!(&auth.source, Source::AuthorizedUser { token_uri, .. } if token_uri == DEFAULT_TOKEN_URI)
        );
        let elsewhere = tempfile::tempdir().unwrap();
        let auth = Auth::discover(
            None,
            &vars(&[("CLOUDSDK_CONFIG", elsewhere.path().to_str().unwrap())]),
            Some(home.path()),
        )
        .unwrap();
        assert!(matches!(auth.source, Source::Metadata { .. }));

        // GOOGLE_APPLICATION_CREDENTIALS wins over gcloud's file, and its errors say so.
        let error = Auth::discover(
            None,
            &vars(&[("GOOGLE_APPLICATION_CREDENTIALS", "/no/such/key.json")]),
            Some(home.path()),
        )
        .unwrap_err();
        assert!(
            error.0.starts_with(
                "GOOGLE_APPLICATION_CREDENTIALS: cannot read credentials file /no/such/key.json"
            ),
            "{error}"
        );
    }

    /// A metadata server answering one request with `status` and `body`; the request's head
    /// comes back through the handle.
    fn metadata_server(
        status: u16,
        body: &'static str,
    ) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{BufRead as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            head
        });
        (base, handle)
    }

    #[tokio::test]
    async fn the_metadata_server_gives_a_token_for_bigquery() {
        let client = crate::http_client().unwrap();
        let (base, request) =
            metadata_server(200, r#"{"access_token": "ya29.meta", "expires_in": 3599}"#);
        let auth = Auth::discover(None, &vars(&[("GCE_METADATA_HOST", &base)]), None).unwrap();
        let token = auth.token(&client, false).await.unwrap();
        assert_eq!(token.bearer(), "Bearer ya29.meta");
        let head = request.join().unwrap().to_ascii_lowercase();
        assert!(
            head.starts_with("get /computemetadata/v1/instance/service-accounts/default/token?scopes=https%3a%2f%2fwww.googleapis.com%2fauth%2fbigquery "),
            "{head}"
        );
        assert!(head.contains("metadata-flavor: google"), "{head}");
        // Cached: no second request (the server would not answer one).
        assert_eq!(auth.token(&client, false).await.unwrap(), token);

        // A refusal names the source and the reason, never a token.
        let (base, request) = metadata_server(
            403,
            r#"{"error": "access_denied", "error_description": "no scope", "access_token": "leak"}"#,
        );
        let auth = Auth::discover(None, &vars(&[("GCE_METADATA_HOST", &base)]), None).unwrap();
        let error = auth.token(&client, false).await.unwrap_err();
        request.join().unwrap();
        assert!(error.0.contains("the metadata server"), "{error}");
        assert!(error.0.contains("access_denied: no scope"), "{error}");
        assert!(!error.0.contains("leak"), "{error}");
    }

    #[test]
    fn bad_files_are_named_and_secrets_stay_out() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let error = Auth::from_file(&write("a.json", "{not json, secret-ish")).unwrap_err();
        assert!(error.0.contains("is not valid JSON"), "{error}");
        assert!(!error.0.contains("secret-ish"), "{error}");
        let error = Auth::from_file(&write(
            "b.json",
            r#"{"type": "service_account", "client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"}"#,
        ))
        .unwrap_err();
        assert!(error.0.contains("not an RSA private key"), "{error}");
        assert!(!error.0.contains("nope"), "{error}");
        let error =
            Auth::from_file(&write("c.json", r#"{"type": "external_account"}"#)).unwrap_err();
        assert!(error.0.contains("`external_account`"), "{error}");
        let error = Auth::from_file(&write(
            "d.json",
            r#"{"type": "authorized_user", "client_id": "c", "refresh_token": "r"}"#,
        ))
        .unwrap_err();
        assert!(error.0.contains("`client_secret`"), "{error}");
        let user = Auth::from_file(&write(
            "e.json",
            r#"{"type": "authorized_user", "client_id": "c", "client_secret": "topsecret", "refresh_token": "r"}"#,
        ))
        .unwrap();
        assert!(!format!("{user:?}").contains("topsecret"), "{user:?}");
        assert_eq!(format!("{:?}", Token("abc".into())), "Token(****)");
    }
}
