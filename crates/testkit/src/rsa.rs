//! RSA keys made at test time by the `openssl` CLI, and the JWKS that publishes them, for
//! tests of OIDC tokens (Google's Pub/Sub push) with real RS256 signatures.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// A 2048-bit RSA key.
#[derive(Debug, Clone)]
pub struct RsaKey {
    /// PKCS#8 PEM of the private key.
    pub private_pem: Vec<u8>,
    /// PEM of the public key.
    pub public_pem: Vec<u8>,
    /// base64url of the modulus, as a JWK's `n`.
    pub modulus: String,
}

impl RsaKey {
    /// A fresh key.
    ///
    /// # Panics
    ///
    /// When `openssl` is missing or fails.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let key = dir.path().join("key.pem");
        let key = key.to_str().expect("a UTF-8 path");
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key,
        ]);
        let modulus = String::from_utf8(openssl(&["rsa", "-in", key, "-noout", "-modulus"]))
            .expect("openssl prints text");
        let hex = modulus
            .trim()
            .strip_prefix("Modulus=")
            .expect("openssl prints `Modulus=…`");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hex"))
            .collect();
        assert_eq!(bytes.len(), 256, "a 2048-bit modulus");
        Self {
            private_pem: std::fs::read(key).expect("the key file"),
            public_pem: openssl(&["rsa", "-in", key, "-pubout"]),
            modulus: URL_SAFE_NO_PAD.encode(bytes),
        }
    }
}

/// A JWKS publishing `keys`, each under its `kid`.
pub fn jwks(keys: &[(&str, &RsaKey)]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, key)| {
            json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": key.modulus, "e": "AQAB"})
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let output = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("run `openssl` (Debian package `openssl`)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}
