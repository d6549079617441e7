//! The Autopilot control plane: HTTP API, MCP server, OAuth authorization server, webhook intake,
//! services, store, scheduler, and the `autopilot` binary.
//!
//! Layers, each naming only those before it:
//! domain and config → store, seal, tokens, keys, metrics → app → services → http → edges (api,
//! dashboard, mcp, oauth, hooks) and tasks (scheduler, ingest, notices) → serve.
//!
//! - **domain** ([`domain`], [`config`]): types and pure functions, no I/O.
//! - **store, seal, tokens, keys, metrics** ([`store`], [`lease`], [`seal`], [`tokens`],
//!   [`keys`], [`metrics`], [`otlp`]): where state lives, how secrets are kept, what is counted
//!   and where it is sent.
//! - **app** ([`app`]): `App`, the bottom context, built once from everything above.
//! - **services** ([`services`]): the only code that creates or changes jobs, runs and webhooks.
//! - **http** ([`http`]): what the HTTP edges share (the JSON error shape, extractors).
//! - **edges and tasks**: [`api`], [`dashboard`], [`mcp`], [`oauth`], [`hooks`] answer clients; [`scheduler`],
//!   [`ingest`] and [`notices`] run in the background. None of them names another.
//! - **serve** ([`serve`], [`executors`], [`fleet_worker`], [`telemetry`], [`hook_command`]):
//!   wires everything into a process, with its logs and traces; and `autopilot hook`, the client
//!   Claude Code's hooks call.
//!
//! `tests/layers.rs` reads these sources and fails on a name that points up or across.

// Domain and config.
pub mod config;
pub mod domain;
// Store, seal, tokens, keys, metrics.
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod otlp;
pub mod seal;
pub mod store;
pub mod tokens;
// The bottom context.
pub mod app;
// Services.
pub mod services;
// What the HTTP edges share.
pub mod http;
// Edges and background tasks.
pub mod api;
pub mod dashboard;
pub mod hooks;
pub mod ingest;
pub mod mcp;
pub mod notices;
pub mod oauth;
pub mod scheduler;
// The process.
pub mod executors;
pub mod fleet_worker;
pub mod hook_command;
pub mod serve;
pub mod telemetry;
