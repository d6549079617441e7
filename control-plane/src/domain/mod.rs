//! The domain: what Autopilot is about, as types and pure functions with no I/O. Jobs and their
//! schedules, runs, the run settings every kind of record shares, webhooks with their prompt
//! templates and signature schemes, OAuth records, who is calling, and the errors of validation.
//! Everything above (the store, the services, the edges) speaks in these types.

pub mod approval;
pub mod auth;
pub mod dashboard;
pub mod dynamic;
pub mod error;
pub mod handlers;
pub mod input;
pub mod job;
pub mod limits;
pub mod memory;
pub mod oauth;
pub mod rules;
pub mod run;
pub mod schedule;
pub mod settings;
pub mod signature;
pub mod template;
pub mod tools;
pub mod webhook;

pub use error::{ServiceError, ServiceResult};
pub use job::{Job, JobKind, MisfirePolicy, OverlapPolicy, Schedule};
pub use run::{FireRecord, PoolQueue, Run, RunFilter, RunSnapshot};
pub use settings::{
    RetryInput, RetryPolicy, RunSettings, RunSettingsInput, RunSettingsPatch, SandboxInput,
};
