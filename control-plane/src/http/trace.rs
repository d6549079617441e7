//! A server span for each HTTP request, when traces are exported: named by method and route
//! (never the raw path, which may hold a webhook's secret token), a child of the caller's span
//! when the request carries a W3C `traceparent`. Made by a plain `tower` layer rather than a
//! boxed middleware, and put together here rather than as an SDK span (a boxed object behind a
//! lock, taken for every attribute): a busy webhook intake makes thousands a second. The span
//! is sampled by the provider's sampler and handed to its processor when the response is
//! ready. The request's handling finds the span as its current trace context
//! (`autopilot_worker::trace::in_request`).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context as TaskContext, Poll};
use std::time::SystemTime;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use futures::future::Either;
use http::{Method, StatusCode};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SamplingDecision, ShouldSample, SpanData, SpanEvents,
    SpanLinks, SpanProcessor,
};
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use autopilot_proto::RunId;
use autopilot_worker::trace::{self, RequestTrace};

/// Attributes a request span has room for from its start: method and route, a run's five,
/// the store's wait and the status.
const ATTRIBUTES_A_SPAN: usize = 10;

/// Routes polled by probes and scrapers: not worth a trace each.
const UNTRACED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// What request spans are recorded with: the trace provider's processor, a sampler made from
/// the same settings as the provider's (`OTEL_TRACES_SAMPLER`), and the tracer's scope.
#[derive(Debug)]
pub struct RequestRecorder {
    processor: Arc<dyn SpanProcessor>,
    sampler: Box<dyn ShouldSample>,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
}

static RECORDER: OnceLock<RequestRecorder> = OnceLock::new();

impl RequestRecorder {
    pub fn new(processor: Arc<dyn SpanProcessor>, sampler: Box<dyn ShouldSample>) -> Self {
        Self {
            processor,
            sampler,
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder(trace::TRACER_NAME).build(),
        }
    }

    /// Makes this the process's recorder; done once, by the process that exports traces.
    pub fn install(self) {
        let _ = RECORDER.set(self);
    }

    /// The process's recorder, when traces are exported.
    pub fn installed() -> Option<&'static RequestRecorder> {
        RECORDER.get()
    }
}

/// The layer, for `Router::layer` (which applies it to each route, after routing, so the
/// matched route is known).
#[derive(Clone, Copy, Debug)]
pub struct RequestSpans {
    recorder: &'static RequestRecorder,
}

impl RequestSpans {
    pub fn new(recorder: &'static RequestRecorder) -> Self {
        Self { recorder }
    }
}

