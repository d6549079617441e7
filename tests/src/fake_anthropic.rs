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

/// How a received request was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A `POST /v1/messages` turn of the main conversation: took a scripted reply.
    Main,
    /// A `POST /v1/messages` helper call of the CLI (non-streaming side
    /// query, `max_tokens: 1` probe): answered with the side reply.
    Side,
    /// A `POST /v1/messages` asking the model to summarise the conversation
    /// (auto-compaction): answered with the compaction reply.
    Compaction,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// `HEAD /` or `HEAD /api/hello` (the CLI's reachability check when
    /// non-essential traffic is allowed): answered 200 with no body.
    Head,
    /// Anything else (unknown path, bad JSON): answered 404 or 400.
    Other,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub kind: RequestKind,
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// All request headers, names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The JSON body (`Value::Null` when absent or not JSON).
    pub body: Value,
}

impl RecordedRequest {
    /// First header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `model` of the request body.
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    /// Names of the tools offered to the model.
    pub fn tool_names(&self) -> Vec<String> {
        self.body
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| t.get("name").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `tool_result` blocks of the last message (what the CLI sends back
    /// after running a tool).
    pub fn tool_results(&self) -> Vec<Value> {
        self.messages()
            .last()
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array)
            .map(|blocks| {
                blocks
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `messages` array of the body.
    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Every text fragment of the `system` prompt, joined with newlines.
    pub fn system_text(&self) -> String {
        match self.body.get("system") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(blocks)) => blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }
}

/// Words that open the CLI's compaction instruction (the last user message
/// of an auto-compaction request).
const COMPACTION_MARKER: &str = "Respond with TEXT ONLY";

/// Classify a `POST /v1/messages` body.
///
/// The CLI's main loop streams every turn (`"stream": true`) and sends the
/// full tool list; its helper calls ("side queries") are non-streaming and
/// usually have no tools; model and quota probes use `"max_tokens": 1`.
/// Auto-compaction goes through the main loop (streaming, same tools) but
/// its last user message carries the summary instruction. So, in order:
///
/// 1. `max_tokens == 1` → [`RequestKind::Side`];
/// 2. last user message contains `"Respond with TEXT ONLY"` →
///    [`RequestKind::Compaction`];
/// 3. `stream == true` → [`RequestKind::Main`];
/// 4. non-streaming with a non-empty `tools` array (the CLI's non-streaming
///    fallback of a main turn) → [`RequestKind::Main`];
/// 5. otherwise → [`RequestKind::Side`].
pub fn classify(body: &Value) -> RequestKind {
    if body.get("max_tokens").and_then(Value::as_u64) == Some(1) {
        return RequestKind::Side;
    }
    if last_user_text(body).contains(COMPACTION_MARKER) {
        return RequestKind::Compaction;
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return RequestKind::Main;
    }
    let has_tools = body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    if has_tools {
        RequestKind::Main
    } else {
        RequestKind::Side
    }
}

/// All text of the last `user` message (string content or text blocks).
fn last_user_text(body: &Value) -> String {
    let last_user = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|msgs| {
            msgs.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        });
    match last_user.and_then(|m| m.get("content")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

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

/// The response for a reply; a streaming body keeps `guard` until it ends.
fn build_response(shared: &Shared, reply: &Reply, request: &Value, guard: InFlight) -> Response {
    let (blocks, stop_reason) = match &reply.body {
        ReplyBody::Error {
            status,
            error_type,
            message,
        } => return error_response(*status, error_type, message, &reply.headers),
        ReplyBody::Message {
            blocks,
            stop_reason,
        } => (blocks, stop_reason),
    };
    let model = reply
        .model
        .clone()
        .or_else(|| {
            request
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| FALLBACK_MODEL.to_owned());
    let blocks: Vec<Block> = blocks
        .iter()
        .map(|b| match b {
            Block::ToolUse {
                id: None,
                name,
                input,
            } => Block::ToolUse {
                id: Some(shared.next_id("toolu")),
                name: name.clone(),
                input: input.clone(),
            },
            other => other.clone(),
        })
        .collect();
    let stop_reason = stop_reason.clone().unwrap_or_else(|| {
        if blocks.iter().any(|b| matches!(b, Block::ToolUse { .. })) {
            "tool_use".to_owned()
        } else {
            "end_turn".to_owned()
        }
    });
    let msg = MessageParts {
        id: shared.next_id("msg"),
        model,
        blocks,
        stop_reason,
        usage: reply.usage,
    };
    let streaming = request.get("stream").and_then(Value::as_bool) == Some(true);
    if !streaming {
        let mut resp = json_response(StatusCode::OK, &msg.full_message());
        add_headers(&mut resp, &reply.headers);
        return resp;
    }

    let mut events = msg.sse_events();
    let stall_mid = reply.stall == Stall::MidStream;
    if stall_mid {
        // message_start, ping, first content_block_start and its first delta.
        events.truncate(4);
    }
    let chunk_delay = reply.chunk_delay;
    let stream =
        futures::stream::iter(events.into_iter().enumerate()).then(move |(i, ev)| async move {
            if i > 0 && !chunk_delay.is_zero() {
                tokio::time::sleep(chunk_delay).await;
            }
            Ok::<Bytes, Infallible>(Bytes::from(ev))
        });
    let tail = if stall_mid {
        futures::stream::pending().left_stream()
    } else {
        futures::stream::empty().right_stream()
    };
    // The guard lives as long as the body stream: until the last event is
    // sent or the client disconnects.
    let stream = stream.chain(tail).map(move |item| {
        let _alive = &guard;
        item
    });
    let body = Body::from_stream(stream);
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header(
            "request-id",
            format!("req_{}", msg.id.trim_start_matches("msg_")),
        )
        .body(body)
        .unwrap_or_default();
    add_headers(&mut resp, &reply.headers);
    resp
}

struct MessageParts {
    id: String,
    model: String,
    blocks: Vec<Block>,
    stop_reason: String,
    usage: Usage,
}

impl MessageParts {
    fn block_json(block: &Block) -> Value {
        match block {
            Block::Thinking(t) => {
                json!({"type": "thinking", "thinking": t, "signature": fake_signature(t)})
            }
            Block::Text(t) => json!({"type": "text", "text": t}),
            Block::ToolUse { id, name, input } => {
                json!({"type": "tool_use", "id": id, "name": name, "input": input})
            }
        }
    }

    fn full_message(&self) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.blocks.iter().map(Self::block_json).collect::<Vec<_>>(),
            "stop_reason": self.stop_reason,
            "stop_sequence": null,
            "usage": self.usage,
        })
    }

    fn sse_events(&self) -> Vec<String> {
        let mut out = Vec::new();
        let start_usage = json!({
            "input_tokens": self.usage.input_tokens,
            "cache_creation_input_tokens": self.usage.cache_creation_input_tokens,
            "cache_read_input_tokens": self.usage.cache_read_input_tokens,
            "output_tokens": self.usage.output_tokens.min(1),
        });
        out.push(sse(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": self.id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": start_usage,
                }
            }),
        ));
        out.push(sse("ping", &json!({"type": "ping"})));
        for (index, block) in self.blocks.iter().enumerate() {
            let (start, deltas) = match block {
                Block::Thinking(t) => (
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    chunk_text(t, TEXT_CHUNK_CHARS)
                        .into_iter()
                        .map(|c| json!({"type": "thinking_delta", "thinking": c}))
                        .chain(std::iter::once(
                            json!({"type": "signature_delta", "signature": fake_signature(t)}),
                        ))
                        .collect::<Vec<_>>(),
                ),
                Block::Text(t) => (
                    json!({"type": "text", "text": ""}),
                    chunk_text(t, TEXT_CHUNK_CHARS)
                        .into_iter()
                        .map(|c| json!({"type": "text_delta", "text": c}))
                        .collect(),
                ),
                Block::ToolUse { id, name, input } => {
                    let raw = input.to_string();
                    let third = raw.chars().count().div_ceil(3).max(1);
                    (
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                        std::iter::once(String::new())
                            .chain(chunk_text(&raw, third))
                            .map(|c| json!({"type": "input_json_delta", "partial_json": c}))
                            .collect(),
                    )
                }
            };
            out.push(sse(
                "content_block_start",
                &json!({"type": "content_block_start", "index": index, "content_block": start}),
            ));
            for delta in deltas {
                out.push(sse(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index, "delta": delta}),
                ));
            }
            out.push(sse(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
        out.push(sse(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": self.usage.output_tokens},
            }),
        ));
        out.push(sse("message_stop", &json!({"type": "message_stop"})));
        out
    }
}

