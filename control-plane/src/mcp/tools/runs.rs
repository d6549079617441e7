//! The run tools: list and read runs with their events, stop one, run a prompt once; and how a
//! call that started a run answers (at once, or when it ends with `wait: true`).

use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::RunStatus;
use futures::StreamExt;
use rmcp::model::{JsonObject, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    input, object, parse, parse_run_id, run_schema, success, take_wait, to_value, Failure, Outcome,
    Spec,
};
use crate::app::App;
use crate::domain::Run;
use crate::services::follow::{self, Updates};
use crate::services::runs::{self, QuickRunInput, RunPage, RunQuery};

/// Extra time a waiting call gives a run beyond its own timeout (queueing, start-up, the kill
/// grace).
const WAIT_SLACK: Duration = Duration::from_secs(60);
const MAX_EVENTS_PAGE: u32 = 1000;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ListRunsArgs {
    /// Only runs of this job (id or name).
    #[serde(default)]
    job: Option<String>,
    /// Only runs started by this webhook (id or name).
    #[serde(default)]
    webhook: Option<String>,
    /// Only runs in these states: queued, running, cancelling, succeeded, failed, timed_out,
    /// cancelled, lost.
    #[serde(default)]
    status: Vec<String>,
    /// At most this many runs, newest first (1 to 500).
    #[serde(default = "default_runs_limit")]
    limit: u32,
    /// The `next_before` of the previous page.
    #[serde(default)]
    before: Option<String>,
}

