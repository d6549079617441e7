//! A scriptable stand-in for the Anthropic Messages API.
//!
//! The real Claude Code CLI can be pointed at it with
//! `ANTHROPIC_BASE_URL=<base_url()>` and any `ANTHROPIC_API_KEY`. Every
//! request is recorded; requests that belong to the main conversation take
//! the next [`Reply`] from a FIFO script (or the default reply once the
//! script is empty), while side requests (small helper calls the CLI makes
//! on its own, token counting, health checks) are answered without touching
//! the script. See [`classify`] for the rule that tells them apart.
//!
//! Responses use the real wire format: `text/event-stream` with
//! `event: <type>\ndata: <json>\n\n` frames for streaming requests, a JSON
//! message otherwise, and `{"type":"error","error":{..}}` bodies with the
//! matching HTTP status for errors.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Model reported when neither the reply nor the request names one. By
/// default a reply echoes the request's `model`, like the real API; the CLI
/// prices a turn by the model it requested anyway (its default,
/// `claude-opus-5-5`, and every `--model` alias are priced), so
/// `total_cost_usd` comes out non-zero.
pub const FALLBACK_MODEL: &str = "claude-sonnet-4-5-20250929";

/// Largest request body accepted (long conversations grow quickly).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Size of the pieces a text block is cut into for `text_delta` events.
const TEXT_CHUNK_CHARS: usize = 24;

/// Token counts reported for a reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
}

impl Usage {
    /// Plain input/output counts without cache tokens.
    pub fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Usage {
            input_tokens,
            output_tokens,
            ..Usage::default()
        }
    }
}

/// Per-million-token prices (input, output, cache read, cache write) that
/// Claude Code 2.1.330 applies, measured against this fake with token
/// counts well below 200k (larger prompts may hit long-context tiers).
const CLI_PRICES: &[(&str, [f64; 4])] = &[
    ("claude-opus-5-5", [4.0, 20.0, 0.2, 5.0]),
    ("claude-sonnet-4-5-20250929", [3.0, 15.0, 0.3, 3.75]),
    ("claude-sonnet-5-5", [2.0, 10.0, 0.1, 2.5]),
    ("claude-haiku-4-5-20251001", [1.0, 5.0, 0.1, 1.25]),
    ("claude-haiku-5-5", [0.1, 0.5, 0.01, 0.125]),
];

/// What the CLI adds to `total_cost_usd` for one reply with `usage`, when
/// the request named `model` (the CLI prices by the model it asked for, not
/// the one the response reports). `None` for models not in the table.
/// Compare with a tolerance: the CLI sums floats.
pub fn expected_cost_usd(model: &str, usage: &Usage) -> Option<f64> {
    let (_, [input, output, cache_read, cache_write]) =
        CLI_PRICES.iter().find(|(name, _)| *name == model)?;
    let tokens = [
        (usage.input_tokens, input),
        (usage.output_tokens, output),
        (usage.cache_read_input_tokens, cache_read),
        (usage.cache_creation_input_tokens, cache_write),
    ];
    Some(
        tokens
            .iter()
            .map(|(count, price)| *count as f64 * *price / 1_000_000.0)
            .sum(),
    )
}

/// Usage given to replies that don't set their own.
const DEFAULT_USAGE: Usage = Usage {
    input_tokens: 100,
    output_tokens: 10,
    cache_read_input_tokens: 0,
    cache_creation_input_tokens: 0,
};

