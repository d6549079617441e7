//! The control plane's side of the worker protocol: claim, heartbeat, complete.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::{
    AttemptEnd, EventOrigin, NewRunEvent, RunAttempt, RunId, RunKind, RunSpec, RunStatus,
    StopReason, WorkerId, WorkerReply, WorkerRequest,
};
use chrono::Utc;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::domain::{OverlapPolicy, Run, ServiceResult};
use crate::services::follow::RunWatch;
use crate::services::{dispatch, metrics, tools};
use crate::store::RunUpdate;

/// How long a completion waits for the attempt's events to be stored before it records the
/// final state anyway.
const EVENTS_LANDING_TIMEOUT: Duration = Duration::from_secs(5);

fn rejected(reason: impl Into<String>) -> WorkerReply {
    WorkerReply::Rejected {
        reason: reason.into(),
    }
}

pub async fn handle_worker_request(
    app: &Arc<App>,
    request: WorkerRequest,
) -> ServiceResult<WorkerReply> {
    match request {
        WorkerRequest::Claim {
            worker_id,
            runs,
            claim_token,
            sealing_key,
        } => {
            claim(
                app,
                runs,
                worker_id,
                claim_token.as_deref(),
                sealing_key.as_deref(),
            )
            .await
        }
        WorkerRequest::Heartbeat {
            run_id,
            attempt,
            worker_id,
        } => heartbeat(app, run_id, attempt, worker_id).await,
        WorkerRequest::Announce { status } => {
            super::workers::announce(app, status).await?;
            Ok(WorkerReply::Ok)
        }
        WorkerRequest::Complete { worker_id, ended } => complete(app, ended, worker_id).await,
        WorkerRequest::Memory {
            run_id,
            attempt,
            worker_id,
            op,
        } => super::memory::from_run(app, run_id, attempt, &worker_id, op).await,
        WorkerRequest::Approval {
            run_id,
            attempt,
            worker_id,
            ask,
        } => super::approvals::ask(app, run_id, attempt, &worker_id, ask).await,
        WorkerRequest::ApprovalStatus {
            run_id,
            attempt,
            worker_id,
            approval_id,
        } => super::approvals::status(app, run_id, attempt, &worker_id, &approval_id).await,
        WorkerRequest::FileWatches { worker_id, pools } => {
            super::file_watches::watches(app, &worker_id, &pools).await
        }
        WorkerRequest::FileChanged { worker_id, change } => {
            super::file_watches::changed(app, &worker_id, change).await
        }
    }
}

