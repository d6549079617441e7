//! The bus between control plane and workers.
//!
//! The database owns every run; the bus only delivers. Run requests go on a work queue with
//! at-least-once delivery: a consumer acknowledges a delivery when done, asks for redelivery with
//! `nak`, or keeps it alive with `in_progress` while a run executes. Each request carries a dedup
//! id so a republished request within the dedup window is dropped by the bus itself. Workers talk
//! back through request / reply (claim, heartbeat, complete; one claim or completion request
//! carries many runs) and stream events on their own channel. Cancellation is pushed to every
//! worker.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::event::NewRunEvent;
use crate::ids::{JobId, RunId, WorkerId};
use crate::run::{RunOutcome, RunSpec};
use crate::sealed::SealedSecrets;

#[derive(Clone, Debug, thiserror::Error)]
pub enum BusError {
    #[error("the bus is closed")]
    Closed,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The bus was given settings it cannot work with; the message names the setting.
    #[error("invalid bus configuration: {0}")]
    InvalidConfig(String),
}

/// A request to execute one attempt of a run. Deliberately small: the run's settings (and any
/// secret it needs) are handed out by the control plane when a worker claims it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RunRequest {
    pub run_id: RunId,
    pub attempt: u32,
    /// The worker pool that should execute it.
    pub pool: String,
    /// Publishing the same dedup id again within the window delivers nothing new. A cron fire
    /// uses `(job_id, scheduled_for)`; other runs use `(run_id, attempt)`.
    pub dedup_id: String,
    /// The W3C `traceparent` of the span that published it, so the worker's spans join the
    /// run's trace. On NATS it travels in the message's `traceparent` header, not the body.
    #[serde(skip)]
    pub trace_parent: Option<String>,
}

/// Name of the message header that carries a run request's trace context (W3C Trace Context).
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A batch of events from one producer, in order.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct EventBatch {
    pub events: Vec<NewRunEvent>,
}

/// Pushed to every worker.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    Cancel {
        run_id: RunId,
    },
    /// A job's file watch was created, changed or removed: workers ask for their watches again
    /// (they also do at every heartbeat).
    FileWatchesChanged,
}

/// Told to every control plane, so that what one replica changed reaches the live followers and
/// the scheduler of the others. A hint to look again in the store, never the state itself: a
/// notice that is lost delays a follower until its periodic look.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Notice {
    /// The control plane that sent it; it ignores its own.
    pub origin: String,
    pub what: NoticeKind,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NoticeKind {
    /// These runs gained events or changed state.
    RunsUpdated { run_ids: Vec<RunId> },
    /// A job was created, changed or deleted: the scheduler looks at the jobs again.
    JobsChanged,
}

/// A worker's request to the control plane.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerRequest {
    /// Take these runs (`queued → running`, each a compare-and-set on its attempt). Answered by
    /// [`WorkerReply::Each`], one reply per run in order: `Claimed` or `Rejected`. A worker
    /// claims together the runs delivered while its previous claim was on the way.
    Claim {
        worker_id: WorkerId,
        runs: Vec<RunAttempt>,
        /// A token the worker process draws at start. A run this process already claimed at
        /// the same attempt is answered `Claimed` again, so a claim whose reply was lost (NATS
        /// restarting, a paused control plane) can be repeated; without it only queued runs
        /// are claimed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim_token: Option<String>,
        /// The public half of the worker process's [`crate::WorkerKey`]: secrets of the runs
        /// it claims are sealed to it. A worker without one is given no run that needs secrets.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sealing_key: Option<String>,
    },
    /// The run is still alive on this worker.
    Heartbeat {
        run_id: RunId,
        attempt: u32,
        worker_id: WorkerId,
    },
    /// The worker is alive, and this is what it serves and runs. Sent at every heartbeat
    /// interval, and once more when it stops.
    Announce { status: WorkerStatus },
    /// These attempts ended. Answered by [`WorkerReply::Each`], one reply per attempt in order:
    /// `Ok` or `Rejected`.
    Complete {
        worker_id: WorkerId,
        ended: Vec<AttemptEnd>,
    },
    /// An operation of the run's `memory` server on its job's memory, relayed as the server
    /// wrote it (JSON; the control plane reads it). Answered by [`WorkerReply::Memory`], or
    /// `Rejected` when the attempt is not this worker's running one.
    Memory {
        run_id: RunId,
        attempt: u32,
        worker_id: WorkerId,
        op: serde_json::Value,
    },
    /// A tool call of the run needs an operator's approval (its `approval` server asked).
    /// Answered by [`WorkerReply::Approval`] (`pending` with the approval's id, or at once a
    /// denial), or `Rejected` when the attempt is not this worker's running one.
    Approval {
        run_id: RunId,
        attempt: u32,
        worker_id: WorkerId,
        ask: crate::approval::ApprovalAsk,
    },
    /// Where an approval asked for stands (the worker asks until it is decided). Answered by
    /// [`WorkerReply::Approval`]; past its deadline it is denied as timed out.
    ApprovalStatus {
        run_id: RunId,
        attempt: u32,
        worker_id: WorkerId,
        approval_id: String,
    },
    /// Which files the jobs of these pools watch. Answered by [`WorkerReply::FileWatches`].
    FileWatches {
        worker_id: WorkerId,
        pools: Vec<String>,
    },
    /// A watched file changed (after the watch's debounce). The control plane starts the job's
    /// run once per change, however many workers of the pool saw it.
    FileChanged {
        worker_id: WorkerId,
        change: FileChange,
    },
}

