//! Runs: creating and submitting them, reading them and their events, killing them.

use autopilot_proto::{
    ControlMessage, EventKind, EventOrigin, JobId, NewRunEvent, RunEvent, RunId, RunKind,
    RunStatus, Trigger,
};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{JobKind, OverlapPolicy, RetryPolicy, Run, RunFilter, RunSettings};
use crate::services::jobs::{ClaudeSettings, SandboxInput, DEFAULT_POOL, DEFAULT_TIMEOUT_SECS};

pub const MAX_PAGE: u32 = 500;

/// An ad-hoc prompt, run once in its own workspace.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct QuickRunInput {
    pub prompt: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub allowed_tools: Vec<String>,
    #[serde(default)]
    pub max_turns: Option<u32>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    #[serde(default)]
    pub sandbox: Option<SandboxInput>,
}

impl App {
    /// Stores a new queued run, records that it was queued and dispatches it (unless an earlier
    /// run of its job must finish first).
    pub async fn submit_run(&self, mut run: Run) -> ServiceResult<Run> {
        // A run that need not wait for an earlier one is stored already marked dispatched, and
        // published right after: one statement fewer. Should the process die in between, the
        // recovery at start (embedded) or the republishing of stale dispatches (fleet) sends it.
        let queued_behind = run
            .job_id
            .filter(|_| run.settings.overlap == OverlapPolicy::Queue);
        if queued_behind.is_none() {
            run.dispatched_at = Some(Utc::now());
        }
        let queued = control_event(&run, json!({ "step": "queued", "trigger": run.trigger }));
        self.store.insert_run(&run, &[queued]).await?;
        tracing::info!(run.id = %run.id, job.id = ?run.job_id, trigger = run.trigger.as_str(), "run queued");
        match queued_behind {
            None => Ok(self.publish_dispatched(run).await),
            Some(job_id) => self.dispatch_behind_earlier(run, job_id).await,
        }
    }

    pub async fn quick_run(&self, input: QuickRunInput) -> ServiceResult<Run> {
        if input.prompt.trim().is_empty() {
            return Err(ServiceError::invalid("prompt", "must not be empty"));
        }
        let settings = ClaudeSettings::validate(ClaudeSettings {
            model: input.model,
            allowed_tools: input.allowed_tools,
            disallowed_tools: Vec::new(),
            max_turns: input.max_turns,
            timeout_secs: input.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
            max_cost_usd: input.max_cost_usd,
        })?;
        let sandbox = input
            .sandbox
            .unwrap_or_default()
            .resolve(JobKind::Claude.default_sandbox(), JobKind::Claude)?;
        let run_id = RunId::new();
        let settings = RunSettings {
            kind: RunKind::Claude(autopilot_proto::ClaudeSpec {
                prompt: input.prompt,
                model: settings.model,
                allowed_tools: settings.allowed_tools,
                disallowed_tools: settings.disallowed_tools,
                max_turns: settings.max_turns,
                max_cost_usd: settings.max_cost_usd,
            }),
            timeout_secs: settings.timeout_secs,
            workspace: format!("quick-{run_id}"),
            retry: RetryPolicy {
                count: 0,
                backoff_secs: 1,
                lost: false,
            },
            pool: DEFAULT_POOL.to_owned(),
            overlap: OverlapPolicy::Allow,
            sandbox: Some(sandbox),
        };
        let mut run = Run::queued(Trigger::Quick, None, settings, None);
        run.id = run_id;
        self.submit_run(run).await
    }

    /// Runs of a job that are queued and sent, running or being cancelled.
    pub async fn active_runs(&self, job_id: JobId) -> ServiceResult<Vec<Run>> {
        let runs = self
            .store
            .runs_in_status(&RunStatus::ACTIVE, Some(job_id))
            .await?;
        Ok(runs
            .into_iter()
            .filter(|run| run.status != RunStatus::Queued || run.dispatched_at.is_some())
            .collect())
    }

    pub async fn get_run(&self, id: RunId) -> ServiceResult<Run> {
        self.store
            .get_run(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                what: "run",
                id: id.to_string(),
            })
    }

    pub async fn list_runs(&self, mut filter: RunFilter) -> ServiceResult<Vec<Run>> {
        if filter.limit == 0 || filter.limit > MAX_PAGE {
            filter.limit = filter.limit.clamp(1, MAX_PAGE);
        }
        Ok(self.store.list_runs(&filter).await?)
    }

    pub async fn run_events(
        &self,
        id: RunId,
        after_seq: i64,
        limit: u32,
    ) -> ServiceResult<Vec<RunEvent>> {
        // Tell a missing run from a run without events.
        self.get_run(id).await?;
        Ok(self
            .store
            .list_events(id, after_seq, limit.clamp(1, 5000))
            .await?)
    }

    /// Stops a run. A queued run is cancelled at once; a running one goes to `cancelling` and its
    /// worker is told to stop (SIGTERM, then SIGKILL after the grace period).
    pub async fn kill_run(&self, id: RunId) -> ServiceResult<Run> {
        for _ in 0..5 {
            let mut run = self.get_run(id).await?;
            let (expected, attempt) = (run.status, run.attempt);
            match run.status {
                RunStatus::Queued => {
                    run.status = RunStatus::Cancelled;
                    run.finished_at = Some(Utc::now());
                    run.is_error = true;
                    run.error = Some("cancelled before it started".to_owned());
                    let event =
                        control_event(&run, json!({ "step": "cancelled", "before_start": true }));
                    if self
                        .store
                        .update_run(&run, expected, attempt, &[event])
                        .await?
                    {
                        self.notify_run(id);
                        self.dispatcher_wake.notify_one();
                        return Ok(run);
                    }
                }
                RunStatus::Running => {
                    run.status = RunStatus::Cancelling;
                    let event = control_event(&run, json!({ "step": "cancel_requested" }));
                    if self
                        .store
                        .update_run(&run, expected, attempt, &[event])
                        .await?
                    {
                        self.notify_run(id);
                        self.push_cancel(id).await;
                        return Ok(run);
                    }
                }
                RunStatus::Cancelling => {
                    self.push_cancel(id).await;
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

    async fn push_cancel(&self, run_id: RunId) {
        if let Err(err) = self
            .bus
            .publish_control(ControlMessage::Cancel { run_id })
            .await
        {
            // The worker also learns it from its next heartbeat reply.
            tracing::warn!(run.id = %run_id, error = %err, "could not push the cancel request");
        }
    }

    /// Appends a lifecycle event from the control plane. Failing to record it is logged, never
    /// fatal: the run's state in the store is what counts.
    pub async fn record_control_event(&self, run: &Run, data: Value) {
        let event = control_event(run, data);
        if let Err(err) = self.store.append_events(&[event]).await {
            tracing::warn!(run.id = %run.id, error = %err, "could not record a lifecycle event");
        }
        self.notify_run(run.id);
    }
}

/// A lifecycle event from the control plane.
pub fn control_event(run: &Run, data: Value) -> NewRunEvent {
    NewRunEvent {
        run_id: run.id,
        attempt: run.attempt,
        origin: EventOrigin::Control,
        // Unique per event without coordination; only used to spot redeliveries.
        origin_seq: rand::random::<u64>() >> 1,
        at: Utc::now(),
        kind: EventKind::Lifecycle,
        data,
    }
}
