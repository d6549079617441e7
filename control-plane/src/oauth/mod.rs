//! The OAuth 2.1 authorization server in front of `/mcp`, on the same origin: metadata (RFC 8414,
//! RFC 9728), dynamic client registration (RFC 7591), authorization code with PKCE S256,
//! refresh-token rotation with reuse detection, revocation (RFC 7009). Access tokens are
//! short-lived JWTs whose audience is the MCP resource URL.

mod authorize;
mod cimd;
mod keys;
mod register;
mod token;
pub mod types;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::auth::{Caller, Scopes, SCOPE_READ, SCOPE_WRITE};

pub use keys::Keys;
pub use token::AccessClaims;

/// Redirect URIs admitted by default: claude.ai's and claude.com's callbacks, and loopback on any
/// port (Claude Code, Claude Desktop, local tools).
pub const DEFAULT_REDIRECT_ALLOWLIST: [&str; 3] = [
    "https://claude.ai/api/mcp/auth_callback",
    "https://claude.com/api/mcp/auth_callback",
    LOOPBACK_ENTRY,
];

/// The issuer: Autopilot's public URL.
pub fn issuer(app: &App) -> String {
    app.config.public_url.clone()
}

/// The one protected resource: the MCP endpoint.
pub fn resource(app: &App) -> String {
    format!("{}/mcp", app.config.public_url)
}

fn resource_metadata_url(app: &App) -> String {
    format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        app.config.public_url
    )
}

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
    let issuer = issuer(&app);
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
            "resource": resource(&app),
            "authorization_servers": [issuer(&app)],
            "scopes_supported": [SCOPE_READ, SCOPE_WRITE],
            "bearer_methods_supported": ["header"],
            "resource_name": "Autopilot",
        }))
        .into_response(),
    )
}

/// OAuth responses carrying secrets must never be cached.
pub(crate) fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// An OAuth error response (RFC 6749 §5.2).
pub(crate) fn oauth_error(
    status: StatusCode,
    error: &str,
    description: impl Into<String>,
) -> Response {
    let body = Json(json!({ "error": error, "error_description": description.into() }));
    no_store((status, body).into_response())
}

/// SHA-256 hex digest: how secrets are stored and looked up.
pub(crate) fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh 256-bit secret, base64url without padding.
pub(crate) fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The allowlist entry that admits loopback over plain HTTP on any port and path.
pub const LOOPBACK_ENTRY: &str = "loopback";

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

/// Authenticates a call to `/mcp`: the admin token, or an OAuth access token for this resource.
/// Without one the answer is 401 pointing at the resource metadata, as MCP clients expect.
pub async fn require_mcp_caller(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = presented else {
        return unauthorized(
            &app,
            None,
            "send an OAuth access token (or the admin token) as a bearer token",
        );
    };
    let caller = if crate::api::is_admin_token(&app, token) {
        Caller::admin()
    } else {
        match token::verify_access_token(&app, token) {
            Ok(claims) => Caller {
                subject: claims.client_id,
                scopes: Scopes::parse(&claims.scope),
            },
            Err(reason) => return unauthorized(&app, Some("invalid_token"), &reason),
        }
    };
    if !caller.scopes.read {
        return insufficient_scope(
            &app,
            SCOPE_READ,
            format!("the token needs the `{SCOPE_READ}` scope"),
        );
    }
    if !caller.scopes.write {
        // Step-up authorization: a call to a tool that changes state is refused at the HTTP level
        // so the client can ask the user for the wider scope.
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, crate::api::MAX_BODY_BYTES).await else {
            return oauth_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "the request body is larger than 1 MiB",
            );
        };
        if let Some(tool) = state_changing_call(&bytes) {
            let scopes = format!("{SCOPE_READ} {SCOPE_WRITE}");
            return insufficient_scope(
                &app,
                &scopes,
                format!("`{tool}` changes state and needs the `{SCOPE_WRITE}` scope"),
            );
        }
        request = Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// 403 naming the scope the call needs (RFC 6750 §3.1, MCP step-up authorization).
fn insufficient_scope(app: &App, scope: &str, description: String) -> Response {
    let challenge = format!(
        "Bearer error=\"insufficient_scope\", scope=\"{scope}\", resource_metadata=\"{}\"",
        resource_metadata_url(app)
    );
    let mut response = oauth_error(StatusCode::FORBIDDEN, "insufficient_scope", description);
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The name of a state-changing tool the JSON-RPC message (or batch) calls, if any.
fn state_changing_call(body: &[u8]) -> Option<String> {
    let message: serde_json::Value = serde_json::from_slice(body).ok()?;
    let messages = match message {
        serde_json::Value::Array(batch) => batch,
        single => vec![single],
    };
    messages.iter().find_map(|message| {
        let name = message.get("params")?.get("name")?.as_str()?;
        (message.get("method")?.as_str()? == "tools/call" && crate::mcp::changes_state(name))
            .then(|| name.to_owned())
    })
}

fn unauthorized(app: &App, error: Option<&str>, description: &str) -> Response {
    let mut challenge = format!(
        "Bearer resource_metadata=\"{}\"",
        resource_metadata_url(app)
    );
    if let Some(error) = error {
        challenge.push_str(&format!(", error=\"{error}\""));
    }
    let mut response = oauth_error(
        StatusCode::UNAUTHORIZED,
        error.unwrap_or("invalid_request"),
        description,
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The client behind a `client_id`: a registered one, or one described by a client metadata
/// document at that URL. The error is meant for the person or client that sent it.
pub(crate) async fn find_client(
    app: &App,
    client_id: &str,
) -> Result<Option<types::OAuthClient>, String> {
    if cimd::is_metadata_url(client_id) {
        return cimd::resolve(app, client_id).await.map(Some);
    }
    app.store.get_oauth_client(client_id).await.map_err(|err| {
        tracing::error!(error = %err, "reading a client failed");
        "the store is unavailable; try again shortly".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(uri: &str) -> bool {
        let defaults: Vec<String> = DEFAULT_REDIRECT_ALLOWLIST
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
