//! Runs: submitting them, quick runs, reading them and their events, killing them, and storing
//! the events workers send.

use std::collections::HashSet;

use autopilot_proto::{
    ControlMessage, JobId, NewRunEvent, RunEvent, RunId, RunKind, RunStatus, Trigger,
};
use chrono::Utc;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::domain::input::flattened;
use crate::domain::limits::MAX_PROMPT_BYTES;
use crate::domain::{
    JobKind, OverlapPolicy, RetryPolicy, Run, RunFilter, RunSettingsInput, RunSnapshot,
    ServiceError, ServiceResult,
};
use crate::services::{dispatch, jobs, metrics, traces, webhooks};

pub const MAX_PAGE: u32 = 500;
/// Most events in one page.
pub const MAX_EVENTS_PAGE: u32 = 5000;

/// An ad-hoc prompt, run once in its own workspace. Unknown fields are refused by name.
#[derive(Deserialize, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuickRunInput {
    /// What Claude should do.
    pub prompt: String,
    /// Quick runs are not retried unless `retry` says so.
    #[serde(flatten, deserialize_with = "flattened")]
    pub run: RunSettingsInput,
}

/// Stores a new queued run, records that it was queued and dispatches it (unless an earlier run
/// of its job must finish first).
pub async fn submit(app: &App, mut run: Run) -> ServiceResult<Run> {
    let data = json!({ "step": "queued", "trigger": run.trigger });
    let queued = prepare(&mut run, data);
    let storing = std::time::SystemTime::now();
    app.store.insert_run(&run, &[queued]).await?;
    traces::stored([&run], storing);
    send_stored(app, run).await
}

/// Readies a new run to be stored: marks it dispatched unless it must wait behind an earlier
/// run of its job, starts its trace, and gives its first event (`queued`, with `data`).
pub(crate) fn prepare(run: &mut Run, data: serde_json::Value) -> NewRunEvent {
    // A run that need not wait for an earlier one is stored already marked dispatched, and
    // published right after: one statement fewer. Should the process die in between, the
    // recovery at start (embedded) or the republishing of stale dispatches (fleet) sends it.
    if queued_behind(run).is_none() && !limited_by_key(run) {
        run.dispatched_at = Some(Utc::now());
    }
    traces::created(run);
    run.control_event(data)
}

fn queued_behind(run: &Run) -> Option<JobId> {
    run.job_id
        .filter(|_| run.settings.overlap == OverlapPolicy::Queue)
}

/// Whether the run waits for the dispatcher, which counts the runs of its concurrency key.
pub(crate) fn limited_by_key(run: &Run) -> bool {
    run.settings
        .concurrency
        .as_ref()
        .is_some_and(|concurrency| !concurrency.newest_wins)
}

/// Sends a run [`prepare`]d and stored: published at once, queued behind an earlier run, or
/// left to the dispatcher when its concurrency key limits it.
pub(crate) async fn send_stored(app: &App, run: Run) -> ServiceResult<Run> {
    app.metrics.run_created(run.trigger, 1);
    tracing::info!(run.id = %run.id, job.id = ?run.job_id, trigger = run.trigger.as_str(), "run queued");
    match queued_behind(&run) {
        None if limited_by_key(&run) => {
            app.dispatcher_wake.notify_one();
            Ok(run)
        }
        None => Ok(dispatch::publish_dispatched(app, run).await),
        Some(job_id) => dispatch::dispatch_behind_earlier(app, run, job_id).await,
    }
}

/// A run reached its final state: it is counted, and the jobs that follow its job look at it.
pub(crate) fn ended(app: &App, run: &Run) {
    metrics::run_ended(app, run);
    app.chains_wake.notify_one();
    if run.settings.concurrency.is_some() {
        // A run of the same key may be waiting for this one.
        app.dispatcher_wake.notify_one();
    }
}

pub async fn quick_run(app: &App, input: QuickRunInput) -> ServiceResult<Run> {
    if input.prompt.trim().is_empty() {
        return Err(ServiceError::invalid("prompt", "must not be empty"));
    }
    if input.prompt.len() > MAX_PROMPT_BYTES {
        return Err(ServiceError::invalid(
            "prompt",
            format!(
                "is {} bytes; the limit is {MAX_PROMPT_BYTES}",
                input.prompt.len()
            ),
        ));
    }
    let settings = input.run.resolve(JobKind::Claude, RetryPolicy::NONE)?;
    super::tools::check_tools(app, &settings).await?;
    let run_id = autopilot_worker::trace::run_id();
    let snapshot = RunSnapshot {
        kind: RunKind::Claude(autopilot_proto::ClaudeSpec {
            prompt: input.prompt,
            model: settings.model,
            allowed_tools: settings.allowed_tools,
            disallowed_tools: settings.disallowed_tools,
            max_turns: settings.max_turns,
            max_cost_usd: settings.max_cost_usd,
            trace_content: settings.trace_content,
            mcp_servers: Vec::new(),
            approval: None,
        }),
        timeout_secs: settings.timeout_secs,
        workspace: format!("quick-{run_id}"),
        retry: settings.retry,
        pool: settings.pool,
        overlap: OverlapPolicy::Allow,
        sandbox: Some(settings.sandbox),
        grants: settings.servers,
        bundles: settings.bundles,
        image: settings.image,
        concurrency: None,
        outcome_files: Vec::new(),
    };
    let mut run = Run::queued(Trigger::Quick, None, snapshot, None);
    run.id = run_id;
    submit(app, run).await
}

