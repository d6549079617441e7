//! What a run's `approval` server says on the run's socket (the one the `memory` server uses,
//! see [`crate::memory_wire`]): a tool call that waits for an operator's decision, and the
//! decision. The worker relays the question to the control plane and answers once it is
//! decided, so a line may wait as long as the job's approval timeout.

use serde::{Deserialize, Serialize};

/// The server's name in a run's MCP configuration: not one of the catalog's (the worker adds
/// it to runs whose job gates tools), and a name the registry refuses.
pub const SERVER: &str = "autopilot_approval";
/// Its one tool.
pub const TOOL: &str = "decide";
/// The CLI's name of that tool, for `--permission-prompt-tool`.
pub const PROMPT_TOOL: &str = "mcp__autopilot_approval__decide";
/// The settings through which the worker tells the server which tools wait for approval (a JSON
/// array of CLI names, `*` at the end matching a prefix) and how long a call may wait.
pub const TOOLS_SETTING: &str = "APPROVAL_TOOLS";
pub const TIMEOUT_SETTING: &str = "APPROVAL_TIMEOUT_SECS";

/// A tool call asking for approval.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    /// The CLI's name of the tool.
    pub tool: String,
    pub input: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
}

/// What the server writes on the socket: the run's token and the call.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketRequest {
    pub token: String,
    pub approval: Ask,
}

/// The decision.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub allow: bool,
    /// Why, in words for the model (a denial's reason, or who approved).
    pub message: String,
}

/// Whether a call of `tool` waits for approval under `patterns`.
pub fn gated(patterns: &[String], tool: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => tool.starts_with(prefix),
            None => pattern == tool,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_a_name_or_a_prefix() {
        let patterns = vec!["Bash".to_owned(), "mcp__github__merge*".to_owned()];
        assert!(gated(&patterns, "Bash"));
        assert!(!gated(&patterns, "BashOutput"));
        assert!(gated(&patterns, "mcp__github__merge_pull_request"));
        assert!(!gated(&patterns, "mcp__github__list_pulls"));
        assert_eq!(PROMPT_TOOL, format!("mcp__{SERVER}__{TOOL}"));
    }
}
