//! Tokens and secrets handed to clients, in one place: how they are minted, the digest under
//! which they are stored and looked up, comparison in constant time, reading a bearer token
//! from a request, and the OAuth access tokens (short-lived JWTs) for `/mcp`.
//!
//! A minted token is 256 random bits, base64url without padding, after a prefix that says what
//! it is. Only its SHA-256 digest is ever stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The admin token of the HTTP API.
pub const ADMIN_PREFIX: &str = "ap_";
/// A webhook's secret URL token (`/hooks/wh_…`).
pub const WEBHOOK_URL_PREFIX: &str = "wh_";
/// A webhook signing secret Autopilot generated.
pub const SIGNING_SECRET_PREFIX: &str = "whsec_";
/// OAuth codes, refresh tokens, client secrets and CSRF values carry no prefix: clients treat
/// them as opaque.
pub const OAUTH_PREFIX: &str = "";

/// A new token: `prefix` then 256 random bits, base64url without padding (43 characters).
pub fn mint(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    )
}

/// The SHA-256 digest of a token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The digest as lower-case hex: how tokens are stored and looked up.
pub fn digest_hex(token: &str) -> String {
    hex::encode(digest(token))
}

/// Whether two secrets (or digests) are equal, in time that does not depend on where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// The token of an `Authorization: Bearer …` header, trimmed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

/// Claims of an OAuth access token.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub scope: String,
    pub client_id: String,
}

/// Signs an access token (HS256).
pub fn sign_access_token(key: &[u8], claims: &AccessClaims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key),
    )
    .map_err(|err| format!("signing an access token failed: {err}"))
}

/// Checks an access token's signature, issuer, audience and expiry; the error says which failed,
/// for the client.
pub fn verify_access_token(
    key: &[u8],
    issuer: &str,
    audience: &str,
    token: &str,
) -> Result<AccessClaims, String> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.leeway = 5;
    jsonwebtoken::decode::<AccessClaims>(token, &DecodingKey::from_secret(key), &validation)
        .map(|data| data.claims)
        .map_err(|err| match err.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                "the access token expired; refresh it".to_owned()
            }
            jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                "the access token is for another resource".to_owned()
            }
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                "the access token is from another issuer".to_owned()
            }
            _ => "the access token is not valid".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const ISSUER: &str = "https://autopilot.example";
    const AUDIENCE: &str = "https://autopilot.example/mcp";

    fn claims() -> AccessClaims {
        let now = Utc::now().timestamp();
        AccessClaims {
            iss: ISSUER.into(),
            sub: "client".into(),
            aud: AUDIENCE.into(),
            exp: now + 60,
            iat: now,
            jti: "j".into(),
            scope: "autopilot:read".into(),
            client_id: "client".into(),
        }
    }

    fn verify(token: &str) -> Result<AccessClaims, String> {
        verify_access_token(KEY, ISSUER, AUDIENCE, token)
    }

    #[test]
    fn minted_tokens_are_prefixed_random_and_stored_as_digests() {
        let (a, b) = (mint(WEBHOOK_URL_PREFIX), mint(WEBHOOK_URL_PREFIX));
        assert!(a.starts_with("wh_") && a.len() == 3 + 43, "{a}");
        assert_ne!(a, b);
        assert_eq!(digest_hex(&a).len(), 64);
        assert!(same(&digest(&a), &digest(&a)));
        assert!(!same(&digest(&a), &digest(&b)));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer  ap_x ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("ap_x"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn a_valid_access_token_passes() {
        let token = sign_access_token(KEY, &claims()).unwrap();
        assert_eq!(verify(&token).unwrap().scope, "autopilot:read");
    }

    #[test]
    fn expired_foreign_and_forged_access_tokens_are_refused_with_the_reason() {
        let signed = |claims: &AccessClaims| sign_access_token(KEY, claims).unwrap();
        let expired = AccessClaims {
            exp: Utc::now().timestamp() - 60,
            ..claims()
        };
        assert!(verify(&signed(&expired)).unwrap_err().contains("expired"));
        let other_audience = AccessClaims {
            aud: "https://other.example/mcp".into(),
            ..claims()
        };
        assert!(verify(&signed(&other_audience))
            .unwrap_err()
            .contains("another resource"));
        let other_issuer = AccessClaims {
            iss: "https://other.example".into(),
            ..claims()
        };
        assert!(verify(&signed(&other_issuer))
            .unwrap_err()
            .contains("another issuer"));
        let forged = sign_access_token(b"another key, another key, another", &claims()).unwrap();
        assert!(verify(&forged).unwrap_err().contains("not valid"));
        assert!(verify("not.a.jwt").is_err());
    }

    mod fuzz {
        use super::*;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use proptest::prelude::*;

        /// Three dot-separated parts, each either random text or base64 of random JSON-ish bytes.
        fn arb_token() -> impl Strategy<Value = String> {
            let part = prop_oneof![
                "\\PC{0,40}",
                proptest::collection::vec(any::<u8>(), 0..60)
                    .prop_map(|bytes| URL_SAFE_NO_PAD.encode(bytes)),
                "\\{\"(alg|typ|iss|aud|exp|sub)\":(\"[A-Za-z0-9]{0,8}\"|[0-9]{1,12}|null)\\}"
                    .prop_map(|json| URL_SAFE_NO_PAD.encode(json)),
            ];
            proptest::collection::vec(part, 0..5).prop_map(|parts| parts.join("."))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]
            /// Bad input: any bearer token is refused with a reason, never a panic, and only
            /// a token signed with the key passes.
            #[test]
            fn forged_and_garbled_tokens_are_refused(token in arb_token()) {
                let result = verify_access_token(b"k3y-k3y-k3y-k3y-k3y-k3y-k3y-k3y!", "iss", "aud", &token);
                match result {
                    Ok(claims) => prop_assert!(false, "accepted {token}: {claims:?}"),
                    Err(reason) => prop_assert!(!reason.is_empty()),
                }
            }
        }
    }
}
