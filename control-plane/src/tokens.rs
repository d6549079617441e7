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
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
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

/// Why an access token was refused. The text is what the client is told (in the 401's body and
/// its `WWW-Authenticate` challenge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the access token expired; refresh it")]
    Expired,
    #[error("the access token is for another resource")]
    OtherResource,
    #[error("the access token is from another issuer")]
    OtherIssuer,
    #[error(
        "the access token was signed with a key that has been retired; refresh it or authorize again"
    )]
    RetiredKey,
    #[error("the access token is not valid")]
    Invalid,
}

/// Signs an access token (HS256) with `key`, naming the key by `key_id` (the header's `kid`).
pub fn sign_access_token(
    key: &[u8],
    key_id: &str,
    claims: &AccessClaims,
) -> Result<String, String> {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key_id.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key))
        .map_err(|err| format!("signing an access token failed: {err}"))
}

/// The id of the key an access token says it was signed with (its header's `kid`; tokens of
/// versions before key rotation have none). Read before the signature is checked, only to pick
/// the key to check it with.
pub fn access_token_key_id(token: &str) -> Result<Option<String>, TokenRefusal> {
    jsonwebtoken::decode_header(token)
        .map(|header| header.kid)
        .map_err(|_| TokenRefusal::Invalid)
}

/// Checks an access token's signature with `key`, then its issuer, audience and expiry.
pub fn verify_access_token(
    key: &[u8],
    issuer: &str,
    audience: &str,
    token: &str,
) -> Result<AccessClaims, TokenRefusal> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.leeway = 5;
    jsonwebtoken::decode::<AccessClaims>(token, &DecodingKey::from_secret(key), &validation)
        .map(|data| data.claims)
        .map_err(|err| match err.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenRefusal::Expired,
            jsonwebtoken::errors::ErrorKind::InvalidAudience => TokenRefusal::OtherResource,
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => TokenRefusal::OtherIssuer,
            _ => TokenRefusal::Invalid,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::Utc;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    pub(crate) const ISSUER: &str = "https://autopilot.example";
    pub(crate) const AUDIENCE: &str = "https://autopilot.example/mcp";

    /// Claims of a read-scoped token issued now for a minute (also used by the key ring's tests).
    pub(crate) fn claims() -> AccessClaims {
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
        verify_access_token(KEY, ISSUER, AUDIENCE, token).map_err(|refusal| refusal.to_string())
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
        let token = sign_access_token(KEY, "k1", &claims()).unwrap();
        assert_eq!(verify(&token).unwrap().scope, "autopilot:read");
        assert_eq!(access_token_key_id(&token), Ok(Some("k1".to_owned())));
    }

    #[test]
    fn the_key_id_of_a_token_without_one_or_of_garbage() {
        let without_kid = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(KEY),
        )
        .unwrap();
        assert_eq!(access_token_key_id(&without_kid), Ok(None));
        assert_eq!(verify(&without_kid).unwrap().sub, "client");
        assert_eq!(access_token_key_id("not.a.jwt"), Err(TokenRefusal::Invalid));
    }

    #[test]
    fn expired_foreign_and_forged_access_tokens_are_refused_with_the_reason() {
        let signed = |claims: &AccessClaims| sign_access_token(KEY, "k1", claims).unwrap();
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
        let forged =
            sign_access_token(b"another key, another key, another", "k1", &claims()).unwrap();
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
                    Err(reason) => prop_assert!(!reason.to_string().is_empty()),
                }
            }
        }
    }
}
