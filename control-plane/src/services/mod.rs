//! Services: the only code that creates or changes jobs, runs and webhooks, as functions over
//! the bottom context ([`App`](crate::app::App)). The HTTP API, the MCP tools, the webhook intake,
//! the scheduler and the event ingester all call these; none of them writes to the store itself.

pub mod approvals;
pub mod chains;
pub mod channels;
pub mod dispatch;
pub mod file_watches;
pub mod fires;
pub mod follow;
pub mod health;
pub mod hook_events;
pub mod jobs;
pub mod memory;
pub(crate) mod metrics;
pub mod oauth;
pub mod overview;
pub mod result_handlers;
pub mod rules;
pub mod runs;
pub mod sessions;
pub mod tools;
pub(crate) mod traces;
pub mod usage;
pub mod webhooks;
pub mod worker_requests;
pub mod workers;
