//! What the services record in the process's metrics (`crate::metrics`), from the runs they
//! change.

use autopilot_proto::TokenUsage;
use chrono::{DateTime, Utc};

use crate::app::App;
use crate::domain::Run;
use crate::metrics::NO_JOB;

fn job_of(run: &Run) -> &str {
    run.job_name.as_deref().unwrap_or(NO_JOB)
}

/// A run reached its final state.
pub(crate) fn run_ended(app: &App, run: &Run) {
    let duration = run
        .started_at
        .zip(run.finished_at)
        .and_then(|(started, finished)| (finished - started).to_std().ok());
    app.metrics
        .run_finished(job_of(run), run.trigger, run.status, duration);
}

/// What one attempt of `run` used of the model (each attempt counts, retried or not).
pub(crate) fn attempt_usage(app: &App, run: &Run, usage: &TokenUsage, cost_usd: Option<f64>) {
    let model = run.models.first().map_or("", String::as_str);
    app.metrics.usage(job_of(run), model, usage, cost_usd);
}

/// A worker claimed `run` at `now`: how long after it was due (its retry time, its fire time,
/// or its creation).
pub(crate) fn claimed(app: &App, run: &Run, now: DateTime<Utc>) {
    let due = run
        .not_before
        .or(run.scheduled_for)
        .unwrap_or(run.created_at);
    if let Ok(latency) = (now - due).to_std() {
        app.metrics.dispatch_latency(latency);
    }
}
