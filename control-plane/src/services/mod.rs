//! Services: the one place that changes jobs and runs. The HTTP API, the scheduler, the worker
//! request handler (and later MCP and webhooks) all call these.

pub mod dispatch;
pub mod jobs;
pub mod runs;
pub mod worker_requests;
