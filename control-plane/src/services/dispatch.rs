//! Dispatch: getting queued runs onto the bus, in the order and number their jobs allow, and
//! keeping runs from being stuck: recovery at start and the lost-run reaper.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use autopilot_proto::{JobId, NewRunEvent, RunRequest, RunStatus, WebhookId};
use autopilot_worker::trace::OpenSpan;
use chrono::{DateTime, Utc};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::domain::{OverlapPolicy, Run, ServiceResult};
use crate::services::runs;

/// Most queued runs the dispatcher looks at in one go.
const DISPATCH_BATCH: u32 = 1000;

/// Prefix of the ids of workers embedded in `autopilot serve`.
pub const EMBEDDED_WORKER_PREFIX: &str = "embedded";

/// The bus dedup id of a run's attempt: a cron fire is identified by `(job_id, scheduled_for)`.
pub fn dedup_id(run: &Run) -> String {
    match (run.job_id, run.scheduled_for) {
        (Some(job_id), Some(at)) => {
            format!("fire:{job_id}:{}:{}", at.timestamp_millis(), run.attempt)
        }
        _ => format!("run:{}:{}", run.id, run.attempt),
    }
}

/// Dispatches a just-created run of a job with the `queue` overlap policy, unless an earlier
/// run of the job is still active (the dispatcher sends it when that one ends).
pub(crate) async fn dispatch_behind_earlier(
    app: &App,
    run: Run,
    job_id: JobId,
) -> ServiceResult<Run> {
    let others = runs::active(app, job_id).await?;
    if others.iter().any(|other| other.id != run.id) {
        return Ok(run);
    }
    if runs::limited_by_key(&run) {
        // Its key's runs are counted by the dispatcher.
        app.dispatcher_wake.notify_one();
        return Ok(run);
    }
    publish(app, run).await
}

/// Marks the run dispatched and publishes its request. The row exists before the message.
async fn publish(app: &App, mut run: Run) -> ServiceResult<Run> {
    run.dispatched_at = Some(Utc::now());
    if !app
        .store
        .update_run(&run, RunStatus::Queued, run.attempt, &[])
        .await?
    {
        // Claimed, cancelled or dispatched by someone else meanwhile.
        return runs::get(app, run.id).await;
    }
    Ok(publish_dispatched(app, run).await)
}

/// Publishes the request of a run already marked dispatched in the store. A failed publish
/// is undone so the dispatcher tries again.
pub(crate) async fn publish_dispatched(app: &App, run: Run) -> Run {
    let dedup_id = dedup_id(&run);
    publish_request(app, run, dedup_id).await
}

/// [`publish_dispatched`] under `dedup_id`.
async fn publish_request(app: &App, run: Run, dedup_id: String) -> Run {
    // Over NATS the publish is a span of the run's trace; in-process it is a push onto a
    // queue, not worth one.
    let span = app
        .bus
        .crosses_processes()
        .then(|| {
            OpenSpan::start(
                format!("publish {}", run.settings.pool),
                SpanKind::Producer,
                run.trace_parent.as_deref(),
                vec![
                    KeyValue::new("messaging.destination.name", run.settings.pool.clone()),
                    KeyValue::new("autopilot.run.attempt", i64::from(run.attempt)),
                ],
            )
        })
        .flatten();
    let request = RunRequest {
        run_id: run.id,
        attempt: run.attempt,
        pool: run.settings.pool.clone(),
        dedup_id,
        // The worker's spans are children of the publish, or of the run's creation.
        trace_parent: match &span {
            Some(span) => span.traceparent().map(str::to_owned),
            None => run.trace_parent.clone(),
        },
    };
    let published = app.bus.publish_run(request).await;
    if let Some(span) = span {
        span.end(published.as_ref().err().map(ToString::to_string));
    }
    let Err(err) = published else {
        return run;
    };
    tracing::warn!(run.id = %run.id, error = %err, "publishing the run request failed; will retry");
    app.metrics.publish_error();
    app.publish_failed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut undone = run.clone();
    undone.dispatched_at = None;
    if let Err(err) = app
        .store
        .update_run(&undone, RunStatus::Queued, run.attempt, &[])
        .await
    {
        tracing::error!(run.id = %run.id, error = %err, "could not mark the run undispatched");
    }
    app.dispatcher_wake.notify_one();
    undone
}

/// Publishes the requests of runs already marked dispatched, on a task of their own so the
/// caller (the webhook writer) goes on with its next batch.
pub(crate) fn publish_all_dispatched(app: &Arc<App>, runs: Vec<Run>) {
    if runs.is_empty() {
        return;
    }
    let app = Arc::clone(app);
    tokio::spawn(async move {
        for run in runs {
            publish_dispatched(&app, run).await;
        }
    });
}

