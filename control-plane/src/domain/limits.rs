//! Size limits that more than one part of the control plane enforces.

/// Longest prompt a run is given: a job's prompt or command, a quick run's prompt, a prompt
/// rendered from a webhook delivery.
pub const MAX_PROMPT_BYTES: usize = 256 * 1024;

/// Largest request body of the HTTP API and `/mcp` (webhook deliveries have their own limit).
pub const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;

/// Webhook request bodies up to this size are stored with their run; longer ones only in part.
pub const MAX_STORED_BODY_BYTES: usize = 256 * 1024;
