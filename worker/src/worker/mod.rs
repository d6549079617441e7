//! The run loop of a worker: pull run requests into free slots, hand each delivery to an
//! attempt of its own, and stop what still runs at shutdown.
//!
//! The loop also holds what all attempts share: the table of active runs (through which a
//! cancel request on the control messages, or the shutdown, stops an attempt), the status the
//! worker announces at every heartbeat interval, and the batchers that send many attempts'
//! claims and completions in one request. One attempt, from claim to completion, lives in
//! `attempt.rs`; the numbering and batched publishing of its events in `events.rs`.

mod attempt;
mod events;
mod http;
mod tasks;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopilot_proto::{
    AttemptEnd, Bus, BusError, ControlMessage, RunAttempt, RunId, StopReason, WorkerId, WorkerKey,
    WorkerReply, WorkerRequest, WorkerStatus,
};
use chrono::Utc;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::attempt::{Attempt, Stopper};
use crate::batch::{Batcher, Limits};
use crate::command::CommandEnv;
use crate::executor::Executor;
use crate::workspaces::{LocalWorkspaces, Workspaces};

/// What a worker serves and how: its pools, how many runs at once, where workspaces live, the
/// environment of every run, and the timings of stops, heartbeats and event batches.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub worker_id: WorkerId,
    /// The pools whose run requests this worker serves.
    pub pools: Vec<String>,
    /// Runs executed at the same time.
    pub concurrency: usize,
    pub workspaces_root: PathBuf,
    pub command_env: CommandEnv,
    /// Between SIGTERM (or container stop) and SIGKILL.
    pub kill_grace: Duration,
    /// At shutdown, how long running runs may go on before they are stopped and handed back.
    pub shutdown_grace: Duration,
    pub heartbeat_interval: Duration,
    /// Most events in one published batch.
    pub event_batch_max: usize,
    /// How long a batch waits for more events before it is published.
    pub event_linger: Duration,
}

/// The runs this worker holds now (claiming, executing or reporting), each with the stopper
/// of its attempt. A second delivery of a run held here is a duplicate and is dropped.
type ActiveRuns = Arc<Mutex<HashMap<RunId, Stopper>>>;

/// How many runs a worker executes at once, and how many it executes now.
#[derive(Clone)]
pub struct Slots {
    total: usize,
    active: ActiveRuns,
}

impl Slots {
    pub fn total(&self) -> usize {
        self.total
    }