/// `queued → running` for this worker of each run whose attempt is still the current one,
/// in one statement: the claim is on the path from due time to process start. The worker's
/// `started` event follows at once and names the worker. A run the same worker process
/// (`claim_token`) already claimed at that attempt is claimed again: its first reply was lost.
async fn claim(
    app: &App,
    runs: Vec<RunAttempt>,
    worker_id: WorkerId,
    claim_token: Option<&str>,
    sealing_key: Option<&str>,
) -> ServiceResult<WorkerReply> {
    let now = Utc::now();
    let mut claimed: HashMap<(RunId, u32), Run> = app
        .store
        .claim_runs(&runs, worker_id.as_str(), claim_token, now)
        .await?
        .into_iter()
        .map(|run| ((run.id, run.attempt), run))
        .collect();
    // Why the others were refused (a duplicate delivery, a run cancelled while queued).
    let refused: Vec<RunId> = runs
        .iter()
        .filter(|run| !claimed.contains_key(&(run.run_id, run.attempt)))
        .map(|run| run.run_id)
        .collect();
    let current = runs_by_id(app, &refused).await?;
    // Runs granted MCP servers are resolved against the registry as it is now.
    let needs_credentials = |run: &Run| {
        !run.settings.grants.is_empty()
            || !run.settings.bundles.is_empty()
            || matches!(&run.settings.kind, RunKind::Http(http) if !http.credentials().is_empty())
    };
    let registry = if claimed.values().any(needs_credentials) {
        Some(tools::Registry::load(app).await?)
    } else {
        None
    };
    let mut handed_credentials = BTreeSet::new();
    let mut replies = Vec::with_capacity(runs.len());
    let mut taken = HashSet::new();
    for RunAttempt { run_id, attempt } in runs {
        let reply = if let Some(run) = claimed.remove(&(run_id, attempt)) {
            taken.insert((run_id, attempt));
            app.notify_run(run_id);
            // A repeated claim kept the run's first start: its latency was counted then.
            if run.started_at == run.heartbeat_at {
                metrics::claimed(app, &run, now);
            }
            let mut spec = RunSpec {
                run_id,
                attempt,
                job_id: run.job_id,
                workspace: run.settings.workspace.clone(),
                kind: run.settings.kind.clone(),
                timeout_secs: run.settings.timeout_secs,
                sandbox: run.settings.sandbox(),
                image: run.settings.image.clone(),
                outcome_files: run.settings.outcome_files.clone(),
            };
            let handed = match &registry {
                Some(registry)
                    if !run.settings.grants.is_empty() || !run.settings.bundles.is_empty() =>
                {
                    let (handed, credentials) =
                        registry.hand_out(app, &run, &mut spec, sealing_key);
                    handed_credentials.extend(credentials);
                    handed
                }
                Some(registry) => match &run.settings.kind {
                    RunKind::Http(http) => {
                        let (handed, credentials) =
                            registry.hand_out_named(app, &spec, http.credentials(), sealing_key);
                        handed_credentials.extend(credentials);
                        handed
                    }
                    _ => tools::Handed::default(),
                },
                _ => tools::Handed::default(),
            };
            WorkerReply::Claimed {
                spec: Box::new(spec),
                secrets: handed.secrets,
                cannot_start: handed.cannot_start,
            }
        } else if taken.contains(&(run_id, attempt)) {
            rejected("the run was claimed twice in one request")
        } else {
            rejected(match current.get(&run_id) {
                None => "unknown run".to_owned(),
                Some(run) if run.attempt != attempt => format!(
                    "attempt {attempt} was superseded by attempt {}",
                    run.attempt
                ),
                Some(run) => format!("run is {}", run.status),
            })
        };
        replies.push(reply);
    }
    if !handed_credentials.is_empty() {
        let names: Vec<String> = handed_credentials.into_iter().collect();
        // When a credential was last used is for the operator's eyes: a failure to note it
        // must not cost the runs their start.
        if let Err(err) = app.store.mark_credentials_used(&names, now).await {
            tracing::warn!(error = %err, "could not note when credentials were last used");
        }
    }
    Ok(WorkerReply::Each { replies })
}

/// The runs of `ids` that exist, by id, in one read.
async fn runs_by_id(app: &App, ids: &[RunId]) -> ServiceResult<HashMap<RunId, Run>> {
    let runs = app.store.get_runs(ids).await?;
    Ok(runs.into_iter().map(|run| (run.id, run)).collect())
}

async fn heartbeat(
    app: &App,
    run_id: RunId,
    attempt: u32,
    worker_id: WorkerId,
) -> ServiceResult<WorkerReply> {
    let status = app
        .store
        .heartbeat_run(run_id, attempt, worker_id.as_str(), Utc::now())
        .await?;
    Ok(match status {
        Some(RunStatus::Cancelling) => WorkerReply::Cancel,
        Some(_) => WorkerReply::Ok,
        None => rejected("the run is no longer held by this worker"),
    })
}

