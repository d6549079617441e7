//! Run events: every line the CLI prints and every lifecycle step, ordered by `(run_id, seq)`.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::RunId;

/// The kind of an event. The payload (`data`) is JSON whose shape depends on the kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A step in the run's life: queued, claimed, started, killed, exited, finished, lost, retry.
    Lifecycle,
    /// The CLI's `system/init` line: model, tools, MCP servers.
    SystemInit,
    AssistantText,
    Thinking,
    /// The model asked for a tool: `{ "id", "name", "input" }`.
    ToolUse,
    /// A tool's answer: `{ "tool_use_id", "content", "is_error" }`.
    ToolResult,
    /// Token usage of one model message.
    Usage,
    /// The CLI's final `result` line.
    Result,
    /// A tool call refused by the run's permissions.
    PermissionDenied,
    /// Any other stdout line (unknown JSON or plain text, as from a shell job).
    Output,
    Stderr,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Lifecycle,
        EventKind::SystemInit,
        EventKind::AssistantText,
        EventKind::Thinking,
        EventKind::ToolUse,
        EventKind::ToolResult,
        EventKind::Usage,
        EventKind::Result,
        EventKind::PermissionDenied,
        EventKind::Output,
        EventKind::Stderr,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Lifecycle => "lifecycle",
            EventKind::SystemInit => "system_init",
            EventKind::AssistantText => "assistant_text",
            EventKind::Thinking => "thinking",
            EventKind::ToolUse => "tool_use",
            EventKind::ToolResult => "tool_result",
            EventKind::Usage => "usage",
            EventKind::Result => "result",
            EventKind::PermissionDenied => "permission_denied",
            EventKind::Output => "output",
            EventKind::Stderr => "stderr",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown event kind `{s}`"))
    }
}

/// Who produced an event. Together with the attempt and `origin_seq` it makes an event's identity
/// for idempotent ingestion: a redelivered batch is stored once.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventOrigin {
    Worker,
    Control,
}

impl EventOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOrigin::Worker => "worker",
            EventOrigin::Control => "control",
        }
    }
}

/// An event before the store has given it its place in the run's order.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct NewRunEvent {
    pub run_id: RunId,
    pub attempt: u32,
    pub origin: EventOrigin,
    /// Position in the producer's own stream for this attempt, starting at 1.
    pub origin_seq: u64,
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub data: serde_json::Value,
}

/// A stored event. `seq` increases strictly within a run; readers resume from it.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct RunEvent {
    pub run_id: RunId,
    pub seq: i64,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub data: serde_json::Value,
}
