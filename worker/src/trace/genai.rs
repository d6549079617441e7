//! What Claude did in a run, as spans: one per model turn and one per tool call, built from the
//! run's stream-json events and named after the OpenTelemetry GenAI semantic conventions
//! (`chat {model}`, `execute_tool {tool}`), children of the run's `invoke_agent` span. So a
//! trace shows the agent's steps even when the CLI's own telemetry is off.
//!
//! The CLI prints a line when a content block is complete, not when a request starts: a turn
//! is taken to start when the previous one's tool results came back (or the process started)
//! and to end at its last line. Prompts, tool inputs and outputs are never put on spans.

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

struct Turn {
    message_id: String,
    model: String,
    start: SystemTime,
    last_at: SystemTime,
    usage: Option<TokenUsage>,
    stop_reason: Option<String>,
}

struct ToolCall {
    name: String,
    start: SystemTime,
    denied: bool,
}

/// Turns a run's events into GenAI spans under `parent` (the run's `invoke_agent` span).
pub struct AgentSpans {
    parent: Context,
    next_turn_start: SystemTime,
    turn: Option<Turn>,
    tools: HashMap<String, ToolCall>,
    turns: u32,
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
        }
    }

    /// Model turns recorded so far.
    pub fn turns(&self) -> u32 {
        self.turns
    }

    /// Takes one event of the run, seen at `at`.
    pub fn event(&mut self, kind: EventKind, data: &Value, at: SystemTime) {
        let text = |key: &str| data.get(key).and_then(Value::as_str).unwrap_or_default();
        match kind {
            EventKind::AssistantText | EventKind::Thinking => {
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
                    let call = ToolCall {
                        name: text("name").to_owned(),
                        start: at,
                        denied: false,
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
                    self.record_tool(text("tool_use_id"), call, at, is_error);
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
        span.record(&self.parent);
    }

    fn record_tool(&self, id: &str, call: ToolCall, end: SystemTime, is_error: bool) {
        let mut span = tool_span(id, &call, end);
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
