//! The span exporter for OTLP over HTTP (`http/protobuf`): requests encoded by
//! [`super::spans`] and posted from the batch processor's own thread.
//!
//! Settings are the standard ones: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as given) or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (with `/v1/traces` added), `..._HEADERS` (`key=value` pairs,
//! comma separated, percent-encoded; the traces' own override the general ones),
//! `..._TIMEOUT` (milliseconds, 10 s by default) and `..._COMPRESSION` (`gzip` or `none`). A
//! failed export is retried while the timeout allows when the collector is busy (429, 502,
//! 503, 504) or unreachable; its spans are dropped after that, with a warning in the log (at
//! most one a minute). Exporting runs at a lower priority than the process's other threads.

use std::io::{Read as _, Write as _};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::{StatusCode, Url};

use super::spans::{encode_request, EncodedResource};
use super::Signal;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of one request at most, the first after 100 ms, each wait twice the last.
const RETRIES: u32 = 3;
const FIRST_RETRY: Duration = Duration::from_millis(100);
const WARN_EVERY: Duration = Duration::from_secs(60);
/// A collector's reply is a few bytes (a partial success at most); more is not read.
const MAX_REPLY_BYTES: u64 = 64 * 1024;

/// Where and how spans are sent.
#[derive(Debug, PartialEq)]
pub struct HttpSettings {
    endpoint: Url,
    headers: HeaderMap,
    timeout: Duration,
    gzip: bool,
}

impl HttpSettings {
    /// The settings for traces, given `var` (an environment lookup). A value that cannot be
    /// used is an error naming its variable (never a header's value: those are credentials).
    pub fn traces(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let set = |name: &str| super::set(&var, name);
        let setting = |what: &str| super::signal_setting(&var, Signal::Traces, what);
        let (name, endpoint) = match set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(endpoint) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
            None => {
                let base = set("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .context("no OTLP endpoint: set OTEL_EXPORTER_OTLP_ENDPOINT")?;
                let joined = format!("{}/v1/traces", base.trim_end_matches('/'));
                ("OTEL_EXPORTER_OTLP_ENDPOINT", joined)
            }
        };
        let endpoint = Url::parse(&endpoint)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
            .with_context(|| {
                format!(
                    "{name} is not an http:// or https:// URL (for example http://collector:4318)"
                )
            })?;
        let mut headers = HeaderMap::new();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Some(list) = set(name) {
                for (key, value) in parse_headers(name, &list)? {
                    headers.insert(key, value);
                }
            }
        }
        let timeout = match setting("TIMEOUT") {
            None => DEFAULT_TIMEOUT,
            Some((name, millis)) => millis
                .parse()
                .ok()
                .filter(|millis| *millis > 0)
                .map(Duration::from_millis)
                .with_context(|| {
                    format!("{name}={millis} is not a number of milliseconds above 0")
                })?,
        };
        let gzip = match setting("COMPRESSION") {
            None => false,
            Some((name, compression)) => match compression.to_ascii_lowercase().as_str() {
                "none" => false,
                "gzip" => true,
                _ => bail!("{name}={compression} is not supported: use `gzip` or `none`"),
            },
        };
        Ok(Self {
            endpoint,
            headers,
            timeout,
            gzip,
        })
    }

    /// The endpoint as logs may show it: no user, password or query.
    fn endpoint_for_logs(&self) -> String {
        let url = &self.endpoint;
        format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port()
                .map(|port| format!(":{port}"))
                .unwrap_or_default()
        ) + url.path()
    }
}

/// `key=value,key2=value2`, each part percent-encoded.
fn parse_headers(var: &str, list: &str) -> anyhow::Result<Vec<(HeaderName, HeaderValue)>> {
    let mut headers = Vec::new();
    for (index, entry) in list.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let position = index + 1;
        let parsed = entry.split_once('=').and_then(|(key, value)| {
            let key = percent_encoding::percent_decode_str(key.trim())
                .decode_utf8()
                .ok()?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .ok()?;
            Some((
                HeaderName::from_str(&key).ok()?,
                HeaderValue::from_str(&value).ok()?,
            ))
        });
        match parsed {
            Some(header) => headers.push(header),
            None => bail!(
                "{var}: entry {position} is not a `name=value` header (names are letters, digits \
                 and `-`; values percent-encoded)"
            ),
        }
    }
    Ok(headers)
}

