//! Trace context across processes, and spans recorded after the fact.
//!
//! A run's trace crosses the control plane, the bus and a worker: each hop carries a W3C
//! `traceparent` (`00-<trace id>-<span id>-<flags>`), in a message header or the run's row, and
//! the next hop's spans become its children. Spans whose times are only known afterwards (a
//! model turn, a tool call, a batched store write) are recorded with their own start and end
//! through the OpenTelemetry API.
//!
//! Tracing is on only when the process installed an exporter ([`set_enabled`]); otherwise
//! every function here returns at once and nothing is recorded.

use std::borrow::Cow;
use std::cell::{Cell, OnceCell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use autopilot_proto::RunId;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{global, Context, KeyValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub mod genai;

/// Name of the instrumentation scope of Autopilot's spans.
pub const TRACER_NAME: &str = "autopilot";

/// Target of the `tracing` spans made for traces only (not for log context): the log layer
/// leaves them out. The macros need it as a literal: `target: "autopilot_trace"`.
pub const SPAN_TARGET: &str = "autopilot_trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Called once by the process that installed a trace exporter.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Autopilot's tracer from the global provider, made once (asking the provider for it on
/// every span costs a lock and allocations). Only asked for once tracing is on, which is after
/// the provider was installed.
pub fn tracer() -> &'static global::BoxedTracer {
    static TRACER: OnceLock<global::BoxedTracer> = OnceLock::new();
    TRACER.get_or_init(|| global::tracer(TRACER_NAME))
}

/// The `traceparent` of the span in `cx`, if it has a valid one.
pub fn traceparent(cx: &Context) -> Option<String> {
    let span = cx.span();
    let context = span.span_context();
    context
        .is_valid()
        .then(|| format_traceparent(context.trace_id(), context.span_id(), context.trace_flags()))
}

/// The W3C `traceparent` naming these ids, written by hand: every webhook delivery makes one,
/// and `fmt` is slow at it.
pub fn format_traceparent(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> String {
    let mut traceparent = String::with_capacity(55);
    traceparent.push_str("00-");
    push_hex(&mut traceparent, &trace_id.to_bytes());
    traceparent.push('-');
    push_hex(&mut traceparent, &span_id.to_bytes());
    traceparent.push('-');
    push_hex(&mut traceparent, &[flags.to_u8()]);
    traceparent
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

fn push_hex(text: &mut String, bytes: &[u8]) {
    for byte in bytes {
        text.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(HEX_DIGITS[usize::from(byte & 0xf)]));
    }
}

/// The ids of the span that starts a run's trace, derived from the run's id: a request that
/// starts a trace (a webhook delivery without a `traceparent`) draws its run's id first and
/// takes these for its span, so the run's row need not carry its trace context (every delivery
/// writes one row on the one SQLite writer; see `store::rows::stored_trace_parent`). `None` in
/// the (never seen) case of an all-zero id, which is invalid.
///
/// A fixed mix of the id's bits (MurmurHash3's 64-bit finaliser, which is a bijection, over
/// both halves): the trace id's low half, which ratio samplers read, is as random as the run
/// id's random bits. Stored rows are read back with it, so it never changes.
pub fn run_span_ids(run_id: RunId) -> Option<(TraceId, SpanId)> {
    fn mix(mut bits: u64) -> u64 {
        bits ^= bits >> 33;
        bits = bits.wrapping_mul(0xff51_afd7_ed55_8ccd);
        bits ^= bits >> 33;
        bits = bits.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        bits ^ (bits >> 33)
    }
    let (high, low) = run_id.as_uuid().as_u64_pair();
    let trace_low = mix(low ^ mix(high ^ 0x6175_746f_7069_6c6f));
    let trace_high = mix(high ^ mix(low ^ 0x7472_6163_6520_6964));
    let span = mix(trace_low ^ trace_high ^ 0x7370_616e_2069_6421);
    let trace_id = TraceId::from(u128::from(trace_high) << 64 | u128::from(trace_low));
    let span_id = SpanId::from(span);
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some((trace_id, span_id))
}

/// The `traceparent` of a sampled span whose ids are [`run_span_ids`] of `run_id`.
pub fn run_traceparent(run_id: RunId) -> Option<String> {
    let (trace_id, span_id) = run_span_ids(run_id)?;
    Some(format_traceparent(trace_id, span_id, TraceFlags::SAMPLED))
}

/// The trace of the request the current task serves: its span's context and what its handling
/// adds to that span. Attributes are gathered here and put on the span once, when it ends,
/// rather than on a shared span object for each one: a busy webhook intake adds several to
/// every delivery's span.
#[derive(Debug)]
pub struct RequestTrace {
    cx: Context,
    recording: bool,
    /// The span's `traceparent`, written when first asked for.
    traceparent: OnceCell<Option<String>>,
    attributes: RefCell<Vec<KeyValue>>,
    /// The id the request's first run takes, when the span's ids were derived from it.
    run_id: Cell<Option<RunId>>,
}

impl RequestTrace {
    /// The trace of a request whose span is the one in `cx`; `recording` says whether that span
    /// keeps attributes (the sampler may have left it out).
    pub fn new(cx: Context, recording: bool) -> Self {
        Self::with_attributes(cx, recording, Vec::new())
    }

    /// [`new`](Self::new), for a span that has `attributes` so far (the handling's are added
    /// to them: give them room).
    pub fn with_attributes(cx: Context, recording: bool, attributes: Vec<KeyValue>) -> Self {
        Self {
            cx,
            recording,
            traceparent: OnceCell::new(),
            attributes: RefCell::new(attributes),
            run_id: Cell::new(None),
        }
    }

    /// Makes this the trace of a request whose span's ids are [`run_span_ids`] of `run_id`:
    /// the first run it creates takes that id ([`run_id`]).
    pub fn starting_run(self, run_id: RunId) -> Self {
        self.run_id.set(Some(run_id));
        self
    }

    /// The request span's `traceparent`, if it has a valid context.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent
            .get_or_init(|| traceparent(&self.cx))
            .as_deref()
    }

    /// Whether attributes added now are kept.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Adds attributes to the request's span (set when it ends); dropped unless it records.
    pub fn add(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        if self.recording {
            self.attributes.borrow_mut().extend(attributes);
        }
    }

    /// The span's attributes: those it started with and those added while the request was
    /// handled.
    pub fn into_attributes(self) -> Vec<KeyValue> {
        self.attributes.into_inner()
    }
}

impl Clone for RequestTrace {
    /// The same span, without its attributes, and without a run id to give (one id must never
    /// go to two runs).
    fn clone(&self) -> Self {
        Self::new(self.cx.clone(), self.recording)
    }
}

tokio::task_local! {
    /// The trace of the request the current task serves (see [`in_request`]).
    static REQUEST: RequestTrace;
}

/// `work` (a request's handling) with `trace` as its current trace: spans made by hand for
/// requests, cheaper than `tracing` spans on a hot path, are found this way. A future of a
/// type that can be named, for a `tower` service's future; its
/// [`take_value`](tokio::task::futures::TaskLocalFuture::take_value) gives `trace` back with
/// what the handling added.
pub fn in_request<F: std::future::Future>(
    trace: RequestTrace,
    work: F,
) -> tokio::task::futures::TaskLocalFuture<RequestTrace, F> {
    REQUEST.scope(trace, work)
}

/// Calls `work` (the synchronous start of a request's handling) with `trace` as its current
/// trace.
pub fn in_request_sync<R>(trace: RequestTrace, work: impl FnOnce() -> R) -> R {
    REQUEST.sync_scope(trace, work)
}

/// `f` of the trace of the request the current task serves, if it serves one.
pub fn with_request<R>(f: impl FnOnce(&RequestTrace) -> R) -> Option<R> {
    REQUEST.try_with(f).ok()
}

/// The id for a run created now: the one the current request's span was derived from, the
/// first time it is asked for (so the run's trace context can be derived from its id), else a
/// new one.
pub fn run_id() -> RunId {
    with_request(|request| request.run_id.take())
        .flatten()
        .unwrap_or_else(RunId::new)
}

/// The current trace context: the request's (see [`in_request`]), else the current
/// `tracing` span's.
pub fn current_context() -> Context {
    with_request(|request| request.cx.clone()).unwrap_or_else(|| tracing::Span::current().context())
}

/// The context a `traceparent` names, as a remote parent. `None` for a malformed one (the
/// spans that would have been its children start a trace of their own).
pub fn parent_context(traceparent: &str) -> Option<Context> {
    let mut parts = traceparent.trim().split('-');
    let (Some(version), Some(trace_id), Some(span_id), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if version.len() != 2 || version == "ff" || trace_id.len() != 32 || span_id.len() != 16 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    context
        .is_valid()
        .then(|| Context::new().with_remote_span_context(context))
}

/// Makes `span` a child of the span `traceparent` names (a no-op when tracing is off or it is
/// absent or malformed).
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if !enabled() {
        return;
    }
    if let Some(parent) = traceparent.and_then(parent_context) {
        let _ = span.set_parent(parent);
    }
}

/// A span that already happened: its times are known, so it is recorded whole.
pub struct PastSpan {
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// Marks the span failed, with this description.
    pub error: Option<String>,
}

impl PastSpan {
    pub fn new(name: impl Into<Cow<'static, str>>, start: SystemTime, end: SystemTime) -> Self {
        Self {
            name: name.into(),
            kind: SpanKind::Internal,
            start,
            end: end.max(start),
            attributes: Vec::new(),
            error: None,
        }
    }

    pub fn kind(mut self, kind: SpanKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn attribute(mut self, attribute: KeyValue) -> Self {
        self.attributes.push(attribute);
        self
    }

    /// Records the span as a child of `parent`; returns the context its own children need.
    pub fn record(self, parent: &Context) -> Context {
        let tracer = tracer();
        let mut span = tracer
            .span_builder(self.name)
            .with_kind(self.kind)
            .with_start_time(self.start)
            .with_attributes(self.attributes)
            .start_with_context(tracer, parent);
        if let Some(error) = self.error {
            span.set_status(Status::error(error));
        }
        let context = span.span_context().clone();
        span.end_with_timestamp(self.end);
        parent.with_remote_span_context(context)
    }

    /// Records the span as a child of the current `tracing` span, when tracing is on.
    pub fn record_in_current(self) {
        if enabled() {
            self.record(&current_context());
        }
    }

    /// Records the span as a child of the span `traceparent` names. Nothing is recorded when
    /// tracing is off or the parent is unknown.
    pub fn record_under(self, traceparent: Option<&str>) {
        if let Some(parent) = traceparent.filter(|_| enabled()).and_then(parent_context) {
            self.record(&parent);
        }
    }
}

/// A span started now and ended later, under a parent named by its `traceparent` (for steps
/// that run outside the `tracing` span of their cause, such as a publish by the dispatcher).
pub struct OpenSpan {
    span: global::BoxedSpan,
    traceparent: Option<String>,
}

impl OpenSpan {
    /// Starts a span under `traceparent`; `None` when tracing is off or there is no parent.
    pub fn start(
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        traceparent: Option<&str>,
        attributes: Vec<KeyValue>,
    ) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let parent = traceparent.and_then(parent_context)?;
        let tracer = tracer();
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        let traceparent = crate::trace::traceparent(
            &parent.with_remote_span_context(span.span_context().clone()),
        );
        Some(Self { span, traceparent })
    }

    /// Its own `traceparent`, for the steps it causes.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Ends it now with these attributes added, failed with `error` if one is given.
    pub fn end_with(mut self, attributes: Vec<KeyValue>, error: Option<String>) {
        self.span.set_attributes(attributes);
        self.end(error);
    }

    /// Ends it now, failed with `error` if one is given.
    pub fn end(mut self, error: Option<String>) {
        if let Some(error) = error {
            self.span.set_status(Status::error(error));
        }
        self.span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `run_traceparent` of the run `019aec3b-0f3e-7c21-9a4d-2f1e5b6c7d8e`.
    const GOLDEN_TRACEPARENT: &str = "00-c1bb915ee6e001061d622598bc7d8ed8-e4689b4811b2f5aa-01";

    #[test]
    fn a_traceparent_reads_back_as_it_was_written() {
        let written = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parent_context(written).expect("valid");
        assert_eq!(traceparent(&context).as_deref(), Some(written));
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            traceparent(&parent_context(unsampled).unwrap()).as_deref(),
            Some(unsampled)
        );
    }

    #[tokio::test]
    async fn a_request_gathers_attributes_for_its_span() {
        let written = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parent_context(written).expect("valid");
        let request = RequestTrace::new(cx.clone(), true);
        let expected = trace_id(&cx);
        let handling = in_request(request.clone(), async move {
            with_request(|request| {
                assert_eq!(request.traceparent(), Some(written));
                request.add([KeyValue::new("a", 1)]);
                request.add([KeyValue::new("b", "two")]);
            })
            .expect("in a request");
            assert_eq!(trace_id(&current_context()), expected);
        });
        let mut handling = std::pin::pin!(handling);
        handling.as_mut().await;
        let gathered = handling.take_value().expect("not taken yet");
        let gathered = gathered.into_attributes();
        let keys: Vec<&str> = gathered
            .iter()
            .map(|attribute| attribute.key.as_str())
            .collect();
        assert_eq!(keys, ["a", "b"]);
        // A copy starts without them; a span that does not record gathers nothing.
        assert!(request.into_attributes().is_empty());
        let unrecorded = RequestTrace::new(cx, false);
        unrecorded.add([KeyValue::new("a", 1)]);
        assert!(unrecorded.into_attributes().is_empty());
        assert!(with_request(|_| ()).is_none());
        assert_eq!(RequestTrace::new(Context::new(), true).traceparent(), None);
    }

    #[test]
    fn a_run_s_span_ids_derive_from_its_id_the_same_way_for_good() {
        // Rows are read back with this derivation: it must not change.
        let run: RunId = "019aec3b-0f3e-7c21-9a4d-2f1e5b6c7d8e".parse().unwrap();
        assert_eq!(run_traceparent(run).as_deref(), Some(GOLDEN_TRACEPARENT));
        // The trace ids' low halves, which ratio samplers read, spread over their whole range
        // although every run id has the same version and variant bits.
        let lows: Vec<u64> = (0..4096)
            .map(|_| {
                let (trace_id, _) = run_span_ids(RunId::new()).expect("valid");
                u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap())
            })
            .collect();
        let below_half = lows.iter().filter(|low| **low < u64::MAX / 2).count();
        assert!((1800..2300).contains(&below_half), "{below_half} of 4096");
        let top_bits: std::collections::HashSet<u64> = lows.iter().map(|low| low >> 60).collect();
        assert_eq!(top_bits.len(), 16);
    }

    #[tokio::test]
    async fn a_request_s_run_id_goes_to_its_first_run_only() {
        let run = RunId::new();
        let request = RequestTrace::new(Context::new(), true).starting_run(run);
        let copy = request.clone();
        in_request(request, async move {
            assert_eq!(run_id(), run);
            assert_ne!(run_id(), run);
        })
        .await;
        // A copy (the handling's synchronous start) has none to give.
        in_request(copy, async move { assert_ne!(run_id(), run) }).await;
        assert_ne!(run_id(), run);
    }

    fn trace_id(cx: &Context) -> TraceId {
        cx.span().span_context().trace_id()
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parent_context(bad).is_none(), "{bad:?} was taken");
        }
    }
}
