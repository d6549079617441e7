//! The tools: their definitions (schemas, descriptions for the model, annotations) and what
//! each one calls on [`App`]. Tools only use the services, never the store.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use autopilot_proto::{RunId, RunStatus};
use rmcp::handler::server::common::schema_for_input;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, JsonObject, ProgressNotificationParam,
    Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::app::App;
use crate::auth::{Caller, SCOPE_READ, SCOPE_WRITE};
use crate::error::ServiceError;
use crate::model::{Run, RunFilter};
use crate::services::jobs::{
    preview_schedule, upcoming_fires, JobInput, JobPatch, JobView, SandboxInput,
};
use crate::services::runs::{QuickRunInput, MAX_PAGE};

mod webhooks;

/// Extra time a waiting call gives a run beyond its own timeout (queueing, start-up, the kill
/// grace).
const WAIT_SLACK: Duration = Duration::from_secs(60);
/// How often a waiting call looks at its run even without being told it changed.
const WAIT_POLL: Duration = Duration::from_secs(2);
const MAX_EVENTS_PAGE: u32 = 1000;

// --- Arguments (their schemas are what the model sees) -----------------------------------------

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct JobRef {
    /// The job's id (UUID) or its unique name.
    job: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum KindArg {
    Claude,
    Shell,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum MisfireArg {
    Skip,
    RunOnce,
    RunAll,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum OverlapArg {
    Skip,
    Queue,
    Allow,
}

#[derive(Deserialize, JsonSchema)]
#[allow(dead_code)]
struct RetryArg {
    /// Further attempts after the first, for transient API failures (429, 5xx, overloaded).
    count: u32,
    /// Delay before the first retry, doubled for each later one.
    #[serde(default)]
    backoff_secs: Option<u64>,
    /// Also run again an attempt that was lost because its worker died (default false: a lost
    /// run may already have done part of its work).
    #[serde(default)]
    lost: Option<bool>,
}

/// Schema of `create_job`; the call itself is read straight into the service's `JobInput`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct CreateJobArgs {
    /// Unique name; jobs can be addressed by it.
    name: String,
    description: Option<String>,
    /// `claude` (default) runs `prompt` with Claude Code; `shell` runs `command` with `sh -c`.
    kind: Option<KindArg>,
    /// What Claude should do on each run (claude jobs).
    prompt: Option<String>,
    /// The shell command (shell jobs).
    command: Option<String>,
    /// 5-field (minute hour day-of-month month day-of-week) or 6-field (seconds first) cron
    /// expression, or an alias such as `@hourly`; leave out for a manual-only job.
    schedule: Option<String>,
    /// One time to fire, RFC 3339 (e.g. `2026-12-24T18:00:00Z`), instead of `schedule`.
    at: Option<String>,
    /// IANA time zone the schedule is read in, e.g. `Europe/Paris`. Default `UTC`.
    timezone: Option<String>,
    /// Default true.
    enabled: Option<bool>,
    /// Claude model, e.g. `claude-sonnet-4-5`; the CLI's default when left out.
    model: Option<String>,
    /// Tools the run may use, e.g. `["Read", "Write", "Bash(git log:*)"]`; anything else is
    /// denied.
    allowed_tools: Option<Vec<String>>,
    disallowed_tools: Option<Vec<String>>,
    max_turns: Option<u32>,
    /// The run is stopped after this many seconds. Default 1800.
    timeout_secs: Option<u64>,
    /// The run is stopped when its cost passes this many US dollars.
    max_cost_usd: Option<f64>,
    /// Fires missed while Autopilot was down: `run_once` (default), `skip` or `run_all`.
    misfire_policy: Option<MisfireArg>,
    misfire_cap: Option<u32>,
    /// A fire while a run is still going: `skip` (default), `queue` or `allow`.
    overlap_policy: Option<OverlapArg>,
    retry: Option<RetryArg>,
    pool: Option<String>,
    /// The run's container: `network` (`none`, `model-only`, `open`), `memory_mb`, `cpus`,
    /// `pids`.
    sandbox: Option<SandboxInput>,
}

/// Schema of `update_job`: `job` plus the fields to change.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct UpdateJobArgs {
    /// The job's id (UUID) or its unique name.
    job: String,
    /// New unique name.
    name: Option<String>,
    /// `null` clears it.
    description: Option<String>,
    prompt: Option<String>,
    command: Option<String>,
    /// New cron expression; `null` makes the job manual-only.
    schedule: Option<String>,
    /// One time to fire (RFC 3339); `null` clears it.
    at: Option<String>,
    timezone: Option<String>,
    /// `false` pauses the job, `true` resumes it.
    enabled: Option<bool>,
    /// `null` goes back to the CLI's default model.
    model: Option<String>,
    allowed_tools: Option<Vec<String>>,
    disallowed_tools: Option<Vec<String>>,
    max_turns: Option<u32>,
    timeout_secs: Option<u64>,
    /// `null` removes the cost limit.
    max_cost_usd: Option<f64>,
    misfire_policy: Option<MisfireArg>,
    misfire_cap: Option<u32>,
    overlap_policy: Option<OverlapArg>,
    retry: Option<RetryArg>,
    pool: Option<String>,
    /// The run's container: `network` (`none`, `model-only`, `open`), `memory_mb`, `cpus`,
    /// `pids`.
    sandbox: Option<SandboxInput>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TriggerArgs {
    /// The job's id (UUID) or its unique name.
    job: String,
    /// Wait for the run to end and return its result, status, tokens and cost (bounded by
    /// the run's timeout). Default false: return at once with the queued run.
    #[serde(default)]
    wait: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListRunsArgs {
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
struct GetRunArgs {
    /// The run id (UUID).
    run_id: String,
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
struct RunRef {
    /// The run id (UUID).
    run_id: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PreviewArgs {
    /// Cron expression: 5 fields (minute hour day-of-month month day-of-week), 6 with seconds
    /// first, or an alias such as `@daily`.
    schedule: String,
    /// IANA time zone, e.g. `America/New_York`.
    #[serde(default = "default_timezone")]
    timezone: String,
    /// How many fire times (1 to 100).
    #[serde(default = "default_count")]
    count: usize,
}

fn default_timezone() -> String {
    "UTC".to_owned()
}

fn default_count() -> usize {
    5
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct QuickRunArgs {
    /// What Claude should do.
    prompt: String,
    /// Claude model; the CLI's default when left out.
    #[serde(default)]
    model: Option<String>,
    /// Tools the run may use, e.g. `["WebFetch", "Write"]`.
    #[serde(default)]
    allowed_tools: Vec<String>,
    #[serde(default)]
    max_turns: Option<u32>,
    /// Default 1800.
    #[serde(default)]
    timeout_secs: Option<u64>,
    #[serde(default)]
    max_cost_usd: Option<f64>,
    #[serde(default)]
    sandbox: Option<SandboxInput>,
    /// Wait for the run to end and return its result. Default false.
    #[serde(default)]
    wait: bool,
}

// --- Definitions --------------------------------------------------------------------------------

struct Spec {
    name: &'static str,
    title: &'static str,
    description: &'static str,
    input: Arc<JsonObject>,
    output: Value,
    read_only: bool,
    destructive: bool,
    idempotent: bool,
    open_world: bool,
}

fn input<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    // Every argument type above derives an object schema.
    schema_for_input::<T>().unwrap_or_else(|err| panic!("tool input schema: {err}"))
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({ "type": "object", "properties": properties, "required": required })
}

fn job_schema() -> Value {
    json!({ "type": "object", "description": "A job: id, name, kind, prompt or command, schedule, timezone, enabled, run settings, policies, next_fire_at" })
}

fn run_schema() -> Value {
    json!({ "type": "object", "description": "A run: id, job_id, status, result, error, tokens, cost_usd, times" })
}

fn waited_run_schema() -> Value {
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

fn specs() -> Vec<Spec> {
    let mut specs = job_and_run_specs();
    specs.extend(webhooks::specs());
    specs
}

fn job_and_run_specs() -> Vec<Spec> {
    vec![
        Spec {
            name: "list_jobs",
            title: "List jobs",
            description: "Lists every Autopilot job with its schedule, whether it is enabled and \
                when it fires next. Use it to find a job's name or id before get_job, update_job, \
                trigger_job or delete_job. Example: {}",
            input: input::<NoArgs>(),
            output: object(
                json!({ "jobs": { "type": "array", "items": job_schema() }, "count": { "type": "integer" } }),
                &["jobs", "count"],
            ),
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "get_job",
            title: "Get a job",
            description: "Shows one job (by id or name) with all its settings and its next five \
                fire times. Example: {\"job\": \"sprint digest\"}",
            input: input::<JobRef>(),
            output: object(
                json!({ "job": job_schema(), "next_fires": { "type": "array", "items": { "type": "string" } } }),
                &["job", "next_fires"],
            ),
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "create_job",
            title: "Create a job",
            description: "Creates a scheduled (or manual) job that runs Claude Code with a prompt \
                (kind claude, the default) or a shell command (kind shell) in the job's own \
                workspace. Check a cron expression first with preview_schedule if unsure. Example: \
                {\"name\": \"sprint digest\", \"prompt\": \"Summarise yesterday's commits into \
                digest.md\", \"schedule\": \"0 9 * * 1-5\", \"timezone\": \"Europe/Paris\", \
                \"allowed_tools\": [\"Bash(git log:*)\", \"Write\"], \"max_cost_usd\": 0.5}",
            input: input::<CreateJobArgs>(),
            output: object(json!({ "job": job_schema() }), &["job"]),
            read_only: false,
            destructive: false,
            idempotent: false,
            open_world: false,
        },
        Spec {
            name: "update_job",
            title: "Update a job",
            description: "Changes some fields of a job (by id or name); fields left out keep \
                their value, null clears an optional one. Use enabled: false to pause a job. \
                Example: {\"job\": \"sprint digest\", \"schedule\": \"0 8 * * 1-5\", \
                \"enabled\": true}",
            input: input::<UpdateJobArgs>(),
            output: object(json!({ "job": job_schema() }), &["job"]),
            read_only: false,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "delete_job",
            title: "Delete a job",
            description: "Deletes a job (by id or name) for good; its past runs and their \
                events stay readable. To stop a job temporarily use update_job with enabled: \
                false instead. Example: {\"job\": \"sprint digest\"}",
            input: input::<JobRef>(),
            output: object(
                json!({ "deleted": { "type": "boolean" }, "job_id": { "type": "string" }, "name": { "type": "string" } }),
                &["deleted", "job_id", "name"],
            ),
            read_only: false,
            destructive: true,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "trigger_job",
            title: "Run a job now",
            description: "Starts a run of a job (by id or name) now, outside its schedule. With \
                wait: true the call returns when the run ends, with its result, status, tokens \
                and cost (progress is reported meanwhile); otherwise it returns the queued run \
                at once and get_run shows how it goes. Refused while the job is running if its \
                overlap_policy is skip. Example: {\"job\": \"sprint digest\", \"wait\": true}",
            input: input::<TriggerArgs>(),
            output: waited_run_schema(),
            read_only: false,
            destructive: false,
            idempotent: false,
            open_world: true,
        },
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
            name: "preview_schedule",
            title: "Preview a schedule",
            description: "Shows the next fire times (UTC) of a cron expression in a time zone \
                without saving anything: use it to check a schedule before create_job or \
                update_job. Example: {\"schedule\": \"0 9 * * 1-5\", \"timezone\": \
                \"Europe/Paris\", \"count\": 3}",
            input: input::<PreviewArgs>(),
            output: object(
                json!({ "next_fires": { "type": "array", "items": { "type": "string" } } }),
                &["next_fires"],
            ),
            read_only: true,
            destructive: false,
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
        Spec {
            name: "get_server_info",
            title: "Autopilot server info",
            description: "Shows this Autopilot's version, store backend, mode, public URL and \
                how many jobs and active runs it has. Example: {}",
            input: input::<NoArgs>(),
            output: object(
                json!({
                    "version": { "type": "string" },
                    "store": { "type": "string" },
                    "mode": { "type": "string" },
                    "public_url": { "type": "string" },
                    "jobs": { "type": "integer" },
                    "active_runs": { "type": "integer" },
                }),
                &[
                    "version",
                    "store",
                    "mode",
                    "public_url",
                    "jobs",
                    "active_runs",
                ],
            ),
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
    ]
}

static DEFINITIONS: LazyLock<Vec<Tool>> = LazyLock::new(|| {
    specs()
        .into_iter()
        .map(|spec| {
            let output = match spec.output {
                Value::Object(map) => Arc::new(map),
                _ => Arc::new(JsonObject::new()),
            };
            Tool::new(spec.name, spec.description, spec.input)
                .with_title(spec.title)
                .with_raw_output_schema(output)
                .with_annotations(
                    ToolAnnotations::with_title(spec.title)
                        .read_only(spec.read_only)
                        .destructive(spec.destructive)
                        .idempotent(spec.idempotent)
                        .open_world(spec.open_world),
                )
        })
        .collect()
});

pub fn definitions() -> &'static [Tool] {
    &DEFINITIONS
}

// --- Calls ---------------------------------------------------------------------------------------

/// Runs one tool call. Problems the model can fix come back as tool errors (`isError`), which
/// the model reads; only an unknown tool is a protocol error.
/// Whether `name` is a tool that changes state (needs `autopilot:write`).
pub fn changes_state(name: &str) -> bool {
    definitions().iter().any(|tool| {
        tool.name == name
            && !tool
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.read_only_hint)
                .unwrap_or(false)
    })
}

pub async fn call(
    app: &Arc<App>,
    caller: Option<Caller>,
    request: CallToolRequestParams,
    context: RequestContext<RoleServer>,
) -> Result<CallToolResult, ErrorData> {
    let name = request.name.as_ref();
    let Some(tool) = definitions().iter().find(|tool| tool.name == name) else {
        return Err(ErrorData::invalid_params(
            format!(
                "unknown tool `{name}`; the tools are: {}",
                definitions()
                    .iter()
                    .map(|tool| tool.name.as_ref())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        ));
    };
    let read_only = tool
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.read_only_hint)
        .unwrap_or(false);
    if let Err(denied) = check_scope(caller.as_ref(), name, read_only) {
        return Ok(denied);
    }
    let args = request.arguments.unwrap_or_default();
    let outcome = match name {
        "list_jobs" => list_jobs(app, args).await,
        "get_job" => get_job(app, args).await,
        "create_job" => create_job(app, args).await,
        "update_job" => update_job(app, args).await,
        "delete_job" => delete_job(app, args).await,
        "trigger_job" => trigger_job(app, args, &context).await,
        "list_runs" => list_runs(app, args).await,
        "get_run" => get_run(app, args).await,
        "kill_run" => kill_run(app, args).await,
        "preview_schedule" => preview(args),
        "quick_run" => quick_run(app, args, &context).await,
        "get_server_info" => server_info(app, args).await,
        name if webhooks::NAMES.contains(&name) => webhooks::call(app, name, args, &context).await,
        _ => Err(Failure::Message(format!(
            "tool `{name}` is not implemented"
        ))),
    };
    Ok(match outcome {
        Ok(result) => result,
        Err(failure) => failure.into_result(name),
    })
}

fn check_scope(caller: Option<&Caller>, tool: &str, read_only: bool) -> Result<(), CallToolResult> {
    let Some(caller) = caller else {
        return Err(error_result(
            "not authenticated: this request carries no Autopilot credentials; connect with the \
             admin token (Authorization: Bearer …) or through OAuth"
                .to_owned(),
        ));
    };
    let (held, needed) = if read_only {
        (caller.scopes.read, SCOPE_READ)
    } else {
        (caller.scopes.write, SCOPE_WRITE)
    };
    if held {
        return Ok(());
    }
    let granted = caller.scopes.to_string();
    Err(error_result(format!(
        "`{tool}` needs the `{needed}` scope, but this connection was granted {}. Ask the user to \
         reconnect Autopilot and grant `{needed}`.",
        if granted.is_empty() {
            "no Autopilot scope".to_owned()
        } else {
            format!("only `{granted}`")
        }
    )))
}

/// Why a call failed, before it is turned into a tool error.
enum Failure {
    Service(ServiceError),
    /// A message already written for the model.
    Message(String),
}

impl From<ServiceError> for Failure {
    fn from(err: ServiceError) -> Self {
        Failure::Service(err)
    }
}

impl Failure {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Failure::Service(ServiceError::invalid(field, message))
    }

    fn into_result(self, tool: &str) -> CallToolResult {
        let text = match self {
            Failure::Message(message) => message,
            Failure::Service(ServiceError::Invalid { field, message }) => {
                // The service's message usually starts with the field already.
                let message = message
                    .strip_prefix(&format!("{field}: "))
                    .unwrap_or(&message)
                    .to_owned();
                format!(
                    "invalid argument `{field}`: {message}\nFix `{field}` and call {tool} again."
                )
            }
            Failure::Service(err @ ServiceError::NotFound { .. }) => {
                format!("{err}. list_jobs / list_runs / list_webhooks show what exists.")
            }
            Failure::Service(ServiceError::Conflict(message)) => message,
            Failure::Service(ServiceError::Unavailable(message)) => {
                format!("Autopilot is temporarily unavailable ({message}); try again shortly.")
            }
            Failure::Service(ServiceError::Internal(err)) => {
                tracing::error!(tool, error = ?err, "MCP tool failed");
                "Autopilot hit an internal error (it is in the server's log); try again, and \
                 report it if it persists."
                    .to_owned()
            }
        };
        error_result(text)
    }
}

type Outcome = Result<CallToolResult, Failure>;

fn error_result(text: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// A success: `value` as structured content, and a text rendering (a one-line summary, then the
/// same JSON) for clients that only read text.
fn success(summary: String, value: Value) -> Outcome {
    let pretty = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
    let mut result = CallToolResult::structured(value);
    result.content = vec![ContentBlock::text(format!("{summary}\n\n{pretty}"))];
    Ok(result)
}

/// Reads the arguments into `T`, naming the argument that is wrong.
fn parse<T: DeserializeOwned>(args: JsonObject) -> Result<T, Failure> {
    serde_path_to_error::deserialize::<_, T>(Value::Object(args)).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        if path == "." || path.is_empty() {
            Failure::Message(format!(
                "invalid arguments: {inner}. The tool's input schema lists the arguments."
            ))
        } else {
            Failure::invalid(&path, inner)
        }
    })
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, Failure> {
    serde_json::to_value(value)
        .map_err(|err| Failure::Service(ServiceError::Internal(anyhow::Error::new(err))))
}

fn parse_run_id(field: &str, text: &str) -> Result<RunId, Failure> {
    text.trim().parse().map_err(|_| {
        Failure::invalid(
            field,
            format!("`{text}` is not a run id (run ids are UUIDs; list_runs shows them)"),
        )
    })
}

async fn list_jobs(app: &App, args: JsonObject) -> Outcome {
    let NoArgs {} = parse(args)?;
    let jobs = app.list_jobs().await?;
    let summary = match jobs.len() {
        0 => "No jobs yet; create_job makes one.".to_owned(),
        count => {
            let names: Vec<String> = jobs
                .iter()
                .map(|job| {
                    format!(
                        "{} ({}{})",
                        job.name,
                        job.schedule.as_deref().unwrap_or("manual"),
                        if job.enabled { "" } else { ", disabled" }
                    )
                })
                .collect();
            format!("{count} job(s): {}", names.join("; "))
        }
    };
    let count = jobs.len();
    success(summary, json!({ "jobs": to_value(&jobs)?, "count": count }))
}

async fn get_job(app: &App, args: JsonObject) -> Outcome {
    let JobRef { job } = parse(args)?;
    let job = app.find_job(&job).await?;
    let next_fires = upcoming_fires(&job, 5).unwrap_or_default();
    let view = JobView::from(&job);
    let summary = format!(
        "Job `{}` ({}), {}, schedule {}.",
        view.name,
        view.id,
        if view.enabled { "enabled" } else { "disabled" },
        view.schedule.as_deref().unwrap_or("none (manual)")
    );
    success(
        summary,
        json!({ "job": to_value(&view)?, "next_fires": next_fires }),
    )
}

async fn create_job(app: &App, args: JsonObject) -> Outcome {
    let input: JobInput = parse(args)?;
    let view = app.create_job(input).await?;
    let summary = format!(
        "Created job `{}` ({}); next fire: {}.",
        view.name,
        view.id,
        view.next_fire_at
            .map(|at| at.to_rfc3339())
            .unwrap_or_else(|| "none (manual only)".to_owned())
    );
    success(summary, json!({ "job": to_value(&view)? }))
}

async fn update_job(app: &App, mut args: JsonObject) -> Outcome {
    let job = match args.remove("job") {
        Some(Value::String(job)) => job,
        Some(_) => return Err(Failure::invalid("job", "must be the job's id or name")),
        None => {
            return Err(Failure::invalid(
                "job",
                "missing: give the job's id or name",
            ))
        }
    };
    let patch: JobPatch = parse(args)?;
    let id = app.find_job(&job).await?.id;
    let view = app.update_job(id, patch).await?;
    let summary = format!("Updated job `{}` ({}).", view.name, view.id);
    success(summary, json!({ "job": to_value(&view)? }))
}

async fn delete_job(app: &App, args: JsonObject) -> Outcome {
    let JobRef { job } = parse(args)?;
    let found = app.find_job(&job).await?;
    app.delete_job(found.id).await?;
    success(
        format!(
            "Deleted job `{}` ({}); its runs stay.",
            found.name, found.id
        ),
        json!({ "deleted": true, "job_id": found.id, "name": found.name }),
    )
}

async fn trigger_job(app: &App, args: JsonObject, context: &RequestContext<RoleServer>) -> Outcome {
    let TriggerArgs { job, wait } = parse(args)?;
    let job = app.find_job(&job).await?;
    let updates = app.run_updates.subscribe();
    let run = app.trigger_job(job).await?;
    finish_run_call(app, run, wait, updates, context).await
}

async fn quick_run(app: &App, args: JsonObject, context: &RequestContext<RoleServer>) -> Outcome {
    let args: QuickRunArgs = parse(args)?;
    let wait = args.wait;
    let updates = app.run_updates.subscribe();
    let run = app
        .quick_run(QuickRunInput {
            prompt: args.prompt,
            model: args.model,
            allowed_tools: args.allowed_tools,
            max_turns: args.max_turns,
            timeout_secs: args.timeout_secs,
            max_cost_usd: args.max_cost_usd,
            sandbox: args.sandbox,
        })
        .await?;
    finish_run_call(app, run, wait, updates, context).await
}

/// Answers a call that started a run: at once, or when the run ends if the caller waits.
async fn finish_run_call(
    app: &App,
    run: Run,
    wait: bool,
    updates: broadcast::Receiver<RunId>,
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
            if run.attempt > 1 {
                format!(" (attempt {})", run.attempt)
            } else {
                String::new()
            },
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
    app: &App,
    mut run: Run,
    mut updates: broadcast::Receiver<RunId>,
    context: &RequestContext<RoleServer>,
) -> Result<(Run, bool), Failure> {
    let progress_token = context.meta.get_progress_token();
    let bound = Duration::from_secs(run.settings.timeout_secs) + WAIT_SLACK;
    let deadline = tokio::time::Instant::now() + bound;
    let mut step = 0u32;
    let mut last_reported: Option<(RunStatus, u32, u64, u64)> = None;
    loop {
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
                    if run.attempt > 1 {
                        format!(" (attempt {})", run.attempt)
                    } else {
                        String::new()
                    },
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
        if run.status.is_terminal() {
            return Ok((run, true));
        }
        let changed = tokio::select! {
            received = updates.recv() => match received {
                Ok(id) => id == run.id,
                // Missed some: look anyway.
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep(WAIT_POLL).await;
                    true
                }
            },
            _ = tokio::time::sleep(WAIT_POLL) => true,
            _ = tokio::time::sleep_until(deadline) => return Ok((app.get_run(run.id).await?, false)),
            _ = context.ct.cancelled() => return Ok((run, false)),
            _ = app.shutdown.cancelled() => return Ok((run, false)),
        };
        if changed {
            run = app.get_run(run.id).await?;
        }
    }
}

async fn list_runs(app: &App, args: JsonObject) -> Outcome {
    let args: ListRunsArgs = parse(args)?;
    let job_id = match args.job.as_deref() {
        Some(job) => Some(app.find_job(job).await?.id),
        None => None,
    };
    let statuses = args
        .status
        .iter()
        .map(|status| status.trim().parse::<RunStatus>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| Failure::invalid("status", message))?;
    let before = match args.before.as_deref() {
        Some(before) => Some(parse_run_id("before", before)?),
        None => None,
    };
    let webhook_id = match args.webhook.as_deref() {
        Some(webhook) => Some(app.find_webhook(webhook).await?.id),
        None => None,
    };
    let limit = args.limit.clamp(1, MAX_PAGE);
    let runs = app
        .list_runs(RunFilter {
            job_id,
            webhook_id,
            statuses,
            before,
            limit,
        })
        .await?;
    let next_before = (runs.len() == limit as usize)
        .then(|| runs.last().map(|run| run.id))
        .flatten();
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

async fn get_run(app: &App, args: JsonObject) -> Outcome {
    let args: GetRunArgs = parse(args)?;
    let id = parse_run_id("run_id", &args.run_id)?;
    let limit = args.limit.clamp(1, MAX_EVENTS_PAGE);
    let run = app.get_run(id).await?;
    let mut events = app.run_events(id, args.after_seq.max(0), limit + 1).await?;
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

async fn kill_run(app: &App, args: JsonObject) -> Outcome {
    let RunRef { run_id } = parse(args)?;
    let id = parse_run_id("run_id", &run_id)?;
    let run = app.kill_run(id).await?;
    success(
        format!("Run {} is {}.", run.id, run.status),
        json!({ "run": to_value(&run)? }),
    )
}

fn preview(args: JsonObject) -> Outcome {
    let args: PreviewArgs = parse(args)?;
    let fires = preview_schedule(
        &args.schedule,
        Some(args.timezone.as_str()),
        args.count.clamp(1, 100),
    )?;
    let summary = format!(
        "`{}` in {} fires next at: {}",
        args.schedule,
        args.timezone,
        fires
            .iter()
            .map(|at| at.to_rfc3339())
            .collect::<Vec<_>>()
            .join(", ")
    );
    success(summary, json!({ "next_fires": fires }))
}

async fn server_info(app: &App, args: JsonObject) -> Outcome {
    let NoArgs {} = parse(args)?;
    let jobs = app.list_jobs().await?.len();
    let active_runs = app
        .list_runs(RunFilter {
            statuses: RunStatus::ACTIVE.to_vec(),
            limit: MAX_PAGE,
            ..Default::default()
        })
        .await?
        .len();
    let value = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "store": app.store.backend(),
        "mode": "embedded",
        "public_url": app.config.public_url,
        "jobs": jobs,
        "active_runs": active_runs,
    });
    success(
        format!(
            "Autopilot {} (embedded, {} store) at {}: {jobs} job(s), {active_runs} active run(s).",
            env!("CARGO_PKG_VERSION"),
            app.store.backend(),
            app.config.public_url
        ),
        value,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scopes;

    fn text(result: &CallToolResult) -> String {
        serde_json::to_string(&result.content).unwrap_or_default()
    }

    #[test]
    fn scopes_are_enforced_and_named() {
        let reader = Caller {
            subject: "client".into(),
            scopes: Scopes::parse(SCOPE_READ),
        };
        assert!(check_scope(Some(&reader), "list_jobs", true).is_ok());
        let denied = check_scope(Some(&reader), "create_job", false).unwrap_err();
        assert_eq!(denied.is_error, Some(true));
        assert!(text(&denied).contains(SCOPE_WRITE), "{}", text(&denied));

        let nobody = Caller {
            subject: "client".into(),
            scopes: Scopes::default(),
        };
        let denied = check_scope(Some(&nobody), "get_run", true).unwrap_err();
        assert!(text(&denied).contains(SCOPE_READ));
        assert!(check_scope(None, "get_run", true).is_err());
        assert!(check_scope(Some(&Caller::admin()), "delete_job", false).is_ok());
    }

    #[test]
    fn invalid_input_names_the_field() {
        let failure = Failure::Service(ServiceError::invalid(
            "schedule",
            "schedule: invalid cron expression\n  0 61 * * *\n    ^",
        ));
        let result = failure.into_result("create_job");
        let text = text(&result);
        assert!(text.contains("invalid argument `schedule`"), "{text}");
        assert!(text.contains('^'), "{text}");

        let Err(Failure::Service(ServiceError::Invalid { field, .. })) = parse::<TriggerArgs>(
            serde_json::from_value(json!({ "job": "a", "wait": "yes" })).unwrap(),
        ) else {
            panic!("a wrong type is an invalid field");
        };
        assert_eq!(field, "wait");
    }
}