/// The exporter. It is owned by the batch span processor's thread, which calls it and waits:
/// the request is sent right there, with a blocking client of its own.
#[derive(Debug)]
pub struct HttpSpanExporter {
    client: reqwest::blocking::Client,
    settings: HttpSettings,
    resource: EncodedResource,
    /// The buffer requests are encoded into, kept from one export to the next: a fresh one
    /// for every batch (over 100 KiB) would be new pages, faulted in and zeroed each time.
    buffer: Mutex<Vec<u8>>,
    /// When a failure was last logged.
    warned: Mutex<Option<Instant>>,
    /// Whether the exporting thread's priority was lowered.
    yielding: AtomicBool,
}

impl HttpSpanExporter {
    pub fn new(settings: HttpSettings) -> anyhow::Result<Self> {
        // The blocking client runs a runtime of its own, which may not be made (or dropped) on
        // a thread of the process's runtime: a thread of its own makes it, after lowering its
        // priority, which the client's thread inherits.
        let client = std::thread::spawn(|| {
            yield_to_the_rest();
            reqwest::blocking::Client::builder().build()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("making the OTLP HTTP client panicked"))?
        .context("making the OTLP HTTP client")?;
        Ok(Self {
            client,
            settings,
            resource: EncodedResource::default(),
            buffer: Mutex::default(),
            warned: Mutex::new(None),
            yielding: AtomicBool::new(false),
        })
    }

    fn send(&self, spans: &[SpanData]) -> OTelSdkResult {
        if !self.yielding.swap(true, Ordering::Relaxed) {
            // The batch processor's thread, which alone calls this.
            yield_to_the_rest();
        }
        if spans.is_empty() {
            return Ok(());
        }
        let mut buffer = std::mem::take(&mut *lock(&self.buffer));
        buffer.clear();
        encode_request(&self.resource, spans, &mut buffer);
        let result = if self.settings.gzip {
            gzip(&buffer)
                .map_err(|err| err.to_string())
                .and_then(|body| self.post(&Bytes::from(body)))
        } else {
            let body = Bytes::from(std::mem::take(&mut buffer));
            let result = self.post(&body);
            // The client has let go of the body by now, mostly: then it is the next buffer.
            if let Ok(body) = body.try_into_mut() {
                buffer = body.into();
            }
            result
        };
        *lock(&self.buffer) = buffer;
        if let Err(reason) = &result {
            self.warn(spans.len(), reason);
        }
        result.map_err(OTelSdkError::InternalFailure)
    }

    /// Posts `body`, retrying while the collector is busy or unreachable and time is left.
    fn post(&self, body: &Bytes) -> Result<(), String> {
        let deadline = Instant::now() + self.settings.timeout;
        let mut wait = FIRST_RETRY;
        for attempt in 0..=RETRIES {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut request = self
                .client
                .post(self.settings.endpoint.clone())
                .headers(self.settings.headers.clone())
                .header(CONTENT_TYPE, "application/x-protobuf")
                .timeout(remaining)
                .body(body.clone());
            if self.settings.gzip {
                request = request.header(CONTENT_ENCODING, "gzip");
            }
            let (reason, retry_after) = match request.send() {
                Ok(response) if response.status().is_success() => {
                    // Read to its end, or the connection is closed instead of kept for the
                    // next export (a new connection for every batch).
                    let _ =
                        std::io::copy(&mut response.take(MAX_REPLY_BYTES), &mut std::io::sink());
                    return Ok(());
                }
                Ok(response) => {
                    let status = response.status();
                    let reason = format!("the collector answered {status}");
                    if !matches!(
                        status,
                        StatusCode::TOO_MANY_REQUESTS
                            | StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    ) {
                        return Err(reason);
                    }
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.trim().parse().ok())
                        .map(Duration::from_secs);
                    (reason, retry_after)
                }
                Err(err) if err.is_connect() || err.is_timeout() => (
                    format!("the collector could not be reached ({})", error_text(err)),
                    None,
                ),
                Err(err) => return Err(format!("sending failed ({})", error_text(err))),
            };
            let pause = retry_after.unwrap_or(wait);
            if attempt == RETRIES || Instant::now() + pause >= deadline {
                return Err(reason);
            }
            std::thread::sleep(pause);
            wait *= 2;
        }
        unreachable!("the last attempt returns")
    }

