//! The HTTP API: one router, thin handlers that call the services.

mod error;
mod jobs;
pub mod json;
mod runs;
mod webhooks;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::App;
pub use error::{ApiError, ApiResult};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState(pub Arc<App>);

pub fn router(app: Arc<App>) -> Router {
    let state = AppState(app);
    let api = Router::new()
        .route("/jobs", get(jobs::list).post(jobs::create))
        .route(
            "/jobs/{id}",
            get(jobs::get).patch(jobs::update).delete(jobs::delete),
        )
        .route("/jobs/{id}/trigger", post(jobs::trigger))
        .route("/jobs/{id}/next-fires", get(jobs::next_fires))
        .route("/schedule/preview", post(jobs::preview))
        .route("/runs", get(runs::list))
        .route("/runs/{id}", get(runs::get))
        .route("/runs/{id}/events", get(runs::events))
        .route("/runs/{id}/kill", post(runs::kill))
        .route("/runs/{id}/payload", get(runs::payload))
        .route("/runs/{id}/replay", post(runs::replay))
        .route("/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/webhooks/{id}/rotate", post(webhooks::rotate))
        .route("/workers", get(workers))
        .route("/quick-run", post(runs::quick_run))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_token,
        ));
    let app = Arc::clone(&state.0);
    // `layer`, not `route_layer`: the MCP router serves everything from its fallback. `/mcp` is
    // a tower service of its own, so the body limit is enforced at the transport.
    let mcp = crate::mcp::router(Arc::clone(&app))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::oauth::require_mcp_caller,
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .nest("/api/v1", api)
        // Authenticated by the secret URL (and a signature), not the admin token; the body limit
        // is each webhook's own.
        .route("/hooks/{token}", post(webhooks::deliver))
        .fallback(not_found)
        .with_state(state)
        .nest_service("/mcp", mcp)
        .merge(crate::oauth::router(app))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

pub fn is_admin_token(app: &App, token: &str) -> bool {
    bool::from(hash_token(token.trim()).ct_eq(&app.admin_token_hash))
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

async fn require_admin_token(
    State(AppState(app)): State<AppState>,
    request: Request,
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
        });
    let Some(token) = presented else {
        return ApiError::unauthorized(
            "missing bearer token: send `Authorization: Bearer <admin token>`",
        )
        .into_response();
    };
    if !is_admin_token(&app, token) {
        return ApiError::unauthorized("invalid token").into_response();
    }
    let mut request = request;
    request
        .extensions_mut()
        .insert(crate::auth::Caller::admin());
    next.run(request).await
}

async fn workers(State(AppState(app)): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!({ "workers": app.live_workers().await? })))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(AppState(app)): State<AppState>) -> Response {
    match app.store.get_setting("admin_token_sha256").await {
        Ok(_) => Json(json!({
            "status": "ready",
            "store": app.store.backend(),
            "mode": app.config.mode(),
            "replica": app.replica_id,
            "scheduler_leader": app.is_leader.load(std::sync::atomic::Ordering::Relaxed),
        }))
        .into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "reason": "store unreachable" })),
            )
                .into_response()
        }
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}