/// Sends every queued run that may go now. Returns when a delayed retry becomes due.
pub async fn dispatch_pending(app: &App) -> ServiceResult<Option<DateTime<Utc>>> {
    let now = Utc::now();
    let waiting = app.store.queued_runs(None, DISPATCH_BATCH).await?;
    let mut busy_jobs: HashSet<JobId> = HashSet::new();
    // Runs going per (webhook, concurrency key), read once a pass if a keyed run waits.
    let mut keyed: Option<HashMap<(Option<WebhookId>, String), u32>> = None;
    let mut next_due: Option<DateTime<Utc>> = None;
    let full_batch = waiting.len() == DISPATCH_BATCH as usize;
    let mut published = 0usize;
    for run in waiting {
        if let Some(not_before) = run.not_before.filter(|t| *t > now) {
            next_due = Some(next_due.map_or(not_before, |due| due.min(not_before)));
            continue;
        }
        if let (OverlapPolicy::Queue, Some(job_id)) = (run.settings.overlap, run.job_id) {
            if busy_jobs.contains(&job_id) || !runs::active(app, job_id).await?.is_empty() {
                busy_jobs.insert(job_id);
                continue;
            }
            busy_jobs.insert(job_id);
        }
        if let Some(concurrency) = run.settings.concurrency.as_ref().filter(|c| !c.newest_wins) {
            if keyed.is_none() {
                keyed = Some(runs_by_key(app).await?);
            }
            let running = keyed
                .get_or_insert_with(HashMap::new)
                .entry((run.webhook_id, concurrency.key.clone()))
                .or_default();
            if *running >= concurrency.limit {
                continue; // its key is at its limit: it waits for one of them to end
            }
            *running += 1;
        }
        publish(app, run).await?;
        published += 1;
        if app.publish_failed.load(std::sync::atomic::Ordering::SeqCst) {
            // The bus is not taking requests; the rest would fail the same way.
            break;
        }
    }
    if full_batch && published > 0 {
        // More than one batch may wait: look again right after this one.
        app.dispatcher_wake.notify_one();
    }
    Ok(next_due)
}

/// How many runs are going (sent, running or being cancelled) per webhook and concurrency key.
async fn runs_by_key(app: &App) -> ServiceResult<HashMap<(Option<WebhookId>, String), u32>> {
    let mut counts = HashMap::new();
    for run in app.store.runs_in_status(&RunStatus::ACTIVE, None).await? {
        if run.status == RunStatus::Queued && run.dispatched_at.is_none() {
            continue;
        }
        if let Some(concurrency) = &run.settings.concurrency {
            *counts
                .entry((run.webhook_id, concurrency.key.clone()))
                .or_default() += 1;
        }
    }
    Ok(counts)
}

/// In the fleet: runs marked dispatched long ago and still not claimed get their request
/// published again, in case the bus lost it (a NATS server that came back without its store,
/// a request given up after its last delivery, a control plane killed between marking and
/// publishing). Under a dedup id of its own (the run's, and when it was marked again): the
/// first one is still in the bus's dedup window when it was given up, and the bus would drop
/// the new request as its duplicate. A request that was only slow is then delivered twice; the
/// second delivery's claim is refused.
pub async fn republish_stale_dispatches(app: &App) -> ServiceResult<usize> {
    // Twice the time after which a silent worker's run is lost (60 s by default): a request
    // is taken by a free worker within moments, or waits for a slot, which frees up by then.
    let republish_after = app.config.lost_after * 2;
    let stale_before = Utc::now() - chrono::Duration::from_std(republish_after).unwrap_or_default();
    let stale = app
        .store
        .queued_runs(Some(stale_before), DISPATCH_BATCH)
        .await?;
    let mut republished = 0;
    for mut run in stale {
        run.dispatched_at = Some(Utc::now());
        if app
            .store
            .update_run(&run, RunStatus::Queued, run.attempt, &[])
            .await?
        {
            tracing::info!(run.id = %run.id, "run still unclaimed long after dispatch; publishing its request again");
            let marked = run.dispatched_at.unwrap_or_default().timestamp_millis();
            let dedup_id = format!("{}:again:{marked}", dedup_id(&run));
            publish_request(app, run, dedup_id).await;
            republished += 1;
        }
    }
    Ok(republished)
}

/// After a restart of the embedded mode: runs this data directory's previous process was
/// executing are lost (their processes went with it), and queued runs are sent again (the
/// in-process bus went with it too). The caller holds the data directory lock, so no other
/// live process owns embedded runs.
pub async fn recover_embedded_runs(app: &App) -> ServiceResult<()> {
    let stuck = app.store.runs_in_status(&RunStatus::ACTIVE, None).await?;
    for mut run in stuck {
        let (status, attempt) = (run.status, run.attempt);
        if status == RunStatus::Queued {
            if run.dispatched_at.is_some() {
                run.dispatched_at = None;
                app.store.update_run(&run, status, attempt, &[]).await?;
            }
            continue;
        }
        if !run
            .worker_id
            .as_deref()
            .is_some_and(|id| id.starts_with(EMBEDDED_WORKER_PREFIX))
        {
            continue;
        }
        let reason = "autopilot stopped while this run was executing; its process ended with it. \
                      Events recorded up to then are kept";
        mark_lost(app, run, reason).await?;
    }
    dispatch_pending(app).await?;
    Ok(())
}

