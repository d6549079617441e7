//! Parsing the CLI's `--output-format stream-json` lines into run events, while keeping the
//! running totals a worker needs: token usage, an estimated cost, models, the final result.

use std::collections::{BTreeSet, HashMap, HashSet};

use autopilot_proto::{ApiError, EventKind, RunOutcome, TokenUsage};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::pricing;

/// Longest string kept in an event; longer ones are cut with a note of how much was dropped.
pub const MAX_EVENT_STRING_BYTES: usize = 64 * 1024;

/// Accumulates what a run's output says about the run.
#[derive(Debug, Default)]
pub struct StreamParser {
    seen_message_ids: HashSet<String>,
    /// Whether the CLI sends raw stream events (`--include-partial-messages`): then a message's
    /// usage is taken from its `message_delta`, complete, instead of its first line.
    streaming: bool,
    /// Messages being streamed: model and usage as of their `message_start`.
    streamed: HashMap<String, (String, TokenUsage)>,
    usage: TokenUsage,
    estimated_cost_usd: f64,
    models: BTreeSet<String>,
    result: Option<Map<String, Value>>,
    /// The last `API Error` text seen, to classify failures.
    last_error_text: Option<String>,
}

impl StreamParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cost so far, estimated from each model message's usage.
    pub fn estimated_cost_usd(&self) -> f64 {
        self.estimated_cost_usd
    }

    /// Turns one stdout line into events.
    pub fn parse_stdout(&mut self, line: &str) -> Vec<(EventKind, Value)> {
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else {
            return vec![(EventKind::Output, json!({ "text": cap_string(line) }))];
        };
        let line_type = object
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let subtype = object
            .get("subtype")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match (line_type, subtype) {
            ("system", "init") => {
                if let Some(model) = object.get("model").and_then(Value::as_str) {
                    self.models.insert(model.to_owned());
                }
                vec![(EventKind::SystemInit, capped(Value::Object(object)))]
            }
            ("system", "permission_denied") => {
                vec![(EventKind::PermissionDenied, capped(Value::Object(object)))]
            }
            // "requesting" and the like: nothing a transcript needs.
            ("system", "status") => Vec::new(),
            ("stream_event", _) => self.stream_event(&object),
            ("assistant", _) => self.assistant_events(&object),
            ("user", _) => user_events(&object),
            ("result", _) => self.result_events(object),
            _ => vec![(EventKind::Output, capped(Value::Object(object)))],
        }
    }

    fn assistant_events(&mut self, object: &Map<String, Value>) -> Vec<(EventKind, Value)> {
        let Some(message) = object.get("message").and_then(Value::as_object) else {
            return vec![(EventKind::Output, capped(Value::Object(object.clone())))];
        };
        let message_id = message
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let model = message
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut events = Vec::new();
        for block in message
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    let text = block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if text.starts_with("API Error") {
                        self.last_error_text = Some(text.to_owned());
                    }
                    events.push((
                        EventKind::AssistantText,
                        capped(json!({ "message_id": message_id, "text": text })),
                    ));
                }
                Some("thinking") => {
                    let thinking = block
                        .get("thinking")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    events.push((
                        EventKind::Thinking,
                        capped(json!({ "message_id": message_id, "text": thinking })),
                    ));
                }
                Some("tool_use") => events.push((
                    EventKind::ToolUse,
                    capped(json!({
                        "id": block.get("id"),
                        "name": block.get("name"),
                        "input": block.get("input"),
                    })),
                )),
                _ => events.push((EventKind::Output, capped(block.clone()))),
            }
        }
        // The CLI repeats a message's usage on every line of that message: count it once.
        // Streamed messages count theirs at their `message_delta`, where it is complete.
        let usage = message
            .get("usage")
            .filter(|_| !message_id.is_empty() && !self.streaming);
        if let Some(usage) = usage {
            let usage = read_usage(usage);
            let stop_reason = message.get("stop_reason").and_then(Value::as_str);
            events.extend(self.count_usage(message_id, model, usage, stop_reason));
        }
        events
    }

    /// A raw stream event: `message_start` notes the message's model and input usage,
    /// `message_delta` completes its usage and gives its stop reason (one `usage` event). The
    /// deltas themselves reach the transcript through the message's own lines.
    fn stream_event(&mut self, object: &Map<String, Value>) -> Vec<(EventKind, Value)> {
        self.streaming = true;
        let Some(event) = object.get("event") else {
            return Vec::new();
        };
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let message = event.get("message");
                let field = |key: &str| {
                    message
                        .and_then(|m| m.get(key))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let usage = message
                    .and_then(|m| m.get("usage"))
                    .map(read_usage)
                    .unwrap_or_default();
                let id = field("id");
                if !id.is_empty() {
                    self.streamed.insert(id, (field("model"), usage));
                }
                Vec::new()
            }
            Some("message_delta") => {
                let message_id = object
                    .get("api_message_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let Some((model, mut usage)) = self.streamed.remove(&message_id) else {
                    return Vec::new();
                };
                if let Some(delta_usage) = event.get("usage") {
                    update_usage(&mut usage, delta_usage);
                }
                let stop_reason = event
                    .get("delta")
                    .and_then(|delta| delta.get("stop_reason"))
                    .and_then(Value::as_str);
                self.count_usage(message_id, model, usage, stop_reason)
            }
            _ => Vec::new(),
        }
    }

    /// Adds one model message's usage to the totals, once per message; its `usage` event.
    fn count_usage(
        &mut self,
        message_id: String,
        model: String,
        usage: TokenUsage,
        stop_reason: Option<&str>,
    ) -> Vec<(EventKind, Value)> {
        if !self.seen_message_ids.insert(message_id.clone()) {
            return Vec::new();
        }
        self.usage.add(&usage);
        if !model.is_empty() && model != "<synthetic>" {
            self.models.insert(model.clone());
            self.estimated_cost_usd += pricing::cost_usd(&model, &usage);
        }
        let mut data =
            json!({ "message_id": message_id, "model": model, "usage": usage_json(&usage) });
        if let Some(reason) = stop_reason {
            data["stop_reason"] = json!(reason);
        }
        vec![(EventKind::Usage, capped(data))]
    }

    fn result_events(&mut self, object: Map<String, Value>) -> Vec<(EventKind, Value)> {
        // Denials were reported as they happened (`system/permission_denied`); the result line
        // only lists them again.
        let mut events = Vec::new();
        if let Some(text) = object.get("result").and_then(Value::as_str) {
            if text.starts_with("API Error") {
                self.last_error_text = Some(text.to_owned());
            }
        }
        events.push((EventKind::Result, capped(Value::Object(object.clone()))));
        self.result = Some(object);
        events
    }

    /// The outcome as far as the output tells it; the worker adds exit code and stop reason.
    pub fn outcome(&self) -> RunOutcome {
        let mut outcome = RunOutcome {
            usage: self.usage,
            models: self.models.iter().cloned().collect(),
            ..Default::default()
        };
        let Some(result) = &self.result else {
            if self.usage != TokenUsage::default() {
                outcome.cost_usd = Some(self.estimated_cost_usd);
            }
            outcome.transient = self
                .last_error_text
                .as_deref()
                .is_some_and(is_transient_api_error);
            outcome.error = self.last_error_text.clone();
            classify_api_error(&mut outcome, None);
            return outcome;
        };
        outcome.is_error = result
            .get("is_error")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let text = result
            .get("result")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if outcome.is_error {
            // `error_max_turns` and friends carry `errors` instead of a `result` text.
            let errors: Vec<&str> = result
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            outcome.error = text
                .clone()
                .or_else(|| (!errors.is_empty()).then(|| errors.join("; ")))
                .or_else(|| {
                    let subtype = result
                        .get("subtype")
                        .and_then(Value::as_str)
                        .unwrap_or("error");
                    Some(format!("the CLI reported `{subtype}`"))
                });
        }
        outcome.result = text;
        outcome.cost_usd = result.get("total_cost_usd").and_then(Value::as_f64);
        outcome.num_turns = result
            .get("num_turns")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok());
        if let Some(usage) = result.get("usage") {
            outcome.usage = read_usage(usage);
        }
        if let Some(model_usage) = result.get("modelUsage").and_then(Value::as_object) {
            outcome.models = model_usage
                .keys()
                .cloned()
                .chain(outcome.models)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
        }
        outcome.permission_denials = result
            .get("permission_denials")
            .and_then(Value::as_array)
            .map_or(0, |denials| {
                u32::try_from(denials.len()).unwrap_or(u32::MAX)
            });
        let api_status = result.get("api_error_status").and_then(Value::as_u64);
        let error_text = outcome.error.as_deref().or(self.last_error_text.as_deref());
        outcome.transient = outcome.is_error
            && match api_status {
                Some(status) => status == 408 || status == 429 || status >= 500,
                None => error_text.is_some_and(is_transient_api_error),
            };
        if outcome.is_error {
            if outcome.error.is_none() {
                outcome.error = self.last_error_text.clone();
            }
            classify_api_error(&mut outcome, api_status);
        }
        outcome
    }

    /// Whether the CLI wrote its final `result` line.
    pub fn has_result(&self) -> bool {
        self.result.is_some()
    }
}

