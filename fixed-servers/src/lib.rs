//! Autopilot's built-in MCP servers. Each is a subcommand of the `autopilot-servers` program
//! (`autopilot-servers email`), installed in the run image and beside the worker, and spoken to
//! over stdio by the Claude Code CLI of a run that is granted it. Their settings come from their
//! environment, where the worker has filled in the credentials the registry names.
//!
//! - [`catalog`]: what each server is and the tools it has (always built: the control plane
//!   reads it to register the fixed servers).
//! - [`listing`]: reading the tools of a `tools/list` answer (the guard's and the control
//!   plane's).
//! - [`redact`]: removing credential values from text (the worker's and the guard's).
//! - `email` (feature `servers`): send mail through SMTP.
//! - `web` (feature `servers`): fetch a URL as readable markdown, a page at a time, and search
//!   through a configured provider; private and loopback addresses refused unless allowed.
//! - `notify` (feature `servers`): post messages to named Slack, Discord, Teams or webhook
//!   channels, whose URLs and headers are secrets never shown; [`notify_message`] is the body
//!   each kind of channel takes (always built: the control plane's result handlers use it).
//! - `http` (feature `servers`): REST calls to configured hosts, each host's credentials added by
//!   the server and redacted from what comes back; private addresses refused unless allowed.
//! - `approval` (feature `servers`): not one an operator grants; the worker adds it to a run
//!   whose job gates tools, as the CLI's permission prompt tool ([`approval_wire`]).
//! - `memory` (feature `servers`): a job's small document store, reached through a socket the
//!   worker serves for the run; [`memory_wire`] is what is said on it (always built: the
//!   control plane reads it too).
//! - `outbound` (feature `servers`): what `notify` and `http` share (JSON settings read without
//!   echoing values, header checks, credential parts to redact, checked and pinned connections).
//! - `guard` (feature `servers`): `autopilot-mcp-guard`, which runs any other stdio server for a
//!   run: its settings from a file, only the granted tools, credentials kept from the model.

#[cfg(feature = "servers")]
pub mod approval;
pub mod approval_wire;
pub mod catalog;
#[cfg(feature = "servers")]
pub mod email;
#[cfg(feature = "servers")]
pub mod guard;
#[cfg(feature = "servers")]
pub mod http;
pub mod listing;
#[cfg(feature = "servers")]
pub mod memory;
pub mod memory_wire;
#[cfg(feature = "servers")]
pub mod notify;
pub mod notify_message;
#[cfg(feature = "servers")]
mod outbound;
pub mod redact;
#[cfg(feature = "servers")]
pub mod serve;
#[cfg(feature = "servers")]
pub mod web;