/// Runs of a job that are queued and sent, running or being cancelled.
pub async fn active(app: &App, job_id: JobId) -> ServiceResult<Vec<Run>> {
    let runs = app
        .store
        .runs_in_status(&RunStatus::ACTIVE, Some(job_id))
        .await?;
    Ok(runs
        .into_iter()
        .filter(|run| run.status != RunStatus::Queued || run.dispatched_at.is_some())
        .collect())
}

pub async fn get(app: &App, id: RunId) -> ServiceResult<Run> {
    app.store
        .get_run(id)
        .await?
        .ok_or_else(|| ServiceError::NotFound {
            what: "run",
            id: id.to_string(),
        })
}

pub async fn list(app: &App, mut filter: RunFilter) -> ServiceResult<Vec<Run>> {
    filter.limit = filter.limit.clamp(1, MAX_PAGE);
    Ok(app.store.list_runs(&filter).await?)
}

/// Which runs to list, as clients name them: a job and a webhook by id or name, states by name,
/// `before` the previous page's `next_before`.
#[derive(Debug, Default)]
pub struct RunQuery {
    pub job: Option<String>,
    pub webhook: Option<String>,
    pub statuses: Vec<String>,
    pub before: Option<String>,
    pub limit: u32,
}

/// One page of runs, newest first, and where the next page starts (`None`: this is the last).
#[derive(Debug)]
pub struct RunPage {
    pub runs: Vec<Run>,
    pub next_before: Option<RunId>,
}

/// The runs a query names, a page at a time (at most [`MAX_PAGE`]).
pub async fn page(app: &App, query: RunQuery) -> ServiceResult<RunPage> {
    let job_id = match query.job.as_deref() {
        Some(job) => Some(jobs::find(app, job).await?.id),
        None => None,
    };
    let webhook_id = match query.webhook.as_deref() {
        Some(webhook) => Some(webhooks::find(app, webhook).await?.id),
        None => None,
    };
    let statuses = query
        .statuses
        .iter()
        .map(|status| status.trim().parse::<RunStatus>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| ServiceError::invalid("status", message))?;
    let before = match query.before.as_deref() {
        Some(before) => Some(before.trim().parse::<RunId>().map_err(|_| {
            ServiceError::invalid(
                "before",
                format!("`{before}` is not a run id (run ids are UUIDs; give the previous page's next_before)"),
            )
        })?),
        None => None,
    };
    let limit = query.limit.clamp(1, MAX_PAGE);
    let runs = list(
        app,
        RunFilter {
            job_id,
            webhook_id,
            statuses,
            before,
            limit,
            ..Default::default()
        },
    )
    .await?;
    let next_before = (runs.len() == limit as usize)
        .then(|| runs.last().map(|run| run.id))
        .flatten();
    Ok(RunPage { runs, next_before })
}

/// Events of a run after `after_seq`, at most `limit` (clamped to [`MAX_EVENTS_PAGE`]).
pub async fn events(
    app: &App,
    id: RunId,
    after_seq: i64,
    limit: u32,
) -> ServiceResult<Vec<RunEvent>> {
    // Tell a missing run from a run without events.
    get(app, id).await?;
    Ok(app
        .store
        .list_events(id, after_seq, limit.clamp(1, MAX_EVENTS_PAGE))
        .await?)
}

/// Stores events that workers sent (skipping any stored before) and tells the runs' followers.
pub async fn store_events(app: &App, events: &[NewRunEvent]) -> ServiceResult<()> {
    app.store.append_events(events).await?;
    let runs: HashSet<RunId> = events.iter().map(|event| event.run_id).collect();
    for run_id in runs {
        app.notify_run(run_id);
    }
    Ok(())
}

/// Stops a run. A queued run is cancelled at once; a running one goes to `cancelling` and its
/// worker is told to stop (SIGTERM, then SIGKILL after the grace period).
pub async fn kill(app: &App, id: RunId) -> ServiceResult<Run> {
    stop(app, id, None).await
}

/// Stops run `id` because a newer delivery of the same concurrency key (run `newer`) wins.
pub(crate) async fn supersede(app: &App, id: RunId, newer: RunId) -> ServiceResult<Run> {
    stop(app, id, Some(newer)).await
}

