//! An OTLP receiver in the test process, speaking the real protocol on both transports:
//! OTLP/HTTP (`POST /v1/traces` and `/v1/metrics`, protobuf) and OTLP/gRPC (`TraceService` and
//! `MetricsService`). It keeps every span it is sent, flattened, and the names of the metrics
//! (with the service that sent them), for the tests to look at.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// One span as received.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// Lower-case hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// The instrumentation scope's name.
    pub scope: String,
    pub attributes: HashMap<String, Value>,
    /// 2 = server, 3 = client, 4 = producer, 5 = consumer, 1 = internal.
    pub kind: i32,
    /// 2 = error.
    pub status_code: i32,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Names of the span's events.
    pub events: Vec<String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    pub fn str_attribute(&self, key: &str) -> Option<&str> {
        self.attribute(key).and_then(Value::as_str)
    }
}

/// What the receiver keeps: every span, or (for benchmarks) only how many arrived.
#[derive(Default)]
struct Kept {
    spans: Mutex<Vec<ReceivedSpan>>,
    count: std::sync::atomic::AtomicUsize,
    count_only: bool,
}

type Spans = Arc<Kept>;
/// `(service, metric name)` of every metric received.
type MetricNames = Arc<Mutex<Vec<(String, String)>>>;

/// The receiver; it stops when dropped.
pub struct OtlpReceiver {
    spans: Spans,
    metrics: MetricNames,
    http_port: u16,
    grpc_port: u16,
    stop: CancellationToken,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        Self::start_keeping(Kept::default()).await
    }

    /// A receiver that decodes what it is sent but keeps only the number of spans (so that a
    /// benchmark measures the sender, not the receiver's bookkeeping).
    pub async fn start_counting() -> OtlpReceiver {
        Self::start_keeping(Kept {
            count_only: true,
            ..Kept::default()
        })
        .await
    }

    async fn start_keeping(kept: Kept) -> OtlpReceiver {
        let spans: Spans = Arc::new(kept);
        let metrics: MetricNames = Arc::default();
        let stop = CancellationToken::new();

        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_port = http.local_addr().unwrap().port();
        let kept = Arc::clone(&spans);
        let router = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let kept = Arc::clone(&kept);
                async move {
                    if kept.count_only {
                        // Counted on the wire: a benchmark's receiver shares the cores with the
                        // server it measures, and decoding every span would be charged to it.
                        return match count_spans(&body) {
                            Some(count) => {
                                kept.count
                                    .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
                                (
                                    StatusCode::OK,
                                    [("content-type", "application/x-protobuf")],
                                    Vec::new(),
                                )
                            }
                            None => (
                                StatusCode::BAD_REQUEST,
                                [("content-type", "text/plain")],
                                b"not an ExportTraceServiceRequest".to_vec(),
                            ),
                        };
                    }
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            keep(&kept, request);
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            (
                                StatusCode::OK,
                                [("content-type", "application/x-protobuf")],
                                answer,
                            )
                        }
                        Err(_) => (
                            StatusCode::BAD_REQUEST,
                            [("content-type", "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        let kept = Arc::clone(&metrics);
        let router = router.route(
            "/v1/metrics",
            post(move |body: Bytes| {
                let kept = Arc::clone(&kept);
                async move {
                    match ExportMetricsServiceRequest::decode(body) {
                        Ok(request) => {
                            keep_metrics(&kept, request);
                            let answer = ExportMetricsServiceResponse::default().encode_to_vec();
                            (StatusCode::OK, answer)
                        }
                        Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
                    }
                }
            }),
        );
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(http, router)
                .with_graceful_shutdown(until.cancelled_owned())
                .await;
        });

        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_port = grpc.local_addr().unwrap().port();
        let receiver = GrpcReceiver {
            spans: Arc::clone(&spans),
            metrics: Arc::clone(&metrics),
        };
        let traces = TraceServiceServer::new(receiver.clone());
        let metric_service = MetricsServiceServer::new(receiver);
        let until = stop.clone();
        tokio::spawn(async move {
            let incoming = tokio_stream_of(grpc);
            let _ = tonic::transport::Server::builder()
                .add_service(traces)
                .add_service(metric_service)
                .serve_with_incoming_shutdown(incoming, until.cancelled_owned())
                .await;
        });
        OtlpReceiver {
            spans,
            metrics,
            http_port,
            grpc_port,
            stop,
        }
    }

    /// The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` with `http/protobuf`.
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The URL for `OTEL_EXPORTER_OTLP_ENDPOINT` with `grpc`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.spans.lock().unwrap().clone()
    }

    /// How many spans arrived.
    pub fn span_count(&self) -> usize {
        self.spans.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `(service, metric name)` of every metric data set received.
    pub fn metric_names(&self) -> Vec<(String, String)> {
        self.metrics.lock().unwrap().clone()
    }

    /// The spans of trace `trace_id`.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect()
    }

    /// Waits until `done` holds for the spans received, and returns them; panics with what
    /// arrived after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                let names: Vec<String> = spans
                    .iter()
                    .map(|span| {
                        format!("{} ({}, trace {})", span.name, span.service, span.trace_id)
                    })
                    .collect();
                panic!(
                    "the spans expected did not arrive within {timeout:?}; received: {names:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

#[derive(Clone)]
struct GrpcReceiver {
    spans: Spans,
    metrics: MetricNames,
}

#[tonic::async_trait]
impl MetricsService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        keep_metrics(&self.metrics, request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn keep_metrics(kept: &MetricNames, request: ExportMetricsServiceRequest) {
    let mut kept = kept.lock().unwrap();
    for resource_metrics in request.resource_metrics {
        let service = resource_metrics
            .resource
            .map(|resource| attributes(&resource.attributes))
            .and_then(|resource| {
                resource
                    .get("service.name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        for scope in resource_metrics.scope_metrics {
            for metric in scope.metrics {
                kept.push((service.clone(), metric.name));
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.spans, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The spans in an encoded `ExportTraceServiceRequest`, counted by walking the protobuf wire
/// format (`resource_spans` = 1 → `scope_spans` = 2 → `spans` = 2) without decoding them;
/// `None` when the body is not well-formed protobuf.
fn count_spans(body: &[u8]) -> Option<usize> {
    /// Calls `each` with the content of every length-delimited field `number` of `message`.
    fn fields<'a>(
        mut message: &'a [u8],
        number: u64,
        mut each: impl FnMut(&'a [u8]) -> Option<()>,
    ) -> Option<()> {
        fn varint(bytes: &mut &[u8]) -> Option<u64> {
            let mut value = 0u64;
            for shift in (0..64).step_by(7) {
                let (&byte, rest) = bytes.split_first()?;
                *bytes = rest;
                value |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return Some(value);
                }
            }
            None
        }
        while !message.is_empty() {
            let key = varint(&mut message)?;
            let skip = match key & 7 {
                0 => {
                    varint(&mut message)?;
                    0
                }
                1 => 8,
                5 => 4,
                2 => {
                    let len = usize::try_from(varint(&mut message)?).ok()?;
                    let content = message.get(..len)?;
                    if key >> 3 == number {
                        each(content)?;
                    }
                    len
                }
                _ => return None,
            };
            message = message.get(skip..)?;
        }
        Some(())
    }
    let mut count = 0;
    fields(body, 1, |resource| {
        fields(resource, 2, |scope| {
            fields(scope, 2, |_span| {
                count += 1;
                Some(())
            })
        })
    })?;
    Some(count)
}

fn keep(spans: &Spans, request: ExportTraceServiceRequest) {
    let count: usize = request
        .resource_spans
        .iter()
        .flat_map(|resource| &resource.scope_spans)
        .map(|scope| scope.spans.len())
        .sum();
    spans
        .count
        .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    if spans.count_only {
        return;
    }
    let mut kept = spans.spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|resource| attributes(&resource.attributes))
            .unwrap_or_default();
        let service = resource
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans
                .scope
                .map(|scope| scope.name)
                .unwrap_or_default();
            for span in scope_spans.spans {
                kept.push(ReceivedSpan {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    service: service.clone(),
                    scope: scope.clone(),
                    attributes: attributes(&span.attributes),
                    kind: span.kind,
                    status_code: span.status.map_or(0, |status| status.code),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    events: span.events.into_iter().map(|event| event.name).collect(),
                });
            }
        }
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, Value> {
    list.iter()
        .map(|kv| {
            let value = kv
                .value
                .as_ref()
                .and_then(|value| value.value.as_ref())
                .map_or(Value::Null, any_value);
            (kv.key.clone(), value)
        })
        .collect()
}

fn any_value(value: &AnyValue) -> Value {
    match value {
        AnyValue::StringValue(text) => Value::from(text.as_str()),
        AnyValue::BoolValue(flag) => Value::from(*flag),
        AnyValue::IntValue(number) => Value::from(*number),
        AnyValue::DoubleValue(number) => Value::from(*number),
        AnyValue::ArrayValue(array) => Value::Array(
            array
                .values
                .iter()
                .filter_map(|item| item.value.as_ref())
                .map(any_value)
                .collect(),
        ),
        AnyValue::KvlistValue(list) => {
            Value::Object(attributes(&list.values).into_iter().collect())
        }
        AnyValue::BytesValue(bytes) => Value::from(hex::encode(bytes)),
        #[allow(unreachable_patterns)]
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue as Any;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::Event;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn span(name: &str) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            name: name.into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_000_001,
            attributes: vec![KeyValue {
                key: "http.route".into(),
                value: Some(Any {
                    value: Some(AnyValue::IntValue(-3)),
                }),
                ..KeyValue::default()
            }],
            events: vec![Event {
                name: "an event".into(),
                ..Event::default()
            }],
            ..Span::default()
        }
    }

    #[test]
    fn spans_counted_on_the_wire_are_the_spans_decoded() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource::default()),
                    scope_spans: vec![
                        ScopeSpans {
                            spans: vec![span("a"), span("b")],
                            schema_url: "https://example.com/schema".into(),
                            ..ScopeSpans::default()
                        },
                        ScopeSpans {
                            spans: vec![span("c")],
                            ..ScopeSpans::default()
                        },
                    ],
                    ..ResourceSpans::default()
                },
                ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: (0..40).map(|n| span(&n.to_string())).collect(),
                        ..ScopeSpans::default()
                    }],
                    ..ResourceSpans::default()
                },
            ],
        };
        let body = request.encode_to_vec();
        assert_eq!(count_spans(&body), Some(43));
        assert_eq!(count_spans(&[]), Some(0));
        // Cut short, or not protobuf at all.
        assert_eq!(count_spans(&body[..body.len() - 3]), None);
        assert_eq!(
            count_spans(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
            None
        );
    }
}
