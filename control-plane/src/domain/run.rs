//! Runs: the snapshot of what a run executes, the run as the store keeps it, and the records the
//! scheduler writes.

use autopilot_proto::{
    EventKind, EventOrigin, JobId, NewRunEvent, RunId, RunKind, RunStatus, Sandbox, TokenUsage,
    Trigger, WebhookId,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::job::{Job, OverlapPolicy};
use super::settings::RetryPolicy;
use super::tools::ToolGrant;

/// Snapshot of what a run executes, taken when the run is created.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct RunSnapshot {
    #[serde(flatten)]
    pub kind: RunKind,
    pub timeout_secs: u64,
    pub workspace: String,
    pub retry: RetryPolicy,
    pub pool: String,
    pub overlap: OverlapPolicy,
    /// Absent in runs stored before sandboxes existed: the defaults of the run's kind apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    /// The MCP servers granted, resolved against the registry when a worker claims the run (the
    /// worker records what that gave in the run's `tools_granted` event).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<ToolGrant>,
    /// The tool bundles named, expanded likewise when the run is claimed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundles: Vec<String>,
    /// The image of the run's container, when not the worker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The concurrency key its delivery rendered, and what it allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<RunConcurrency>,
    /// Files its worker writes in the workspace when the run's process has ended (the job's
    /// `on_end` handlers with `write`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcome_files: Vec<autopilot_proto::OutcomeFile>,
}

/// A webhook run's concurrency key (see `webhook::Concurrency`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RunConcurrency {
    pub key: String,
    pub limit: u32,
    pub newest_wins: bool,
}

impl RunSnapshot {
    pub fn sandbox(&self) -> Sandbox {
        self.sandbox
            .unwrap_or_else(|| Sandbox::default_for(&self.kind))
    }
}

#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct Run {
    pub id: RunId,
    pub job_id: Option<JobId>,
    pub job_name: Option<String>,
    pub trigger: Trigger,
    pub status: RunStatus,
    pub attempt: u32,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub settings: RunSnapshot,
    pub created_at: DateTime<Utc>,
    pub dispatched_at: Option<DateTime<Utc>>,
    /// A retry waits until this time.
    pub not_before: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub worker_id: Option<String>,
    pub exit_code: Option<i32>,
    pub is_error: bool,
    pub error: Option<String>,
    pub result: Option<String>,
    #[serde(flatten)]
    pub usage: TokenUsage,
    pub cost_usd: Option<f64>,
    pub num_turns: Option<u32>,
    pub models: Vec<String>,
    pub permission_denials: u32,
    /// The webhook whose delivery started the run.
    pub webhook_id: Option<WebhookId>,
    /// The delivery id the sender gave (`X-GitHub-Delivery`, `Idempotency-Key`, …).
    pub delivery_id: Option<String>,
    /// The W3C `traceparent` of the span that created the run (a webhook request, a fire, an
    /// API call): every later step of the run, on any process, joins that trace. `None` when
    /// tracing is off. Shown as the trace's id (`trace_id`), to find the run's trace.
    #[serde(rename = "trace_id", serialize_with = "trace_id_of")]
    pub trace_parent: Option<String>,
    /// Who paid for a Claude run's tokens: `api` (the cost is what was billed) or
    /// `subscription` (the cost is the CLI's estimate; budgets do not count it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billing: Option<autopilot_proto::Billing>,
}

/// The trace id inside a `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn trace_id_of<S: serde::Serializer>(
    trace_parent: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let trace_id = trace_parent
        .as_deref()
        .and_then(|parent| parent.split('-').nth(1));
    serializer.serialize_some(&trace_id)
}

impl Run {
    /// A new queued run, not yet dispatched.
    pub fn queued(
        trigger: Trigger,
        job: Option<&Job>,
        settings: RunSnapshot,
        scheduled_for: Option<DateTime<Utc>>,
    ) -> Self {
        Run {
            id: RunId::new(),
            job_id: job.map(|job| job.id),
            job_name: job.map(|job| job.name.clone()),
            trigger,
            status: RunStatus::Queued,
            attempt: 1,
            scheduled_for,
            settings,
            created_at: Utc::now(),
            dispatched_at: None,
            not_before: None,
            started_at: None,
            finished_at: None,
            heartbeat_at: None,
            worker_id: None,
            exit_code: None,
            is_error: false,
            error: None,
            result: None,
            usage: TokenUsage::default(),
            cost_usd: None,
            num_turns: None,
            models: Vec::new(),
            permission_denials: 0,
            webhook_id: None,
            delivery_id: None,
            trace_parent: None,
            billing: None,
        }
    }

    /// Whether worker `worker_id` executes this run's attempt `attempt` now.
    pub fn is_held_by(&self, attempt: u32, worker_id: &str) -> bool {
        self.attempt == attempt
            && self.status.is_executing()
            && self.worker_id.as_deref() == Some(worker_id)
    }

    /// A lifecycle event from the control plane about this run's current attempt.
    pub fn control_event(&self, data: Value) -> NewRunEvent {
        NewRunEvent {
            run_id: self.id,
            attempt: self.attempt,
            origin: EventOrigin::Control,
            // Unique per event without coordination; only used to spot redeliveries.
            origin_seq: rand::random::<u64>() >> 1,
            at: Utc::now(),
            kind: EventKind::Lifecycle,
            data,
        }
    }

    /// Queues the run again as its next attempt, after the retry policy's backoff or, when the
    /// limit that ended the attempt said when it resets (`reset_at`), at that time (at most a
    /// day away). Returns the delay.
    pub fn requeue_as_next_attempt(
        &mut self,
        reset_at: Option<DateTime<Utc>>,
    ) -> std::time::Duration {
        self.attempt += 1;
        let backoff = self.settings.retry.delay_before_attempt(self.attempt);
        let delay = match reset_at.and_then(|at| (at - Utc::now()).to_std().ok()) {
            Some(until_reset) => until_reset.min(MAX_RESET_WAIT),
            None => backoff,
        };
        self.status = RunStatus::Queued;
        self.not_before = Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default());
        self.dispatched_at = None;
        self.worker_id = None;
        self.heartbeat_at = None;
        delay
    }
}

/// The longest a retry waits for a limit's reset.
const MAX_RESET_WAIT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The queued runs of one worker pool.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolQueue {
    pub pool: String,
    pub queued: u64,
    /// When the oldest of them was created.
    pub oldest_created_at: DateTime<Utc>,
}

/// Which runs to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub job_id: Option<JobId>,
    pub webhook_id: Option<WebhookId>,
    pub statuses: Vec<RunStatus>,
    pub trigger: Option<Trigger>,
    /// Only runs created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only runs older than this one (the previous page's last id).
    pub before: Option<RunId>,
    pub limit: u32,
}

/// One scheduler step for one job, written atomically with the others of its batch.
#[derive(Clone, Debug)]
pub struct FireRecord {
    pub job_id: JobId,
    pub job_name: String,
    /// The job's new fire cursor.
    pub cursor: DateTime<Utc>,
    /// Runs to create; a run whose `(job_id, scheduled_for)` exists already is left out.
    pub runs: Vec<Run>,
    /// First events of those runs (stored only for the runs actually created).
    pub events: Vec<autopilot_proto::NewRunEvent>,
    pub missed: u64,
    pub overlap_skipped: u64,
    /// A one-shot job is disabled once it fired.
    pub disable: bool,
}