impl<S> Layer<S> for RequestSpans {
    type Service = RequestSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSpan {
            inner,
            recorder: self.recorder,
            // Kept for the process's life: one per route, made when the router is built.
            names: Box::leak(Box::default()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestSpan<S> {
    inner: S,
    recorder: &'static RequestRecorder,
    /// The span name and attributes of the first method and route this service answered,
    /// made once: a route's service answers the same route every time, usually one method.
    /// A plain reference: the service is cloned for every request, on every thread, and a
    /// shared count would move between their caches each time.
    names: &'static OnceLock<RouteNames>,
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
        let Some((span, request_trace)) = self.start(&request) else {
            return Either::Left(self.inner.call(request));
        };
        let handling = trace::in_request_sync(request_trace.clone(), || self.inner.call(request));
        Either::Right(Traced {
            handling: trace::in_request(request_trace, handling),
            span: Some(span),
            recorder: self.recorder,
        })
    }
}

/// A request's span until it ends.
struct OpenSpan {
    context: SpanContext,
    /// The caller's span, from its `traceparent`.
    parent: Option<SpanId>,
    name: Cow<'static, str>,
    start: SystemTime,
    /// Whether the sampler kept it (else it is not recorded, only its context passed on).
    recording: bool,
}

impl<S> RequestSpan<S> {
    /// The request's span, started now, and the trace its handling runs in; `None` for
    /// untraced routes.
    fn start(&self, request: &Request) -> Option<(OpenSpan, RequestTrace)> {
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
        let start = SystemTime::now();
        let parent = request
            .headers()
            .get(autopilot_proto::TRACEPARENT_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(trace::parent_context);
        // Room for what the handling adds (a run's attributes, the store's wait) and the status.
        let mut attributes = Vec::with_capacity(ATTRIBUTES_A_SPAN);
        attributes.extend([
            KeyValue::new("http.request.method", method_name),
            KeyValue::new("http.route", route_name),
        ]);
        let recorder = self.recorder;
        let parent_context = parent.as_ref().map(|cx| cx.span().span_context().clone());
        // A request that starts a trace and may create a run (a webhook delivery, a trigger)
        // draws that run's id now and derives its span's ids from it: the run's row then
        // carries no trace context of its own (`store::rows::stored_trace_parent`).
        let derived = (parent_context.is_none() && method == Method::POST)
            .then(|| {
                let run_id = RunId::new();
                trace::run_span_ids(run_id).map(|ids| (run_id, ids))
            })
            .flatten();
        let trace_id = match (&parent_context, derived) {
            (Some(parent), _) => parent.trace_id(),
            (None, Some((_, (trace_id, _)))) => trace_id,
            (None, None) => recorder.ids.new_trace_id(),
        };
        let sampling = recorder.sampler.should_sample(
            parent.as_ref(),
            trace_id,
            &name,
            &SpanKind::Server,
            &attributes,
            &[],
        );
        let parent_flags = parent_context
            .as_ref()
            .map_or_else(TraceFlags::default, SpanContext::trace_flags);
        let (flags, recording) = match sampling.decision {
            SamplingDecision::RecordAndSample => (parent_flags.with_sampled(true), true),
            SamplingDecision::RecordOnly => (parent_flags.with_sampled(false), true),
            SamplingDecision::Drop => (TraceFlags::default(), false),
        };
        if recording {
            attributes.extend(sampling.attributes);
        }
        let span_id = derived.map_or_else(|| recorder.ids.new_span_id(), |(_, (_, id))| id);
        let context = SpanContext::new(trace_id, span_id, flags, false, sampling.trace_state);
        let cx = parent
            .unwrap_or_default()
            .with_remote_span_context(context.clone());
        let span = OpenSpan {
            context,
            parent: parent_context.map(|parent| parent.span_id()),
            name,
            start,
            recording,
        };
        // The handling adds its attributes to the span's (its trace holds them until the end).
        let trace = RequestTrace::with_attributes(cx, recording, attributes);
        let trace = match derived {
            Some((run_id, _)) => trace.starting_run(run_id),
            None => trace,
        };
        Some((span, trace))
    }
}

pin_project_lite::pin_project! {
    /// A traced request's handling, with its span as the current trace context; the span ends
    /// with the response.
    pub struct Traced<F> {
        #[pin]
        handling: TaskLocalFuture<RequestTrace, F>,
        span: Option<OpenSpan>,
        recorder: &'static RequestRecorder,
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
            let attributes = this
                .handling
                .take_value()
                .map(RequestTrace::into_attributes)
                .unwrap_or_default();
            end(this.recorder, span, response.status(), attributes);
        }
        Poll::Ready(result)
    }
}

/// Ends the request's span with its attributes (those its handling added among them) and the
/// response's status, and hands it to the processor (unless the sampler left it out).
fn end(
    recorder: &RequestRecorder,
    span: OpenSpan,
    status: StatusCode,
    mut attributes: Vec<KeyValue>,
) {
    if !span.recording {
        return;
    }
    attributes.push(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    let status = if status.is_server_error() {
        Status::error(status.to_string())
    } else {
        Status::Unset
    };
    recorder.processor.on_end(SpanData {
        span_context: span.context,
        parent_span_id: span.parent.unwrap_or(SpanId::INVALID),
        parent_span_is_remote: span.parent.is_some(),
        span_kind: SpanKind::Server,
        name: span.name,
        start_time: span.start,
        end_time: SystemTime::now().max(span.start),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: recorder.scope.clone(),
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use axum::routing::post;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::Sampler;
    use tower::ServiceExt as _;

    use super::*;

    /// A processor that keeps what it is handed.
    #[derive(Debug, Default)]
    struct Kept(Mutex<Vec<SpanData>>);

    impl SpanProcessor for Kept {
        fn on_start(
            &self,
            _span: &mut opentelemetry_sdk::trace::Span,
            _cx: &opentelemetry::Context,
        ) {
        }

        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }

        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }

        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// A router whose handler adds an attribute to its request's span and answers `status`,
    /// with spans sampled by `sampler`; what it recorded, and the trace ids the handler saw.
    fn traced(
        sampler: Sampler,
        status: StatusCode,
    ) -> (axum::Router, Arc<Kept>, Arc<Mutex<Vec<String>>>) {
        traced_runs(sampler, status, Arc::default())
    }

    /// [`traced`], with the id of a run the handler creates pushed onto `runs`.
    fn traced_runs(
        sampler: Sampler,
        status: StatusCode,
        runs: Arc<Mutex<Vec<RunId>>>,
    ) -> (axum::Router, Arc<Kept>, Arc<Mutex<Vec<String>>>) {
        let kept = Arc::new(Kept::default());
        let recorder = Box::leak(Box::new(RequestRecorder::new(
            kept.clone(),
            Box::new(sampler),
        )));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler_seen = seen.clone();
        let handler_runs = runs;
        let router = axum::Router::new()
            .route(
                "/things/{id}",
                post(move || async move {
                    trace::with_request(|request| {
                        request.add([KeyValue::new("thing.kind", "test")]);
                        handler_seen
                            .lock()
                            .unwrap()
                            .push(request.traceparent().unwrap_or_default().to_owned());
                    });
                    handler_runs.lock().unwrap().push(trace::run_id());
                    status
                }),
            )
            .layer(RequestSpans::new(recorder));
        (router, kept, seen)
    }

    async fn send(router: axum::Router, traceparent: Option<&str>) {
        let mut request = Request::post("/things/secret-token");
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let request = request.body(axum::body::Body::empty()).unwrap();
        router.oneshot(request).await.unwrap();
    }

    #[tokio::test]
    async fn a_request_span_is_named_by_its_route_and_continues_the_caller_s_trace() {
        let (router, kept, seen) = traced(Sampler::AlwaysOn, StatusCode::ACCEPTED);
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        send(router, Some(caller)).await;
        let spans = kept.0.lock().unwrap();
        let [span] = spans.as_slice() else {
            panic!("one span: {spans:?}")
        };
        assert_eq!(span.name, "POST /things/{id}");
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(
            span.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(span.parent_span_is_remote);
        assert!(span.span_context.is_sampled());
        assert!(span.end_time >= span.start_time);
        let attribute = |key: &str| {
            span.attributes
                .iter()
                .find(|attribute| attribute.key.as_str() == key)
                .map(|attribute| attribute.value.to_string())
        };
        assert_eq!(attribute("http.request.method").as_deref(), Some("POST"));
        assert_eq!(attribute("http.route").as_deref(), Some("/things/{id}"));
        assert_eq!(attribute("thing.kind").as_deref(), Some("test"));
        assert_eq!(
            attribute("http.response.status_code").as_deref(),
            Some("202")
        );
        assert_eq!(span.status, Status::Unset);
        assert_eq!(span.instrumentation_scope.name(), trace::TRACER_NAME);
        // The handler's context is the span itself.
        let expected = format!(
            "00-{}-{}-01",
            span.span_context.trace_id(),
            span.span_context.span_id()
        );
        assert_eq!(*seen.lock().unwrap(), [expected]);
    }

    #[tokio::test]
    async fn a_server_error_marks_the_span_and_a_span_the_sampler_drops_is_not_recorded() {
        let (router, kept, _) = traced(Sampler::AlwaysOn, StatusCode::BAD_GATEWAY);
        send(router, None).await;
        {
            let spans = kept.0.lock().unwrap();
            assert_eq!(spans.len(), 1);
            assert!(matches!(spans[0].status, Status::Error { .. }));
            assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
            assert!(!spans[0].parent_span_is_remote);
        }

        let (router, kept, seen) = traced(Sampler::AlwaysOff, StatusCode::OK);
        send(router, None).await;
        assert!(kept.0.lock().unwrap().is_empty());
        // Its context still goes on, marked not sampled.
        let seen = seen.lock().unwrap();
        assert!(seen[0].ends_with("-00"), "{seen:?}");
    }

    #[tokio::test]
    async fn a_request_that_starts_a_trace_derives_its_span_from_the_id_of_its_run() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let (router, kept, seen) =
            traced_runs(Sampler::AlwaysOn, StatusCode::ACCEPTED, runs.clone());
        send(router.clone(), None).await;
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        send(router, Some(caller)).await;
        let runs = runs.lock().unwrap();
        let spans = kept.0.lock().unwrap();
        let seen = seen.lock().unwrap();
        let (trace_id, span_id) = trace::run_span_ids(runs[0]).expect("valid");
        assert_eq!(spans[0].span_context.trace_id(), trace_id);
        assert_eq!(spans[0].span_context.span_id(), span_id);
        assert_eq!(Some(&seen[0]), trace::run_traceparent(runs[0]).as_ref());
        // Under a caller's trace the run's id is a new one.
        assert_eq!(
            spans[1].span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_ne!(Some(&seen[1]), trace::run_traceparent(runs[1]).as_ref());
    }
}
