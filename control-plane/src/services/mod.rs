//! Services: the one place that changes jobs and runs. The HTTP API, the scheduler, the worker
//! request handler MCP tools and webhooks all call these.

pub mod dispatch;
pub mod jobs;
pub mod runs;
pub mod webhooks;
pub mod worker_requests;
pub mod workers;
