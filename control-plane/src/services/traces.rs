//! The spans of a run's life in the control plane: its creation (under the request that caused
//! it, or as the root of a trace of its own), its store write and, in `dispatch`, its publish.
//! The creation span's `traceparent` is kept on the run, so whichever process later publishes
//! or executes the run continues that one trace.

use std::time::SystemTime;

use autopilot_proto::Trigger;
use autopilot_worker::trace::{self, PastSpan};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::domain::Run;

/// What identifies a run on its spans.
pub(crate) fn run_attributes(run: &Run) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("autopilot.run.id", run.id.to_string()),
        KeyValue::new("autopilot.trigger", run.trigger.as_str()),
    ];
    if let Some(job) = &run.job_name {
        attributes.push(KeyValue::new("autopilot.job.name", job.clone()));
    }
    if let Some(job_id) = run.job_id {
        attributes.push(KeyValue::new("autopilot.job.id", job_id.to_string()));
    }
    if let Some(webhook_id) = run.webhook_id {
        attributes.push(KeyValue::new(
            "autopilot.webhook.id",
            webhook_id.to_string(),
        ));
    }
    attributes
}

/// Starts the run's trace: a `create run` span under the current span (the HTTP request of a
/// webhook delivery or an API call), or the root of a new trace when there is none. A fire is
/// the root of its own trace, from the time it was due to now, so its lateness shows.
pub(crate) fn created(run: &mut Run) {
    if !trace::enabled() || run.trace_parent.is_some() {
        return;
    }
    let now = SystemTime::now();
    let (name, start, parent) = match (run.trigger, run.scheduled_for) {
        (Trigger::Schedule, Some(due)) => {
            let due = SystemTime::from(due).min(now);
            (
                format!("fire {}", run.job_name.as_deref().unwrap_or("job")),
                due,
                Context::new(),
            )
        }
        _ => (
            format!("create run ({})", run.trigger.as_str()),
            now,
            tracing::Span::current().context(),
        ),
    };
    let mut span = PastSpan::new(name, start, now);
    if parent_is_empty(&parent) {
        span = span.kind(SpanKind::Producer);
    }
    span.attributes.extend(run_attributes(run));
    run.trace_parent = trace::traceparent(&span.record(&parent));
}

/// The run's row was written, from `started` to now (one transaction may hold many runs).
pub(crate) fn stored<'a>(runs: impl IntoIterator<Item = &'a Run>, started: SystemTime) {
    if !trace::enabled() {
        return;
    }
    let now = SystemTime::now();
    for run in runs {
        let span = PastSpan::new("store run", started, now)
            .attribute(KeyValue::new("db.operation.name", "INSERT"))
            .attribute(KeyValue::new("db.collection.name", "runs"))
            .attribute(KeyValue::new("autopilot.run.id", run.id.to_string()));
        span.record_under(run.trace_parent.as_deref());
    }
}

fn parent_is_empty(parent: &Context) -> bool {
    trace::traceparent(parent).is_none()
}
