//! The memory of a job (or of a webhook that runs without one): entries its runs keep through
//! the `memory` server, read back by later runs wherever they execute.

use autopilot_proto::{JobId, RunId, WebhookId};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Whose memory an entry is in; stored as `job:<id>` or `webhook:<id>`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemoryScope {
    Job(JobId),
    Webhook(WebhookId),
}

impl MemoryScope {
    pub fn key(&self) -> String {
        match self {
            MemoryScope::Job(id) => format!("job:{id}"),
            MemoryScope::Webhook(id) => format!("webhook:{id}"),
        }
    }
}

/// One entry. `value` is left out where only keys are listed.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct MemoryItem {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub bytes: u64,
    pub updated_at: DateTime<Utc>,
    /// The run that wrote it (none when an operator did).
    pub run_id: Option<RunId>,
}

/// Which entries a listing takes, most recently written first.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum MemoryFilter {
    /// Keys starting with this (case matters); values left out.
    Prefix(String),
    /// Key or value containing this, ignoring ASCII case; values included.
    Containing(String),
}
