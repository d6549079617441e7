//! One attempt at a delivered run, from claim to completion: claim the run through the run
//! loop's claim batcher, check out its workspace, execute its command through the
//! [`Executor`], turn the output into events for the attempt's event sink
//! ([`super::events`]), keep the run alive with heartbeats while it goes, and report its end.
//!
//! The run loop ([`super`]) starts one [`Attempt`] per delivery and keeps each running
//! attempt's [`Stopper`] in its table of active runs, through which a cancel request or the
//! worker's shutdown stops it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopilot_proto::{
    Acker, AttemptEnd, Bus, BusError, EventKind, RunAttempt, RunDelivery, RunId, RunKind,
    RunOutcome, RunRequest, RunSpec, Secrets, StopReason, WorkerId, WorkerReply, WorkerRequest,
};
use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::events::{EventSender, EventSink, EventsLeft};
use super::{send_completions, ActiveRuns, Reports, WorkerConfig};
use crate::command::build_command;
use crate::executor::{ExecError, Executor, OutputLine, OutputStream};
use autopilot_fixed_servers::redact::Redactor;

use crate::mcp::{self, ConfigFile};
use crate::stream_json::{self, StreamParser};
use crate::trace::{
    self,
    genai::{AgentSpans, Content},
};
use crate::workspaces::{WorkspaceError, Workspaces};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Stops a running attempt, remembering the first reason given.
#[derive(Clone)]
pub(super) struct Stopper {
    /// The attempt it stops.
    attempt: u32,
    token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl Stopper {
    fn new(attempt: u32) -> Self {
        Self {
            attempt,
            token: CancellationToken::new(),
            reason: Arc::default(),
        }
    }

    /// Fired when the attempt is asked to stop.
    pub(super) fn stopped(&self) -> &CancellationToken {
        &self.token
    }

    /// Asks the attempt to stop; only the first call's `reason` is kept.
    pub(super) fn stop(&self, reason: StopReason) {
        let mut current = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_none() {
            *current = Some(reason);
        }
        self.token.cancel();
    }

    /// The reason given first, if the attempt was asked to stop.
    pub(super) fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Everything one delivery needs: the worker's settings and services, the table of active
/// runs its stopper goes in while it runs, and the batchers its claim and completion go
/// through.
pub(super) struct Attempt {
    pub(super) config: Arc<WorkerConfig>,
    pub(super) bus: Arc<dyn Bus>,
    pub(super) executor: Arc<dyn Executor>,
    pub(super) workspaces: Arc<dyn Workspaces>,
    pub(super) active: ActiveRuns,
    pub(super) reports: Arc<Reports>,
    /// The run's slot on this worker (set when a run is delivered).
    pub(super) slot: Arc<crate::memory_relay::SlotLoan>,
}

impl Attempt {
    /// Claims, executes and reports the delivered run; its slot is free again at the end.
    pub(super) async fn handle(mut self, delivery: RunDelivery) {
        let RunDelivery { delivery, slot } = delivery;
        // Held until the attempt ends, but lent back while its calls wait for approval.
        self.slot = Arc::new(crate::memory_relay::SlotLoan::new(slot));
        let RunRequest {
            run_id,
            attempt,
            trace_parent,
            ..
        } = delivery.message.clone();
        // The run's span on this worker, a child of the publish that sent the request.
        let span = tracing::info_span!(
            "run",
            otel.name = "autopilot.run",
            otel.kind = "consumer",
            run.id = %run_id,
            run.attempt = attempt,
            autopilot.run.id = %run_id,
            worker.id = %self.config.worker_id,
        );
        trace::set_parent(&span, trace_parent.as_deref());
        // The run is held from here until its end is reported, so that a second delivery of
        // it meanwhile (a redelivery while NATS could not extend this one, a request published
        // again) is never executed beside this one.
        let stopper = Stopper::new(attempt);
        let _held = match Held::take(&self.active, run_id, stopper.clone()) {
            Ok(held) => held,
            Err(held_attempt) if held_attempt == attempt => {
                tracing::debug!(run.id = %run_id, attempt, "this worker already holds the run; dropping the duplicate delivery");
                let _ = delivery.acker.ack().await;
                return;
            }
            Err(held_attempt) => {
                // A later attempt, queued after this worker's was given up for lost: it waits
                // until the attempt held here has ended.
                tracing::info!(run.id = %run_id, attempt, held_attempt, "attempt delivered while another attempt of the run is held here; asking for redelivery");
                let _ = delivery.acker.nak(HELD_REDELIVERY).await;
                return;
            }
        };
        let acker: Arc<dyn Acker> = Arc::from(delivery.acker);
        let claimed = self
            .claim(RunAttempt { run_id, attempt }, acker.as_ref())
            .instrument(tracing::info_span!(parent: &span, "claim", otel.name = "autopilot.claim"));
        let (spec, granted) = match claimed.await {
            Ok(WorkerReply::Claimed {
                spec,
                secrets,
                cannot_start,
            }) => {
                let granted = Granted::open(&self.reports.key, &spec, secrets, cannot_start);
                (*spec, granted)
            }
            Ok(reply) => {
                tracing::debug!(run.id = %run_id, ?reply, "claim refused; dropping the delivery");
                let _ = acker.ack().await;
                return;
            }
            Err(err) => {
                tracing::warn!(run.id = %run_id, error = %err, "claim failed; asking for redelivery");
                let _ = acker.nak(Duration::from_secs(1)).await;
                return;
            }
        };

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
            .execute(&spec, &granted, &events, &stopper)
            .instrument(span.clone())
            .await;
        if outcome.is_error {
            span.set_status(opentelemetry::trace::Status::error(
                outcome.error.clone().unwrap_or_default(),
            ));
        }
        let left = events.finish(events_done).await;
        self.complete(run_id, attempt, outcome, left).await;
        // The attempt stays alive (run heartbeat, delivery kept in progress) until its end is
        // reported: flushing events and reporting may take a while when NATS is reconnecting,
        // and the reaper must not take the run for lost meanwhile.
        heartbeat.abort();
        if let Err(err) = acker.ack().await {
            tracing::warn!(run.id = %run_id, error = %err, "could not acknowledge the delivery");
        }
    }

    /// Claims the run, repeating the claim while the bus fails for up to [`CLAIM_PATIENCE`]
    /// and keeping the delivery from being redelivered meanwhile. Repeating is safe: a claim
    /// whose reply was lost is answered `Claimed` again to this process.
    async fn claim(&self, run: RunAttempt, acker: &dyn Acker) -> Result<WorkerReply, BusError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.reports.claims.call(run, 0).await {
                Err(err) if started.elapsed() + backoff < CLAIM_PATIENCE => {
                    tracing::warn!(run.id = %run.run_id, error = %err, "claim failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    let _ = acker.in_progress().await;
                }
                reply => return reply,
            }
        }
    }

    /// Executes the claimed run and returns its outcome, stamped with when it started and ended.
    async fn execute(
        &self,
        spec: &RunSpec,
        granted: &Granted,
        events: &EventSender,
        stopper: &Stopper,
    ) -> RunOutcome {
        let started_at = Utc::now();
        let mut outcome = self.execute_inner(spec, granted, events, stopper).await;
        outcome.started_at = Some(started_at);
        outcome.finished_at = Some(Utc::now());
        outcome
    }

    /// Checks what can be checked before anything runs (the workspace name, model credentials
    /// for a Claude run), then executes the run in its checked-out workspace and checks the
    /// workspace back in; a workspace that could not be saved turns the outcome into an error.
    async fn execute_inner(
        &self,
        spec: &RunSpec,
        granted: &Granted,
        events: &EventSender,
        stopper: &Stopper,
    ) -> RunOutcome {
        if let Some(error) = &granted.cannot_start {
            return failed_to_start(events, error.clone()).await;
        }
        if let RunKind::Http(http) = &spec.kind {
            let timeout = Duration::from_secs(spec.timeout_secs.max(1));
            return super::http::execute(http, timeout, granted, events, stopper).await;
        }
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
            .execute_in(spec, granted, workspace.dir.clone(), events, stopper)
            .await;
        // The run's process has ended: its outcome files go in before the workspace is saved.
        for (path, written) in
            crate::outcome_files::write_all(&workspace.dir, &spec.outcome_files, spec, &outcome)
        {
            match written {
                Ok(()) => {
                    events
                        .lifecycle("outcome_written", json!({ "path": path }))
                        .await
                }
                Err(error) => {
                    events
                        .lifecycle(
                            "outcome_not_written",
                            json!({ "path": path, "error": error }),
                        )
                        .await
                }
            }
        }
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
        granted: &Granted,
        workspace: PathBuf,
        events: &EventSender,
        stopper: &Stopper,
    ) -> RunOutcome {
        let is_claude = matches!(spec.kind, RunKind::Claude(_));
        let mut command = build_command(spec, workspace, &self.config.command_env);
        let servers = match &spec.kind {
            RunKind::Claude(claude) => claude.mcp_servers.as_slice(),
            RunKind::Shell { .. } | RunKind::Http(_) => &[],
        };
        let gated = matches!(&spec.kind, RunKind::Claude(claude) if claude.approval.is_some());
        // Kept until the run has ended: the CLI reads it when it starts its servers.
        let _mcp_config = if servers.is_empty() && !gated {
            None
        } else {
            match self.mcp_config(spec, granted, events).await {
                Ok(file) => {
                    command.args.push("--mcp-config".into());
                    command.args.push(file.path().display().to_string());
                    command.mcp_config = Some(file.path());
                    Some(file)
                }
                Err(error) => return failed_to_start(events, error).await,
            }
        };
        let redactor = &granted.redactor;
        let mut mcp_failure: Option<String> = None;
        // A Claude run's steps are spans under `invoke_agent`; the CLI gets that span as its
        // `TRACEPARENT`, so its own spans (when a job turns its telemetry on) join the trace.
        let agent_span = if is_claude && trace::enabled() {
            tracing::info_span!(
                target: "autopilot_trace",
                "invoke_agent",
                otel.name = "invoke_agent claude-code",
                otel.kind = "internal",
                gen_ai.operation.name = "invoke_agent",
                gen_ai.agent.name = "claude-code",
                gen_ai.provider.name = "anthropic",
            )
        } else {
            tracing::Span::none()
        };
        let mut agent = None;
        if !agent_span.is_none() {
            let context = agent_span.context();
            if let Some(traceparent) = trace::traceparent(&context) {
                command.env.retain(|(name, _)| name != "TRACEPARENT");
                command.env.push(("TRACEPARENT".into(), traceparent));
            }
            let mut spans = AgentSpans::new(context, std::time::SystemTime::now());
            if let RunKind::Claude(claude) = &spec.kind {
                if claude.trace_content {
                    let content = Content::redacting(&command.env);
                    agent_span.set_attribute(
                        "gen_ai.input.messages",
                        content.messages("user", &claude.prompt),
                    );
                    spans = spans.with_content(content);
                }
            }
            agent = Some(spans);
        }
        let (lines_tx, mut lines_rx) = mpsc::channel::<OutputLine>(256);
        let timeout = Duration::from_secs(spec.timeout_secs.max(1));
        let max_cost = match &spec.kind {
            RunKind::Claude(claude) => claude.max_cost_usd,
            RunKind::Shell { .. } | RunKind::Http(_) => None,
        };
        events
            .lifecycle("started", json!({ "worker_id": self.config.worker_id, "executor": self.executor.name(), "timeout_secs": timeout.as_secs() }))
            .await;

        let execution = self
            .executor
            .execute(
                command,
                lines_tx,
                stopper.token.clone(),
                self.config.kill_grace,
            )
            .instrument(agent_span.clone());
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
                            let data = screen(kind, data, redactor, servers, &mut mcp_failure, stopper);
                            if let Some(agent) = &mut agent {
                                agent.event(kind, &data, std::time::SystemTime::now());
                            }
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
                let data = screen(kind, data, redactor, servers, &mut mcp_failure, stopper);
                if let Some(agent) = &mut agent {
                    agent.event(kind, &data, std::time::SystemTime::now());
                }
                events.send(kind, data).await;
            }
        }
        if let Some(agent) = &mut agent {
            agent.finish(std::time::SystemTime::now());
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
        let mut exited = json!({ "exit_code": exit.code, "signal": exit.signal, "stopped": stop_reason, "killed": exit.killed, "out_of_memory": exit.out_of_memory });
        if let Some(metered) = exit.metered {
            let mut proxy = stream_json::usage_json(&metered.usage);
            proxy["requests"] = json!(metered.requests);
            exited["model_proxy"] = proxy;
        }
        events.lifecycle("exited", exited).await;
        let mut outcome = if is_claude {
            parser.outcome()
        } else {
            RunOutcome::default()
        };
        outcome.result = outcome.result.map(|text| redactor.text(&text).into_owned());
        outcome.error = outcome.error.map(|text| redactor.text(&text).into_owned());
        if !agent_span.is_none() {
            for attribute in trace::genai::usage_attributes(&outcome.usage) {
                agent_span.set_attribute(attribute.key, attribute.value);
            }
            if let Some(cost) = outcome.cost_usd {
                agent_span.set_attribute("autopilot.cost_usd", cost);
            }
            if let Some(model) = outcome.models.first() {
                agent_span.set_attribute("gen_ai.request.model", model.clone());
            }
            let turns = outcome
                .num_turns
                .unwrap_or_else(|| agent.as_ref().map_or(0, AgentSpans::turns));
            agent_span.set_attribute("autopilot.turns", i64::from(turns));
            if outcome.is_error {
                agent_span.set_status(opentelemetry::trace::Status::error(
                    outcome
                        .error
                        .clone()
                        .unwrap_or_else(|| "the run failed".to_owned()),
                ));
            }
        }
        outcome.exit_code = exit.code;
        outcome.stopped = stop_reason;
        if is_claude {
            outcome.billing = Some(self.config.command_env.billing());
        }
        if outcome.transient && outcome.retry_at.is_none() {
            // The model proxy saw the limit's reset time in the API's answer headers.
            outcome.retry_at = exit.metered.and_then(|metered| metered.retry_at);
        }
        if is_claude && stop_reason.is_none() && !parser.has_result() {
            // Whatever the exit code says, a run without its result did not finish its work.
            outcome.is_error = true;
            outcome.error = outcome.error.or_else(|| {
                Some(format!(
                    "the Claude Code CLI ended without its final result (exit code {}); see its \
                 output and stderr events",
                    exit.code
                        .map_or_else(|| "none".to_owned(), |code| code.to_string())
                ))
            });
        }
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
                StopReason::McpServerFailed => format!(
                    "MCP servers granted to the run did not connect: {}; the run's stderr \
                     events may say why",
                    mcp_failure.as_deref().unwrap_or("unknown")
                ),
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

    /// Reports the attempt's end with the events its sink left, trying again for as long as the
    /// bus fails (NATS may be down for minutes: the run's end is worth the wait, and the
    /// attempt's heartbeats go on meanwhile). Ends when a control plane answered, or when the
    /// worker gives up on its attempts at shutdown.
    async fn complete(&self, run_id: RunId, attempt: u32, outcome: RunOutcome, left: EventsLeft) {
        let end = AttemptEnd {
            run_id,
            attempt,
            outcome,
            events_published: left.published,
            last_events: left.last,
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            // An attempt whose events went on the event stream is answered once they are stored,
            // which may take a while: it goes alone, so it holds up no other completion.
            let reply = if end.events_published > 0 {
                let worker_id = self.config.worker_id.clone();
                send_completions(self.bus.as_ref(), worker_id, vec![end.clone()])
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
    }
}

/// How long an attempt tries to claim its run before it gives the delivery back.
const CLAIM_PATIENCE: Duration = Duration::from_secs(20);
/// When a delivery of a run held here at another attempt comes again.
const HELD_REDELIVERY: Duration = Duration::from_secs(5);

/// A run's place in the table of held runs, given up when dropped.
struct Held<'a> {
    active: &'a ActiveRuns,
    run_id: RunId,
}

impl<'a> Held<'a> {
    /// Holds `run_id` with `stopper`, or returns the attempt that already holds it.
    fn take(active: &'a ActiveRuns, run_id: RunId, stopper: Stopper) -> Result<Self, u32> {
        let mut runs = active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = runs.get(&run_id) {
            return Err(held.attempt);
        }
        runs.insert(run_id, stopper);
        Ok(Self { active, run_id })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.run_id);
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

/// The events one output line makes: stderr as it is, a Claude run's stdout through the
/// stream-json parser, a shell run's stdout as plain output.
/// What the claim reply gave beside the spec: the run's credentials, opened, and a reason the
/// run cannot start, if there is one.
pub(super) struct Granted {
    secrets: Secrets,
    redactor: Redactor,
    cannot_start: Option<String>,
}

impl Granted {
    pub(super) fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    pub(super) fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    fn open(
        key: &autopilot_proto::WorkerKey,
        spec: &RunSpec,
        sealed: Option<autopilot_proto::SealedSecrets>,
        cannot_start: Option<String>,
    ) -> Self {
        let (secrets, cannot_start) = match sealed {
            None => (Secrets::new(), cannot_start),
            Some(sealed) => match key.open(&sealed, spec.run_id, spec.attempt) {
                Ok(secrets) => (secrets, cannot_start),
                Err(err) => (
                    Secrets::new(),
                    Some(format!("could not open the run's credentials: {err}")),
                ),
            },
        };
        Self {
            redactor: Redactor::new(&secrets),
            secrets,
            cannot_start,
        }
    }
}

impl Attempt {
    /// Writes the run's `--mcp-config` file and records what the run was granted (names only).
    async fn mcp_config(
        &self,
        spec: &RunSpec,
        granted: &Granted,
        events: &EventSender,
    ) -> Result<ConfigFile, String> {
        let RunKind::Claude(claude) = &spec.kind else {
            return Err("only Claude runs use MCP servers".to_owned());
        };
        let written =
            |err: std::io::Error| format!("could not write the run's MCP configuration: {err}");
        let mut file = ConfigFile::create().map_err(written)?;
        let memory_token = crate::memory_relay::new_token();
        // A container runs the image's copies, on its PATH; a local run those beside the worker.
        let in_container = self.executor.name() == "docker";
        let programs = mcp::RunPrograms::new(in_container, &self.config.command_env, file.dir());
        let paths = programs.paths(&memory_token);
        // A gated tool of a stdio server is offered too: each call is asked about first.
        let mut offered = claude.allowed_tools.clone();
        if let Some(gate) = &claude.approval {
            offered.extend(gate.tools.iter().cloned());
        }
        let mut files = mcp::config(&claude.mcp_servers, &granted.secrets, &offered, paths)?;
        if let Some(gate) = &claude.approval {
            mcp::add_approval(&mut files, gate, paths);
        }
        file.write(&files).map_err(written)?;
        if mcp::uses_memory(&claude.mcp_servers) || claude.approval.is_some() {
            let run = crate::memory_relay::RunIdentity {
                run_id: spec.run_id,
                attempt: spec.attempt,
                worker_id: self.config.worker_id.clone(),
                slot: Arc::clone(&self.slot),
            };
            file.serve_memory(memory_token, run, Arc::clone(&self.bus))?;
        }
        let names: Vec<&str> = claude.mcp_servers.iter().map(|s| s.name.as_str()).collect();
        events
            .lifecycle(
                "tools_granted",
                json!({
                    "servers": names,
                    "allowed_tools": claude.allowed_tools,
                    "disallowed_tools": claude.disallowed_tools,
                }),
            )
            .await;
        Ok(file)
    }
}

async fn failed_to_start(events: &EventSender, error: String) -> RunOutcome {
    events
        .lifecycle("failed_to_start", json!({ "error": error }))
        .await;
    failed(error)
}

/// Redacts the run's credentials from an event, and stops the run when its `system/init` line
/// shows a granted MCP server that did not connect.
fn screen(
    kind: EventKind,
    data: Value,
    redactor: &Redactor,
    servers: &[autopilot_proto::McpServerSpec],
    mcp_failure: &mut Option<String>,
    stopper: &Stopper,
) -> Value {
    let data = redactor.value(data);
    if kind == EventKind::SystemInit && !servers.is_empty() {
        let missing = mcp::not_connected(&data, servers);
        if !missing.is_empty() {
            mcp_failure.get_or_insert(missing.join(", "));
            stopper.stop(StopReason::McpServerFailed);
        }
    }
    data
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

/// Every `interval`, keeps the delivery from being redelivered and tells the control plane the
/// attempt is alive; stops the attempt when the control plane answers that the run was
/// cancelled or is no longer this worker's. Runs until aborted.
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
        // No longer than until the next beat: a reply that does not come (the control plane
        // that took the request is paused, say) must not hold up the beats that follow, which
        // go to whichever control plane answers.
        let reply = tokio::time::timeout(interval, bus.request(request))
            .await
            .unwrap_or(Err(BusError::Timeout(interval)));
        match reply {
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
