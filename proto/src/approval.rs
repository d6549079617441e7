//! Approval gates as the control plane and the worker speak of them: the tools of a run that
//! wait for a person (in its [`crate::ClaudeSpec`]), a gated call the worker asks about, and
//! where its approval stands.

use serde::{Deserialize, Serialize};

/// The tools of a run that wait for an operator's approval on each call. They are offered to the
/// model but not pre-approved; the CLI asks the run's `approval` server
/// (`--permission-prompt-tool`), which asks the control plane through the worker.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ApprovalGate {
    /// CLI names (`Bash`, `mcp__github__merge_pull_request`), a `*` at the end matching a
    /// prefix.
    pub tools: Vec<String>,
    /// Access levels (`write`, `admin`, `dangerous`) of granted servers' tools that wait too:
    /// the control plane moves those tools into `tools` when the run is claimed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<String>,
    /// How long a call waits for a decision before it is denied.
    pub timeout_secs: u64,
}

/// A tool call asking for approval, as the CLI gave it to the run's `approval` server.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ApprovalAsk {
    /// The CLI's name of the tool.
    pub tool: String,
    /// The call's input, as the model wrote it.
    pub input: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
}

/// Where a tool call's approval stands.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum ApprovalAnswer {
    /// Asked; nobody has decided yet. Ask again with the id.
    Pending { approval_id: String },
    /// The call may go ahead.
    Allow { approval_id: String, by: String },
    /// The call is refused (denied, timed out, or the run stops); `message` is for the model.
    Deny {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_id: Option<String>,
        message: String,
    },
}
