//! The Autopilot control plane: HTTP API, scheduler, store, services, and the `autopilot` binary.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod executors;
pub mod fleet_worker;
pub mod ingest;
pub mod lease;
pub mod mcp;
pub mod model;
pub mod notices;
pub mod oauth;
pub mod schedule;
pub mod scheduler;
pub mod seal;
pub mod serve;
pub mod services;
pub mod store;
pub mod webhooks;