fn default_runs_limit() -> u32 {
    20
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct GetRunArgs {
    /// The run id (UUID).
    pub(super) run_id: String,
    /// Only events after this sequence number; pass the previous page's `next_after_seq`.
    #[serde(default)]
    after_seq: i64,
    /// At most this many events (1 to 1000).
    #[serde(default = "default_events_limit")]
    limit: u32,
}

fn default_events_limit() -> u32 {
    100
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RunRef {
    /// The run id (UUID).
    pub(super) run_id: String,
}

/// Schema of `quick_run`: the service's `QuickRunInput`, and `wait`.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct QuickRunArgs {
    #[serde(flatten)]
    input: QuickRunInput,
    /// Wait for the run to end and return its result. Default false.
    #[serde(default)]
    wait: bool,
}

pub(super) fn waited_run_schema() -> Value {
    object(
        json!({
            "run": run_schema(),
            "finished": { "type": "boolean", "description": "false when the call returned before the run ended" },
            "status": { "type": "string" },
            "result": { "type": ["string", "null"] },
            "error": { "type": ["string", "null"] },
            "tokens": { "type": "object" },
            "cost_usd": { "type": ["number", "null"] },
        }),
        &["run", "finished", "status"],
    )
}

pub(super) fn specs() -> Vec<Spec> {
    vec![
        Spec {
            name: "list_runs",
            title: "List runs",
            description: "Lists runs newest first, optionally of one job and in some states, \
                with status, result, tokens and cost. Page with before = the previous \
                next_before. Example: {\"job\": \"sprint digest\", \"status\": [\"failed\", \
                \"timed_out\"], \"limit\": 10}",
            input: input::<ListRunsArgs>(),
            output: object(
                json!({ "runs": { "type": "array", "items": run_schema() }, "next_before": { "type": ["string", "null"] } }),
                &["runs"],
            ),
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "get_run",
            title: "Get a run and its events",
            description: "Shows one run (status, result, error, tokens, cost, times) and a page \
                of what it did: its events in order (assistant text, tool calls and results, \
                usage, lifecycle). For long runs, call again with after_seq = next_after_seq \
                while has_more is true. Example: {\"run_id\": \"0190…\", \"limit\": 50}",
            input: input::<GetRunArgs>(),
            output: object(
                json!({
                    "run": run_schema(),
                    "events": { "type": "array", "items": { "type": "object" } },
                    "next_after_seq": { "type": "integer" },
                    "has_more": { "type": "boolean" },
                }),
                &["run", "events", "next_after_seq", "has_more"],
            ),
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "kill_run",
            title: "Stop a run",
            description: "Stops a run: a queued one is cancelled at once, a running one is \
                stopped (SIGTERM, then SIGKILL) and ends cancelled. A finished run cannot be \
                stopped. Example: {\"run_id\": \"0190…\"}",
            input: input::<RunRef>(),
            output: object(json!({ "run": run_schema() }), &["run"]),
            read_only: false,
            destructive: true,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "quick_run",
            title: "Run a prompt once",
            description: "Runs Claude Code once on a prompt in a fresh workspace, without \
                creating a job. With wait: true the call returns the result, status, tokens and \
                cost when the run ends. Example: {\"prompt\": \"Fetch https://example.com and \
                summarise it\", \"allowed_tools\": [\"WebFetch\"], \"wait\": true}",
            input: input::<QuickRunArgs>(),
            output: waited_run_schema(),
            read_only: false,
            destructive: false,
            idempotent: false,
            open_world: true,
        },
    ]
}

pub(super) async fn call(
    app: &Arc<App>,
    name: &str,
    args: JsonObject,
    context: &RequestContext<RoleServer>,
) -> Outcome {
    match name {
        "list_runs" => list(app, args).await,
        "get_run" => get(app, args).await,
        "kill_run" => kill(app, args).await,
        "quick_run" => quick_run(app, args, context).await,
        other => Err(Failure::Message(format!("unknown run tool `{other}`"))),
    }
}

async fn list(app: &App, args: JsonObject) -> Outcome {
    let args: ListRunsArgs = parse(args)?;
    let RunPage { runs, next_before } = runs::page(
        app,
        RunQuery {
            job: args.job,
            webhook: args.webhook,
            statuses: args.status,
            before: args.before,
            limit: args.limit,
        },
    )
    .await?;
    let summary = match runs.first() {
        None => "No runs match.".to_owned(),
        Some(newest) => format!(
            "{} run(s); newest {} is {}.",
            runs.len(),
            newest.id,
            newest.status
        ),
    };
    success(
        summary,
        json!({ "runs": to_value(&runs)?, "next_before": next_before }),
    )
}

async fn get(app: &App, args: JsonObject) -> Outcome {
    let args: GetRunArgs = parse(args)?;
    let id = parse_run_id("run_id", &args.run_id)?;
    let limit = args.limit.clamp(1, MAX_EVENTS_PAGE);
    let run = runs::get(app, id).await?;
    let mut events = runs::events(app, id, args.after_seq.max(0), limit + 1).await?;
    let has_more = events.len() > limit as usize;
    events.truncate(limit as usize);
    let next_after_seq = events.last().map_or(args.after_seq, |event| event.seq);
    let summary = format!(
        "Run {} is {}; {} event(s) after seq {}{}.",
        run.id,
        run.status,
        events.len(),
        args.after_seq,
        if has_more {
            format!("; more after seq {next_after_seq}")
        } else {
            String::new()
        }
    );
    success(
        summary,
        json!({
            "run": to_value(&run)?,
            "events": to_value(&events)?,
            "next_after_seq": next_after_seq,
            "has_more": has_more,
        }),
    )
}

async fn kill(app: &App, args: JsonObject) -> Outcome {
    let RunRef { run_id } = parse(args)?;
    let id = parse_run_id("run_id", &run_id)?;
    let run = runs::kill(app, id).await?;
    success(
        format!("Run {} is {}.", run.id, run.status),
        json!({ "run": to_value(&run)? }),
    )
}

async fn quick_run(
    app: &Arc<App>,
    mut args: JsonObject,
    context: &RequestContext<RoleServer>,
) -> Outcome {
    let wait = take_wait(&mut args)?;
    let input: QuickRunInput = parse(args)?;
    let updates = Updates::subscribe(app);
    let run = runs::quick_run(app, input).await?;
    finish_run_call(app, run, wait, updates, context).await
}

/// ` (attempt N)` for a run past its first attempt, else nothing.
fn attempt_note(run: &Run) -> String {
    if run.attempt > 1 {
        format!(" (attempt {})", run.attempt)
    } else {
        String::new()
    }
}

/// Answers a call that started a run: at once, or when the run ends if the caller waits.
/// `updates` were subscribed to before the run was created.
pub(super) async fn finish_run_call(
    app: &Arc<App>,
    run: Run,
    wait: bool,
    updates: Updates,
    context: &RequestContext<RoleServer>,
) -> Outcome {
    let (run, finished) = if wait {
        wait_for_run(app, run, updates, context).await?
    } else {
        let finished = run.status.is_terminal();
        (run, finished)
    };
    let summary = if finished {
        format!(
            "Run {} ended {}{}. Tokens: {} in, {} out; cost {}.{}",
            run.id,
            run.status,
            attempt_note(&run),
            run.usage.input_tokens,
            run.usage.output_tokens,
            run.cost_usd
                .map(|cost| format!("${cost:.4}"))
                .unwrap_or_else(|| "unknown".to_owned()),
            match (&run.result, &run.error) {
                (Some(result), _) => format!("\nResult:\n{result}"),
                (None, Some(error)) => format!("\nError: {error}"),
                (None, None) => String::new(),
            }
        )
    } else if wait {
        format!(
            "Run {} is still {} after the wait; call get_run with run_id {} to follow it.",
            run.id, run.status, run.id
        )
    } else {
        format!(
            "Run {} is {}; get_run with this run_id shows its progress and result.",
            run.id, run.status
        )
    };
    let value = json!({
        "finished": finished,
        "status": run.status,
        "result": run.result,
        "error": run.error,
        "tokens": {
            "input": run.usage.input_tokens,
            "output": run.usage.output_tokens,
            "cache_read": run.usage.cache_read_tokens,
            "cache_write": run.usage.cache_write_tokens,
        },
        "cost_usd": run.cost_usd,
        "run": to_value(&run)?,
    });
    success(summary, value)
}

/// Follows a run until it ends, the wait bound passes, the client cancels or Autopilot stops.
/// Sends a progress notification whenever the run changes, if the client asked for progress.
async fn wait_for_run(
    app: &Arc<App>,
    run: Run,
    updates: Updates,
    context: &RequestContext<RoleServer>,
) -> Result<(Run, bool), Failure> {
    let progress_token = context.meta.get_progress_token();
    let bound = Duration::from_secs(run.settings.timeout_secs) + WAIT_SLACK;
    let deadline = tokio::time::Instant::now() + bound;
    let watch = updates.watch(run.id);
    let mut states = std::pin::pin!(follow::states(
        Arc::clone(app),
        watch,
        run.clone(),
        deadline,
        context.ct.clone(),
    ));
    let mut last = run;
    let mut step = 0u32;
    let mut last_reported: Option<(RunStatus, u32, u64, u64)> = None;
    while let Some(state) = states.next().await {
        let run = state?;
        let snapshot = (
            run.status,
            run.attempt,
            run.usage.input_tokens,
            run.usage.output_tokens,
        );
        if last_reported != Some(snapshot) {
            last_reported = Some(snapshot);
            if let Some(token) = &progress_token {
                step += 1;
                let message = format!(
                    "run {}: {}{}, {} tokens, cost {}",
                    run.id,
                    run.status,
                    attempt_note(&run),
                    run.usage.input_tokens + run.usage.output_tokens,
                    run.cost_usd
                        .map(|cost| format!("${cost:.4}"))
                        .unwrap_or_else(|| "$0".to_owned()),
                );
                let param = ProgressNotificationParam::new(token.clone(), f64::from(step))
                    .with_message(message);
                if let Err(err) = context.peer.notify_progress(param).await {
                    tracing::debug!(error = %err, "could not send a progress notification");
                }
            }
        }
        last = run;
    }
    let finished = last.status.is_terminal();
    Ok((last, finished))
}
