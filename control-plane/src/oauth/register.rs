//! Dynamic client registration (RFC 7591), rate-limited.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::redirect_uri_allowed;
use crate::app::App;
use crate::domain::auth::{SCOPE_READ, SCOPE_WRITE};
use crate::domain::oauth::OAuthClient;
use crate::http::oauth::{no_store, oauth_error};
use crate::services::oauth;
use crate::tokens;

/// Registrations allowed in a burst, and refilled per minute.
const REGISTRATION_BURST: f64 = 20.0;
const REGISTRATIONS_PER_MINUTE: f64 = 10.0;

#[derive(Deserialize)]
pub struct Registration {
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    client_name: Option<String>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    grant_types: Option<Vec<String>>,
    #[serde(default)]
    response_types: Option<Vec<String>>,
    #[serde(default)]
    scope: Option<String>,
}

/// A token bucket for the registrations of one server.
#[derive(Default)]
pub struct RegistrationLimiter {
    bucket: Mutex<Option<(f64, Instant)>>,
}

impl RegistrationLimiter {
    /// Takes a token, or says how many seconds until one is free.
    fn take(&self) -> Result<(), u64> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last) = bucket.get_or_insert((REGISTRATION_BURST, now));
        *tokens = (*tokens
            + now.duration_since(*last).as_secs_f64() * REGISTRATIONS_PER_MINUTE / 60.0)
            .min(REGISTRATION_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) * 60.0 / REGISTRATIONS_PER_MINUTE).ceil() as u64)
        }
    }
}

pub async fn register(
    State((app, limiter)): State<(Arc<App>, Arc<RegistrationLimiter>)>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(retry_after) = limiter.take() {
        let mut response = oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "slow_down",
            "too many client registrations; try again later",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return response;
    }
    let registration: Registration = match serde_json::from_slice(&body) {
        Ok(registration) => registration,
        Err(err) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                format!("the body is not valid client metadata: {err}"),
            )
        }
    };
    if registration.redirect_uris.is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "redirect_uris must list at least one URI",
        );
    }
    if let Some(bad) = registration
        .redirect_uris
        .iter()
        .find(|uri| !redirect_uri_allowed(&app.config.oauth_redirect_allowlist, uri))
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            format!("redirect URI `{bad}` is not allowed: use claude.ai's or claude.com's callback, or http on a loopback address"),
        );
    }
    let auth_method = registration
        .token_endpoint_auth_method
        .unwrap_or_else(|| "client_secret_basic".to_owned());
    if !matches!(
        auth_method.as_str(),
        "none" | "client_secret_post" | "client_secret_basic"
    ) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client_metadata",
            format!("token_endpoint_auth_method `{auth_method}` is not supported: use none, client_secret_post or client_secret_basic"),
        );
    }
    let grant_types = registration
        .grant_types
        .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]);
    if let Some(bad) = grant_types
        .iter()
        .find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client_metadata",
            format!("grant type `{bad}` is not supported"),
        );
    }
    if registration
        .response_types
        .as_ref()
        .is_some_and(|types| types.iter().any(|t| t != "code"))
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client_metadata",
            "only the `code` response type is supported",
        );
    }
    let scope = registration
        .scope
        .unwrap_or_else(|| format!("{SCOPE_READ} {SCOPE_WRITE}"));
    let client_secret = (auth_method != "none").then(|| tokens::mint(tokens::OAUTH_PREFIX));
    let client = OAuthClient {
        client_id: format!("apc_{}", uuid::Uuid::now_v7().simple()),
        secret_hash: client_secret.as_deref().map(tokens::digest_hex),
        auth_method: auth_method.clone(),
        redirect_uris: registration.redirect_uris,
        client_name: registration
            .client_name
            .map(|name| name.chars().take(200).collect()),
        scope,
        created_at: Utc::now(),
    };
    if let Err(err) = oauth::register_client(&app, &client).await {
        tracing::error!(error = %err, "storing a client registration failed");
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "try again shortly",
        );
    }
    tracing::info!(client.id = %client.client_id, client.name = ?client.client_name, "oauth client registered");
    let mut body = json!({
        "client_id": client.client_id,
        "client_id_issued_at": client.created_at.timestamp(),
        "redirect_uris": client.redirect_uris,
        "token_endpoint_auth_method": auth_method,
        "grant_types": grant_types,
        "response_types": ["code"],
        "scope": client.scope,
    });
    if let Some(name) = &client.client_name {
        body["client_name"] = json!(name);
    }
    if let Some(secret) = client_secret {
        body["client_secret"] = json!(secret);
        body["client_secret_expires_at"] = json!(0);
    }
    no_store((StatusCode::CREATED, Json(body)).into_response())
}
