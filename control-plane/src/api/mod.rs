//! The HTTP API under `/api/v1`, with the admin token, and the health checks: one router, thin
//! handlers that call the services.

mod approvals;
mod jobs;
mod memory;
mod runs;
mod tools;
mod webhooks;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;

use crate::app::App;
use crate::domain::auth::Caller;
use crate::http::{closing, ApiError, ApiResult};
use crate::services;
use crate::tokens;

#[derive(Clone)]
pub struct AppState(pub Arc<App>);

/// `/api/v1/…`, `/healthz` and `/readyz`; anything else under it is a JSON 404.
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
        .route("/jobs/{id}/skipped-fires", get(jobs::skipped_fires))
        .route(
            "/hook-tokens",
            get(jobs::list_hook_tokens).post(jobs::create_hook_token),
        )
        .route(
            "/hook-tokens/{name}",
            axum::routing::delete(jobs::delete_hook_token),
        )
        .route("/jobs/{id}/memory", get(memory::list))
        .route(
            "/jobs/{id}/memory/{*key}",
            get(memory::get).put(memory::put).delete(memory::delete),
        )
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
        .route("/webhooks/{id}/memory", get(memory::list))
        .route(
            "/webhooks/{id}/memory/{*key}",
            get(memory::get).put(memory::put).delete(memory::delete),
        )
        .route(
            "/servers",
            get(tools::list_servers).post(tools::register_server),
        )
        .route(
            "/servers/{name}",
            get(tools::get_server)
                .put(tools::replace_server)
                .delete(tools::delete_server),
        )
        .route(
            "/bundles",
            get(tools::list_bundles).post(tools::create_bundle),
        )
        .route(
            "/bundles/{name}",
            get(tools::get_bundle)
                .put(tools::replace_bundle)
                .delete(tools::delete_bundle),
        )
        .route("/bundles/{name}/assign", post(tools::assign_bundle))
        .route("/servers/import", post(tools::import_servers))
        .route("/servers/{name}/test", post(tools::test_server))
        .route("/servers/{name}/invoke", post(tools::invoke_server_tool))
        .route("/servers/{name}/oauth", post(tools::start_oauth))
        .route("/servers/{name}/oauth/refresh", post(tools::refresh_oauth))
        .route("/dynamic-servers", post(tools::save_dynamic_server))
        .route(
            "/dynamic-servers/{name}/versions",
            get(tools::dynamic_versions),
        )
        .route(
            "/dynamic-servers/{name}/validate",
            post(tools::validate_dynamic_server),
        )
        .route(
            "/dynamic-servers/{name}/versions/{version}/approve",
            post(tools::approve_dynamic_version),
        )
        .route("/credentials", get(tools::list_credentials))
        .route(
            "/credentials/{name}",
            put(tools::set_credential).delete(tools::delete_credential),
        )
        .route("/approvals", get(approvals::list))
        .route("/approvals/{id}", get(approvals::get))
        .route("/approvals/{id}/{decision}", post(approvals::decide))
        .route("/workers", get(workers))
        .route("/quick-run", post(runs::quick_run))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_token,
        ));
    Router::new()
        .route(
            crate::services::tools::oauth_client::CALLBACK_PATH,
            get(tools::oauth_callback),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .with_state(state)
}

async fn require_admin_token(
    State(AppState(app)): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = tokens::bearer(request.headers()) else {
        return closing(
            ApiError::unauthorized(
                "missing bearer token: send `Authorization: Bearer <admin token>`",
            )
            .into_response(),
        );
    };
    if !app.keys.is_admin_token(token) {
        return closing(ApiError::unauthorized("invalid token").into_response());
    }
    request.extensions_mut().insert(Caller::admin());
    next.run(request).await
}

async fn workers(State(AppState(app)): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(
        json!({ "workers": services::workers::live(&app).await? }),
    ))
}

/// The process's metrics in the Prometheus text format. Like the health checks it needs no
/// token: it shows counts by job and webhook name, no secret and no run's content.
async fn metrics(State(AppState(app)): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        services::health::metrics(&app).await,
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready to take new work: not shutting down (so a load balancer stops sending traffic while
/// the process drains) and the store answers.
async fn readyz(State(AppState(app)): State<AppState>) -> Response {
    if app.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": "shutting down" })),
        )
            .into_response();
    }
    match services::health::ready(&app).await {
        Ok(()) => Json(json!({
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

/// The answer to anything no router of the server takes.
pub async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}
