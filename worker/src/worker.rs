//! The worker loop: pull → claim → execute → stream events → complete.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopilot_proto::{
    Acker, AttemptEnd, Bus, BusError, ControlMessage, EventBatch, EventKind, EventOrigin,
    NewRunEvent, RunAttempt, RunDelivery, RunId, RunKind, RunOutcome, RunRequest, RunSpec,
    StopReason, WorkerId, WorkerReply, WorkerRequest, WorkerStatus,
};
use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batch::{Batcher, Limits};
use crate::command::{build_command, CommandEnv};
use crate::executor::{ExecError, Executor, OutputLine, OutputStream};
use crate::stream_json::{self, StreamParser};
use crate::workspaces::{LocalWorkspaces, WorkspaceError, Workspaces};

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

/// Stops a running attempt, remembering the first reason given.
#[derive(Clone, Default)]
struct Stopper {
    token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl Stopper {
    fn stop(&self, reason: StopReason) {
        let mut current = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_none() {
            *current = Some(reason);
        }
        self.token.cancel();
    }

    fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type ActiveRuns = Arc<Mutex<HashMap<RunId, Stopper>>>;

/// Most runs in one claim or completion request.
const MAX_RUNS_PER_REQUEST: usize = 64;
/// Most bytes of events in one completion request, well under a bus message's size limit.
const MAX_COMPLETION_BYTES: usize = 512 * 1024;

pub struct Worker {
    config: Arc<WorkerConfig>,
    bus: Arc<dyn Bus>,
    executor: Arc<dyn Executor>,
    workspaces: Arc<dyn Workspaces>,
    active: ActiveRuns,
}

/// Claims and completions of this worker's runs, each sent many to a request.
struct Reports {
    claims: Batcher<RunAttempt, WorkerReply>,
    completions: Batcher<AttemptEnd, WorkerReply>,
}

impl Reports {
    fn start(bus: &Arc<dyn Bus>, worker_id: &WorkerId) -> Self {
        let claims = {
            let (bus, worker_id) = (Arc::clone(bus), worker_id.clone());
            let limits = Limits {
                items: MAX_RUNS_PER_REQUEST,
                bytes: usize::MAX,
            };
            Batcher::start(limits, move |runs: Vec<RunAttempt>| {
                let (bus, worker_id) = (Arc::clone(&bus), worker_id.clone());
                async move {
                    let count = runs.len();
                    let reply = bus
                        .request(WorkerRequest::Claim { worker_id, runs })
                        .await?;
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
                async move { complete(bus.as_ref(), worker_id, ended).await }
            })
        };
        Self {
            claims,
            completions,
        }
    }
}

async fn complete(
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
        let following = tokio::spawn(follow_control(
            control,
            Arc::clone(&self.active),
            stop_following.clone(),
        ));
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
            };
            tasks.spawn(attempt.handle(delivery));
            // Reap finished tasks so the set does not grow without bound.
            while tasks.try_join_next().is_some() {}
        }
        // No more pulling: slots kept for a waiting pull request go back.
        drop(deliveries);
        // Stop pulling; let what runs finish within the grace period, then stop the rest.
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

async fn join_all(tasks: &mut JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

async fn follow_control(
    mut control: futures::stream::BoxStream<'static, ControlMessage>,
    active: ActiveRuns,
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
            None => return,
        }
    }
}

/// Everything one delivery needs.
struct Attempt {
    config: Arc<WorkerConfig>,
    bus: Arc<dyn Bus>,
    executor: Arc<dyn Executor>,
    workspaces: Arc<dyn Workspaces>,
    active: ActiveRuns,
    reports: Arc<Reports>,
}

impl Attempt {
    /// Claims, executes and reports the delivered run; its slot is free again at the end.
    async fn handle(self, delivery: RunDelivery) {
        let RunDelivery {
            delivery,
            slot: _slot,
        } = delivery;
        let RunRequest {
            run_id, attempt, ..
        } = delivery.message.clone();
        let claim = RunAttempt { run_id, attempt };
        let spec = match self.reports.claims.call(claim, 0).await {
            Ok(WorkerReply::Claimed { spec }) => *spec,
            Ok(reply) => {
                tracing::debug!(run.id = %run_id, ?reply, "claim refused; dropping the delivery");
                let _ = delivery.acker.ack().await;
                return;
            }
            Err(err) => {
                tracing::warn!(run.id = %run_id, error = %err, "claim failed; asking for redelivery");
                let _ = delivery.acker.nak(Duration::from_secs(1)).await;
                return;
            }
        };
        let span = tracing::info_span!("run", run.id = %run_id, run.attempt = attempt);
        let acker: Arc<dyn Acker> = Arc::from(delivery.acker);
        let stopper = Stopper::default();
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id, stopper.clone());

