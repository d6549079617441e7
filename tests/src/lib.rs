//! End-to-end harness for Autopilot: the fake Anthropic API, the real components the tests need,
//! a builder that starts Autopilot in-process on port 0, and a fleet of real processes.

pub mod chaos;
pub mod clients;
pub mod cluster;
pub mod components;
pub mod dashboard;
pub mod fake_anthropic;
pub mod harness;
pub mod nats;
pub mod otlp;
pub mod postgres;
pub mod proxy;