    /// Runs held now (being claimed, executing, or not yet reported ended).
    pub fn busy(&self) -> usize {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Most runs in one claim or completion request.
const MAX_RUNS_PER_REQUEST: usize = 64;
/// Most bytes of events in one completion request, well under a bus message's size limit.
const MAX_COMPLETION_BYTES: usize = 512 * 1024;
/// How long one claim request waits for its reply. A claim is repeated when it times out (the
/// control plane that took it may be paused, NATS restarting), and repeating it is safe: the
/// control plane answers `Claimed` again to the process that claimed the run before.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves run requests from the bus with an executor until told to stop (see [`Worker::run`]).
pub struct Worker {
    config: Arc<WorkerConfig>,
    bus: Arc<dyn Bus>,
    executor: Arc<dyn Executor>,
    workspaces: Arc<dyn Workspaces>,
    active: ActiveRuns,
}

/// Claims and completions of this worker's runs, each sent many to a request.
struct Reports {
    /// This process's key: the secrets of the runs it claims are sealed to it.
    key: Arc<WorkerKey>,
    claims: Batcher<RunAttempt, WorkerReply>,
    completions: Batcher<AttemptEnd, WorkerReply>,
}

impl Reports {
    /// Starts both batchers; each sends one request at a time on `bus`, as `worker_id`.
    fn start(bus: &Arc<dyn Bus>, worker_id: &WorkerId) -> Self {
        let key = Arc::new(WorkerKey::generate());
        let claims = {
            let sealing_key = key.public_key();
            let (bus, worker_id) = (Arc::clone(bus), worker_id.clone());
            // Drawn once per process: a restarted worker of the same name is another claimant.
            let claim_token = uuid::Uuid::now_v7().simple().to_string();
            let limits = Limits {
                items: MAX_RUNS_PER_REQUEST,
                bytes: usize::MAX,
            };
            Batcher::start(limits, move |runs: Vec<RunAttempt>| {
                let (bus, worker_id) = (Arc::clone(&bus), worker_id.clone());
                let claim_token = Some(claim_token.clone());
                let sealing_key = Some(sealing_key.clone());
                async move {
                    let count = runs.len();
                    let request = WorkerRequest::Claim {
                        worker_id,
                        runs,
                        claim_token,
                        sealing_key,
                    };
                    let reply = tokio::time::timeout(CLAIM_TIMEOUT, bus.request(request))
                        .await
                        .unwrap_or(Err(BusError::Timeout(CLAIM_TIMEOUT)))?;
                    reply.into_each(count)
                }
            })
        };
        let completions = {
            let (bus, worker_id) = (Arc::clone(bus), worker_id.clone());
            let limits = Limits {
                items: MAX_RUNS_PER_REQUEST,
                bytes: MAX_COMPLETION_BYTES,
            };
            Batcher::start(limits, move |ended: Vec<AttemptEnd>| {
                let (bus, worker_id) = (Arc::clone(&bus), worker_id.clone());
                async move { send_completions(bus.as_ref(), worker_id, ended).await }
            })
        };
        Self {
            key,
            claims,
            completions,
        }
    }
}

/// Reports the ends of `ended` attempts in one request; one reply per attempt, in order.
async fn send_completions(
    bus: &dyn Bus,
    worker_id: WorkerId,
    ended: Vec<AttemptEnd>,
) -> Result<Vec<WorkerReply>, BusError> {
    let count = ended.len();
    let reply = bus
        .request(WorkerRequest::Complete { worker_id, ended })
        .await?;
    reply.into_each(count)
}

impl Worker {
    /// A worker whose workspaces are directories under `config.workspaces_root`.
    pub fn new(config: WorkerConfig, bus: Arc<dyn Bus>, executor: Arc<dyn Executor>) -> Self {
        let workspaces = Arc::new(LocalWorkspaces {
            root: config.workspaces_root.clone(),
        });
        Self {
            config: Arc::new(config),
            bus,
            executor,
            workspaces,
            active: ActiveRuns::default(),
        }
    }

    /// Where workspaces come from and go (see [`crate::workspaces`]).
    pub fn with_workspaces(mut self, workspaces: Arc<dyn Workspaces>) -> Self {
        self.workspaces = workspaces;
        self
    }

    /// A view of how many of this worker's slots are taken, readable while it runs (metrics).
    pub fn slots(&self) -> Slots {
        Slots {
            total: self.config.concurrency,
            active: Arc::clone(&self.active),
        }
    }

    /// Serves run requests until `cancel` fires; then stops the runs still going and waits for
    /// them to report.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        // Every pool pulls into the same slots, each up to its share of them at once.
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let share = self
            .config
            .concurrency
            .div_ceil(self.config.pools.len().max(1))
            .max(1);
        let mut pulls = Vec::with_capacity(self.config.pools.len());
        for pool in &self.config.pools {
            pulls.push(self.bus.pull_runs(pool, Arc::clone(&slots), share).await?);
        }
        let mut deliveries = futures::stream::select_all(pulls);
        let control = self.bus.subscribe_control().await?;
        let started_at = Utc::now();
        let stop_announcing = CancellationToken::new();
        let announcing = tokio::spawn(announce(
            Arc::clone(&self.config),
            Arc::clone(&self.bus),
            Arc::clone(&self.active),
            self.executor.name(),
            started_at,
            cancel.clone(),
            stop_announcing.clone(),
        ));
        tracing::info!(
            worker.id = %self.config.worker_id,
            pools = ?self.config.pools,
            executor = self.executor.name(),
            concurrency = self.config.concurrency,
            "worker started"
        );
        // Cancel requests are honoured until the last run is done, shutdown included.
        let stop_following = CancellationToken::new();
        let watches_changed = Arc::new(tokio::sync::Notify::new());
        let following = tokio::spawn(follow_control(
            control,
            Arc::clone(&self.active),
            Arc::clone(&watches_changed),
            stop_following.clone(),
        ));
        // Files the pools' jobs watch, until the worker stops taking work.
        tokio::spawn(crate::file_watch::serve(
            Arc::clone(&self.config),
            Arc::clone(&self.bus),
            watches_changed,
            cancel.clone(),
        ));
        // Tasks (listing a server's tools) are served beside the runs, until the runs stop.
        let stop_serving_tasks = CancellationToken::new();
        let serving_tasks = {
            let (config, bus) = (Arc::clone(&self.config), Arc::clone(&self.bus));
            let (executor, stop) = (Arc::clone(&self.executor), stop_serving_tasks.clone());
            tokio::spawn(async move {
                if let Err(err) = tasks::serve(config, bus, executor, stop).await {
                    tracing::error!(error = %err, "this worker cannot serve tasks");
                }
            })
        };
        let reports = Arc::new(Reports::start(&self.bus, &self.config.worker_id));
        let mut tasks = JoinSet::new();
        loop {
            let delivery = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                delivery = deliveries.next() => match delivery {
                    Some(delivery) => delivery,
                    None => anyhow::bail!("the bus closed the run request stream"),
                },
            };
            let attempt = Attempt {
                config: Arc::clone(&self.config),
                bus: Arc::clone(&self.bus),
                executor: Arc::clone(&self.executor),
                workspaces: Arc::clone(&self.workspaces),
                active: Arc::clone(&self.active),
                reports: Arc::clone(&reports),
                slot: Default::default(),
            };
            tasks.spawn(attempt.handle(delivery));
            // Reap finished tasks so the set does not grow without bound.
            while tasks.try_join_next().is_some() {}
        }
        // No more pulling: slots kept for a waiting pull request go back.
        drop(deliveries);
        // Let what runs finish within the grace period, then stop the rest. Attempts that
        // already ended are still in the set until reaped: they are not waited for.
        while tasks.try_join_next().is_some() {}
        let grace = self.config.shutdown_grace;
        if !tasks.is_empty() {
            tracing::info!(
                runs = tasks.len(),
                grace_secs = grace.as_secs(),
                "waiting for running runs before stopping"
            );
        }
        if tokio::time::timeout(grace, join_all(&mut tasks))
            .await
            .is_err()
        {
            let running: Vec<Stopper> = self
                .active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            tracing::warn!(
                runs = running.len(),
                "stopping runs still going at shutdown"
            );
            for stopper in running {
                stopper.stop(StopReason::WorkerShutdown);
            }
            let report = grace + Duration::from_secs(5);
            if tokio::time::timeout(report, join_all(&mut tasks))
                .await
                .is_err()
            {
                tracing::warn!("runs did not report within {report:?} of being stopped");
            }
        }
        stop_serving_tasks.cancel();
        let _ = serving_tasks.await;
        stop_following.cancel();
        let _ = following.await;
        stop_announcing.cancel();
        let _ = announcing.await;
        Ok(())
    }
}

