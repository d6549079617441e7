//! The end-to-end suite: one test binary, real components (SQLite, PostgreSQL, the real Claude
//! Code CLI against the fake Anthropic API, the `autopilot` binary itself).

mod api;
mod bus;
mod bus_jetstream;
mod claude;
mod conformance;
mod docker;
mod executor;
mod fleet;
mod fleet_docker;
mod lease;
mod mcp;
mod mcp_clients;
mod oauth;
mod process;
mod scheduler;
mod store;
mod store_webhooks;
mod webhooks;
