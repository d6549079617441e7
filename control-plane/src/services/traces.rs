//! The spans of a run's life in the control plane: its creation (under the request that caused
//! it, or as the root of a trace of its own), its store write and, in `dispatch`, its publish.
//! The creation span's `traceparent` is kept on the run, so whichever process later publishes
//! or executes the run continues that one trace.

use std::time::SystemTime;

use autopilot_proto::Trigger;
use autopilot_worker::trace::{self, PastSpan};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};

use crate::domain::Run;

/// What identifies a run on its spans.
pub(crate) fn run_attributes(run: &Run) -> impl Iterator<Item = KeyValue> {
    [
        Some(KeyValue::new("autopilot.run.id", run.id.to_string())),
        Some(KeyValue::new("autopilot.trigger", run.trigger.as_str())),
        run.job_name
            .clone()
            .map(|job| KeyValue::new("autopilot.job.name", job)),
        run.job_id
            .map(|job_id| KeyValue::new("autopilot.job.id", job_id.to_string())),
        run.webhook_id
            .map(|webhook_id| KeyValue::new("autopilot.webhook.id", webhook_id.to_string())),
    ]
    .into_iter()
    .flatten()
}

/// Starts the run's trace. Under a span (the HTTP request of a webhook delivery or an API
/// call) the run joins it: the span gets the run's attributes and becomes the parent of the
/// run's later steps. Without one, a `create run` span starts a trace of its own; a fire is
/// always the root of its own trace, from the time it was due to now, so its lateness shows.
pub(crate) fn created(run: &mut Run) {
    if !trace::enabled() || run.trace_parent.is_some() {
        return;
    }
    let now = SystemTime::now();
    let (name, start, parent) = match (run.trigger, run.scheduled_for) {
        (Trigger::Schedule, Some(due)) => (
            format!("fire {}", run.job_name.as_deref().unwrap_or("job")),
            SystemTime::from(due).min(now),
            Context::new(),
        ),
        _ => {
            let joined = trace::with_request(|request| {
                let traceparent = request.traceparent()?.to_owned();
                // A span the sampler left out keeps no attributes: none are made for it.
                if request.is_recording() {
                    request.add(run_attributes(run));
                }
                Some(traceparent)
            });
            if let Some(traceparent) = joined.flatten() {
                run.trace_parent = Some(traceparent);
                return;
            }
            (
                format!("create run ({})", run.trigger.as_str()),
                now,
                trace::current_context(),
            )
        }
    };
    let mut span = PastSpan::new(name, start, now).kind(SpanKind::Producer);
    span.attributes.extend(run_attributes(run));
    run.trace_parent = trace::traceparent(&span.record(&parent));
}

/// The run's row was written, from `started` to now (one transaction may hold many runs). When
/// the run joined the current span (the request that created it waits for the write), the
/// wait is an attribute of that span: cheaper than a span or an event for every delivery of a
/// busy webhook. Otherwise (a fire, a run without a request) it is a `store run` span.
pub(crate) fn stored<'a>(runs: impl IntoIterator<Item = &'a Run>, started: SystemTime) {
    if !trace::enabled() {
        return;
    }
    let now = SystemTime::now();
    for run in runs {
        let joined = trace::with_request(|request| {
            let joined = request
                .traceparent()
                .is_some_and(|own| run.trace_parent.as_deref() == Some(own));
            if joined {
                let waited = now.duration_since(started).unwrap_or_default();
                request.add([KeyValue::new(
                    "autopilot.store.duration_ms",
                    waited.as_secs_f64() * 1000.0,
                )]);
            }
            joined
        });
        if joined == Some(true) {
            continue;
        }
        let span = PastSpan::new("store run", started, now)
            .attribute(KeyValue::new("db.operation.name", "INSERT"));
        span.record_under(run.trace_parent.as_deref());
    }
}