fn sse(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// Split `text` into pieces of at most `size` characters (at least one
/// piece, possibly empty).
fn chunk_text(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars
        .chunks(size.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

fn fake_signature(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("fakesig{}", base62(mix(h), 40))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn error_response(
    status: u16,
    error_type: &str,
    message: &str,
    extra: &[(String, String)],
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(
        status,
        &json!({"type": "error", "error": {"type": error_type, "message": message}}),
    );
    add_headers(&mut resp, extra);
    resp
}

fn add_headers(resp: &mut Response, extra: &[(String, String)]) {
    for (name, value) in extra {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                resp.headers_mut().append(n, v);
            }
            _ => tracing::warn!(%name, "fake anthropic: invalid scripted header skipped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    struct RawResponse {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl RawResponse {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn json(&self) -> Value {
            serde_json::from_str(&self.body).expect("JSON body")
        }
    }

    /// One HTTP/1.1 exchange over a bare TCP socket (`Connection: close`).
    async fn raw_request(
        fake: &FakeAnthropic,
        method: &str,
        path: &str,
        body: &Value,
    ) -> RawResponse {
        let mut stream = TcpStream::connect(fake.addr()).await.expect("connect");
        let payload = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             x-api-key: test-key\r\nanthropic-version: 2023-06-01\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n{payload}",
            addr = fake.addr(),
            len = payload.len(),
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .expect("response within 10s")
            .expect("read");
        parse_response(&raw)
    }

    fn parse_response(raw: &[u8]) -> RawResponse {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of headers");
        let head = std::str::from_utf8(&raw[..split]).expect("utf-8 head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().expect("status code");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        if chunked {
            body = dechunk(&body);
        }
        RawResponse {
            status,
            headers,
            body: String::from_utf8(body).expect("utf-8 body"),
        }
    }

    fn dechunk(mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let eol = data
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size_text = std::str::from_utf8(&data[..eol]).expect("chunk size");
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .expect("hex chunk size");
            data = &data[eol + 2..];
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&data[..size]);
            assert_eq!(&data[size..size + 2], b"\r\n", "chunk terminator");
            data = &data[size + 2..];
        }
    }

    /// Split an SSE body into (event, data) pairs, checking the framing.
    fn parse_sse(body: &str) -> Vec<(String, Value)> {
        assert!(body.ends_with("\n\n"), "SSE body ends with a blank line");
        body.split("\n\n")
            .filter(|frame| !frame.is_empty())
            .map(|frame| {
                let mut lines = frame.split('\n');
                let event = lines
                    .next()
                    .and_then(|l| l.strip_prefix("event: "))
                    .expect("event line");
                let data = lines
                    .next()
                    .and_then(|l| l.strip_prefix("data: "))
                    .expect("data line");
                assert!(
                    lines.next().is_none(),
                    "one event and one data line per frame"
                );
                let data: Value = serde_json::from_str(data).expect("data is JSON");
                assert_eq!(data["type"], event, "data.type matches the event name");
                (event.to_owned(), data)
            })
            .collect()
    }

    fn main_body(model: &str) -> Value {
        json!({
            "model": model,
            "max_tokens": 32000,
            "stream": true,
            "system": [{"type": "text", "text": "You are a test."}],
            "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        })
    }

    #[tokio::test]
    async fn text_reply_is_framed_as_real_sse() {
        let fake = FakeAnthropic::start().await.expect("start");
        let text = "Hello from the fake Anthropic API, cut into several deltas.";
        fake.push(Reply::text(text).usage(Usage {
            input_tokens: 42,
            output_tokens: 7,
            cache_read_input_tokens: 3,
            cache_creation_input_tokens: 5,
        }));
        let resp = raw_request(
            &fake,
            "POST",
            "/v1/messages?beta=true",
            &main_body("claude-test-1"),
        )
        .await;
        assert_eq!(resp.status, 200);
        assert!(resp
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/event-stream")));
        let events = parse_sse(&resp.body);
        let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            &names[..3],
            ["message_start", "ping", "content_block_start"]
        );
        assert_eq!(
            &names[names.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        let deltas: Vec<&Value> = events
            .iter()
            .filter(|(e, _)| e == "content_block_delta")
            .map(|(_, d)| d)
            .collect();
        assert!(deltas.len() >= 2, "text is split into several deltas");
        let joined: String = deltas
            .iter()
            .map(|d| {
                assert_eq!(d["delta"]["type"], "text_delta");
                d["delta"]["text"].as_str().expect("text")
            })
            .collect();
        assert_eq!(joined, text);
        let start = &events[0].1["message"];
        assert_eq!(start["model"], "claude-test-1", "model echoes the request");
        assert!(start["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("msg_")));
        assert_eq!(start["usage"]["input_tokens"], 42);
        assert_eq!(start["usage"]["cache_read_input_tokens"], 3);
        assert_eq!(start["usage"]["cache_creation_input_tokens"], 5);
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 7);

        assert_eq!(fake.request_count(), 1);
        let recorded = &fake.requests()[0];
        assert_eq!(recorded.kind, RequestKind::Main);
        assert_eq!(recorded.path, "/v1/messages?beta=true");
        assert_eq!(recorded.header("X-Api-Key"), Some("test-key"));
        assert_eq!(recorded.model(), Some("claude-test-1"));
        assert_eq!(recorded.tool_names(), ["Bash"]);
    }

    #[tokio::test]
    async fn tool_use_input_arrives_as_partial_json() {
        let fake = FakeAnthropic::start().await.expect("start");
        let input = json!({"command": "echo hi > out.txt", "description": "write a file"});
        fake.push(
            Reply::tool_use("Bash", input.clone())
                .with_text_before("Running it.")
                .model("claude-sonnet-4-5-20250929"),
        );
        let resp = raw_request(&fake, "POST", "/v1/messages", &main_body("claude-x")).await;
        assert_eq!(resp.status, 200);
        let events = parse_sse(&resp.body);
        let starts: Vec<&Value> = events
            .iter()
            .filter(|(e, _)| e == "content_block_start")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(starts.len(), 2);
        assert_eq!(starts[0]["content_block"]["type"], "text");
        let tool = &starts[1]["content_block"];
        assert_eq!(tool["type"], "tool_use");
        assert_eq!(tool["name"], "Bash");
        assert_eq!(tool["input"], json!({}));
        assert!(tool["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("toolu_")));
        let partials: Vec<&str> = events
            .iter()
            .filter(|(e, d)| e == "content_block_delta" && d["index"] == 1)
            .map(|(_, d)| {
                assert_eq!(d["delta"]["type"], "input_json_delta");
                d["delta"]["partial_json"].as_str().expect("partial_json")
            })
            .collect();
        assert!(partials.iter().filter(|p| !p.is_empty()).count() >= 2);
        let rebuilt: Value = serde_json::from_str(&partials.concat()).expect("pieces join to JSON");
        assert_eq!(rebuilt, input);
        assert_eq!(
            events[0].1["message"]["model"],
            "claude-sonnet-4-5-20250929"
        );
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    }

    #[tokio::test]
    async fn error_reply_uses_status_and_error_shape() {
        let fake = FakeAnthropic::start().await.expect("start");
        fake.push(Reply::error(529, "overloaded_error", "Overloaded").header("retry-after", "2"));
        fake.push(Reply::error(429, "rate_limit_error", "Slow down"));
        let first = raw_request(&fake, "POST", "/v1/messages", &main_body("m")).await;
        assert_eq!(first.status, 529);
        assert_eq!(first.header("retry-after"), Some("2"));
        assert_eq!(
            first.json(),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
        let second = raw_request(&fake, "POST", "/v1/messages", &main_body("m")).await;
        assert_eq!(second.status, 429);
        assert_eq!(second.json()["error"]["type"], "rate_limit_error");
        // Queue empty again: the default text reply.
        let third = raw_request(&fake, "POST", "/v1/messages", &main_body("m")).await;
        assert_eq!(third.status, 200);
        assert_eq!(fake.request_count(), 3);
    }

    #[tokio::test]
    async fn side_requests_leave_the_script_alone() {
        let fake = FakeAnthropic::start().await.expect("start");
        fake.push(Reply::text("scripted answer"));

        let side = json!({"model": "claude-haiku-4-5", "max_tokens": 512,
            "messages": [{"role": "user", "content": "Pick a title"}]});
        let resp = raw_request(&fake, "POST", "/v1/messages?beta=true", &side).await;
        assert_eq!(resp.status, 200);
        let msg = resp.json();
        assert_eq!(msg["type"], "message");
        assert_eq!(msg["content"][0]["text"], "ok");
        assert_eq!(msg["model"], "claude-haiku-4-5");

        let mut probe = main_body("m");
        probe["max_tokens"] = json!(1);
        let resp = raw_request(&fake, "POST", "/v1/messages", &probe).await;
        assert_eq!(resp.status, 200);

        let resp = raw_request(
            &fake,
            "POST",
            "/v1/messages/count_tokens?beta=true",
            &main_body("m"),
        )
        .await;
        assert!(resp.json()["input_tokens"].as_u64().is_some_and(|n| n > 0));

        let resp = raw_request(&fake, "GET", "/v1/models", &Value::Null).await;
        assert_eq!(resp.status, 404);
        assert_eq!(resp.json()["error"]["type"], "not_found_error");

        let resp = raw_request(&fake, "HEAD", "/api/hello", &Value::Null).await;
        assert_eq!(resp.status, 200);

        assert_eq!(fake.pending(), 1);
        assert_eq!(fake.request_count(), 0);
        let resp = raw_request(&fake, "POST", "/v1/messages", &main_body("m")).await;
        assert!(resp.body.contains("scripted answer"));
        assert_eq!(fake.pending(), 0);

        let kinds: Vec<RequestKind> = fake.all_requests().iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                RequestKind::Side,
                RequestKind::Side,
                RequestKind::CountTokens,
                RequestKind::Other,
                RequestKind::Head,
                RequestKind::Main
            ]
        );
        assert_eq!(fake.request_count(), 1);
    }

    #[tokio::test]
    async fn stalled_reply_holds_the_request_open() {
        let fake = FakeAnthropic::start().await.expect("start");
        fake.push(Reply::stalled());
        let mut stream = TcpStream::connect(fake.addr()).await.expect("connect");
        let payload = main_body("m").to_string();
        let request = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        assert!(fake.wait_for_requests(1, Duration::from_secs(5)).await);
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
        assert!(read.is_err(), "no bytes while stalled");
        assert!(!fake.wait_for_requests(2, Duration::from_millis(50)).await);
    }

    async fn wait_idle(fake: &FakeAnthropic) -> bool {
        for _ in 0..100 {
            if fake.in_flight() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn client_disconnect_ends_stalled_replies() {
        let fake = FakeAnthropic::start().await.expect("start");
        fake.push(Reply::stalled());
        fake.push(Reply::text("never finished").stall_mid_stream());
        for expected_requests in [1, 2] {
            let mut stream = TcpStream::connect(fake.addr()).await.expect("connect");
            let payload = main_body("m").to_string();
            let request = format!(
                "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{payload}",
                payload.len()
            );
            stream.write_all(request.as_bytes()).await.expect("write");
            assert!(
                fake.wait_for_requests(expected_requests, Duration::from_secs(5))
                    .await
            );
            let mut buf = vec![0u8; 4096];
            let read =
                tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
            if expected_requests == 2 {
                let n = read
                    .expect("mid-stream stall sends a first part")
                    .expect("read");
                let head = String::from_utf8_lossy(&buf[..n]);
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            }
            assert_eq!(fake.in_flight(), 1);
            drop(stream);
            assert!(
                wait_idle(&fake).await,
                "reply dropped after the client left"
            );
        }
    }

    #[tokio::test]
    async fn delay_and_chunk_delay_slow_the_reply() {
        let fake = FakeAnthropic::start().await.expect("start");
        fake.set_default(
            Reply::text("slow")
                .delay(Duration::from_millis(100))
                .chunk_delay(Duration::from_millis(20)),
        );
        let started = std::time::Instant::now();
        let resp = raw_request(&fake, "POST", "/v1/messages", &main_body("m")).await;
        assert_eq!(resp.status, 200);
        // 100 ms before headers + 20 ms between each of the 7 events.
        assert!(started.elapsed() >= Duration::from_millis(220));
        assert_eq!(parse_sse(&resp.body).len(), 7);
    }

    #[tokio::test]
    async fn script_json_round_trip() {
        let fake = FakeAnthropic::start().await.expect("start");
        let script = r#"[
            {"text": "hi", "usage": {"input_tokens": 10, "output_tokens": 2}},
            {"tool_use": {"name": "Bash", "input": {"command": "ls"}}, "text": "Listing."},
            {"tool_use": [{"name": "Read", "input": {}}, {"name": "Write", "id": "toolu_fixed"}]},
            {"error": {"status": 529, "type": "overloaded_error", "message": "Overloaded"}},
            {"thinking": "hmm", "text": "x", "delay_ms": 5, "chunk_delay_ms": 1, "model": "m"},
            {"stall": "mid_stream", "text": "partial"},
            {"default": {"text": "fallback"}}
        ]"#;
        assert_eq!(fake.load_script(script).expect("valid script"), 6);
        assert_eq!(fake.pending(), 6);
        let queued = fake.shared.lock().queue.clone();
        assert_eq!(queued[0], Reply::text("hi").usage(Usage::new(10, 2)));
        assert_eq!(
            queued[1],
            Reply::tool_use("Bash", json!({"command": "ls"})).with_text_before("Listing.")
        );
        assert!(queued[3].is_error());
        assert_eq!(fake.shared.lock().default, Reply::text("fallback"));

        for bad in [
            r#"[{}]"#,
            r#"[{"text": "x", "error": {"status": 500, "type": "api_error", "message": "m"}}]"#,
            r#"[{"txt": "typo"}]"#,
            r#"[{"stall": "sometimes"}]"#,
        ] {
            assert!(fake.load_script(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn cost_matches_cli_prices() {
        let usage = Usage {
            input_tokens: 2500,
            output_tokens: 52,
            cache_read_input_tokens: 1000,
            cache_creation_input_tokens: 400,
        };
        let cost = expected_cost_usd("claude-opus-5-5", &usage).expect("known model");
        assert!((cost - (0.01 + 0.00104 + 0.0002 + 0.002)).abs() < 1e-12);
        assert!(expected_cost_usd("claude-unknown", &usage).is_none());
    }

    #[test]
    fn classification_rule() {
        let mut body = main_body("m");
        assert_eq!(classify(&body), RequestKind::Main);
        body["tools"] = json!([]);
        assert_eq!(
            classify(&body),
            RequestKind::Main,
            "streaming turn without tools"
        );
        body["stream"] = json!(false);
        assert_eq!(
            classify(&body),
            RequestKind::Side,
            "non-streaming, no tools"
        );
        body["tools"] = json!([{"name": "Bash"}]);
        assert_eq!(
            classify(&body),
            RequestKind::Main,
            "non-streaming fallback of a turn"
        );
        body["max_tokens"] = json!(1);
        assert_eq!(classify(&body), RequestKind::Side, "probe");
        let mut compact = main_body("m");
        compact["messages"] = json!([{"role": "user", "content": [
            {"type": "text", "text": "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools."}
        ]}]);
        assert_eq!(classify(&compact), RequestKind::Compaction);
    }
}