/// Marks running runs whose worker stopped sending heartbeats as lost. Only once this process
/// has been connected to the bus for the whole lost-after time: a silence it could not have
/// heard through (NATS down or unreachable from here) says nothing about the workers, which
/// go on with their runs and report them when the bus is back.
pub async fn reap_lost_runs(app: &App) -> ServiceResult<usize> {
    if app
        .bus
        .connected_for()
        .is_none_or(|connected| connected < app.config.lost_after)
    {
        return Ok(0);
    }
    let deadline =
        Utc::now() - chrono::Duration::from_std(app.config.lost_after).unwrap_or_default();
    let running = app
        .store
        .runs_in_status(&RunStatus::EXECUTING, None)
        .await?;
    let mut reaped = 0;
    for run in running {
        if run
            .heartbeat_at
            .or(run.started_at)
            .is_some_and(|beat| beat < deadline)
        {
            let reason = format!(
                "no heartbeat from worker `{}` for {}s; the worker probably died",
                run.worker_id.as_deref().unwrap_or("?"),
                app.config.lost_after.as_secs()
            );
            mark_lost(app, run, &reason).await?;
            reaped += 1;
        }
    }
    Ok(reaped)
}

/// Ends an attempt whose worker is gone: the run is `lost`, or, when its retry policy asks
/// for it (`retry.lost`) and attempts are left, queued again as a new attempt. A run being
/// cancelled is never run again.
pub(crate) async fn mark_lost(app: &App, mut run: Run, reason: &str) -> ServiceResult<()> {
    let (status, attempt) = (run.status, run.attempt);
    let retry = run.settings.retry;
    let was_running = matches!(status, RunStatus::Running | RunStatus::WaitingForApproval);
    if retry.lost && was_running && attempt <= retry.count {
        let delay = run.requeue_as_next_attempt(None);
        run.error = Some(reason.to_owned());
        // Recorded under the attempt that was lost.
        let event = NewRunEvent {
            attempt,
            ..run.control_event(
                json!({ "step": "lost", "reason": reason, "retry": { "next_attempt": attempt + 1, "delay_secs": delay.as_secs() } }),
            )
        };
        if app
            .store
            .update_run(&run, status, attempt, &[event])
            .await?
        {
            tracing::warn!(run.id = %run.id, reason, next_attempt = attempt + 1, "run lost; running it again");
            app.notify_run(run.id);
            app.dispatcher_wake.notify_one();
        }
        return Ok(());
    }
    run.status = RunStatus::Lost;
    run.finished_at = Some(Utc::now());
    run.is_error = true;
    run.error = Some(reason.to_owned());
    let event = run.control_event(json!({ "step": "lost", "reason": reason }));
    if app
        .store
        .update_run(&run, status, attempt, &[event])
        .await?
    {
        tracing::warn!(run.id = %run.id, reason, "run lost");
        app.notify_run(run.id);
        app.dispatcher_wake.notify_one();
        runs::ended(app, &run);
    }
    Ok(())
}

/// How long the dispatcher waits after the bus refused a request.
const PUBLISH_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends queued runs when they become dispatchable: retries whose backoff ended, runs queued
/// behind an earlier run of their job.
pub async fn run_dispatcher(app: Arc<App>, cancel: CancellationToken) -> anyhow::Result<()> {
    loop {
        let next_due = match dispatch_pending(&app).await {
            Ok(next_due) => next_due,
            Err(err) => {
                tracing::warn!(error = %err, "dispatching queued runs failed; retrying");
                app.metrics.error("dispatcher");
                Some(Utc::now() + chrono::Duration::seconds(1))
            }
        };
        let sleep = next_due
            .map(|due| (due - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(std::time::Duration::from_secs(3600));
        if app
            .publish_failed
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            // The bus refused a request: try again in a second, not in a tight loop.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(PUBLISH_RETRY) => {}
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = app.dispatcher_wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Marks runs lost when their heartbeats stop.
pub async fn run_reaper(app: Arc<App>, cancel: CancellationToken) -> anyhow::Result<()> {
    let period = app.config.lost_after / 3;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(period) => {}
        }
        if let Err(err) = reap_lost_runs(&app).await {
            tracing::warn!(error = %err, "reaping lost runs failed");
            app.metrics.error("reaper");
        }
        if app.config.nats_url.is_some() {
            if let Err(err) = republish_stale_dispatches(&app).await {
                tracing::warn!(error = %err, "republishing stale run requests failed");
                app.metrics.error("reaper");
            }
        }
        if let Err(err) = app.store.purge_expired_deliveries(Utc::now()).await {
            tracing::warn!(error = %err, "forgetting expired webhook delivery ids failed");
        }
    }
}