/// One content block of a scripted assistant message.
#[derive(Clone, Debug, PartialEq)]
enum Block {
    Thinking(String),
    Text(String),
    ToolUse {
        id: Option<String>,
        name: String,
        input: Value,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum ReplyBody {
    Message {
        blocks: Vec<Block>,
        stop_reason: Option<String>,
    },
    Error {
        status: u16,
        error_type: String,
        message: String,
    },
}

/// Where a stalled reply stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stall {
    #[default]
    Never,
    /// Never send the response headers.
    BeforeHeaders,
    /// Send headers, `message_start` and the start of the first block, then
    /// go silent.
    MidStream,
}

/// A scripted answer to one main-conversation request.
///
/// Built with the constructors and chained modifiers below, or deserialized
/// from JSON such as `{"text":"hi"}`,
/// `{"tool_use":{"name":"Bash","input":{"command":"ls"}},"text":"Listing."}`
/// or `{"error":{"status":529,"type":"overloaded_error","message":"Overloaded"}}`.
/// Recognised keys: `text`, `thinking`, `tool_use` (an object or an array of
/// `{name, input, id?}`), `error` (`{status, type, message}`), `stop_reason`,
/// `usage`, `model`, `delay_ms`, `chunk_delay_ms`, `stall` (`true`,
/// `"before_headers"` or `"mid_stream"`) and `headers` (extra response
/// headers, e.g. `{"retry-after":"1"}`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "ReplySpec")]
pub struct Reply {
    body: ReplyBody,
    usage: Usage,
    model: Option<String>,
    delay: Duration,
    chunk_delay: Duration,
    stall: Stall,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn with_body(body: ReplyBody) -> Self {
        Reply {
            body,
            usage: DEFAULT_USAGE,
            model: None,
            delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            stall: Stall::Never,
            headers: Vec::new(),
        }
    }

    /// One text block, `stop_reason: end_turn`.
    pub fn text(text: impl Into<String>) -> Self {
        Self::with_body(ReplyBody::Message {
            blocks: vec![Block::Text(text.into())],
            stop_reason: None,
        })
    }

    /// One `tool_use` block with a generated id, `stop_reason: tool_use`.
    pub fn tool_use(name: impl Into<String>, input: Value) -> Self {
        Self::with_body(ReplyBody::Message {
            blocks: vec![Block::ToolUse {
                id: None,
                name: name.into(),
                input,
            }],
            stop_reason: None,
        })
    }

    /// An HTTP error with the Anthropic error body, e.g.
    /// `Reply::error(529, "overloaded_error", "Overloaded")`.
    pub fn error(status: u16, error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self::with_body(ReplyBody::Error {
            status,
            error_type: error_type.into(),
            message: message.into(),
        })
    }

    /// Put a text block in front of the existing blocks (after any thinking).
    pub fn with_text_before(mut self, text: impl Into<String>) -> Self {
        if let ReplyBody::Message { blocks, .. } = &mut self.body {
            let at = blocks
                .iter()
                .take_while(|b| matches!(b, Block::Thinking(_)))
                .count();
            blocks.insert(at, Block::Text(text.into()));
        }
        self
    }

    /// Append a text block after the existing blocks.
    pub fn and_text(mut self, text: impl Into<String>) -> Self {
        if let ReplyBody::Message { blocks, .. } = &mut self.body {
            blocks.push(Block::Text(text.into()));
        }
        self
    }

    /// Append another `tool_use` block (parallel tool calls).
    pub fn and_tool_use(mut self, name: impl Into<String>, input: Value) -> Self {
        if let ReplyBody::Message { blocks, .. } = &mut self.body {
            blocks.push(Block::ToolUse {
                id: None,
                name: name.into(),
                input,
            });
        }
        self
    }

    /// Start the message with a thinking block (sent with a fake signature).
    pub fn thinking(mut self, text: impl Into<String>) -> Self {
        if let ReplyBody::Message { blocks, .. } = &mut self.body {
            blocks.insert(0, Block::Thinking(text.into()));
        }
        self
    }

    /// Override the stop reason (default: `tool_use` when the message has a
    /// tool call, `end_turn` otherwise).
    pub fn stop_reason(mut self, reason: impl Into<String>) -> Self {
        if let ReplyBody::Message { stop_reason, .. } = &mut self.body {
            *stop_reason = Some(reason.into());
        }
        self
    }

    /// Token usage reported in `message_start` / `message_delta`.
    pub fn usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// Model reported in the response (default: the model of the request).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Wait this long before sending the response headers.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Pause this long between SSE events.
    pub fn chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    /// Accept the request and never answer, until the client goes away.
    pub fn stall(mut self) -> Self {
        self.stall = Stall::BeforeHeaders;
        self
    }

