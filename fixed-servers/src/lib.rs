//! Autopilot's built-in MCP servers. Each is a subcommand of the `autopilot-servers` program
//! (`autopilot-servers email`), installed in the run image and beside the worker, and spoken to
//! over stdio by the Claude Code CLI of a run that is granted it. Their settings come from their
//! environment, where the worker has filled in the credentials the registry names.
//!
//! - [`catalog`]: what each server is and the tools it has (always built: the control plane
//!   reads it to register the fixed servers).
//! - [`redact`]: removing credential values from text (the worker's and the guard's).
//! - `email` (feature `servers`): send mail through SMTP.
//! - `web` (feature `servers`): fetch a URL as readable markdown, a page at a time, and search
//!   through a configured provider; private and loopback addresses refused unless allowed.
//! - `guard` (feature `servers`): `autopilot-mcp-guard`, which runs any other stdio server for a
//!   run: its settings from a file, only the granted tools, credentials kept from the model.

pub mod catalog;
#[cfg(feature = "servers")]
pub mod email;
#[cfg(feature = "servers")]
pub mod guard;
pub mod redact;
#[cfg(feature = "servers")]
pub mod serve;
#[cfg(feature = "servers")]
pub mod web;
