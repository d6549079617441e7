//! The model proxy: the only way a containerised Claude run reaches the model API.
//!
//! A run's container never sees the real API key. It gets a token of its own, valid while the
//! run lasts, and an `ANTHROPIC_BASE_URL` pointing here; the proxy swaps the token for the real
//! credentials and streams the answer back unchanged. Everything in a run's environment is
//! visible to its Bash and MCP servers, so this is what keeps the key out of their reach.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use std::path::Path;

use futures::StreamExt;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

mod metering;

pub use metering::Metered;
use metering::RunMeter;

/// Largest request body forwarded (a long conversation with images stays well under it).
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// Where the proxy sends a run's requests, and with which credentials.
#[derive(Clone)]
pub struct Upstream {
    /// e.g. `https://api.anthropic.com`; a path prefix is kept.
    pub base_url: String,
    /// Sent as `x-api-key` in place of the run's token.
    pub api_key: Option<String>,
    /// Sent as `Authorization: Bearer` in place of the run's token.
    pub bearer: Option<String>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What the proxy knows of a run executing now.
#[derive(Clone)]
struct RunEntry {
    upstream: Upstream,
    /// The run's span (`invoke_agent`): each upstream request is a child of it.
    trace_parent: Option<String>,
    meter: RunMeter,
}

type Registry = Arc<Mutex<HashMap<String, RunEntry>>>;

/// A running proxy. Cloning shares it.
#[derive(Clone)]
pub struct ModelProxy {
    runs: Registry,
    client: reqwest::Client,
}

/// A run's token; the proxy forgets it when this is dropped.
pub struct RunToken {
    token: String,
    runs: Registry,
    meter: RunMeter,
}

impl RunToken {
    pub fn as_str(&self) -> &str {
        &self.token
    }

    /// What the run's requests used so far, as the answers reported it.
    pub fn metered(&self) -> Metered {
        self.meter.metered()
    }
}

impl Drop for RunToken {
    fn drop(&mut self) {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.token);
    }
}

impl ModelProxy {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("a default HTTP client always builds");
        ModelProxy {
            runs: Registry::default(),
            client,
        }
    }

    /// Issues a token for one run: requests carrying it go to `upstream`, each traced under
    /// `trace_parent` (the run's span) and metered.
    pub fn register(&self, upstream: Upstream, trace_parent: Option<String>) -> RunToken {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let token = format!("autopilot-run-{token}");
        let meter = RunMeter::default();
        let entry = RunEntry {
            upstream,
            trace_parent,
            meter: meter.clone(),
        };
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), entry);
        RunToken {
            token,
            runs: Arc::clone(&self.runs),
            meter,
        }
    }

    /// Serves on `addr` until `stop` fires; returns the address bound (port 0 picks one).
    pub async fn listen(
        &self,
        addr: SocketAddr,
        stop: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        self.serve(listener, stop);
        Ok(local)
    }

    /// Serves on a Unix socket at `path` until `stop` fires.
    pub async fn listen_unix(&self, path: &Path, stop: CancellationToken) -> std::io::Result<()> {
        let listener = UnixListener::bind(path)?;
        self.serve(listener, stop);
        Ok(())
    }

    fn serve<L>(&self, listener: L, stop: CancellationToken)
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(self.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "the model proxy stopped");
            }
        });
    }

    /// The run whose token the request carries.
    fn run_for(&self, headers: &HeaderMap) -> Option<RunEntry> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let api_key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .filter(|v| runs.contains_key(*v));
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|v| runs.contains_key(*v));
        let token = api_key.or(bearer)?;
        runs.get(token).cloned()
    }
}

impl Default for ModelProxy {
    fn default() -> Self {
        Self::new()
    }
}

/// Request headers that are about this hop, or that carry credentials.
fn is_hop_or_credential(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "content-length"
            | "x-api-key"
            | "authorization"
    )
}

fn api_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "type": "error",
        "error": { "type": kind, "message": message },
    });
    (status, axum::Json(body)).into_response()
}

async fn forward(State(proxy): State<ModelProxy>, request: Request) -> Response {
    let Some(run) = proxy.run_for(request.headers()) else {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "this token is not valid here: the model proxy only serves runs that are executing now",
        );
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request body is over the model proxy's limit",
            )
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let upstream = &run.upstream;
    let url = format!("{}{path}", upstream.base_url.trim_end_matches('/'));
    let mut meter = run
        .meter
        .request(parts.method.as_str(), &path, run.trace_parent.as_deref());
    let mut outgoing = proxy.client.request(parts.method, url).body(body);
    for (name, value) in &parts.headers {
        if !is_hop_or_credential(name) && name.as_str() != autopilot_proto::TRACEPARENT_HEADER {
            outgoing = outgoing.header(name, value);
        }
    }
    // The model API sees the request as a child of the proxy's span.
    if let Some(traceparent) = meter.traceparent() {
        outgoing = outgoing.header(autopilot_proto::TRACEPARENT_HEADER, traceparent);
    }
    if let Some(key) = &upstream.api_key {
        outgoing = outgoing.header("x-api-key", key);
    }
    if let Some(token) = &upstream.bearer {
        outgoing = outgoing.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let answer = match outgoing.send().await {
        Ok(answer) => answer,
        Err(err) => {
            tracing::warn!(error = %err, "the model API could not be reached through the proxy");
            return api_error(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "the model proxy could not reach the model API",
            );
        }
    };
    meter.status(answer.status().as_u16());
    run.meter
        .answered(answer.status().as_u16(), answer.headers());
    let mut response = Response::builder().status(answer.status().as_u16());
    if let Some(headers) = response.headers_mut() {
        for (name, value) in answer.headers() {
            if !matches!(
                name.as_str(),
                "connection" | "transfer-encoding" | "content-length" | "keep-alive"
            ) {
                if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
                    headers.append(name.clone(), value);
                }
            }
        }
    }
    // The answer streams through unchanged; the meter reads its usage on the way and ends the
    // request's span when the stream ends or the client goes away.
    let body = answer.bytes_stream().inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            meter.observe(chunk);
        }
    });
    response.body(Body::from_stream(body)).unwrap_or_else(|_| {
        api_error(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "the model API answered with headers the proxy cannot pass on",
        )
    })
}
