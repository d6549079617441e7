//! The web dashboard: server-rendered pages (askama templates compiled into the binary), one
//! small ES module for live updates and shortcuts, live run transcripts over SSE carrying
//! rendered HTML, charts drawn as SVG here. Every asset is in the binary; nothing is fetched
//! from elsewhere.
//!
//! Security: an operator session (sign-in with the operator password) guards every page but
//! the sign-in form; each state-changing request passes the same-origin check and carries the
//! session's form token ([`auth`]); every page gets the security headers ([`security_headers`]);
//! agent output is escaped everywhere and its markdown cleaned ([`markdown`]); every action
//! passes [`auth::authorize`], the one place where roles would be decided.

mod assets;
mod auth;
mod fields;
mod format;
mod markdown;
mod pages;
mod svg;
mod transcript;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::app::App;
use crate::services::overview::SoonestFires;

/// What the dashboard's handlers share: the bottom context, and this edge's own state (the
/// sign-in attempt limits, the overview's next fires while they hold).
#[derive(Clone)]
pub struct Dashboard {
    pub app: Arc<App>,
    limits: Arc<auth::SignInLimits>,
    fires: Arc<tokio::sync::Mutex<Option<SoonestFires>>>,
}

/// The dashboard's pages, fragments and assets, at the root of the server.
pub fn router(app: Arc<App>) -> Router {
    let state = Dashboard {
        app,
        limits: Arc::new(auth::SignInLimits::default()),
        fires: Arc::default(),
    };
    let signed_in = Router::new()
        .route("/", get(pages::overview::show))
        .route("/jobs", get(pages::jobs::list))
        .route("/jobs/new", get(pages::jobs::new).post(pages::jobs::create))
        .route("/jobs/{id}", get(pages::jobs::show))
        .route(
            "/jobs/{id}/edit",
            get(pages::jobs::edit).post(pages::jobs::update),
        )
        .route("/jobs/{id}/run", post(pages::jobs::run_now))
        .route("/jobs/{id}/enabled", post(pages::jobs::set_enabled))
        .route("/jobs/{id}/delete", post(pages::jobs::delete))
        .route("/schedule-preview", get(pages::jobs::schedule_preview))
        .route("/runs", get(pages::runs::list))
        .route("/runs/kill", post(pages::runs::kill_many))
        .route("/runs/compare", get(pages::compare::show))
        .route("/runs/{id}", get(pages::run::show))
        .route("/runs/{id}/live", get(pages::run::live))
        .route("/runs/{id}/events/{seq}", get(pages::run::event))
        .route("/runs/{id}/transcript.md", get(pages::run::markdown))
        .route("/runs/{id}/kill", post(pages::run::kill))
        .route(
            "/runs/{id}/rerun",
            get(pages::run::rerun_form).post(pages::run::rerun),
        )
        .route("/runs/{id}/replay", post(pages::run::replay))
        .route("/approvals/{id}/{verb}", post(pages::run::decide))
        .route("/webhooks", get(pages::webhooks::list))
        .route(
            "/webhooks/new",
            get(pages::webhooks::new).post(pages::webhooks::create),
        )
        .route("/webhooks/{id}", get(pages::webhooks::show))
        .route("/webhooks/{id}/rotate", post(pages::webhooks::rotate))
        .route("/webhooks/{id}/test", post(pages::webhooks::test_delivery))
        .route("/webhooks/{id}/delete", post(pages::webhooks::delete))
        .route("/tools", get(pages::tools::show))
        .route("/tools/credentials", post(pages::tools::set_credential))
        .route(
            "/tools/credentials/{name}/delete",
            post(pages::tools::delete_credential),
        )
        .route(
            "/tools/servers/{name}/test",
            post(pages::tools::test_server),
        )
        .route(
            "/tools/dynamic/{name}/{version}/approve",
            post(pages::tools::approve_dynamic),
        )
        .route("/usage", get(pages::usage::show))
        .route(
            "/quick-run",
            get(pages::quick::show).post(pages::quick::submit),
        )
        .route("/settings", get(pages::settings::show))
        .route("/sign-out", post(auth::sign_out))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_session,
        ));
    Router::new()
        .merge(signed_in)
        .route("/sign-in", get(auth::sign_in_form).post(auth::sign_in))
        .route("/assets/{name}", get(assets::serve))
        .route("/favicon.ico", get(assets::favicon))
        .layer(middleware::from_fn(auth::same_origin_writes))
        .layer(middleware::from_fn(security_headers))
        // Pages of long runs are large and repetitive: gzip at its fastest takes them to a
        // tenth for a few milliseconds. Live event streams are left alone (the layer's default
        // skips `text/event-stream`).
        .layer(
            tower_http::compression::CompressionLayer::new()
                .quality(tower_http::CompressionLevel::Fastest),
        )
        .with_state(state)
}

/// The Content Security Policy of every dashboard response: scripts and styles only from the
/// dashboard's own files (no inline script or style, no `eval`), no frames, forms only to here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every dashboard response.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let mut set = |name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::REFERRER_POLICY, "same-origin");
    set(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
