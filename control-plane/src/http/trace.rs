//! A server span for each HTTP request, when traces are exported: named by method and route
//! (never the raw path, which may hold a webhook's secret token), a child of the caller's span
//! when the request carries a W3C `traceparent`. Made with the OpenTelemetry SDK directly, not
//! as a `tracing` span, and by a plain `tower` layer rather than a boxed middleware: a busy
//! webhook intake makes thousands a second. The request's handling finds the span as its
//! current trace context (`autopilot_worker::trace::in_request`).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context as TaskContext, Poll};

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use futures::future::Either;
use http::{Method, StatusCode};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, Value};
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use autopilot_worker::trace::{self, RequestTrace};

/// Attributes a request span has room for from its start: method and route, a run's five,
/// the store's wait and the status.
const ATTRIBUTES_A_SPAN: usize = 10;

/// Routes polled by probes and scrapers: not worth a trace each.
const UNTRACED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The layer, for `Router::layer` (which applies it to each route, after routing, so the
/// matched route is known).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestSpans;

impl<S> Layer<S> for RequestSpans {
    type Service = RequestSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSpan {
            inner,
            names: Arc::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestSpan<S> {
    inner: S,
    /// The span name and attributes of the first method and route this service answered,
    /// made once: a route's service answers the same route every time, usually one method.
    names: Arc<OnceLock<RouteNames>>,
}

#[derive(Debug)]
struct RouteNames {
    method: Method,
    route: &'static str,
    method_name: &'static str,
    span_name: &'static str,
}

impl RouteNames {
    /// Kept for the process's life: one per route and method, a bounded set.
    fn new(method: &Method, route: &str) -> Self {
        Self {
            method: method.clone(),
            route: Box::leak(route.into()),
            method_name: Box::leak(method.as_str().into()),
            span_name: Box::leak(format!("{method} {route}").into_boxed_str()),
        }
    }
}

impl<S> Service<Request> for RequestSpan<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<S::Future, Traced<S::Future>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some((cx, recording)) = self.start(&request) else {
            return Either::Left(self.inner.call(request));
        };
        let request_trace = RequestTrace::new(cx.clone(), recording);
        let handling = trace::in_request_sync(request_trace.clone(), || self.inner.call(request));
        Either::Right(Traced {
            handling: trace::in_request(request_trace, handling),
            span: Some(cx),
        })
    }
}

impl<S> RequestSpan<S> {
    /// The request's span, started now, in a context of its own, and whether it records;
    /// `None` for untraced routes.
    fn start(&self, request: &Request) -> Option<(Context, bool)> {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str)
            .filter(|route| !UNTRACED.contains(route))?;
        let method = request.method();
        let names = self.names.get_or_init(|| RouteNames::new(method, route));
        let (name, method_name, route_name): (Cow<'static, str>, Value, Value) =
            if names.method == method && names.route == route {
                (
                    names.span_name.into(),
                    names.method_name.into(),
                    names.route.into(),
                )
            } else {
                (
                    format!("{method} {route}").into(),
                    method.as_str().to_owned().into(),
                    route.to_owned().into(),
                )
            };
        let parent = request
            .headers()
            .get(autopilot_proto::TRACEPARENT_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(trace::parent_context)
            .unwrap_or_default();
        let tracer = trace::tracer();
        // Room for what the handling adds (a run's attributes, the store's wait) and the status.
        let mut attributes = Vec::with_capacity(ATTRIBUTES_A_SPAN);
        attributes.extend([
            KeyValue::new("http.request.method", method_name),
            KeyValue::new("http.route", route_name),
        ]);
        let span = tracer
            .span_builder(name)
            .with_attributes(attributes)
            .with_kind(SpanKind::Server)
            .start_with_context(tracer, &parent);
        let recording = span.is_recording();
        Some((parent.with_span(span), recording))
    }
}

pin_project_lite::pin_project! {
    /// A traced request's handling, with its span as the current trace context; the span ends
    /// with the response.
    pub struct Traced<F> {
        #[pin]
        handling: TaskLocalFuture<RequestTrace, F>,
        span: Option<Context>,
    }
}

impl<F, E> Future for Traced<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = ready!(this.handling.as_mut().poll(cx));
        if let (Some(span), Ok(response)) = (this.span.take(), &result) {
            let added = this
                .handling
                .take_value()
                .map(RequestTrace::into_attributes)
                .unwrap_or_default();
            end(&span, response.status(), added);
        }
        Poll::Ready(result)
    }
}

/// Ends the request's span with the attributes its handling added and the response's status.
fn end(cx: &Context, status: StatusCode, mut attributes: Vec<KeyValue>) {
    let span = cx.span();
    attributes.push(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    span.set_attributes(attributes);
    if status.is_server_error() {
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
}