/// Stderr lines become events as they are.
pub fn stderr_event(line: &str) -> (EventKind, Value) {
    (EventKind::Stderr, json!({ "text": cap_string(line) }))
}

fn user_events(object: &Map<String, Value>) -> Vec<(EventKind, Value)> {
    let content = object
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array);
    let mut events = Vec::new();
    for block in content.into_iter().flatten() {
        if block.get("type").and_then(Value::as_str) == Some("tool_result") {
            events.push((
                EventKind::ToolResult,
                capped(json!({
                    "tool_use_id": block.get("tool_use_id"),
                    "content": block.get("content"),
                    "is_error": block.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                })),
            ));
        }
    }
    if events.is_empty() {
        events.push((EventKind::Output, capped(Value::Object(object.clone()))));
    }
    events
}

/// Names the model API failure that ended a run, from the API's status when the CLI gave it,
/// else from the error text; a subscription's usage limit (`… usage limit reached|<reset, Unix
/// seconds>`) is worth a retry at its reset.
fn classify_api_error(outcome: &mut RunOutcome, api_status: Option<u64>) {
    let text = outcome
        .error
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if text.contains("usage limit") || text.contains("limit reached") {
        outcome.api_error = Some(ApiError::UsageLimit);
        outcome.transient = true;
        // The reset follows a `|`, in Unix seconds; whatever comes after the digits (the end of
        // an API error's JSON) is not part of it.
        outcome.retry_at = text
            .split_once("limit reached|")
            .map(|(_, tail)| tail)
            .map(|tail| {
                tail.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|digits| digits.parse::<i64>().ok())
            .and_then(|secs| DateTime::<Utc>::from_timestamp(secs, 0));
        return;
    }
    outcome.api_error = match api_status {
        Some(429) => Some(ApiError::RateLimited),
        Some(529) => Some(ApiError::Overloaded),
        Some(status) if status >= 500 || status == 408 => Some(ApiError::Server),
        Some(_) => None,
        None if !outcome.transient => None,
        None if text.contains("429")
            || text.contains("rate limit")
            || text.contains("rate_limit") =>
        {
            Some(ApiError::RateLimited)
        }
        None if text.contains("529") || text.contains("overloaded") => Some(ApiError::Overloaded),
        None => Some(ApiError::Server),
    };
}

/// API failures worth a retry: overloaded, rate limited, server errors, dropped connections.
pub fn is_transient_api_error(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [
        "529",
        "overloaded",
        "429",
        "rate limit",
        "rate_limit",
        "500",
        "502",
        "503",
        "504",
        "internal server error",
        "connection error",
        "timed out",
        "timeout",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// A `usage` object of the Messages API (as the CLI and the API write it); absent counts are 0.
fn read_usage(usage: &Value) -> TokenUsage {
    let mut read = TokenUsage::default();
    update_usage(&mut read, usage);
    read
}

/// Replaces the counts a Messages API `usage` object gives (`message_start` and
/// `message_delta` give a message's totals so far), keeping those it leaves out.
pub fn update_usage(usage: &mut TokenUsage, api_usage: &Value) {
    let count = |key: &str| api_usage.get(key).and_then(Value::as_u64);
    if let Some(n) = count("input_tokens") {
        usage.input_tokens = n;
    }
    if let Some(n) = count("output_tokens") {
        usage.output_tokens = n;
    }
    if let Some(n) = count("cache_read_input_tokens") {
        usage.cache_read_tokens = n;
    }
    if let Some(n) = count("cache_creation_input_tokens") {
        usage.cache_write_tokens = n;
    }
}

/// Token usage as run events and lifecycle steps carry it.
pub fn usage_json(usage: &TokenUsage) -> Value {
    json!({
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    })
}

/// The usage [`usage_json`] wrote; absent counts are 0.
pub fn usage_from_json(usage: &Value) -> TokenUsage {
    let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    TokenUsage {
        input_tokens: count("input_tokens"),
        output_tokens: count("output_tokens"),
        cache_read_tokens: count("cache_read_tokens"),
        cache_write_tokens: count("cache_write_tokens"),
    }
}

fn cap_string(text: &str) -> String {
    if text.len() <= MAX_EVENT_STRING_BYTES {
        return text.to_owned();
    }
    let mut cut = MAX_EVENT_STRING_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}…[{} more bytes not kept]",
        &text[..cut],
        text.len() - cut
    )
}

/// Cuts every long string inside `value`.
fn capped(value: Value) -> Value {
    match value {
        Value::String(text) if text.len() > MAX_EVENT_STRING_BYTES => {
            Value::String(cap_string(&text))
        }
        Value::Array(items) => Value::Array(items.into_iter().map(capped).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, capped(v))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = r#"{"type":"system","subtype":"init","model":"claude-sonnet-4-5-20250929","tools":["Bash"],"mcp_servers":[]}
{"type":"assistant","message":{"id":"msg_1","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Let me check."}],"usage":{"input_tokens":100,"output_tokens":20,"cache_read_input_tokens":5,"cache_creation_input_tokens":7}}}
{"type":"assistant","message":{"id":"msg_1","model":"claude-sonnet-4-5-20250929","content":[{"type":"tool_use","id":"tu_1","name":"Bash","input":{"command":"ls"}}],"usage":{"input_tokens":100,"output_tokens":20,"cache_read_input_tokens":5,"cache_creation_input_tokens":7}}}
{"type":"user","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"tu_1","content":"a.txt","is_error":false}]}}
{"type":"assistant","message":{"id":"msg_2","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Done."}],"usage":{"input_tokens":150,"output_tokens":10}}}
{"type":"result","subtype":"success","is_error":false,"num_turns":2,"result":"Done.","total_cost_usd":0.0123,"usage":{"input_tokens":250,"output_tokens":30,"cache_read_input_tokens":5,"cache_creation_input_tokens":7},"modelUsage":{"claude-sonnet-4-5-20250929":{}},"permission_denials":[{"tool_name":"Write","tool_use_id":"tu_9","tool_input":{}}]}"#;

    #[test]
    fn a_session_becomes_ordered_events_and_an_outcome() {
        let mut parser = StreamParser::new();
        let kinds: Vec<EventKind> = SESSION
            .lines()
            .flat_map(|line| parser.parse_stdout(line))
            .map(|(kind, _)| kind)
            .collect();
        use EventKind::*;
        assert_eq!(
            kinds,
            [
                SystemInit,
                AssistantText,
                Usage,
                ToolUse,
                ToolResult,
                AssistantText,
                Usage,
                Result
            ]
        );
        let outcome = parser.outcome();
        assert!(!outcome.is_error);
        assert_eq!(outcome.result.as_deref(), Some("Done."));
        assert_eq!(outcome.cost_usd, Some(0.0123));
        assert_eq!(outcome.num_turns, Some(2));
        assert_eq!(outcome.usage.input_tokens, 250);
        assert_eq!(outcome.usage.cache_write_tokens, 7);
        assert_eq!(outcome.permission_denials, 1);
        assert_eq!(outcome.models, ["claude-sonnet-4-5-20250929"]);
    }

    #[test]
    fn usage_repeated_on_lines_of_one_message_is_counted_once() {
        let mut parser = StreamParser::new();
        for line in SESSION.lines().take(3) {
            parser.parse_stdout(line);
        }
        let expected = pricing::cost_usd(
            "claude-sonnet-4-5",
            &TokenUsage {
                input_tokens: 100,
                output_tokens: 20,
                cache_read_tokens: 5,
                cache_write_tokens: 7,
            },
        );
        assert!((parser.estimated_cost_usd() - expected).abs() < 1e-12);
    }

    /// With `--include-partial-messages` a message's first line reports 1 output token; its
    /// `message_delta` has the final count and the stop reason (lines as CLI 2.1 prints them).
    #[test]
    fn a_streamed_message_counts_its_final_usage_once() {
        let mut parser = StreamParser::new();
        let lines = [
            r#"{"type":"system","subtype":"status","status":"requesting"}"#,
            r#"{"type":"stream_event","event":{"message":{"content":[],"id":"msg_1","model":"claude-sonnet-4-5","usage":{"cache_creation_input_tokens":3,"cache_read_input_tokens":4,"input_tokens":100,"output_tokens":1}},"type":"message_start"}}"#,
            r#"{"type":"stream_event","event":{"delta":{"text":"ok","type":"text_delta"},"index":0,"type":"content_block_delta"},"api_message_id":"msg_1"}"#,
            r#"{"type":"assistant","message":{"content":[{"text":"ok","type":"text"}],"id":"msg_1","model":"claude-sonnet-4-5","stop_reason":null,"usage":{"input_tokens":100,"output_tokens":1}}}"#,
            r#"{"type":"stream_event","event":{"delta":{"stop_reason":"end_turn"},"type":"message_delta","usage":{"output_tokens":42}},"api_message_id":"msg_1"}"#,
            r#"{"type":"stream_event","event":{"type":"message_stop"},"api_message_id":"msg_1"}"#,
        ];
        let events: Vec<(EventKind, Value)> = lines
            .iter()
            .flat_map(|line| parser.parse_stdout(line))
            .collect();
        let kinds: Vec<EventKind> = events.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(kinds, [EventKind::AssistantText, EventKind::Usage]);
        let usage = &events[1].1;
        assert_eq!(usage["message_id"], "msg_1");
        assert_eq!(usage["stop_reason"], "end_turn");
        assert_eq!(usage["usage"]["output_tokens"], 42);
        assert_eq!(usage["usage"]["input_tokens"], 100);
        assert_eq!(usage["usage"]["cache_write_tokens"], 3);
        let expected = TokenUsage {
            input_tokens: 100,
            output_tokens: 42,
            cache_read_tokens: 4,
            cache_write_tokens: 3,
        };
        assert_eq!(parser.outcome().usage, expected);
        let cost = pricing::cost_usd("claude-sonnet-4-5", &expected);
        assert!((parser.estimated_cost_usd() - cost).abs() < 1e-12);
    }

    #[test]
    fn plain_text_and_unknown_lines_are_kept_as_output() {
        let mut parser = StreamParser::new();
        assert_eq!(parser.parse_stdout("hello")[0].0, EventKind::Output);
        assert_eq!(
            parser.parse_stdout(r#"{"type":"some_future_line"}"#)[0].0,
            EventKind::Output
        );
        assert_eq!(parser.parse_stdout("[1,2]")[0].0, EventKind::Output);
    }

    #[test]
    fn api_errors_are_classified() {
        let mut parser = StreamParser::new();
        parser.parse_stdout(r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 529 {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}"}"#);
        let outcome = parser.outcome();
        assert!(outcome.is_error && outcome.transient);
        assert!(!is_transient_api_error(
            "API Error: 400 invalid_request_error: prompt is too long"
        ));
    }

    #[test]
    fn long_strings_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_EVENT_STRING_BYTES);
        let cut = cap_string(&long);
        assert!(cut.len() < long.len() && cut.contains("more bytes not kept"));
    }

    /// Found by fuzzing (`fuzz/`, target `stream_json`): a message id of 80 KB was kept whole in
    /// the message's text and usage events; the model and stop reason were not cut either.
    #[test]
    fn ids_and_models_are_cut_like_every_other_string() {
        let long = "x".repeat(2 * MAX_EVENT_STRING_BYTES);
        let line = json!({
            "type": "assistant",
            "message": {
                "id": long,
                "model": long,
                "stop_reason": long,
                "content": [{ "type": "text", "text": "hi" }, { "type": "thinking", "thinking": "hm" }],
                "usage": { "input_tokens": 1 },
            },
        });
        let events = StreamParser::new().parse_stdout(&line.to_string());
        let kinds: Vec<EventKind> = events.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::AssistantText,
                EventKind::Thinking,
                EventKind::Usage
            ]
        );
        for (_, data) in &events {
            for key in ["message_id", "model", "stop_reason"] {
                if let Some(text) = data.get(key).and_then(Value::as_str) {
                    assert!(text.len() < MAX_EVENT_STRING_BYTES + 64, "{key} kept whole");
                }
            }
        }
    }

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/stream-json")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    fn parse_fixture(name: &str) -> (Vec<EventKind>, RunOutcome) {
        let mut parser = StreamParser::new();
        let kinds = fixture(name)
            .lines()
            .flat_map(|line| parser.parse_stdout(line))
            .map(|(kind, _)| kind)
            .collect();
        (kinds, parser.outcome())
    }

    #[test]
    fn real_cli_output_bash_tool_call() {
        let (kinds, outcome) = parse_fixture("b_bash_then_text.jsonl");
        assert!(
            kinds.contains(&EventKind::ToolUse) && kinds.contains(&EventKind::ToolResult),
            "{kinds:?}"
        );
        assert!(!outcome.is_error);
        assert_eq!(outcome.usage.input_tokens, 2500);
        assert!((outcome.cost_usd.unwrap() - 0.01104).abs() < 1e-9);
        assert_eq!(outcome.models, ["claude-opus-5-5"]);
    }

    #[test]
    fn real_cli_output_denied_tool() {
        let (kinds, outcome) = parse_fixture("d_denied_bash_dontask.jsonl");
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == EventKind::PermissionDenied)
                .count(),
            1,
            "{kinds:?}"
        );
        assert_eq!(outcome.permission_denials, 1);
        assert!(!outcome.is_error, "a denial does not fail the run");
    }

    #[test]
    fn real_cli_output_api_errors_and_limits() {
        let (_, overloaded) = parse_fixture("e_529_max_retries_0.jsonl");
        assert!(
            overloaded.is_error && overloaded.transient,
            "{overloaded:?}"
        );
        let (_, bad_request) = parse_fixture("e_400_always.jsonl");
        assert!(
            bad_request.is_error && !bad_request.transient,
            "{bad_request:?}"
        );
        let (_, max_turns) = parse_fixture("f_max_turns_1.jsonl");
        assert!(max_turns.is_error && !max_turns.transient);
        assert_eq!(overloaded.api_error, Some(ApiError::Overloaded));
        assert_eq!(bad_request.api_error, None);
        let outcome_of = |line: &str| {
            let mut parser = StreamParser::new();
            parser.parse_stdout(line);
            parser.outcome()
        };
        // A subscription's usage limit is worth a retry at its reset, whether the CLI says it
        // alone or inside an API error's JSON.
        for line in [
            r#"{"type":"result","subtype":"success","is_error":true,"result":"Claude AI usage limit reached|1767225600"}"#,
            r#"{"type":"result","subtype":"success","is_error":true,"api_error_status":429,"result":"API Error: 429 {\"error\":{\"message\":\"Claude AI usage limit reached|1767225600\"}}"}"#,
        ] {
            let limited = outcome_of(line);
            assert!(limited.transient, "{limited:?}");
            assert_eq!(limited.api_error, Some(ApiError::UsageLimit));
            assert_eq!(
                limited.retry_at.map(|at| at.timestamp()),
                Some(1_767_225_600)
            );
        }
        let rate_limited = outcome_of(
            r#"{"type":"result","subtype":"success","is_error":true,"api_error_status":429,"result":"API Error: 429 rate_limit_error"}"#,
        );
        assert_eq!(rate_limited.api_error, Some(ApiError::RateLimited));
        assert!(
            max_turns
                .error
                .as_deref()
                .unwrap_or_default()
                .contains("maximum number of turns"),
            "{max_turns:?}"
        );
    }

    #[test]
    fn every_real_cli_output_parses_without_loss() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/stream-json");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".jsonl") || name.ends_with(".requests.jsonl") {
                continue;
            }
            let mut parser = StreamParser::new();
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                // Raw stream events and status lines are read for their usage, not kept.
                let kept_apart = line.contains(r#""type":"stream_event""#)
                    || line.contains(r#""subtype":"status""#);
                assert!(
                    kept_apart || !parser.parse_stdout(line).is_empty(),
                    "{name}: a line produced no event"
                );
            }
        }
    }

    /// Bad input: whatever the CLI prints (lines of any text, JSON of any shape with the keys the
    /// parser looks at), parsing and the outcome never panic, and the totals stay finite.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn arb_json() -> impl Strategy<Value = Value> {
            let key = prop_oneof![
                Just("type"),
                Just("subtype"),
                Just("message"),
                Just("content"),
                Just("usage"),
                Just("input_tokens"),
                Just("output_tokens"),
                Just("cache_read_input_tokens"),
                Just("id"),
                Just("model"),
                Just("name"),
                Just("input"),
                Just("text"),
                Just("tool_use_id"),
                Just("is_error"),
                Just("result"),
                Just("total_cost_usd"),
                Just("num_turns"),
                Just("permission_denials"),
                Just("event"),
                Just("delta"),
                Just("stop_reason"),
                Just("modelUsage"),
                Just("mcp_servers"),
                Just("tools"),
            ];
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                prop_oneof![
                    Just("assistant"),
                    Just("user"),
                    Just("result"),
                    Just("system"),
                    Just("init"),
                    Just("stream_event"),
                    Just("message_delta"),
                    Just("tool_use"),
                    Just("tool_result"),
                    Just("text"),
                    Just("success"),
                    Just("error_max_turns"),
                ]
                .prop_map(Value::from),
                "\\PC{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::vec((key.clone(), inner), 0..6).prop_map(|pairs| {
                        Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                    }),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]
            #[test]
            fn the_parser_never_panics_on_what_the_cli_prints(
                lines in proptest::collection::vec(
                    prop_oneof![arb_json().prop_map(|value| value.to_string()), "\\PC{0,40}"],
                    0..12,
                ),
            ) {
                let mut parser = StreamParser::new();
                for line in &lines {
                    let _ = parser.parse_stdout(line);
                    let _ = stderr_event(line);
                    let _ = is_transient_api_error(line);
                }
                let _ = parser.outcome();
                prop_assert!(!parser.estimated_cost_usd().is_nan());
            }
        }
    }
}
