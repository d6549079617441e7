//! End-to-end harness for Autopilot: the fake Anthropic API, the real components the tests need,
//! and a builder that starts Autopilot in-process on port 0.

pub mod clients;
pub mod components;
pub mod fake_anthropic;
pub mod harness;
pub mod nats;
