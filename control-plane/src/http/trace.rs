//! A server span for each HTTP request, when traces are exported: named by method and route
//! (never the raw path, which may hold a webhook's secret token), a child of the caller's span
//! when the request carries a W3C `traceparent`.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Routes polled by probes and scrapers: not worth a trace each.
const UNTRACED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The middleware (`axum::middleware::from_fn(traced)`).
pub async fn traced(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let Some(route) = route.filter(|route| !UNTRACED.contains(&route.as_str())) else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let span = tracing::info_span!(
        target: "autopilot_trace",
        "http request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let parent = request
        .headers()
        .get(autopilot_proto::TRACEPARENT_HEADER)
        .and_then(|value| value.to_str().ok());
    autopilot_worker::trace::set_parent(&span, parent);
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}
