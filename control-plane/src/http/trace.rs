//! A server span for each HTTP request, when traces are exported: named by method and route
//! (never the raw path, which may hold a webhook's secret token), a child of the caller's span
//! when the request carries a W3C `traceparent`. Made with the OpenTelemetry SDK directly, not
//! as a `tracing` span, and by a plain `tower` layer rather than a boxed middleware: a busy
//! webhook intake makes thousands a second. The request's handling finds the span as its
//! current trace context (`autopilot_worker::trace::in_request`).

use std::task::{Context as TaskContext, Poll};

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use futures::future::{BoxFuture, Either};
use http::StatusCode;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use tower::{Layer, Service};

use autopilot_worker::trace;

/// Routes polled by probes and scrapers: not worth a trace each.
const UNTRACED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The layer, for `Router::layer` (which applies it to each route, after routing, so the
/// matched route is known).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestSpans;

impl<S> Layer<S> for RequestSpans {
    type Service = RequestSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSpan { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RequestSpan<S> {
    inner: S,
}

impl<S> Service<Request> for RequestSpan<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(cx) = start(&request) else {
            return Either::Left(self.inner.call(request));
        };
        let handling = trace::in_request_sync(cx.clone(), || self.inner.call(request));
        Either::Right(Box::pin(async move {
            let result = trace::in_request(cx.clone(), handling).await;
            if let Ok(response) = &result {
                end(&cx, response.status());
            }
            result
        }))
    }
}

/// The request's span, started now, in a context of its own; `None` for untraced routes.
fn start(request: &Request) -> Option<Context> {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .filter(|route| !UNTRACED.contains(route))?;
    let method = request.method().as_str();
    let parent = request
        .headers()
        .get(autopilot_proto::TRACEPARENT_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(trace::parent_context)
        .unwrap_or_default();
    let tracer = trace::tracer();
    let span = tracer
        .span_builder(format!("{method} {route}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method.to_owned()),
            KeyValue::new("http.route", route.to_owned()),
        ])
        .start_with_context(tracer, &parent);
    Some(parent.with_span(span))
}

fn end(cx: &Context, status: StatusCode) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
}
