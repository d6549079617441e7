//! A run's events as HTML, one entry per event: the same code renders the page and each entry
//! sent live, so both read alike. Everything a run produced is escaped; assistant text and
//! thinking go through [`markdown`](super::markdown). Long inputs and outputs are cut, with a
//! link to the whole event.

use std::collections::HashMap;
use std::fmt::Write;

use autopilot_proto::{EventKind, RunEvent, RunId, TokenUsage};
use serde_json::Value;

use super::format::{count, cut, escape, escape_into, usd};
use super::markdown;

/// Bytes of a tool's input or result, or an output line, shown before "show all".
pub const SHOWN_BYTES: usize = 2048;

/// Renders events in order, remembering what later events refer to (tool names by call id).
pub struct Transcript {
    run_id: RunId,
    tool_names: HashMap<String, String>,
}

/// Renders a run's events as one HTML string (the page's transcript).
pub fn render_events(run_id: RunId, events: &[RunEvent]) -> String {
    let mut transcript = Transcript::new(run_id);
    let mut html = String::with_capacity(events.len() * 256);
    for event in events {
        transcript.render_into(&mut html, event);
    }
    html
}

fn text_of(data: &Value, key: &str) -> String {
    match data.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A tool result's content as text: the CLI gives a string or a list of content blocks.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .map(|block| match block.get("text").and_then(Value::as_str) {
                Some(text) => text.to_owned(),
                None => block.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

impl Transcript {
    pub fn new(run_id: RunId) -> Self {
        Transcript {
            run_id,
            tool_names: HashMap::new(),
        }
    }

    pub fn render(&mut self, event: &RunEvent) -> String {
        let mut html = String::with_capacity(256);
        self.render_into(&mut html, event);
        html
    }

    pub fn render_into(&mut self, html: &mut String, event: &RunEvent) {
        let seq = event.seq;
        let time = event.at.format("%H:%M:%S");
        let iso = event.at.format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let class = event.kind.as_str();
        let _ = write!(
            html,
            r#"<article class="ev ev-{class}" id="ev-{seq}" data-seq="{seq}"><time datetime="{iso}">{time}</time>"#
        );
        let data = &event.data;
        match event.kind {
            EventKind::Lifecycle => {
                html.push_str(r#"<p class="life">"#);
                escape_into(html, &lifecycle_words(data));
                html.push_str("</p>");
            }
            EventKind::SystemInit => self.system_init(html, data),
            EventKind::AssistantText => {
                html.push_str(r#"<div class="md assistant">"#);
                html.push_str(&markdown::to_html(&text_of(data, "text")));
                html.push_str("</div>");
            }
            EventKind::Thinking => {
                html.push_str(
                    r#"<details class="thinking"><summary>Thinking</summary><div class="md">"#,
                );
                html.push_str(&markdown::to_html(&text_of(data, "text")));
                html.push_str("</div></details>");
            }
            EventKind::ToolUse => {
                let name = text_of(data, "name");
                let id = text_of(data, "id");
                if !id.is_empty() {
                    self.tool_names.insert(id, name.clone());
                }
                let input = data
                    .get("input")
                    .map(|input| serde_json::to_string_pretty(input).unwrap_or_default())
                    .unwrap_or_default();
                html.push_str(r#"<details class="tool"><summary>Tool call <code>"#);
                escape_into(html, &name);
                html.push_str("</code> ");
                let compact = data.get("input").map(Value::to_string).unwrap_or_default();
                let (hint, _) = cut(&compact, 120);
                html.push_str(r#"<span class="hint">"#);
                escape_into(html, hint);
                html.push_str("</span></summary>");
                self.shown_text(html, &input, seq);
                html.push_str("</details>");
            }
            EventKind::ToolResult => {
                let is_error = data.get("is_error").and_then(Value::as_bool) == Some(true);
                let name = self.tool_names.get(&text_of(data, "tool_use_id")).cloned();
                let text = content_text(data.get("content"));
                let _ = write!(
                    html,
                    r#"<details class="result{}"><summary>{}"#,
                    if is_error { " error" } else { "" },
                    if is_error {
                        "Error from "
                    } else {
                        "Result of "
                    }
                );
                match name {
                    Some(name) => {
                        html.push_str("<code>");
                        escape_into(html, &name);
                        html.push_str("</code>");
                    }
                    None => html.push_str("a tool"),
                }
                let _ = write!(
                    html,
                    r#" <span class="hint">{} bytes</span></summary>"#,
                    count(text.len() as u64)
                );
                self.shown_text(html, &text, seq);
                html.push_str("</details>");
            }
            EventKind::Usage => usage_line(html, data),
            EventKind::Result => result_line(html, data),
            EventKind::PermissionDenied => {
                html.push_str(
                    r#"<p class="denied" role="alert"><strong>Permission denied:</strong> "#,
                );
                let tool = ["tool_name", "tool", "name"]
                    .iter()
                    .map(|key| text_of(data, key))
                    .find(|name| !name.is_empty())
                    .unwrap_or_else(|| "a tool".to_owned());
                html.push_str("<code>");
                escape_into(html, &tool);
                html.push_str("</code> is not among the tools this run was given.");
                let message = text_of(data, "message");
                if !message.is_empty() {
                    html.push(' ');
                    escape_into(html, &message);
                }
                html.push_str("</p>");
            }
            EventKind::Output | EventKind::Stderr => {
                let text = match data.get("text").and_then(Value::as_str) {
                    Some(text) => text.to_owned(),
                    None => data.to_string(),
                };
                let label = if event.kind == EventKind::Stderr {
                    "stderr"
                } else {
                    "output"
                };
                let _ = write!(html, r#"<span class="label">{label}</span>"#);
                self.shown_text(html, &text, seq);
            }
        }
        html.push_str("</article>");
    }

    fn system_init(&self, html: &mut String, data: &Value) {
        html.push_str(r#"<p class="life">Claude Code started"#);
        let model = text_of(data, "model");
        if !model.is_empty() {
            html.push_str(" · model <code>");
            escape_into(html, &model);
            html.push_str("</code>");
        }
        if let Some(tools) = data.get("tools").and_then(Value::as_array) {
            let _ = write!(html, " · {} tools", tools.len());
        }
        html.push_str("</p>");
        let servers = data.get("mcp_servers").and_then(Value::as_array);
        if let Some(servers) = servers.filter(|servers| !servers.is_empty()) {
            html.push_str(r#"<ul class="servers">"#);
            for server in servers {
                let status = text_of(server, "status");
                let _ = write!(
                    html,
                    r#"<li class="{}">"#,
                    if status == "connected" { "ok" } else { "bad" }
                );
                escape_into(html, &text_of(server, "name"));
                html.push_str(": ");
                escape_into(html, &status);
                html.push_str("</li>");
            }
            html.push_str("</ul>");
        }
    }

    /// A preformatted block of at most [`SHOWN_BYTES`], with a link to the whole event.
    fn shown_text(&self, html: &mut String, text: &str, seq: i64) {
        let (shown, was_cut) = cut(text, SHOWN_BYTES);
        html.push_str("<pre>");
        escape_into(html, shown);
        html.push_str("</pre>");
        if was_cut {
            let _ = write!(
                html,
                r#"<p class="cut">Showing {} of {} bytes. <a href="/runs/{}/events/{seq}">Show all</a></p>"#,
                count(shown.len() as u64),
                count(text.len() as u64),
                self.run_id
            );
        }
    }
}

/// A lifecycle step in plain words.
fn lifecycle_words(data: &Value) -> String {
    let step = text_of(data, "step");
    let field = |key: &str| text_of(data, key);
    let mut words = match step.as_str() {
        "queued" => format!("Queued ({})", field("trigger")),
        "claimed" => format!("Claimed by worker {}", field("worker_id")),
        "started" => "Started".to_owned(),
        "container_started" | "container" => format!("Container {} started", field("container")),
        "exited" => format!("Exited with code {}", field("exit_code")),
        "finished" => format!("Finished: {}", field("status")),
        "cancel_requested" => "Kill requested".to_owned(),
        "cancelled" => "Cancelled".to_owned(),
        "lost" => format!("Lost: {}", field("reason")),
        "retry_scheduled" => format!(
            "Retry scheduled: attempt {} in {} s",
            field("next_attempt"),
            field("delay_secs")
        ),
        "" => "Lifecycle".to_owned(),
        other => other.replace('_', " "),
    };
    // Whatever else the step says, as `key: value`.
    if let Some(object) = data.as_object() {
        let shown = [
            "step",
            "trigger",
            "worker_id",
            "container",
            "exit_code",
            "status",
            "reason",
            "next_attempt",
            "delay_secs",
        ];
        for (key, value) in object {
            if shown.contains(&key.as_str()) || value.is_null() {
                continue;
            }
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let _ = write!(words, " · {key}: {}", cut(&value, 300).0);
        }
    }
    words
}

fn usage_line(html: &mut String, data: &Value) {
    let usage = data
        .get("usage")
        .map(autopilot_worker::stream_json::usage_from_json)
        .unwrap_or_default();
    let model = text_of(data, "model");
    let cost = (!model.is_empty()).then(|| autopilot_worker::pricing::cost_usd(&model, &usage));
    html.push_str(r#"<p class="usage">Model message"#);
    if !model.is_empty() {
        html.push_str(" · ");
        escape_into(html, &model);
    }
    tokens(html, &usage);
    if let Some(cost) = cost {
        let _ = write!(html, " · ≈ {}", usd(cost));
    }
    html.push_str("</p>");
}

fn tokens(html: &mut String, usage: &TokenUsage) {
    let _ = write!(
        html,
        " · in {} · out {} · cache read {} · cache write {}",
        count(usage.input_tokens),
        count(usage.output_tokens),
        count(usage.cache_read_tokens),
        count(usage.cache_write_tokens)
    );
}

fn result_line(html: &mut String, data: &Value) {
    let is_error = data.get("is_error").and_then(Value::as_bool) == Some(true);
    let _ = write!(
        html,
        r#"<div class="final{}"><p><strong>{}</strong>"#,
        if is_error { " error" } else { "" },
        if is_error {
            "Claude Code ended with an error"
        } else {
            "Claude Code finished"
        }
    );
    if let Some(turns) = data.get("num_turns").and_then(Value::as_u64) {
        let _ = write!(html, " · {turns} turns");
    }
    if let Some(cost) = data.get("total_cost_usd").and_then(Value::as_f64) {
        let _ = write!(html, " · {}", usd(cost));
    }
    if let Some(ms) = data.get("duration_ms").and_then(Value::as_u64) {
        let _ = write!(html, " · {:.1} s", ms as f64 / 1000.0);
    }
    html.push_str("</p>");
    let text = text_of(data, "result");
    if !text.is_empty() {
        html.push_str(r#"<div class="md">"#);
        html.push_str(&markdown::to_html(&text));
        html.push_str("</div>");
    }
    html.push_str("</div>");
}

/// A run's transcript as markdown, to copy or save.
pub fn to_markdown(events: &[RunEvent]) -> String {
    let mut out = String::new();
    for event in events {
        let data = &event.data;
        match event.kind {
            EventKind::AssistantText => {
                let _ = writeln!(out, "**Claude:**\n\n{}\n", text_of(data, "text"));
            }
            EventKind::Thinking => {
                let _ = writeln!(
                    out,
                    "<details><summary>Thinking</summary>\n\n{}\n\n</details>\n",
                    text_of(data, "text")
                );
            }
            EventKind::ToolUse => {
                let input = data
                    .get("input")
                    .map(|input| serde_json::to_string_pretty(input).unwrap_or_default())
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "**Tool call `{}`:**\n\n```json\n{input}\n```\n",
                    text_of(data, "name")
                );
            }
            EventKind::ToolResult => {
                let _ = writeln!(
                    out,
                    "**Tool result:**\n\n```\n{}\n```\n",
                    content_text(data.get("content"))
                );
            }
            EventKind::PermissionDenied => {
                let _ = writeln!(
                    out,
                    "**Permission denied:** `{}`\n",
                    escape(&text_of(data, "tool_name"))
                );
            }
            EventKind::Lifecycle => {
                let _ = writeln!(out, "_{}_\n", lifecycle_words(data));
            }
            EventKind::Result => {
                let _ = writeln!(out, "**Result:**\n\n{}\n", text_of(data, "result"));
            }
            EventKind::Output | EventKind::Stderr => {
                let _ = writeln!(out, "```\n{}\n```\n", text_of(data, "text"));
            }
            EventKind::SystemInit | EventKind::Usage => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn event(seq: i64, kind: EventKind, data: Value) -> RunEvent {
        RunEvent {
            run_id: RunId::new(),
            seq,
            attempt: 1,
            at: Utc::now(),
            kind,
            data,
        }
    }

    #[test]
    fn hostile_output_is_escaped_and_long_output_is_cut() {
        let run_id = RunId::new();
        let long = "x".repeat(1 << 20);
        let html = render_events(
            run_id,
            &[
                event(
                    1,
                    EventKind::AssistantText,
                    json!({"text": "<script>alert(1)</script> [a](javascript:alert(1))"}),
                ),
                event(
                    2,
                    EventKind::ToolUse,
                    json!({"id": "t1", "name": "Bash<b>", "input": {"command": "echo <script>"}}),
                ),
                event(
                    3,
                    EventKind::ToolResult,
                    json!({"tool_use_id": "t1", "content": long, "is_error": false}),
                ),
                event(
                    4,
                    EventKind::PermissionDenied,
                    json!({"tool_name": "WebFetch"}),
                ),
            ],
        );
        assert!(
            !html.contains("<script"),
            "agent markup must never reach the page"
        );
        assert!(!html.contains("href=\"javascript"), "no link to script");
        assert!(html.contains("Bash&lt;b&gt;"));
        assert!(html.contains("Result of <code>Bash&lt;b&gt;</code>"));
        assert!(html.contains(&format!("/runs/{run_id}/events/3")));
        assert!(
            html.len() < 20_000,
            "a 1 MB result is cut: {} bytes",
            html.len()
        );
        assert!(html.contains(r#"class="denied""#));
    }
}