    fn warn(&self, spans: usize, reason: &str) {
        let mut warned = lock(&self.warned);
        if warned.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        *warned = Some(Instant::now());
        tracing::warn!(
            endpoint = %self.settings.endpoint_for_logs(),
            spans,
            "exporting spans failed: {reason}; they are dropped (said at most once a minute)"
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// An error and its causes, without the URL (which may carry credentials).
fn error_text(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Lowers the calling thread's priority (nice 10): exporting spans yields the CPU to the work
/// they describe. On a saturated machine the export waits, and spans beyond the batch
/// processor's queue (`OTEL_BSP_MAX_QUEUE_SIZE`, 2,048) are dropped rather than requests slowed.
/// Threads it starts afterwards inherit the priority.
#[allow(unsafe_code)]
fn yield_to_the_rest() {
    let thread = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority only reads its integer arguments; on Linux `PRIO_PROCESS` with a
    // thread id changes that thread alone.
    let failed = unsafe {
        nix::libc::setpriority(
            nix::libc::PRIO_PROCESS,
            nix::libc::id_t::try_from(thread).unwrap_or_default(),
            10,
        )
    } != 0;
    if failed {
        tracing::debug!("could not lower the span exporter's priority");
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

impl SpanExporter for HttpSpanExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        // The batch processor's thread waits for the result anyway: the work is done here.
        std::future::ready(self.send(&batch))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use axum::extract::ConnectInfo;
    use axum::http::HeaderMap as AxumHeaders;
    use axum::routing::post;
    use opentelemetry::{InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    use super::*;
    use crate::otlp::spans::tests::span;

    /// What the collector received: each request's headers, body and the client's address.
    type Received = Arc<Mutex<Vec<(AxumHeaders, Bytes, SocketAddr)>>>;

    /// A collector on loopback answering `busy` times 503, then 200 (or `status` for good),
    /// with a reply as real collectors give (an empty partial success).
    fn collector(busy: usize, status: StatusCode) -> (tokio::runtime::Runtime, String, Received) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let received = Received::default();
        let busy = Arc::new(AtomicUsize::new(busy));
        let kept = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      headers: AxumHeaders,
                      body: Bytes| async move {
                    if busy.load(Ordering::SeqCst) > 0 {
                        busy.fetch_sub(1, Ordering::SeqCst);
                        return (StatusCode::SERVICE_UNAVAILABLE, axum::body::Body::empty());
                    }
                    kept.lock().unwrap().push((headers, body, peer));
                    // The reply's body comes a moment after its head, as it may from a
                    // collector: a client that does not read it cannot use the connection again.
                    let reply = futures::stream::once(async {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        Ok::<_, std::convert::Infallible>(Bytes::from_static(b"\x0a\x00"))
                    });
                    (status, axum::body::Body::from_stream(reply))
                },
            ),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        (runtime, endpoint, received)
    }

    #[test]
    fn a_batch_arrives_compressed_with_its_headers_after_the_collector_was_busy() {
        let (_runtime, endpoint, received) = collector(1, StatusCode::OK);
        let settings = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=t1"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ])
        .unwrap();
        let mut exporter = HttpSpanExporter::new(settings).unwrap();
        exporter.set_resource(&Resource::builder_empty().with_service_name("svc").build());
        let scope = InstrumentationScope::builder("autopilot").build();
        let spans = [span(
            "POST /hooks/{token}",
            &scope,
            vec![KeyValue::new("k", "v")],
        )];
        exporter.send(&spans).expect("sent after one retry");
        let received = received.lock().unwrap();
        assert_eq!(received.len(), 1, "the 503 was retried once");
        let (headers, body, _) = &received[0];
        assert_eq!(headers["x-tenant"], "t1");
        assert_eq!(headers["content-encoding"], "gzip");
        assert_eq!(headers["content-type"], "application/x-protobuf");
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(body.as_ref())
            .read_to_end(&mut plain)
            .unwrap();
        let request = ExportTraceServiceRequest::decode(plain.as_slice()).unwrap();
        let scope_spans = &request.resource_spans[0].scope_spans[0];
        assert_eq!(scope_spans.spans[0].name, "POST /hooks/{token}");
        assert_eq!(scope_spans.scope.as_ref().unwrap().name, "autopilot");
    }

    #[test]
    fn batches_go_one_after_another_over_one_connection() {
        let (_runtime, endpoint, received) = collector(0, StatusCode::OK);
        let settings = traces(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).unwrap();
        let exporter = HttpSpanExporter::new(settings).unwrap();
        let scope = InstrumentationScope::builder("autopilot").build();
        // Larger batches first: each request must carry its own spans, not a longer one's rest.
        for count in [3, 2, 1] {
            let spans: Vec<SpanData> = (0..count)
                .map(|i| span(format!("batch {count} span {i}"), &scope, Vec::new()))
                .collect();
            exporter.send(&spans).expect("sent");
        }
        let received = received.lock().unwrap();
        let names: Vec<Vec<String>> = received
            .iter()
            .map(|(_, body, _)| {
                let request = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
                request.resource_spans[0].scope_spans[0]
                    .spans
                    .iter()
                    .map(|span| span.name.clone())
                    .collect()
            })
            .collect();
        assert_eq!(
            names,
            [
                vec!["batch 3 span 0", "batch 3 span 1", "batch 3 span 2"],
                vec!["batch 2 span 0", "batch 2 span 1"],
                vec!["batch 1 span 0"],
            ]
        );
        let peers: Vec<SocketAddr> = received.iter().map(|(_, _, peer)| *peer).collect();
        assert!(
            peers.iter().all(|peer| *peer == peers[0]),
            "a connection each: {peers:?}"
        );
    }

    #[test]
    fn a_refused_batch_is_not_retried_and_the_error_names_the_answer() {
        let (_runtime, endpoint, received) = collector(0, StatusCode::BAD_REQUEST);
        let settings = traces(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).unwrap();
        let exporter = HttpSpanExporter::new(settings).unwrap();
        let scope = InstrumentationScope::builder("autopilot").build();
        let err = exporter
            .send(&[span("x", &scope, Vec::new())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("400"), "{err}");
        assert_eq!(received.lock().unwrap().len(), 1);
        // Nobody listening: unreachable, retried until the attempts run out, then an error.
        drop(received);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
        let settings = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{address}")),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
        ])
        .unwrap();
        let exporter = HttpSpanExporter::new(settings).unwrap();
        let err = exporter
            .send(&[span("x", &scope, Vec::new())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("could not be reached"), "{err}");
        assert!(
            !err.contains("/v1/traces"),
            "the URL stays out of logs: {err}"
        );
    }

    fn traces(vars: &[(&str, &str)]) -> anyhow::Result<HttpSettings> {
        HttpSettings::traces(|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.to_string())
        })
    }

    #[test]
    fn the_general_endpoint_gets_the_traces_path_and_the_traces_own_is_used_as_given() {
        let general = traces(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap();
        assert_eq!(general.endpoint.as_str(), "http://collector:4318/v1/traces");
        assert_eq!(general.timeout, DEFAULT_TIMEOUT);
        assert!(!general.gzip && general.headers.is_empty());
        let own = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://tempo.example/otlp/traces",
            ),
        ])
        .unwrap();
        assert_eq!(own.endpoint.as_str(), "https://tempo.example/otlp/traces");
        let err = traces(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("OTEL_EXPORTER_OTLP_ENDPOINT is not an http"),
            "{err}"
        );
    }