async fn stop(app: &App, id: RunId, superseded_by: Option<RunId>) -> ServiceResult<Run> {
    for _ in 0..5 {
        let mut run = get(app, id).await?;
        let (expected, attempt) = (run.status, run.attempt);
        match run.status {
            RunStatus::Queued => {
                run.status = RunStatus::Cancelled;
                run.finished_at = Some(Utc::now());
                run.is_error = true;
                run.error = Some(match superseded_by {
                    Some(newer) => format!(
                        "superseded by a newer delivery of its key (run {newer}) before it started"
                    ),
                    None => "cancelled before it started".to_owned(),
                });
                let mut data = json!({ "step": "cancelled", "before_start": true });
                if let Some(newer) = superseded_by {
                    data["superseded_by"] = json!(newer);
                }
                let event = run.control_event(data);
                if app
                    .store
                    .update_run(&run, expected, attempt, &[event])
                    .await?
                {
                    app.notify_run(id);
                    app.dispatcher_wake.notify_one();
                    ended(app, &run);
                    return Ok(run);
                }
            }
            RunStatus::Running | RunStatus::WaitingForApproval => {
                run.status = RunStatus::Cancelling;
                let mut data = json!({ "step": "cancel_requested" });
                if let Some(newer) = superseded_by {
                    data["superseded_by"] = json!(newer);
                }
                let event = run.control_event(data);
                if app
                    .store
                    .update_run(&run, expected, attempt, &[event])
                    .await?
                {
                    app.notify_run(id);
                    push_cancel(app, id).await;
                    return Ok(run);
                }
            }
            RunStatus::Cancelling => {
                push_cancel(app, id).await;
                return Ok(run);
            }
            finished => {
                return Err(ServiceError::Conflict(format!(
                    "run {id} already finished with status `{finished}`"
                )));
            }
        }
        // Lost a race with another transition: look again.
    }
    Err(ServiceError::Unavailable(format!(
        "run {id} kept changing state; try again"
    )))
}

async fn push_cancel(app: &App, run_id: RunId) {
    if let Err(err) = app
        .bus
        .publish_control(ControlMessage::Cancel { run_id })
        .await
    {
        // The worker also learns it from its next heartbeat reply.
        tracing::warn!(run.id = %run_id, error = %err, "could not push the cancel request");
    }
}

/// How many runs wait in the queue (the bound on queued work).
pub async fn count_queued(app: &App) -> ServiceResult<u64> {
    Ok(app.store.count_queued_runs().await?)
}

/// How many runs of each status a filter matches (its statuses, `before` and limit aside).
pub async fn count_by_status(
    app: &App,
    filter: &RunFilter,
) -> ServiceResult<Vec<(RunStatus, u64)>> {
    Ok(app.store.count_runs_by_status(filter).await?)
}

/// What to change when running a run again; `None` keeps the original's.
#[derive(Debug, Default)]
pub struct RerunEdits {
    /// The prompt (Claude runs) or the command (shell runs).
    pub prompt: Option<String>,
    /// `Some(None)` goes back to the CLI's default model.
    pub model: Option<Option<String>>,
    pub allowed_tools: Option<Vec<String>>,
}

/// Starts a new run with a finished or running run's settings, changed by `edits`. It belongs
/// to the same job (if that job still exists) and is a manual run.
pub async fn rerun(app: &App, id: RunId, edits: RerunEdits) -> ServiceResult<Run> {
    let original = get(app, id).await?;
    let mut snapshot = original.settings.clone();
    if let Some(prompt) = &edits.prompt {
        if prompt.trim().is_empty() {
            return Err(ServiceError::invalid("prompt", "must not be empty"));
        }
        if prompt.len() > MAX_PROMPT_BYTES {
            return Err(ServiceError::invalid(
                "prompt",
                format!("is {} bytes; the limit is {MAX_PROMPT_BYTES}", prompt.len()),
            ));
        }
    }
    match &mut snapshot.kind {
        RunKind::Claude(spec) => {
            if let Some(prompt) = edits.prompt {
                spec.prompt = prompt;
            }
            if let Some(model) = edits.model {
                spec.model = model.map(|m| m.trim().to_owned()).filter(|m| !m.is_empty());
            }
            if let Some(tools) = edits.allowed_tools {
                spec.allowed_tools = crate::domain::settings::tools("allowed_tools", tools)?;
            }
        }
        RunKind::Shell { command, .. } => {
            if edits.model.is_some() || edits.allowed_tools.is_some() {
                return Err(ServiceError::invalid(
                    "model",
                    "a shell run has no model or tools; change its command only",
                ));
            }
            if let Some(prompt) = edits.prompt {
                *command = prompt;
            }
        }
        RunKind::Http(_) => {
            if edits.prompt.is_some() || edits.model.is_some() || edits.allowed_tools.is_some() {
                return Err(ServiceError::invalid(
                    "prompt",
                    "an http run is run again as it was; change the job's request instead",
                ));
            }
        }
    }
    let job = match original.job_id {
        Some(job_id) => app.store.get_job(job_id).await?,
        None => None,
    };
    let mut run = Run::queued(Trigger::Manual, job.as_ref(), snapshot, None);
    if job.is_none() && original.job_id.is_none() {
        // A quick run's workspace is its own.
        run.settings.workspace = format!("quick-{}", run.id);
        run.trigger = Trigger::Quick;
    }
    submit(app, run).await
}
