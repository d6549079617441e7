//! What Claude did in a run, as spans: one per model turn and one per tool call, built from the
//! run's stream-json events and named after the OpenTelemetry GenAI semantic conventions
//! (`chat {model}`, `execute_tool {tool}`), children of the run's `invoke_agent` span. So a
//! trace shows the agent's steps even when the CLI's own telemetry is off.
//!
//! The CLI prints a line when a content block is complete, not when a request starts: a turn
//! is taken to start when the previous one's tool results came back (or the process started)
//! and to end at its last line.
//!
//! Prompts, the assistant's text, tool inputs and results are not put on spans, unless the run's
//! job asks for it (`trace_content`, see [`Content`]): then they are, each capped at
//! `CONTENT_BYTES`, with the values of the run's secret-named environment variables replaced.

use std::collections::HashMap;
use std::time::SystemTime;

use autopilot_proto::{EventKind, TokenUsage};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue, StringValue, Value as OtelValue};
use serde_json::Value;

use super::PastSpan;
use crate::{pricing, stream_json};

/// The model provider every Claude Code run talks to.
const PROVIDER: &str = "anthropic";

/// Most bytes of one piece of run content on a span.
const CONTENT_BYTES: usize = 4096;
/// Environment variables whose names contain one of these (in any case) hold secrets.
const SECRET_NAMES: [&str; 6] = ["KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH"];
/// Shorter values are not taken for secrets (they would match ordinary text).
const SECRET_MIN_BYTES: usize = 8;
const REDACTED: &str = "[redacted]";

/// How a run's content goes on its spans, for a job that asked for it: redacted, then capped.
pub struct Content {
    /// Values to replace, longest first (so one that contains another goes whole).
    secrets: Vec<String>,
}

