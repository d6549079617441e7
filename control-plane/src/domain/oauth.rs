//! What the authorization server stores. Every secret is kept as a SHA-256 hex digest.

use chrono::{DateTime, Utc};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthClient {
    pub client_id: String,
    /// Digest of the client secret; `None` for public clients.
    pub secret_hash: Option<String>,
    /// `none`, `client_secret_post` or `client_secret_basic`.
    pub auth_method: String,
    pub redirect_uris: Vec<String>,
    pub client_name: Option<String>,
    pub scope: String,
    pub created_at: DateTime<Utc>,
}

/// An authorization code, bound to everything it was issued for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthCode {
    pub code_hash: String,
    pub client_id: String,
    pub redirect_uri: String,
    /// BASE64URL(SHA-256(code_verifier)).
    pub code_challenge: String,
    pub resource: String,
    pub scope: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshToken {
    pub token_hash: String,
    pub family_id: String,
    pub client_id: String,
    pub resource: String,
    pub scope: String,
    pub expires_at: DateTime<Utc>,
}

/// What presenting a refresh token found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshUse {
    /// Valid and now used up: issue its successor.
    Fresh(RefreshToken),
    /// Used before or revoked: its whole family has now been revoked.
    Replayed {
        family_id: String,
    },
    Unknown,
}
