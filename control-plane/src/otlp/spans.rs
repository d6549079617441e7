//! OTLP trace requests (`ExportTraceServiceRequest`, protobuf) written straight from the SDK's
//! finished spans into one buffer. The generic path converts every span into the generated
//! message structs first (a `String` per attribute key and value, a `Vec` per id) and groups
//! them through a hash map; under a busy webhook intake that was most of what exporting cost.
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`,
//! `common/v1/common.proto` and `resource/v1/resource.proto`. A nested message is written with
//! a one-byte length that grows in place when its body turns out longer than 127 bytes.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, Key, Value};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// The resource part of every request of a process, encoded once.
#[derive(Debug, Default)]
pub struct EncodedResource {
    /// The `Resource` message's body.
    resource: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub fn new(resource: &Resource) -> Self {
        let mut body = Vec::new();
        for (key, value) in resource.iter() {
            nested(&mut body, 1, |out| key_value(out, key, value));
        }
        Self {
            resource: body,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

/// Appends the request carrying `spans` to `out`: one `ResourceSpans`, with a `ScopeSpans` per
/// instrumentation scope in the order they first appear.
pub fn encode_request(resource: &EncodedResource, spans: &[SpanData], out: &mut Vec<u8>) {
    nested(out, 1, |out| {
        bytes(out, 1, &resource.resource);
        let mut scopes: Vec<&InstrumentationScope> = Vec::new();
        for span in spans {
            if !scopes.contains(&&span.instrumentation_scope) {
                scopes.push(&span.instrumentation_scope);
            }
        }
        for scope in scopes {
            nested(out, 2, |out| {
                nested(out, 1, |out| scope_body(out, scope));
                for span in spans
                    .iter()
                    .filter(|span| span.instrumentation_scope == *scope)
                {
                    nested(out, 2, |out| span_body(out, span));
                }
                string_if_set(out, 3, scope.schema_url().unwrap_or_default());
            });
        }
        string_if_set(out, 3, &resource.schema_url);
    });
}

fn scope_body(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    string(out, 1, scope.name());
    string_if_set(out, 2, scope.version().unwrap_or_default());
    for attribute in scope.attributes() {
        nested(out, 3, |out| {
            key_value(out, &attribute.key, &attribute.value)
        });
    }
}

fn span_body(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes(out, 1, &context.trace_id().to_bytes());
    bytes(out, 2, &context.span_id().to_bytes());
    string_if_set(out, 3, &context.trace_state().header());
    if span.parent_span_id != SpanId::INVALID {
        bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    string(out, 5, &span.name);
    varint_field(out, 6, kind(&span.span_kind));
    fixed64(out, 7, unix_nanos(span.start_time));
    fixed64(out, 8, unix_nanos(span.end_time));
    for attribute in &span.attributes {
        nested(out, 9, |out| {
            key_value(out, &attribute.key, &attribute.value)
        });
    }
    count(out, 10, span.dropped_attributes_count);
    for event in span.events.iter() {
        nested(out, 11, |out| {
            fixed64(out, 1, unix_nanos(event.timestamp));
            string(out, 2, &event.name);
            for attribute in &event.attributes {
                nested(out, 3, |out| {
                    key_value(out, &attribute.key, &attribute.value)
                });
            }
            count(out, 4, event.dropped_attributes_count);
        });
    }
    count(out, 12, span.events.dropped_count);
    for link in span.links.iter() {
        let linked = &link.span_context;
        nested(out, 13, |out| {
            bytes(out, 1, &linked.trace_id().to_bytes());
            bytes(out, 2, &linked.span_id().to_bytes());
            string_if_set(out, 3, &linked.trace_state().header());
            for attribute in &link.attributes {
                nested(out, 4, |out| {
                    key_value(out, &attribute.key, &attribute.value)
                });
            }
            count(out, 5, link.dropped_attributes_count);
            fixed32(
                out,
                6,
                flags(linked.trace_flags().to_u8(), linked.is_remote()),
            );
        });
    }
    count(out, 14, span.links.dropped_count);
    nested(out, 15, |out| match &span.status {
        Status::Unset => {}
        Status::Ok => varint_field(out, 3, 1),
        Status::Error { description } => {
            string_if_set(out, 2, description);
            varint_field(out, 3, 2);
        }
    });
    fixed32(
        out,
        16,
        flags(context.trace_flags().to_u8(), span.parent_span_is_remote),
    );
}

/// The span's W3C trace flags, and that whether its parent is remote is known (and whether it
/// is): `SpanFlags` in the protocol.
fn flags(trace_flags: u8, remote: bool) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(trace_flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}

fn key_value(out: &mut Vec<u8>, key: &Key, value: &Value) {
    string(out, 1, key.as_str());
    nested(out, 2, |out| any_value(out, value));
}

/// An `AnyValue` body: the value's one field, written even when it holds its type's default
/// (it is a `oneof`).
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(text) => string(out, 1, text.as_str()),
        Value::Bool(flag) => varint_field(out, 2, u64::from(*flag)),
        Value::I64(number) => varint_field(out, 3, *number as u64),
        Value::F64(number) => fixed64(out, 4, number.to_bits()),
        Value::Array(array) => nested(out, 5, |out| match array {
            Array::Bool(values) => array_values(out, values.iter().map(|v| Value::Bool(*v))),
            Array::I64(values) => array_values(out, values.iter().map(|v| Value::I64(*v))),
            Array::F64(values) => array_values(out, values.iter().map(|v| Value::F64(*v))),
            Array::String(values) => {
                for text in values {
                    nested(out, 1, |out| string(out, 1, text.as_str()));
                }
            }
            // A kind of array newer than this code: its text, rather than nothing.
            other => array_values(out, std::iter::once(Value::from(other.to_string()))),
        }),
        // A kind of value newer than this code: its text, rather than nothing.
        other => string(out, 1, &other.as_str()),
    }
}

fn array_values(out: &mut Vec<u8>, values: impl Iterator<Item = Value>) {
    for value in values {
        nested(out, 1, |out| any_value(out, &value));
    }
}

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(out, u64::from(field << 3 | wire_type));
}

fn varint(out: &mut Vec<u8>, value: u64) {
    let (bytes, width) = varint_bytes(value);
    out.extend_from_slice(&bytes[..width]);
}

/// `value` as a protobuf varint: its bytes and how many of them it takes.
fn varint_bytes(mut value: u64) -> ([u8; 10], usize) {
    let mut bytes = [0; 10];
    let mut width = 0;
    while value >= 0x80 {
        bytes[width] = (value as u8) | 0x80;
        value >>= 7;
        width += 1;
    }
    bytes[width] = value as u8;
    (bytes, width + 1)
}

fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    tag(out, field, VARINT);
    varint(out, value);
}

/// A count, left out when zero (as protobuf leaves out defaults).
fn count(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        varint_field(out, field, u64::from(value));
    }
}

fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    tag(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

fn fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    tag(out, field, FIXED32);
    out.extend_from_slice(&value.to_le_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    tag(out, field, LEN);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn string(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes(out, field, value.as_bytes());
}

fn string_if_set(out: &mut Vec<u8>, field: u32, value: &str) {
    if !value.is_empty() {
        string(out, field, value);
    }
}

/// A message field whose body `write` appends: the length goes before it, one byte reserved
/// and widened afterwards when the body needs more.
fn nested(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, LEN);
    let at = out.len();
    out.push(0);
    write(out);
    let length = out.len() - at - 1;
    if length < 0x80 {
        out[at] = length as u8;
        return;
    }
    let (prefix, width) = varint_bytes(length as u64);
    let end = out.len();
    out.resize(end + width - 1, 0);
    out.copy_within(at + 1..end, at + width);
    out[at..at + width].copy_from_slice(&prefix[..width]);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry::KeyValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    use super::*;

    fn context(trace: u128, span: u64, remote: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            TraceState::from_key_value([("vendor", "x1")]).unwrap(),
        )
    }

    /// A finished server span with a remote parent.
    pub(crate) fn span(
        name: impl Into<Cow<'static, str>>,
        scope: &InstrumentationScope,
        attributes: Vec<KeyValue>,
    ) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(1_765_000_000_123_456_789);
        SpanData {
            span_context: context(
                0x0af7651916cd43dd8448eb211c80319c,
                0xb7ad6b7169203331,
                false,
            ),
            parent_span_id: SpanId::from(0x00f067aa0ba902b7),
            parent_span_is_remote: true,
            span_kind: SpanKind::Server,
            name: name.into(),
            start_time: start,
            end_time: start + Duration::from_micros(1500),
            attributes,
            dropped_attributes_count: 2,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    }

    /// What the generic path (the SDK's conversion, then prost) makes of the same spans.
    fn generic(resource: &Resource, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(resource),
            ),
        }
    }

    fn lean(resource: &Resource, spans: &[SpanData]) -> ExportTraceServiceRequest {
        let mut body = Vec::new();
        encode_request(&EncodedResource::new(resource), spans, &mut body);
        ExportTraceServiceRequest::decode(body.as_slice()).expect("a valid protobuf message")
    }

    #[test]
    fn requests_decode_to_what_the_generic_exporter_sends() {
        let resource = Resource::builder_empty()
            .with_service_name("autopilot-control-plane")
            .with_attribute(KeyValue::new("service.version", "0.1.0"))
            .with_schema_url([], "https://opentelemetry.io/schemas/1.30.0")
            .build();
        let autopilot = InstrumentationScope::builder("autopilot").build();
        let other = InstrumentationScope::builder("other")
            .with_version("2.1")
            .with_schema_url("https://example.com/schema")
            .with_attributes([KeyValue::new("scope.flag", true)])
            .build();
        let long = "x".repeat(300);
        let mut first = span(
            "POST /hooks/{token}",
            &autopilot,
            vec![
                KeyValue::new("http.route", "/hooks/{token}"),
                KeyValue::new("http.response.status_code", 202_i64),
                KeyValue::new("autopilot.store.duration_ms", 0.25),
                KeyValue::new("flag", false),
                KeyValue::new("zero", 0_i64),
                KeyValue::new("empty", ""),
                KeyValue::new("long", long.clone()),
                KeyValue::new("negative", -7_i64),
                KeyValue::new(
                    "list",
                    Value::Array(Array::String(vec!["a".into(), "".into()])),
                ),
                KeyValue::new("numbers", Value::Array(Array::I64(vec![1, -2, 0]))),
                KeyValue::new("floats", Value::Array(Array::F64(vec![0.5]))),
                KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
            ],
        );
        first.status = Status::error("upstream said 503");
        first.events.events = vec![Event::new(
            "retry",
            UNIX_EPOCH + Duration::from_secs(1_765_000_001),
            vec![KeyValue::new("attempt", 2_i64)],
            1,
        )];
        first.events.dropped_count = 3;
        first.links.links = vec![Link::new(
            context(7, 9, true),
            vec![KeyValue::new("link.kind", "follows")],
            4,
        )];
        first.links.dropped_count = 5;
        let mut second = span("store run", &other, Vec::new());
        second.parent_span_id = SpanId::INVALID;
        second.parent_span_is_remote = false;
        second.span_kind = SpanKind::Producer;
        second.status = Status::Ok;
        second.name = Cow::Owned(long);
        let mut third = span("fire nightly", &autopilot, vec![KeyValue::new("k", "v")]);
        third.span_kind = SpanKind::Internal;
        let spans = [first, second, third];
        for batch in [&spans[..], &spans[..1], &[]] {
            assert_eq!(lean(&resource, batch), generic(&resource, batch.to_vec()));
        }
    }

    #[test]
    fn lengths_of_every_width_are_written_in_place() {
        for length in [0, 1, 127, 128, 300, 16_383, 16_384, 2_097_152] {
            let mut out = vec![9];
            nested(&mut out, 1, |out| {
                out.extend(std::iter::repeat_n(7, length))
            });
            let mut expected = vec![9, 1 << 3 | 2];
            varint(&mut expected, length as u64);
            expected.extend(std::iter::repeat_n(7, length));
            assert_eq!(out, expected, "length {length}");
        }
    }
}
