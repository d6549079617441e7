//! The end-to-end suite: one test binary, real components (SQLite, PostgreSQL, the real Claude
//! Code CLI against the fake Anthropic API, the `autopilot` binary itself).
//!
//! Tests that start a `TestServer` run on PostgreSQL when `TEST_DATABASE_URL` is set and on
//! SQLite otherwise; `AUTOPILOT_TEST_STORE=sqlite|postgres` picks one (`tests/run.sh` runs the
//! whole suite on PostgreSQL, then the API, MCP, OAuth and webhook tests again on SQLite).

mod api;
mod approvals;
mod blobs;
mod browser;
mod bus;
mod bus_jetstream;
mod claude;
mod compose;
mod conformance;
mod dashboard;
mod disk_full;
mod docker;
mod executor;
mod fleet;
mod fleet_docker;
mod fleet_triggers;
mod http_jobs;
mod lease;
mod mcp;
mod mcp_clients;
mod metrics;
mod oauth;
mod postgres_outage;
mod process;
mod prometheus;
mod scheduler;
mod shutdown;
mod store;
mod store_dashboard;
mod store_rules;
mod store_tools;
mod store_webhooks;
mod tools;
mod traces;
mod triggers;
mod webhooks;