/// Files a job watches on its pool's workers.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FileWatch {
    pub job_id: JobId,
    /// Absolute paths; the last part may hold `*` and `?` (`/data/inbox/*.csv`).
    pub paths: Vec<String>,
    /// `create`, `modify`, `delete`.
    pub events: Vec<String>,
    /// Also in the directories below.
    pub recursive: bool,
    /// Quiet time after the last event of a file before it counts as one change.
    pub debounce_ms: u64,
}

/// A change of a watched file, as a worker saw it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FileChange {
    pub job_id: JobId,
    pub path: String,
    /// `create`, `modify` or `delete`.
    pub event: String,
    /// The file's modification time and size after the change (none after a delete): the same
    /// for every worker that sees one shared file change, so the change runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// When the worker saw it settle.
    pub seen_at: DateTime<Utc>,
}

/// One attempt of a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RunAttempt {
    pub run_id: RunId,
    pub attempt: u32,
}

/// How an attempt ended, as its worker reports it.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct AttemptEnd {
    pub run_id: RunId,
    pub attempt: u32,
    pub outcome: RunOutcome,
    /// This attempt's worker events sent on the event stream, so the control plane can let
    /// them land before it records the final state.
    pub events_published: u64,
    /// The events that followed them, stored together with the final state.
    #[serde(default)]
    pub last_events: Vec<NewRunEvent>,
}

/// What a worker reports about itself.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub worker_id: WorkerId,
    /// The pools whose run requests it takes.
    pub pools: Vec<String>,
    /// Runs it executes at the same time.
    pub capacity: u32,
    /// Runs it is executing now.
    pub running: Vec<RunId>,
    /// `local` or `docker`.
    pub executor: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// It stopped taking runs (shutting down); the ones it has are finishing.
    pub draining: bool,
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerReply {
    Claimed {
        spec: Box<RunSpec>,
        /// The credentials the run's MCP servers use, sealed to the claiming process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secrets: Option<SealedSecrets>,
        /// Why the run cannot start although it was claimed (a granted server or credential
        /// that does not exist): the worker fails it with this message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cannot_start: Option<String>,
    },
    /// The claim, heartbeat or completion is refused (already taken, cancelled, superseded).
    Rejected { reason: String },
    /// Keep going.
    Ok,
    /// The run was asked to stop.
    Cancel,
    /// One reply per item of a [`WorkerRequest::Claim`] or [`WorkerRequest::Complete`], in
    /// order.
    Each { replies: Vec<WorkerReply> },
    /// The answer to a [`WorkerRequest::Memory`], for the run's memory server (JSON).
    Memory { answer: serde_json::Value },
    /// The answer to a [`WorkerRequest::Approval`] or [`WorkerRequest::ApprovalStatus`].
    Approval {
        answer: crate::approval::ApprovalAnswer,
    },
    /// The answer to a [`WorkerRequest::FileWatches`].
    FileWatches { watches: Vec<FileWatch> },
}

impl WorkerReply {
    /// The `count` replies of an [`WorkerReply::Each`] answer to a request of `count` items.
    pub fn into_each(self, count: usize) -> Result<Vec<WorkerReply>, BusError> {
        match self {
            WorkerReply::Each { replies } if replies.len() == count => Ok(replies),
            WorkerReply::Each { replies } => Err(BusError::Malformed(format!(
                "{} replies to a request of {count} items",
                replies.len()
            ))),
            other => Err(BusError::Malformed(format!(
                "expected one reply per item, got {other:?}"
            ))),
        }
    }
}

