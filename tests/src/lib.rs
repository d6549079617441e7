//! End-to-end harness for Autopilot.

pub mod fake_anthropic;
