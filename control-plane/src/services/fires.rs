//! Fires: recording the runs the scheduler's fires start, all due jobs in one transaction, and
//! sending those that may start at once.

use std::collections::HashSet;

use autopilot_proto::{JobId, RunId, RunStatus, Trigger};

use crate::app::App;
use crate::domain::{FireRecord, ServiceResult};
use crate::services::{dispatch, traces};

/// Jobs with a run that is running, being cancelled, or queued and sent: what the overlap
/// policies look at.
pub async fn busy_jobs(app: &App) -> ServiceResult<HashSet<JobId>> {
    Ok(app
        .store
        .runs_in_status(&RunStatus::ACTIVE, None)
        .await?
        .iter()
        .filter(|run| run.status != RunStatus::Queued || run.dispatched_at.is_some())
        .filter_map(|run| run.job_id)
        .collect())
}

/// Stores a batch of scheduler steps (a fire whose run exists already, made by another leader,
/// is left out), then publishes the new runs listed in `dispatch_now`. Returns how many runs
/// were created.
pub async fn record(
    app: &App,
    records: Vec<FireRecord>,
    dispatch_now: &HashSet<RunId>,
) -> ServiceResult<usize> {
    let mut records = records;
    for run in records.iter_mut().flat_map(|record| record.runs.iter_mut()) {
        traces::created(run);
    }
    let storing = std::time::SystemTime::now();
    let created: HashSet<RunId> = app
        .store
        .record_fires(&records)
        .await?
        .into_iter()
        .collect();
    traces::stored(
        records
            .iter()
            .flat_map(|record| &record.runs)
            .filter(|run| created.contains(&run.id)),
        storing,
    );
    app.metrics
        .run_created(Trigger::Schedule, created.len() as u64);
    for record in records.iter().filter(|record| record.missed > 0) {
        app.metrics.fires_missed(&record.job_name, record.missed);
    }
    let mut waiting = false;
    for run in records.into_iter().flat_map(|record| record.runs) {
        if !created.contains(&run.id) {
            continue; // another leader created this fire's run
        }
        waiting |= run.dispatched_at.is_none();
        let lateness = run.scheduled_for.map(|at| run.created_at - at);
        if let Some(lateness) = lateness.and_then(|late| late.to_std().ok()) {
            app.metrics.fire_lateness(lateness);
        }
        let lateness_ms = lateness.map(|late| late.num_milliseconds());
        tracing::debug!(run.id = %run.id, job.id = ?run.job_id, lateness_ms, "fired");
        if dispatch_now.contains(&run.id) {
            dispatch::publish_dispatched(app, run).await;
        }
    }
    if waiting {
        // Runs behind an earlier one, or limited by their key: the dispatcher decides.
        app.dispatcher_wake.notify_one();
    }
    Ok(created.len())
}