    /// Start streaming (headers, `message_start`, first delta) and then go
    /// silent until the client goes away.
    pub fn stall_mid_stream(mut self) -> Self {
        self.stall = Stall::MidStream;
        self
    }

    /// Add a response header (e.g. `retry-after`, `x-should-retry`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A reply that never answers (same as `Reply::text("").stall()`).
    pub fn stalled() -> Self {
        Self::with_body(ReplyBody::Message {
            blocks: Vec::new(),
            stop_reason: None,
        })
        .stall()
    }

    /// Whether this reply is an HTTP error.
    pub fn is_error(&self) -> bool {
        matches!(self.body, ReplyBody::Error { .. })
    }
}

/// The JSON shape of a [`Reply`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplySpec {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    tool_use: Option<OneOrMany<ToolUseSpec>>,
    #[serde(default)]
    error: Option<ErrorSpec>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    chunk_delay_ms: Option<u64>,
    #[serde(default)]
    stall: Option<StallSpec>,
    #[serde(default)]
    headers: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolUseSpec {
    name: String,
    #[serde(default = "empty_object")]
    input: Value,
    #[serde(default)]
    id: Option<String>,
}

fn empty_object() -> Value {
    json!({})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorSpec {
    status: u16,
    #[serde(rename = "type")]
    error_type: String,
    message: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StallSpec {
    Flag(bool),
    Where(String),
}

impl TryFrom<ReplySpec> for Reply {
    type Error = String;

    fn try_from(spec: ReplySpec) -> Result<Self, String> {
        let stall = match spec.stall {
            None | Some(StallSpec::Flag(false)) => Stall::Never,
            Some(StallSpec::Flag(true)) => Stall::BeforeHeaders,
            Some(StallSpec::Where(w)) => match w.as_str() {
                "before_headers" => Stall::BeforeHeaders,
                "mid_stream" => Stall::MidStream,
                other => return Err(format!("unknown stall kind {other:?}")),
            },
        };
        let has_content = spec.text.is_some() || spec.thinking.is_some() || spec.tool_use.is_some();
        let body = match spec.error {
            Some(_) if has_content => {
                return Err("a reply has either `error` or message content, not both".into())
            }
            Some(e) => ReplyBody::Error {
                status: e.status,
                error_type: e.error_type,
                message: e.message,
            },
            None if !has_content && stall == Stall::Never => {
                return Err(
                    "a reply needs `text`, `thinking`, `tool_use`, `error` or `stall`".into(),
                )
            }
            None => {
                let mut blocks = Vec::new();
                blocks.extend(spec.thinking.map(Block::Thinking));
                blocks.extend(spec.text.map(Block::Text));
                let tools = match spec.tool_use {
                    None => Vec::new(),
                    Some(OneOrMany::One(t)) => vec![t],
                    Some(OneOrMany::Many(ts)) => ts,
                };
                blocks.extend(tools.into_iter().map(|t| Block::ToolUse {
                    id: t.id,
                    name: t.name,
                    input: t.input,
                }));
                ReplyBody::Message {
                    blocks,
                    stop_reason: spec.stop_reason,
                }
            }
        };
        let mut reply = Reply::with_body(body);
        reply.usage = spec.usage.unwrap_or(DEFAULT_USAGE);
        reply.model = spec.model;
        reply.delay = Duration::from_millis(spec.delay_ms.unwrap_or(0));
        reply.chunk_delay = Duration::from_millis(spec.chunk_delay_ms.unwrap_or(0));
        reply.stall = stall;
        reply.headers = spec.headers.unwrap_or_default().into_iter().collect();
        Ok(reply)
    }
}

mod requests;
mod stream;
#[cfg(test)]
mod tests;

pub use requests::{classify, RecordedRequest, RequestKind};
use stream::{build_response, error_response, json_response};

/// What the fake answers to a compaction request unless told otherwise.
const COMPACTION_SUMMARY: &str = "<analysis>\nFake analysis.\n</analysis>\n\n<summary>\n\
1. Primary Request and Intent: the user's task (summarised by the fake API).\n\
2. Current Work: continuing the task.\n</summary>";

struct ServerState {
    queue: VecDeque<Reply>,
    default: Reply,
    side: Reply,
    compaction: Reply,
    main: Vec<RecordedRequest>,
    all: Vec<RecordedRequest>,
}

struct Shared {
    state: Mutex<ServerState>,
    main_count: watch::Sender<usize>,
    ids: AtomicU64,
    in_flight: AtomicUsize,
    seed: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh id such as `msg_01…` / `toolu_01…`, unique per server.
    fn next_id(&self, prefix: &str) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        format!(
            "{prefix}_01{}",
            base62(mix(self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 22)
        )
    }
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `len` base-62 digits drawn from `x` (re-mixed whenever it runs out).
fn base62(x: u64, len: usize) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(len);
    let (mut state, mut left) = (x, x);
    for i in 0..len {
        if i % 10 == 0 {
            state = mix(state.wrapping_add(0x9e37_79b9_7f4a_7c15));
            left = state;
        }
        out.push(char::from(DIGITS[(left % 62) as usize]));
        left /= 62;
    }
    out
}

/// Counts a message reply as in flight until its response (including a
/// streamed body) is finished or dropped because the client went away.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Aborts the server task when the last handle goes away.
struct ServerGuard(tokio::task::AbortHandle);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Handle to a running fake server. Cheap to clone; the server stops
/// accepting connections when the last clone is dropped.
#[derive(Clone)]
pub struct FakeAnthropic {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _guard: Arc<ServerGuard>,
}

impl std::fmt::Debug for FakeAnthropic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAnthropic")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeAnthropic {
    /// Start on `127.0.0.1:0` (a free port).
    pub async fn start() -> std::io::Result<FakeAnthropic> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Self::start_on(listener).await
    }

    /// Start on an already bound listener.
    pub async fn start_on(listener: TcpListener) -> std::io::Result<FakeAnthropic> {
        let addr = listener.local_addr()?;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(addr.port()) << 48);
        let shared = Arc::new(Shared {
            state: Mutex::new(ServerState {
                queue: VecDeque::new(),
                default: Reply::text("ok"),
                side: Reply::text("ok").usage(Usage::new(20, 2)),
                compaction: Reply::text(COMPACTION_SUMMARY).usage(Usage::new(1000, 60)),
                main: Vec::new(),
                all: Vec::new(),
            }),
            main_count: watch::channel(0).0,
            ids: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            seed: mix(seed),
        });
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(%err, "fake anthropic server stopped");
            }
        });
        Ok(FakeAnthropic {
            shared,
            addr,
            _guard: Arc::new(ServerGuard(task.abort_handle())),
        })
    }

    /// `http://127.0.0.1:PORT`, for `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queue a reply for the next main-conversation request.
    pub fn push(&self, reply: Reply) {
        self.shared.lock().queue.push_back(reply);
    }

    /// Queue several replies.
    pub fn push_all(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.lock().queue.extend(replies);
    }

    /// Reply used for main requests once the queue is empty (initially
    /// `Reply::text("ok")`).
    pub fn set_default(&self, reply: Reply) {
        self.shared.lock().default = reply;
    }

    /// Reply used for side requests (initially `Reply::text("ok")`).
    pub fn set_side_reply(&self, reply: Reply) {
        self.shared.lock().side = reply;
    }

    /// Reply used for auto-compaction requests (initially a short
    /// `<analysis>…</analysis><summary>…</summary>` text).
    pub fn set_compaction_reply(&self, reply: Reply) {
        self.shared.lock().compaction = reply;
    }

    /// Message replies (main, side, compaction) still being answered:
    /// delayed, stalled or streaming. Drops back when the client disconnects,
    /// which makes it a handy check that a killed CLI really hung up.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// How many scripted replies have not been used yet.
    pub fn pending(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Load a script: a JSON array of replies; an element of the form
    /// `{"default": <reply>}` sets the default reply instead of queueing.
    pub fn load_script(&self, json: &str) -> Result<usize, serde_json::Error> {
        let entries: Vec<Value> = serde_json::from_str(json)?;
        let mut queued = Vec::new();
        let mut default = None;
        for entry in entries {
            match entry {
                Value::Object(mut map) if map.len() == 1 && map.contains_key("default") => {
                    let spec = map.remove("default").unwrap_or(Value::Null);
                    default = Some(serde_json::from_value::<Reply>(spec)?);
                }
                other => queued.push(serde_json::from_value::<Reply>(other)?),
            }
        }
        let count = queued.len();
        let mut state = self.shared.lock();
        state.queue.extend(queued);
        if let Some(d) = default {
            state.default = d;
        }
        Ok(count)
    }

    /// Main-conversation requests received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().main.clone()
    }

    /// Every request received (main, side, count_tokens, HEAD, unknown).
    pub fn all_requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().all.clone()
    }

    /// Number of main-conversation requests received so far.
    pub fn request_count(&self) -> usize {
        self.shared.lock().main.len()
    }

    /// Wait until at least `n` main-conversation requests have arrived.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.shared.main_count.subscribe();
        let reached = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await,
            Ok(Ok(_))
        );
        reached
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| uri.path().to_owned());
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let is_messages = uri.path() == "/v1/messages";
    let kind = match (&method, uri.path()) {
        (&Method::HEAD, "/" | "/api/hello") => RequestKind::Head,
        (&Method::POST, "/v1/messages/count_tokens") => RequestKind::CountTokens,
        (&Method::POST, "/v1/messages") => match &parsed {
            Some(v) if v.is_object() => classify(v),
            _ => RequestKind::Other,
        },
        _ => RequestKind::Other,
    };
    let recorded = RecordedRequest {
        kind,
        method: method.to_string(),
        path,
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: parsed.clone().unwrap_or(Value::Null),
    };
    tracing::debug!(?kind, method = %recorded.method, path = %recorded.path, "fake anthropic request");

    let reply = {
        let mut state = shared.lock();
        state.all.push(recorded);
        let reply = match kind {
            RequestKind::Main => {
                let reply = state
                    .queue
                    .pop_front()
                    .unwrap_or_else(|| state.default.clone());
                if let Some(last) = state.all.last().cloned() {
                    state.main.push(last);
                }
                shared.main_count.send_replace(state.main.len());
                Some(reply)
            }
            RequestKind::Side => Some(state.side.clone()),
            RequestKind::Compaction => Some(state.compaction.clone()),
            _ => None,
        };
        reply
    };

    let body = parsed.unwrap_or(Value::Null);
    match kind {
        RequestKind::Main | RequestKind::Side | RequestKind::Compaction => match reply {
            Some(reply) => {
                let guard = InFlight::new(&shared);
                respond(&shared, reply, &body, guard).await
            }
            None => error_response(500, "api_error", "no reply", &[]),
        },
        RequestKind::CountTokens => {
            let estimate = (body.to_string().len() / 4).max(1);
            json_response(StatusCode::OK, &json!({ "input_tokens": estimate }))
        }
        RequestKind::Head => Response::builder()
            .status(StatusCode::OK)
            .body(Body::empty())
            .unwrap_or_default(),
        RequestKind::Other if is_messages && method == Method::POST => error_response(
            400,
            "invalid_request_error",
            "request body is not a JSON object",
            &[],
        ),
        RequestKind::Other => error_response(
            404,
            "not_found_error",
            &format!("Not found: {method} {}", uri.path()),
            &[],
        ),
    }
}

async fn respond(shared: &Shared, reply: Reply, request: &Value, guard: InFlight) -> Response {
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.stall == Stall::BeforeHeaders {
        // Dropped by hyper when the client disconnects.
        futures::future::pending::<()>().await;
    }
    build_response(shared, &reply, request, guard)
}
