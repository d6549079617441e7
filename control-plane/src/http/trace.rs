//! A server span for each HTTP request, when traces are exported: named by method and route
//! (never the raw path, which may hold a webhook's secret token), a child of the caller's span
//! when the request carries a W3C `traceparent`. Made with the OpenTelemetry SDK directly, not
//! as a `tracing` span: a busy webhook intake makes thousands a second, and the request's
//! handling finds it as its current trace context (`autopilot_worker::trace::in_request`).

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{global, KeyValue};

use autopilot_worker::trace;

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
    let method = request.method().as_str().to_owned();
    let parent = request
        .headers()
        .get(autopilot_proto::TRACEPARENT_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(trace::parent_context)
        .unwrap_or_default();
    let tracer = global::tracer(trace::TRACER_NAME);
    let span = tracer
        .span_builder(format!("{method} {route}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method),
            KeyValue::new("http.route", route),
        ])
        .start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);
    let response = trace::in_request(cx.clone(), next.run(request)).await;
    let status = response.status();
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
    response
}
