//! Short tasks a control plane hands to a worker of a pool and waits for: not runs (nothing is
//! queued, retried or recorded), but work that must not happen in the control plane because it
//! starts code an operator registered, such as asking a stdio MCP server for its tools. The
//! worker does it through its executor (a container on the Docker executor), without network
//! and with placeholder credentials.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::WorkerId;

/// The value every `${NAME}` placeholder of a server's settings takes in a task: a task never
/// gets a real credential.
pub const PLACEHOLDER_VALUE: &str = "autopilot-placeholder";

/// The server a task starts.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskServer {
    /// A program where runs execute (on the worker, or in the run image).
    Command {
        command: String,
        #[serde(default)]
        args: Vec<String>,
    },
    /// A dynamic server's Python source, which the worker writes to a file and starts with its
    /// Python: a syntax error or a missing import is what the server says when it fails.
    Python { code: String },
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkerTask {
    /// Start an MCP server once, `initialize` it and list its tools (every page).
    ListTools {
        server: TaskServer,
        /// Its environment, placeholders already replaced by [`PLACEHOLDER_VALUE`].
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// Start an MCP server once and call one of its tools (`invoke_server_tool`).
    CallTool {
        server: TaskServer,
        #[serde(default)]
        env: BTreeMap<String, String>,
        tool: String,
        #[serde(default)]
        arguments: serde_json::Value,
    },
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TaskReply {
    /// The `tools` of the server's `tools/list` answers, as it wrote them.
    Tools {
        worker_id: WorkerId,
        tools: Vec<serde_json::Value>,
    },
    /// The result of a `tools/call`, as the server gave it (a tool's own error included).
    Called {
        worker_id: WorkerId,
        result: serde_json::Value,
    },
    /// The task could not be done; `reason` says why, in words for the operator.
    Failed { worker_id: WorkerId, reason: String },
}