/// Records how each attempt ended, reading their runs in one statement once their events
/// are stored.
async fn complete(
    app: &App,
    ended: Vec<AttemptEnd>,
    worker_id: WorkerId,
) -> ServiceResult<WorkerReply> {
    futures::future::join_all(
        ended
            .iter()
            .map(|end| wait_for_events(app, end.run_id, end.attempt, end.events_published)),
    )
    .await;
    let ids: Vec<RunId> = ended.iter().map(|end| end.run_id).collect();
    let mut runs = runs_by_id(app, &ids).await?;
    let endings = ended.into_iter().map(|end| {
        let run = runs.remove(&end.run_id);
        ending(app, run, end, &worker_id)
    });
    let endings = futures::future::try_join_all(endings).await?;
    // Every final state and retry of the request in one write: a burst of runs ending at once
    // costs the store one commit, not one each.
    let updates: Vec<RunUpdate<'_>> = endings
        .iter()
        .filter_map(|ending| match ending {
            Ending::Write(write) => Some(RunUpdate {
                run: &write.run,
                expected_status: write.expected,
                expected_attempt: write.attempt,
                events: &write.events,
            }),
            Ending::Reply(_) => None,
        })
        .collect();
    let mut written = app.store.update_runs(&updates).await?.into_iter();
    let replies = endings
        .into_iter()
        .map(|ending| match ending {
            Ending::Reply(reply) => reply,
            Ending::Write(write) => {
                if written.next() == Some(true) {
                    write.written(app)
                } else {
                    rejected("run changed while completing")
                }
            }
        })
        .collect();
    Ok(WorkerReply::Each { replies })
}

/// What to do about one ended attempt: answer at once, or write its end first.
enum Ending {
    Reply(WorkerReply),
    Write(Box<EndWrite>),
}

/// How an attempt ended, to write if the run is still `expected` at `attempt` (compare-and-set).
struct EndWrite {
    run: Run,
    expected: RunStatus,
    attempt: u32,
    events: Vec<NewRunEvent>,
    /// A retry was scheduled (else the run reached its final state).
    retry_delay: Option<Duration>,
}

impl EndWrite {
    /// What follows once it is written: followers told, the log, metrics, the dispatcher.
    fn written(self, app: &App) -> WorkerReply {
        let run = &self.run;
        app.notify_run(run.id);
        if let Some(delay) = self.retry_delay {
            tracing::info!(run.id = %run.id, attempt = run.attempt, delay_secs = delay.as_secs(), "transient failure; retry scheduled");
            app.dispatcher_wake.notify_one();
            return WorkerReply::Ok;
        }
        tracing::info!(run.id = %run.id, status = %run.status, cost_usd = ?run.cost_usd, "run finished");
        super::runs::ended(app, run);
        if run.settings.overlap == OverlapPolicy::Queue {
            // The next run of the job may be waiting for this one.
            app.dispatcher_wake.notify_one();
        }
        WorkerReply::Ok
    }
}

