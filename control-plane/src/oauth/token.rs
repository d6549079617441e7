//! `/token` (authorization code with PKCE, refresh-token rotation) and `/revoke`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::domain::oauth::{OAuthClient, RefreshToken, RefreshUse};
use crate::http::oauth::{no_store, oauth_error};
use crate::services::oauth;
use crate::tokens::{self, digest_hex as digest, AccessClaims};

/// Refresh tokens live this long (each use replaces the token).
const REFRESH_TTL_DAYS: i64 = 30;

#[derive(Deserialize)]
pub struct TokenRequest {
    grant_type: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
    #[serde(default)]
    code_verifier: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    resource: Option<String>,
}

/// Finds and authenticates the client: `client_secret_basic` (Authorization header),
/// `client_secret_post` (form) or `none` (public client, id only).
async fn authenticate(
    app: &App,
    headers: &HeaderMap,
    request: &TokenRequest,
) -> Result<OAuthClient, Response> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        });
    let (client_id, secret, method) = match (basic, &request.client_id) {
        (Some((id, secret)), _) => (id, Some(secret), "client_secret_basic"),
        (None, Some(id)) if request.client_secret.is_some() => (
            id.clone(),
            request.client_secret.clone(),
            "client_secret_post",
        ),
        (None, Some(id)) => (id.clone(), None, "none"),
        (None, None) => {
            return Err(oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "identify the client (client_id)",
            ))
        }
    };
    let client = match super::find_client(app, &client_id).await {
        Ok(Some(client)) => client,
        Ok(None) => {
            return Err(oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client",
            ))
        }
        Err(reason) => {
            return Err(oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                reason,
            ))
        }
    };
    let authenticated = match (&client.secret_hash, secret) {
        (None, None) => client.auth_method == "none",
        (Some(expected), Some(given)) => {
            client.auth_method == method
                && tokens::same(digest(&given).as_bytes(), expected.as_bytes())
        }
        _ => false,
    };
    if !authenticated {
        return Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        ));
    }
    Ok(client)
}

pub async fn token(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(request): Form<TokenRequest>,
) -> Response {
    let client = match authenticate(&app, &headers, &request).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    if let Some(asked) = &request.resource {
        if asked.trim_end_matches('/') != app.config.mcp_resource() {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "resource must be this server's MCP endpoint",
            );
        }
    }
    let grant = match request.grant_type.as_str() {
        "authorization_code" => exchange_code(&app, &client, &request).await,
        "refresh_token" => rotate_refresh(&app, &client, &request).await,
        other => Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("grant_type `{other}` is not supported"),
        )),
    };
    match grant {
        Ok((scope, family_id)) => issue(&app, &client, &scope, &family_id).await,
        Err(response) => response,
    }
}

/// Redeems a code: single use, and bound to the client, redirect URI, PKCE verifier and resource.
async fn exchange_code(
    app: &App,
    client: &OAuthClient,
    request: &TokenRequest,
) -> Result<(String, String), Response> {
    let invalid = |why: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why.to_owned());
    let code = request
        .code
        .as_deref()
        .ok_or_else(|| invalid("code is missing"))?;
    let stored = match oauth::redeem_code(app, code).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return Err(invalid("the code is unknown or was already used")),
        Err(err) => {
            tracing::error!(error = %err, "taking a code failed");
            return Err(oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again shortly",
            ));
        }
    };
    if stored.expires_at < Utc::now() {
        return Err(invalid("the code expired"));
    }
    if stored.client_id != client.client_id {
        return Err(invalid("the code was issued to another client"));
    }
    if request.redirect_uri.as_deref() != Some(stored.redirect_uri.as_str()) {
        return Err(invalid(
            "redirect_uri does not match the authorization request",
        ));
    }
    let verifier = request
        .code_verifier
        .as_deref()
        .ok_or_else(|| invalid("code_verifier is missing (PKCE)"))?;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    if !tokens::same(challenge.as_bytes(), stored.code_challenge.as_bytes()) {
        return Err(invalid("code_verifier does not match the code_challenge"));
    }
    Ok((stored.scope, uuid::Uuid::now_v7().to_string()))
}