        let (events, events_done) = EventSink::start(
            Arc::clone(&self.bus),
            run_id,
            attempt,
            self.config.event_batch_max,
            self.config.event_linger,
        );
        let heartbeat = tokio::spawn(heartbeat(
            Arc::clone(&self.bus),
            self.config.worker_id.clone(),
            run_id,
            attempt,
            self.config.heartbeat_interval,
            Arc::clone(&acker),
            stopper.clone(),
        ));
        let outcome = self
            .execute(&spec, &events, &stopper)
            .instrument(span)
            .await;
        let left = events.finish(events_done).await;
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&run_id);
        self.complete(run_id, attempt, outcome, left).await;
        // The attempt stays alive (run heartbeat, delivery kept in progress) until its end is
        // reported: flushing events and reporting may take a while when NATS is reconnecting,
        // and the reaper must not take the run for lost meanwhile.
        heartbeat.abort();
        if let Err(err) = acker.ack().await {
            tracing::warn!(run.id = %run_id, error = %err, "could not acknowledge the delivery");
        }
    }

    async fn execute(&self, spec: &RunSpec, events: &EventSender, stopper: &Stopper) -> RunOutcome {
        let started_at = Utc::now();
        let mut outcome = self.execute_inner(spec, events, stopper).await;
        outcome.started_at = Some(started_at);
        outcome.finished_at = Some(Utc::now());
        outcome
    }

    async fn execute_inner(
        &self,
        spec: &RunSpec,
        events: &EventSender,
        stopper: &Stopper,
    ) -> RunOutcome {
        if spec.workspace.is_empty()
            || spec.workspace.contains(['/', '\\'])
            || spec.workspace.starts_with('.')
        {
            return failed(format!("invalid workspace name `{}`", spec.workspace));
        }
        let is_claude = matches!(spec.kind, RunKind::Claude(_));
        if is_claude && !self.config.command_env.has_model_credentials() {
            let error = "no model API credentials: set ANTHROPIC_API_KEY in the environment of `autopilot serve` \
                         (or of the worker) and restart it"
                .to_owned();
            events
                .lifecycle("failed_to_start", json!({ "error": error }))
                .await;
            return failed(error);
        }
        let run = (spec.run_id, spec.attempt);
        let workspace = match self.workspaces.check_out(&spec.workspace, run).await {
            Ok(checked_out) => checked_out,
            Err(err) => {
                let error = format!("could not prepare the workspace: {err}");
                events
                    .lifecycle("failed_to_start", json!({ "error": error }))
                    .await;
                return RunOutcome {
                    transient: matches!(err, WorkspaceError::Unavailable(_)),
                    ..failed(error)
                };
            }
        };
        if let Some(bytes) = workspace.restored_bytes {
            events
                .lifecycle("workspace_restored", json!({ "bytes": bytes }))
                .await;
        }
        let mut outcome = self
            .execute_in(spec, workspace.dir.clone(), events, stopper)
            .await;
        match self.workspaces.check_in(&spec.workspace, &workspace).await {
            Ok(Some(bytes)) => {
                events
                    .lifecycle("workspace_saved", json!({ "bytes": bytes }))
                    .await
            }
            Ok(None) => {}
            Err(err) => {
                let error = err.to_string();
                events
                    .lifecycle("workspace_not_saved", json!({ "error": error }))
                    .await;
                outcome.is_error = true;
                outcome.error = Some(match outcome.error.take() {
                    Some(earlier) => format!("{earlier}; {error}"),
                    None => error,
                });
            }
        }
        outcome
    }

    /// Runs the attempt in its workspace directory `workspace`.
    async fn execute_in(
        &self,
        spec: &RunSpec,
        workspace: PathBuf,
        events: &EventSender,
        stopper: &Stopper,
    ) -> RunOutcome {
        let is_claude = matches!(spec.kind, RunKind::Claude(_));
        let command = build_command(spec, workspace, &self.config.command_env);
        let (lines_tx, mut lines_rx) = mpsc::channel::<OutputLine>(256);
        let timeout = Duration::from_secs(spec.timeout_secs.max(1));
        let max_cost = match &spec.kind {
            RunKind::Claude(claude) => claude.max_cost_usd,
            RunKind::Shell { .. } => None,
        };
        events
            .lifecycle("started", json!({ "worker_id": self.config.worker_id, "executor": self.executor.name(), "timeout_secs": timeout.as_secs() }))
            .await;

        let execution = self.executor.execute(
            command,
            lines_tx,
            stopper.token.clone(),
            self.config.kill_grace,
        );
        tokio::pin!(execution);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut parser = StreamParser::new();
        let mut lines_open = true;
        let exit = loop {
            tokio::select! {
                line = lines_rx.recv(), if lines_open => match line {
                    Some(line) => {
                        for (kind, data) in parse_line(&mut parser, is_claude, &line) {
                            events.send(kind, data).await;
                        }
                        if max_cost.is_some_and(|max| parser.estimated_cost_usd() > max) {
                            stopper.stop(StopReason::BudgetExceeded);
                        }
                    }
                    None => lines_open = false,
                },
                _ = &mut deadline, if !stopper.token.is_cancelled() => stopper.stop(StopReason::Timeout),
                exit = &mut execution => break exit,
            }
        };
        // Lines still buffered after the process ended.
        while let Ok(line) = lines_rx.try_recv() {
            for (kind, data) in parse_line(&mut parser, is_claude, &line) {
                events.send(kind, data).await;
            }
        }
        let exit = match exit {
            Ok(exit) => exit,
            Err(err) => {
                let error = match err {
                    ExecError::ProgramNotFound(detail) if is_claude => format!(
                        "the Claude Code CLI was not found: {detail}. Install it (the `claude-agent-sdk` Python wheel \
                         bundles it; npm's `@anthropic-ai/claude-code` also works) and put `claude` on PATH, \
                         or set AUTOPILOT_CLAUDE_BIN to its full path"
                    ),
                    other => other.to_string(),
                };
                events
                    .lifecycle("failed_to_start", json!({ "error": error }))
                    .await;
                return failed(error);
            }
        };
        let stop_reason = stopper.reason();
        events
            .lifecycle(
                "exited",
                json!({ "exit_code": exit.code, "signal": exit.signal, "stopped": stop_reason, "killed": exit.killed, "out_of_memory": exit.out_of_memory }),
            )
            .await;
        let mut outcome = if is_claude {
            parser.outcome()
        } else {
            RunOutcome::default()
        };
        outcome.exit_code = exit.code;
        outcome.stopped = stop_reason;
        if let Some(reason) = stop_reason {
            outcome.is_error = true;
            outcome.transient = false;
            outcome.error = Some(match reason {
                StopReason::Timeout => format!("timed out after {}s", timeout.as_secs()),
                StopReason::Cancelled => "cancelled".to_owned(),
                StopReason::BudgetExceeded => format!(
                    "stopped: the estimated cost ${:.4} passed the job's max_cost_usd ${:.4}",
                    parser.estimated_cost_usd(),
                    max_cost.unwrap_or_default()
                ),
                StopReason::WorkerShutdown => {
                    "the worker shut down while the run was executing".to_owned()
                }
            });
        } else if exit.out_of_memory {
            outcome.is_error = true;
            outcome.error = Some("killed: out of memory".to_owned());
        } else if exit.code != Some(0) && outcome.error.is_none() {
            outcome.is_error = true;
            outcome.error = Some(match (exit.code, exit.signal) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "exited abnormally".to_owned(),
            });
        }
        outcome
    }

    async fn complete(&self, run_id: RunId, attempt: u32, outcome: RunOutcome, left: EventsLeft) {
        let end = AttemptEnd {
            run_id,
            attempt,
            outcome,
            events_published: left.published,
            last_events: left.last,
        };
        let mut backoff = Duration::from_millis(200);
        for _ in 0..8 {
            // An attempt whose events went on the event stream is answered once they are stored,
            // which may take a while: it goes alone, so it holds up no other completion.
            let reply = if end.events_published > 0 {
                let worker_id = self.config.worker_id.clone();
                complete(self.bus.as_ref(), worker_id, vec![end.clone()])
                    .await
                    .map(|mut replies| replies.remove(0))
            } else {
                self.reports
                    .completions
                    .call(end.clone(), left.last_bytes)
                    .await
            };
            match reply {
                Ok(WorkerReply::Rejected { reason }) => {
                    tracing::warn!(run.id = %run_id, %reason, "completion refused");
                    return;
                }
                Ok(_) => return,
                Err(err) => {
                    tracing::warn!(run.id = %run_id, error = %err, "reporting completion failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::error!(run.id = %run_id, "completion could not be reported; the reaper will mark the run lost");
    }
}

/// The outcome of an attempt that could not run.
fn failed(error: String) -> RunOutcome {
    RunOutcome {
        is_error: true,
        error: Some(error),
        ..Default::default()
    }
}

fn parse_line(
    parser: &mut StreamParser,
    is_claude: bool,
    line: &OutputLine,
) -> Vec<(EventKind, Value)> {
    match (line.stream, is_claude) {
        (OutputStream::Stderr, _) => vec![stream_json::stderr_event(&line.text)],
        (OutputStream::Stdout, true) => parser.parse_stdout(&line.text),
        (OutputStream::Stdout, false) => vec![(EventKind::Output, json!({ "text": line.text }))],
    }
}

async fn heartbeat(
    bus: Arc<dyn Bus>,
    worker_id: WorkerId,
    run_id: RunId,
    attempt: u32,
    interval: Duration,
    acker: Arc<dyn Acker>,
    stopper: Stopper,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if let Err(err) = acker.in_progress().await {
            tracing::warn!(run.id = %run_id, error = %err, "could not extend the delivery");
        }
        let request = WorkerRequest::Heartbeat {
            run_id,
            attempt,
            worker_id: worker_id.clone(),
        };
        match bus.request(request).await {
            Ok(WorkerReply::Cancel) => stopper.stop(StopReason::Cancelled),
            Ok(WorkerReply::Rejected { reason }) => {
                tracing::warn!(run.id = %run_id, %reason, "this worker no longer owns the run; stopping it");
                stopper.stop(StopReason::WorkerShutdown);
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(run.id = %run_id, error = %err, "heartbeat failed"),
        }
    }
}

/// Numbers a run's events and publishes them in batches from its own task, so a slow bus never
/// blocks reading the process's output for long.
struct EventSink;

/// What a run's event stream leaves to its completion: how many events it published, and the
/// last batch, to ride with the completion, with its size in a request.
#[derive(Default)]
struct EventsLeft {
    published: u64,
    last: Vec<NewRunEvent>,
    last_bytes: usize,
}

struct EventSender {
    /// Each event with the time it happened (a batch goes out up to a linger later).
    tx: mpsc::Sender<(EventKind, Value, chrono::DateTime<Utc>)>,
}

impl EventSink {
    fn start(
        bus: Arc<dyn Bus>,
        run_id: RunId,
        attempt: u32,
        batch_max: usize,
        linger: Duration,
    ) -> (EventSender, tokio::task::JoinHandle<EventsLeft>) {
        let (tx, mut rx) = mpsc::channel::<(EventKind, Value, chrono::DateTime<Utc>)>(1024);
        let publisher = tokio::spawn(async move {
            let mut numbered = 0u64;
            let mut published = 0u64;
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                // What follows within the linger goes in the same batch: a short run's events
                // travel and are stored together. The end of the run (the sender dropped) ends
                // the wait at once.
                let deadline = tokio::time::Instant::now() + linger;
                let mut ended = false;
                while batch.len() < batch_max.max(1) {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(next)) => batch.push(next),
                        Ok(None) => {
                            ended = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let events: Vec<NewRunEvent> = batch
                    .into_iter()
                    .map(|(kind, data, at)| {
                        numbered += 1;
                        NewRunEvent {
                            run_id,
                            attempt,
                            origin: EventOrigin::Worker,
                            origin_seq: numbered,
                            at,
                            kind,
                            data,
                        }
                    })
                    .collect();
                // Sized only at the end: the batches before it are published anyway.
                if let Some(bytes) = ended.then(|| completion_bytes(&events)).flatten() {
                    // The last batch goes with the completion, stored with the final state.
                    return EventsLeft {
                        published,
                        last: events,
                        last_bytes: bytes,
                    };
                }
                published += events.len() as u64;
                publish_with_retry(bus.as_ref(), EventBatch { events }).await;
            }
            EventsLeft {
                published,
                ..EventsLeft::default()
            }
        });
        (EventSender { tx }, publisher)
    }
}

impl EventSender {
    async fn send(&self, kind: EventKind, data: Value) {
        // The publisher only ends after this sender is dropped.
        let _ = self.tx.send((kind, data, Utc::now())).await;
    }

    async fn lifecycle(&self, step: &str, mut details: Value) {
        if let Value::Object(map) = &mut details {
            map.insert("step".into(), Value::String(step.to_owned()));
        }
        self.send(EventKind::Lifecycle, details).await;
    }

    /// Closes the stream and waits until every event is published, but the last batch, which it
    /// returns for the completion.
    async fn finish(self, publisher: tokio::task::JoinHandle<EventsLeft>) -> EventsLeft {
        drop(self.tx);
        publisher.await.unwrap_or_default()
    }
}

/// About how many bytes `events` take in a completion request, if they fit in one well under a
/// bus message's size limit (half a request's share); `None` as soon as they do not.
fn completion_bytes(events: &[NewRunEvent]) -> Option<usize> {
    let mut size = 0usize;
    for event in events {
        size += event.data.to_string().len() + 256;
        if size > MAX_COMPLETION_BYTES / 2 {
            return None;
        }
    }
    Some(size)
}

async fn publish_with_retry(bus: &dyn Bus, batch: EventBatch) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match bus.publish_events(batch.clone()).await {
            Ok(()) => return,
            Err(BusError::Closed) => {
                tracing::error!("event stream closed; events of this batch are lost");
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "publishing events failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