    #[test]
    fn headers_merge_decoded_and_a_bad_one_is_named_without_its_value() {
        let settings = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Basic%20abc%3D, x-tenant=a",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=traces,"),
        ])
        .unwrap();
        assert_eq!(settings.headers["authorization"], "Basic abc=");
        assert_eq!(settings.headers["x-tenant"], "traces");
        assert_eq!(settings.headers.len(), 2);
        let err = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "ok=1,secret-token-value"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_HEADERS: entry 2"), "{err}");
        assert!(!err.contains("secret-token-value"), "{err}");
    }

    #[test]
    fn timeout_and_compression_are_read_and_checked() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let settings = traces(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "30000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP"),
        ])
        .unwrap();
        assert_eq!(settings.timeout, Duration::from_millis(2500));
        assert!(settings.gzip);
        let err = traces(&[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).unwrap_err();
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_TIMEOUT=10s"),
            "{err}"
        );
        let err =
            traces(&[endpoint, ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION=zstd"),
            "{err}"
        );
    }

    #[test]
    fn logs_show_the_endpoint_without_credentials() {
        let settings = traces(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://user:pass@collector:4318/v1/traces?token=abc",
        )])
        .unwrap();
        assert_eq!(
            settings.endpoint_for_logs(),
            "https://collector:4318/v1/traces"
        );
    }
}