/// Uses up a refresh token; a replayed one revokes every token of its grant.
async fn rotate_refresh(
    app: &App,
    client: &OAuthClient,
    request: &TokenRequest,
) -> Result<(String, String), Response> {
    let invalid = |why: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why.to_owned());
    let presented = request
        .refresh_token
        .as_deref()
        .ok_or_else(|| invalid("refresh_token is missing"))?;
    match oauth::use_refresh_token(app, presented).await {
        Ok(RefreshUse::Fresh(token)) if token.client_id != client.client_id => {
            Err(invalid("the refresh token belongs to another client"))
        }
        Ok(RefreshUse::Fresh(token)) if token.expires_at < Utc::now() => {
            Err(invalid("the refresh token expired; authorize again"))
        }
        Ok(RefreshUse::Fresh(token)) => Ok((token.scope, token.family_id)),
        Ok(RefreshUse::Replayed { family_id }) => {
            tracing::warn!(client.id = %client.client_id, family = %family_id, "refresh token reused; its grant is revoked");
            Err(invalid("the refresh token was already used; every token of this grant is now revoked, authorize again"))
        }
        Ok(RefreshUse::Unknown) => Err(invalid("the refresh token is unknown")),
        Err(err) => {
            tracing::error!(error = %err, "using a refresh token failed");
            Err(oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again shortly",
            ))
        }
    }
}

async fn issue(app: &App, client: &OAuthClient, scope: &str, family_id: &str) -> Response {
    let now = Utc::now();
    let ttl = app.config.access_token_ttl.as_secs() as i64;
    let claims = AccessClaims {
        iss: app.config.oauth_issuer(),
        sub: client.client_id.clone(),
        aud: app.config.mcp_resource(),
        exp: now.timestamp() + ttl,
        iat: now.timestamp(),
        jti: uuid::Uuid::now_v7().to_string(),
        scope: scope.to_owned(),
        client_id: client.client_id.clone(),
    };
    let access_token = match app.keys.signing().sign(&claims).await {
        Ok(token) => token,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "signing an access token failed");
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again shortly",
            );
        }
    };
    let refresh_token = tokens::mint(tokens::OAUTH_PREFIX);
    let stored = RefreshToken {
        token_hash: digest(&refresh_token),
        family_id: family_id.to_owned(),
        client_id: client.client_id.clone(),
        resource: app.config.mcp_resource(),
        scope: scope.to_owned(),
        expires_at: now + chrono::Duration::days(REFRESH_TTL_DAYS),
    };
    if let Err(err) = oauth::save_refresh_token(app, &stored).await {
        tracing::error!(error = %err, "storing a refresh token failed");
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "try again shortly",
        );
    }
    no_store(
        Json(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "refresh_token": refresh_token,
            "scope": scope,
        }))
        .into_response(),
    )
}

#[derive(Deserialize)]
pub struct RevokeRequest {
    token: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
}

/// Revokes a refresh token's whole grant. Unknown tokens and access tokens (short-lived) get the
/// same 200, as RFC 7009 asks, so the answer tells nothing.
pub async fn revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(request): Form<RevokeRequest>,
) -> Response {
    let as_token_request = TokenRequest {
        grant_type: String::new(),
        code: None,
        redirect_uri: None,
        code_verifier: None,
        refresh_token: None,
        client_id: request.client_id.clone(),
        client_secret: request.client_secret.clone(),
        resource: None,
    };
    let client = match authenticate(&app, &headers, &as_token_request).await {
        Ok(client) => client,
        Err(response) => return response,
    };
    match oauth::revoke_grant(&app, &request.token, &client.client_id).await {
        Ok(true) => tracing::info!(client.id = %client.client_id, "grant revoked"),
        Ok(false) => {}
        Err(err) => {
            tracing::error!(error = %err, "revoking a grant failed");
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again shortly",
            );
        }
    }
    no_store(StatusCode::OK.into_response())
}
