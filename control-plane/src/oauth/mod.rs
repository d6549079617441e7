//! The OAuth 2.1 authorization server in front of `/mcp`, on the same origin: metadata (RFC 8414,
//! RFC 9728), dynamic client registration (RFC 7591), authorization code with PKCE S256,
//! refresh-token rotation with reuse detection, revocation (RFC 7009). Access tokens are
//! short-lived JWTs whose audience is the MCP resource URL.

//!
//! The keys it signs with are the installation's (`crate::keys`), the tokens are minted, stored
//! as digests and checked by `crate::tokens`; the resource server that accepts its access tokens
//! is `/mcp` (`crate::mcp`).

mod authorize;
mod cimd;
mod register;
mod token;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::app::App;
use crate::config::LOOPBACK_ENTRY;
use crate::domain::auth::{SCOPE_READ, SCOPE_WRITE};
use crate::domain::oauth::OAuthClient;
use crate::http::oauth::no_store;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(authorization_server_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(protected_resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource_metadata),
        )
        .route(
            "/register",
            post(register::register).with_state((
                Arc::clone(&app),
                Arc::new(register::RegistrationLimiter::default()),
            )),
        )
        .route("/authorize", get(authorize::show).post(authorize::decide))
        .route("/token", post(token::token))
        .route("/revoke", post(token::revoke))
        .with_state(app)
}

async fn authorization_server_metadata(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
) -> Response {
    let issuer = app.config.oauth_issuer();
    no_store(Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "registration_endpoint": format!("{issuer}/register"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "scopes_supported": [SCOPE_READ, SCOPE_WRITE],
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": true,
    }))
    .into_response())
}

async fn protected_resource_metadata(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
) -> Response {
    no_store(
        Json(json!({
            "resource": app.config.mcp_resource(),
            "authorization_servers": [app.config.oauth_issuer()],
            "scopes_supported": [SCOPE_READ, SCOPE_WRITE],
            "bearer_methods_supported": ["header"],
            "resource_name": "Autopilot",
        }))
        .into_response(),
    )
}

/// Whether `uri` may be registered as a redirect URI: an exact entry of the allowlist, or any
/// loopback `http://` URI when the list holds [`LOOPBACK_ENTRY`].
pub fn redirect_uri_allowed(allowlist: &[String], uri: &str) -> bool {
    if allowlist.iter().any(|entry| entry == uri) {
        return true;
    }
    allowlist.iter().any(|entry| entry == LOOPBACK_ENTRY) && is_loopback_http(uri)
}

fn is_loopback_http(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// The client behind a `client_id`: a registered one, or one described by a client metadata
/// document at that URL. The error is meant for the person or client that sent it.
pub(crate) async fn find_client(app: &App, client_id: &str) -> Result<Option<OAuthClient>, String> {
    if cimd::is_metadata_url(client_id) {
        return cimd::resolve(app, client_id).await.map(Some);
    }
    crate::services::oauth::client(app, client_id)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "reading a client failed");
            "the store is unavailable; try again shortly".to_owned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(uri: &str) -> bool {
        let defaults: Vec<String> = crate::config::DEFAULT_REDIRECT_ALLOWLIST
            .iter()
            .map(|s| s.to_string())
            .collect();
        redirect_uri_allowed(&defaults, uri)
    }

    #[test]
    fn a_configured_allowlist_replaces_the_default() {
        let only = vec!["https://app.example/cb".to_string()];
        assert!(redirect_uri_allowed(&only, "https://app.example/cb"));
        assert!(
            !redirect_uri_allowed(&only, "http://127.0.0.1:9/cb"),
            "no loopback unless listed"
        );
        assert!(!redirect_uri_allowed(
            &only,
            "https://claude.ai/api/mcp/auth_callback"
        ));
    }

    #[test]
    fn redirect_uris_are_allowlisted_or_loopback() {
        assert!(allowed("https://claude.ai/api/mcp/auth_callback"));
        assert!(allowed("http://127.0.0.1:33418/callback"));
        assert!(allowed("http://localhost:8000/cb?x=1"));
        assert!(allowed("http://[::1]:9000/cb"));
        assert!(!allowed("https://claude.ai/api/mcp/auth_callback/../evil"));
        assert!(!allowed("https://evil.example/callback"));
        assert!(!allowed("http://127.0.0.1.evil.example/cb"));
        assert!(!allowed("http://user@127.0.0.1:80@evil.example/cb"));
        assert!(!allowed("http://evil.example/127.0.0.1"));
    }
}