/// Tells the control plane at every heartbeat interval that this worker is alive, what it
/// serves and what it runs; `draining` once `shutdown` fired; a last time when `stop` fires.
async fn announce(
    config: Arc<WorkerConfig>,
    bus: Arc<dyn Bus>,
    active: ActiveRuns,
    executor: &'static str,
    started_at: chrono::DateTime<Utc>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    let status = |running: Vec<RunId>| WorkerStatus {
        worker_id: config.worker_id.clone(),
        pools: config.pools.clone(),
        capacity: u32::try_from(config.concurrency).unwrap_or(u32::MAX),
        running,
        executor: executor.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at,
        draining: shutdown.is_cancelled(),
    };
    loop {
        let running: Vec<RunId> = active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let request = WorkerRequest::Announce {
            status: status(running),
        };
        if let Err(err) = bus.request(request).await {
            tracing::debug!(error = %err, "announcing the worker failed; trying again at the next beat");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(config.heartbeat_interval) => {}
        }
    }
    let last = WorkerRequest::Announce {
        status: WorkerStatus {
            draining: true,
            ..status(Vec::new())
        },
    };
    let _ = bus.request(last).await;
}

/// Waits for every task in `tasks` to end.
async fn join_all(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

/// Stops the active run named by each cancel request on the control messages, until `cancel`
/// fires or the messages end.
async fn follow_control(
    mut control: futures::stream::BoxStream<'static, ControlMessage>,
    active: ActiveRuns,
    watches_changed: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return,
            message = control.next() => message,
        };
        match message {
            Some(ControlMessage::Cancel { run_id }) => {
                if let Some(stopper) = active
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&run_id)
                {
                    tracing::info!(run.id = %run_id, "cancel requested");
                    stopper.stop(StopReason::Cancelled);
                }
            }
            Some(ControlMessage::FileWatchesChanged) => watches_changed.notify_one(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests;
