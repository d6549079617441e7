//! What the fake records of each request, and how it tells the main conversation's turns from
//! the CLI's side requests.

use super::*;

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