impl Content {
    /// Content redacting the values of the secret-named variables of `env` (the run's).
    pub fn redacting(env: &[(String, String)]) -> Self {
        let mut secrets: Vec<String> = env
            .iter()
            .filter(|(name, value)| {
                let name = name.to_ascii_uppercase();
                value.len() >= SECRET_MIN_BYTES && SECRET_NAMES.iter().any(|s| name.contains(s))
            })
            .map(|(_, value)| value.clone())
            .collect();
        secrets.sort_by_key(|value| std::cmp::Reverse(value.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// `text` as it may go on a span.
    pub fn text(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        if text.len() > CONTENT_BYTES {
            let mut end = CONTENT_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        text
    }

    /// One message as the GenAI conventions write `gen_ai.input.messages` and
    /// `gen_ai.output.messages`: a JSON array holding `role` and one text part.
    pub fn messages(&self, role: &str, text: &str) -> String {
        serde_json::json!([{ "role": role, "parts": [{ "type": "text", "content": self.text(text) }] }])
            .to_string()
    }

    /// A tool's input or result: a string as it is, anything else as JSON.
    fn value(&self, value: Option<&Value>) -> Option<String> {
        match value? {
            Value::Null => None,
            Value::String(text) => Some(self.text(text)),
            other => Some(self.text(&other.to_string())),
        }
    }
}

struct Turn {
    message_id: String,
    model: String,
    start: SystemTime,
    last_at: SystemTime,
    usage: Option<TokenUsage>,
    stop_reason: Option<String>,
    /// The assistant's text in it (kept only with [`Content`]).
    text: String,
}

struct ToolCall {
    name: String,
    start: SystemTime,
    denied: bool,
    /// Its input, as it may go on the span (only with [`Content`]).
    input: Option<String>,
}

/// Turns a run's events into GenAI spans under `parent` (the run's `invoke_agent` span).
pub struct AgentSpans {
    parent: Context,
    next_turn_start: SystemTime,
    turn: Option<Turn>,
    tools: HashMap<String, ToolCall>,
    turns: u32,
    content: Option<Content>,
}

impl AgentSpans {
    /// `started` is when the CLI was started: the first turn begins then.
    pub fn new(parent: Context, started: SystemTime) -> Self {
        Self {
            parent,
            next_turn_start: started,
            turn: None,
            tools: HashMap::new(),
            turns: 0,
            content: None,
        }
    }

    /// Puts the run's content on the spans too (the job asked for it).
    pub fn with_content(mut self, content: Content) -> Self {
        self.content = Some(content);
        self
    }

    /// Model turns recorded so far.
    pub fn turns(&self) -> u32 {
        self.turns
    }

    /// Takes one event of the run, seen at `at`.
    pub fn event(&mut self, kind: EventKind, data: &Value, at: SystemTime) {
        let text = |key: &str| data.get(key).and_then(Value::as_str).unwrap_or_default();
        match kind {
            EventKind::AssistantText => {
                let keep = self.content.is_some();
                let turn = self.in_turn(text("message_id"), None, at);
                if keep && turn.text.len() <= CONTENT_BYTES {
                    turn.text.push_str(text("text"));
                }
            }
            EventKind::Thinking => {
                self.in_turn(text("message_id"), None, at);
            }
            EventKind::Usage => {
                let turn = self.in_turn(text("message_id"), Some(text("model")), at);
                if turn.usage.is_none() {
                    turn.usage = data.get("usage").map(stream_json::usage_from_json);
                }
                if let Some(reason) = data.get("stop_reason").and_then(Value::as_str) {
                    turn.stop_reason = Some(reason.to_owned());
                }
            }
            EventKind::ToolUse => {
                if let Some(turn) = &mut self.turn {
                    turn.last_at = at;
                }
                let id = text("id");
                if !id.is_empty() {
                    let input = self
                        .content
                        .as_ref()
                        .and_then(|content| content.value(data.get("input")));
                    let call = ToolCall {
                        name: text("name").to_owned(),
                        start: at,
                        denied: false,
                        input,
                    };
                    self.tools.insert(id.to_owned(), call);
                }
            }
            EventKind::PermissionDenied => {
                let id = text("tool_use_id");
                if let Some(call) = self.tools.get_mut(id) {
                    call.denied = true;
                }
            }
            EventKind::ToolResult => {
                self.end_turn();
                if let Some(call) = self.tools.remove(text("tool_use_id")) {
                    let is_error = data
                        .get("is_error")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let result = self
                        .content
                        .as_ref()
                        .and_then(|content| content.value(data.get("content")));
                    self.record_tool(text("tool_use_id"), call, at, is_error, result);
                }
                self.next_turn_start = at;
            }
            EventKind::Result => self.finish(at),
            _ => {}
        }
    }

    /// Ends what is still open at `at` (the run ended).
    pub fn finish(&mut self, at: SystemTime) {
        self.end_turn();
        for (id, call) in std::mem::take(&mut self.tools) {
            let mut span = tool_span(&id, &call, at);
            span.error = Some("the run ended before the tool answered".to_owned());
            span.record(&self.parent);
        }
    }

    /// The turn of `message_id`, started if it is a new one (which ends the one before).
    fn in_turn(&mut self, message_id: &str, model: Option<&str>, at: SystemTime) -> &mut Turn {
        if self
            .turn
            .as_ref()
            .is_some_and(|turn| turn.message_id != message_id)
        {
            self.end_turn();
        }
        let start = self.next_turn_start;
        let turn = self.turn.get_or_insert_with(|| Turn {
            message_id: message_id.to_owned(),
            model: String::new(),
            start,
            last_at: at,
            usage: None,
            stop_reason: None,
            text: String::new(),
        });
        turn.last_at = at;
        if let Some(model) = model.filter(|model| !model.is_empty()) {
            turn.model = model.to_owned();
        }
        turn
    }

    fn end_turn(&mut self) {
        let Some(turn) = self.turn.take() else {
            return;
        };
        self.turns += 1;
        self.next_turn_start = turn.last_at;
        // The tools it asked for run once the model's message is complete.
        for call in self.tools.values_mut() {
            call.start = call.start.max(turn.last_at);
        }
        let name = if turn.model.is_empty() {
            "chat".to_owned()
        } else {
            format!("chat {}", turn.model)
        };
        let mut span = PastSpan::new(name, turn.start, turn.last_at)
            .kind(SpanKind::Client)
            .attribute(KeyValue::new("gen_ai.operation.name", "chat"))
            .attribute(KeyValue::new("gen_ai.provider.name", PROVIDER))
            .attribute(KeyValue::new("gen_ai.system", PROVIDER));
        if !turn.message_id.is_empty() {
            span = span.attribute(KeyValue::new("gen_ai.response.id", turn.message_id));
        }
        if !turn.model.is_empty() {
            span = span
                .attribute(KeyValue::new("gen_ai.request.model", turn.model.clone()))
                .attribute(KeyValue::new("gen_ai.response.model", turn.model.clone()));
        }
        if let Some(usage) = turn.usage {
            span.attributes.extend(usage_attributes(&usage));
            if !turn.model.is_empty() && turn.model != "<synthetic>" {
                let cost = pricing::cost_usd(&turn.model, &usage);
                span = span.attribute(KeyValue::new("autopilot.cost_usd", cost));
            }
        }
        if let Some(reason) = turn.stop_reason {
            span = span.attribute(KeyValue::new(
                "gen_ai.response.finish_reasons",
                OtelValue::Array(vec![StringValue::from(reason)].into()),
            ));
        }
        if let Some(content) = self.content.as_ref().filter(|_| !turn.text.is_empty()) {
            span = span.attribute(KeyValue::new(
                "gen_ai.output.messages",
                content.messages("assistant", &turn.text),
            ));
        }
        span.record(&self.parent);
    }

    fn record_tool(
        &self,
        id: &str,
        call: ToolCall,
        end: SystemTime,
        is_error: bool,
        result: Option<String>,
    ) {
        let mut span = tool_span(id, &call, end);
        if let Some(result) = result {
            span = span.attribute(KeyValue::new("gen_ai.tool.call.result", result));
        }
        if call.denied {
            span.error = Some("the run's permissions denied this tool".to_owned());
            span = span.attribute(KeyValue::new("error.type", "permission_denied"));
        } else if is_error {
            span.error = Some("the tool reported an error".to_owned());
            span = span.attribute(KeyValue::new("error.type", "tool_error"));
        }
        span.record(&self.parent);
    }
}

fn tool_span(id: &str, call: &ToolCall, end: SystemTime) -> PastSpan {
    let mut span = PastSpan::new(format!("execute_tool {}", call.name), call.start, end)
        .attribute(KeyValue::new("gen_ai.operation.name", "execute_tool"))
        .attribute(KeyValue::new("gen_ai.tool.name", call.name.clone()))
        .attribute(KeyValue::new("gen_ai.tool.call.id", id.to_owned()))
        .attribute(KeyValue::new("autopilot.tool.denied", call.denied));
    // MCP tools are named `mcp__<server>__<tool>`.
    let server = call
        .name
        .strip_prefix("mcp__")
        .and_then(|rest| rest.split_once("__"))
        .map(|(server, _)| server.to_owned());
    let tool_type = if server.is_some() {
        "extension"
    } else {
        "function"
    };
    span = span.attribute(KeyValue::new("gen_ai.tool.type", tool_type));
    if let Some(server) = server {
        span = span.attribute(KeyValue::new("autopilot.mcp.server", server));
    }
    if let Some(input) = &call.input {
        span = span.attribute(KeyValue::new("gen_ai.tool.call.arguments", input.clone()));
    }
    span
}

/// Token counts as GenAI attributes.
pub fn usage_attributes(usage: &TokenUsage) -> Vec<KeyValue> {
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    vec![
        KeyValue::new("gen_ai.usage.input_tokens", count(usage.input_tokens)),
        KeyValue::new("gen_ai.usage.output_tokens", count(usage.output_tokens)),
        KeyValue::new(
            "gen_ai.usage.cache_read.input_tokens",
            count(usage.cache_read_tokens),
        ),
        KeyValue::new(
            "gen_ai.usage.cache_creation.input_tokens",
            count(usage.cache_write_tokens),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn content_redacts_secret_named_variables_and_nothing_else() {
        let content = Content::redacting(&env(&[
            ("ANTHROPIC_API_KEY", "sk-ant-0123456789"),
            ("github_token", "ghp_abcdefgh"),
            ("DB_PASSWORD", "hunter2"), // too short to be taken for a secret
            ("HOME", "/home/run-workspace"),
            ("SLACK_BOT_TOKEN_LONG", "ghp_abcdefgh-and-more"),
        ]));
        let text = content.text(
            "key sk-ant-0123456789, token ghp_abcdefgh, long ghp_abcdefgh-and-more, home \
             /home/run-workspace, hunter2",
        );
        assert_eq!(
            text,
            "key [redacted], token [redacted], long [redacted], home /home/run-workspace, hunter2"
        );
    }

    #[test]
    fn content_is_capped_on_a_character_boundary_and_messages_stay_json() {
        let content = Content::redacting(&[]);
        let long = "é".repeat(CONTENT_BYTES);
        let capped = content.text(&long);
        assert!(
            capped.len() <= CONTENT_BYTES + '…'.len_utf8(),
            "{}",
            capped.len()
        );
        assert!(capped.ends_with('…'));
        let messages: Value = serde_json::from_str(&content.messages("user", &long)).unwrap();
        assert_eq!(messages[0]["role"], "user");
        assert_eq!(messages[0]["parts"][0]["type"], "text");
        assert!(messages[0]["parts"][0]["content"]
            .as_str()
            .unwrap()
            .ends_with('…'));
        assert_eq!(
            content.value(Some(&serde_json::json!({ "command": "ls" }))),
            Some(r#"{"command":"ls"}"#.to_owned())
        );
        assert_eq!(content.value(Some(&Value::Null)), None);
    }
}