/// Acknowledgement handle of one delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Done: never deliver again.
    async fn ack(&self) -> Result<(), BusError>;
    /// Deliver again, after `delay`.
    async fn nak(&self, delay: Duration) -> Result<(), BusError>;
    /// Still working: restart the redelivery timer.
    async fn in_progress(&self) -> Result<(), BusError>;
}

/// One delivered message with its acknowledgement handle.
pub struct Delivery<T> {
    pub message: T,
    /// How many times this message has been delivered, starting at 1.
    pub delivery_count: u32,
    pub acker: Box<dyn Acker>,
}

/// A run request delivered into one of a worker's slots; the slot is free again when the
/// permit is dropped.
pub struct RunDelivery {
    pub delivery: Delivery<RunRequest>,
    pub slot: OwnedSemaphorePermit,
}

/// A request waiting for its reply: a worker's to the control plane, or a task a control plane
/// gave a worker.
pub struct Incoming<Q, A> {
    pub request: Q,
    pub reply: tokio::sync::oneshot::Sender<A>,
}

/// A worker request waiting for its reply.
pub type IncomingRequest = Incoming<WorkerRequest, WorkerReply>;
/// A task waiting for its worker's reply.
pub type IncomingTask = Incoming<crate::WorkerTask, crate::TaskReply>;

#[async_trait]
pub trait Bus: Send + Sync {
    /// Whether a run request published here leaves the process (and its publish is a step
    /// worth a span of its own in the run's trace). `false` for the in-process bus, where a
    /// publish is a push onto a queue.
    fn crosses_processes(&self) -> bool {
        true
    }

    /// How long this process has been connected to the bus without a break (`None` while it
    /// is not): a worker silent for longer than that may have been talking to a bus this
    /// process could not hear. The in-process bus is always connected.
    fn connected_for(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::MAX)
    }

    /// Publish a run request to its pool's work queue. Returns `false` when the dedup id was
    /// already seen within the window (nothing was published).
    async fn publish_run(&self, request: RunRequest) -> Result<bool, BusError>;
    /// Competing consumption of a pool's run requests, into free `slots`: each delivery holds
    /// one of its permits, and no more requests are taken than there are free permits, so a
    /// busy worker never holds requests an idle one could run. Up to `batch` are asked for at
    /// once.
    async fn pull_runs(
        &self,
        pool: &str,
        slots: Arc<Semaphore>,
        batch: usize,
    ) -> Result<BoxStream<'static, RunDelivery>, BusError>;

    async fn publish_events(&self, batch: EventBatch) -> Result<(), BusError>;
    /// Competing consumption of event batches (the control plane's ingesters).
    async fn pull_events(&self) -> Result<BoxStream<'static, Delivery<EventBatch>>, BusError>;

    async fn publish_control(&self, message: ControlMessage) -> Result<(), BusError>;
    /// Every subscriber sees every control message published after it subscribed.
    async fn subscribe_control(&self) -> Result<BoxStream<'static, ControlMessage>, BusError>;

    /// Tell every control plane (no delivery guarantee; see [`Notice`]).
    async fn publish_notice(&self, notice: Notice) -> Result<(), BusError>;
    /// Every subscriber sees every notice published after it subscribed, its own included.
    async fn subscribe_notices(&self) -> Result<BoxStream<'static, Notice>, BusError>;

    /// Send a worker request to the control plane and wait for its reply.
    async fn request(&self, request: WorkerRequest) -> Result<WorkerReply, BusError>;
    /// The control plane's side of [`Bus::request`].
    async fn serve_requests(&self) -> Result<BoxStream<'static, IncomingRequest>, BusError>;

    /// Hand `task` to one worker serving `pool` and wait up to `timeout` for its reply;
    /// `Unavailable` at once when no worker serves the pool.
    async fn request_task(
        &self,
        pool: &str,
        task: crate::WorkerTask,
        timeout: std::time::Duration,
    ) -> Result<crate::TaskReply, BusError>;
    /// A worker's side of [`Bus::request_task`]: the tasks for `pool`, each to one of the
    /// workers serving it.
    async fn serve_tasks(&self, pool: &str) -> Result<BoxStream<'static, IncomingTask>, BusError>;
}