/// How an attempt of `run` ended: its final state, or a delayed retry for a transient API
/// failure when the job's retry policy allows one (written by the caller, with the others of
/// its request); a run handed back by a worker that shut down is dealt with here.
async fn ending(
    app: &App,
    run: Option<Run>,
    end: AttemptEnd,
    worker_id: &WorkerId,
) -> ServiceResult<Ending> {
    let AttemptEnd {
        run_id,
        attempt,
        outcome,
        last_events,
        ..
    } = end;
    // Only this attempt's own events ride along.
    let mut last_events: Vec<NewRunEvent> = last_events
        .into_iter()
        .filter(|event| {
            event.run_id == run_id
                && event.attempt == attempt
                && event.origin == EventOrigin::Worker
        })
        .collect();
    let Some(mut run) = run else {
        return Ok(Ending::Reply(rejected(
            "unknown run (or named twice in one request)",
        )));
    };
    if !run.is_held_by(attempt, worker_id.as_str()) {
        return Ok(Ending::Reply(rejected(format!(
            "run is {} and not held by this worker",
            run.status
        ))));
    }
    let expected = run.status;
    run.usage.add(&outcome.usage);
    run.cost_usd = match (run.cost_usd, outcome.cost_usd) {
        (Some(before), Some(now)) => Some(before + now),
        (before, now) => before.or(now),
    };
    run.permission_denials += outcome.permission_denials;
    if outcome.billing.is_some() {
        run.billing = outcome.billing;
    }
    for model in &outcome.models {
        if !run.models.contains(model) {
            run.models.push(model.clone());
        }
    }
    metrics::attempt_usage(app, &run, &outcome.usage, outcome.cost_usd);
    run.exit_code = outcome.exit_code;
    run.num_turns = outcome.num_turns;
    run.result = outcome.result.clone();
    run.is_error = outcome.is_error;
    run.error = outcome.error.clone();

    if let (Some(autopilot_proto::ApiError::UsageLimit), Some(until), Some(job_id)) =
        (outcome.api_error, outcome.retry_at, run.job_id)
    {
        super::rules::pause_for_usage_limit(app, job_id, until).await;
    }
    let retry = outcome.transient
        && matches!(expected, RunStatus::Running | RunStatus::WaitingForApproval)
        && attempt <= run.settings.retry.count;
    if retry {
        let delay = run.requeue_as_next_attempt(outcome.retry_at);
        let mut data = json!({ "step": "retry_scheduled", "next_attempt": attempt + 1, "delay_secs": delay.as_secs(), "error": outcome.error });
        if let Some(kind) = outcome.api_error {
            data["api_error"] = json!(kind.as_str());
        }
        if let Some(at) = outcome.retry_at {
            data["retry_at"] = json!(at);
        }
        // Recorded under the attempt that failed.
        let event = NewRunEvent {
            attempt,
            ..run.control_event(data)
        };
        last_events.push(event);
        return Ok(Ending::Write(Box::new(EndWrite {
            run,
            expected,
            attempt,
            events: last_events,
            retry_delay: Some(delay),
        })));
    }

    if outcome.stopped == Some(StopReason::WorkerShutdown)
        && matches!(expected, RunStatus::Running | RunStatus::WaitingForApproval)
    {
        // Handed back by a worker that shut down: lost, or run again by the job's policy.
        if !last_events.is_empty() {
            app.store.append_events(&last_events).await?;
        }
        let reason = "the worker shut down while the run was executing, and stopped it after \
                      its grace period";
        dispatch::mark_lost(app, run, reason).await?;
        return Ok(Ending::Reply(WorkerReply::Ok));
    }
    let mut status = outcome.final_status();
    if expected == RunStatus::Cancelling && status == RunStatus::Failed && outcome.stopped.is_none()
    {
        // Killed before the stop signal reached it, or it failed on its own: the user asked
        // for a stop, so say cancelled.
        status = RunStatus::Cancelled;
    }
    run.status = status;
    run.finished_at = Some(outcome.finished_at.unwrap_or_else(Utc::now));
    let finished =
        run.control_event(json!({ "step": "finished", "status": status, "error": run.error }));
    last_events.push(finished);
    Ok(Ending::Write(Box::new(EndWrite {
        run,
        expected,
        attempt,
        events: last_events,
        retry_delay: None,
    })))
}

/// Waits until `expected` worker events of the attempt are stored (or a timeout), so that
/// anyone who sees the final state also sees every event.
async fn wait_for_events(app: &App, run_id: RunId, attempt: u32, expected: u64) {
    if expected == 0 {
        // Every event rode with the completion (a short run): nothing to wait for.
        return;
    }
    let mut watch = RunWatch::new(app, run_id);
    let deadline = tokio::time::Instant::now() + EVENTS_LANDING_TIMEOUT;
    loop {
        match app.store.count_worker_events(run_id, attempt).await {
            Ok(stored) if stored >= expected => return,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(run.id = %run_id, error = %err, "counting events failed")
            }
        }
        if tokio::time::timeout_at(deadline, watch.changed())
            .await
            .is_err()
        {
            tracing::warn!(run.id = %run_id, expected, "not every event arrived before completion");
            return;
        }
    }
}

/// Answers worker requests from the bus. Each request is handled on its own task so one slow
/// completion never holds up claims.
pub async fn serve_worker_requests(app: Arc<App>, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut requests = app.bus.serve_requests().await?;
    loop {
        let incoming = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            incoming = requests.next() => match incoming {
                Some(incoming) => incoming,
                None => anyhow::bail!("the bus closed the worker request stream"),
            },
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            match handle_worker_request(&app, incoming.request).await {
                // The worker may have given up waiting; it will retry.
                Ok(reply) => drop(incoming.reply.send(reply)),
                // Dropping the reply tells the worker to try again later: a store hiccup must
                // not turn into a refused claim or completion.
                Err(err) => {
                    tracing::error!(error = %err, "worker request failed");
                    app.metrics.error("worker_requests");
                }
            }
        });
    }
}
