//! The job tools: list, read, create, change, delete and run jobs, preview a schedule, and read
//! and change a job's memory.

use std::sync::Arc;

use rmcp::model::JsonObject;
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::runs::{finish_run_call, waited_run_schema};
use super::{input, object, parse, success, take_string, to_value, Failure, NoArgs, Outcome, Spec};
use crate::app::App;
use crate::domain::memory::MemoryScope;
use crate::services::follow::Updates;
use crate::services::jobs::{
    self, preview_schedule, upcoming_fires, JobInput, JobPatch, JobView, PreviewInput,
};
use crate::services::{memory, rules};
use autopilot_fixed_servers::memory_wire::MemoryAnswer;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct JobRef {
    /// The job's id (UUID) or its unique name.
    job: String,
}

/// Schema of `update_job`: `job`, then the fields to change (read into the service's
/// `JobPatch`).
#[derive(JsonSchema)]
#[allow(dead_code)]
struct UpdateJobArgs {
    /// The job's id (UUID) or its unique name.
    job: String,
    #[serde(flatten)]
    patch: JobPatch,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TriggerArgs {
    /// The job's id (UUID) or its unique name.
    job: String,
    /// Wait for the run to end and return its result, status, tokens and cost (bounded by
    /// the run's timeout). Default false: return at once with the queued run.
    #[serde(default)]
    wait: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MemoryArgs {
    /// The job's id (UUID) or its unique name.
    job: String,
    /// One entry's key: its value is shown.
    #[serde(default)]
    key: Option<String>,
    /// Only the keys starting with this.
    #[serde(default)]
    prefix: Option<String>,
    /// The entries whose key or value contains this (values shown).
    #[serde(default)]
    search: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SetMemoryArgs {
    /// The job's id (UUID) or its unique name.
    job: String,
    /// The entry's key (at most 200 characters).
    pub(super) key: String,
    /// The text to keep (at most 64 KiB); null deletes the entry.
    pub(super) value: Option<String>,
}

fn job_schema() -> Value {
    json!({ "type": "object", "description": "A job: id, name, kind, prompt or command, schedule, timezone, enabled, run settings, policies, next_fire_at" })
}

pub(super) fn specs() -> Vec<Spec> {
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
            description: "Shows one job (by id or name) with all its settings, its next five \
                fire times and its latest skipped fires (a condition or a budget held them \
                back, with why). Example: {\"job\": \"sprint digest\"}",
            input: input::<JobRef>(),
            output: object(
                json!({
                    "job": job_schema(),
                    "next_fires": { "type": "array", "items": { "type": "string" } },
                    "skipped_fires": { "type": "array", "items": { "type": "object" } },
                }),
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
                (kind claude, the default), a shell command (kind shell) in the job's own \
                workspace, or one HTTP request (kind http, `request`). It fires on a cron `schedule`, `every` interval (`15m`) or `at` one \
                time, and/or `after` other jobs end (a chain), and/or `on_hook` Claude Code hook \
                events or `on_file` changes; `on_end` posts each outcome to a URL; `conditions` \
                (time windows, runs a day) and a `budget` hold fires back. \
                The prompt may use {{ date }}, {{ job.name }}, {{ parent.result }} and the like. \
                Check a cron expression first with preview_schedule if unsure. Example: \
                {\"name\": \"sprint digest\", \"prompt\": \"Summarise yesterday's commits into \
                digest.md\", \"schedule\": \"0 9 * * 1-5\", \"timezone\": \"Europe/Paris\", \
                \"allowed_tools\": [\"Bash(git log:*)\", \"Write\"], \"max_cost_usd\": 0.5}",
            input: input::<JobInput>(),
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
            name: "get_job_memory",
            title: "Read a job's memory",
            description: "Shows what a job's runs keep in their memory (the `memory` server): \
                the keys, most recent first (optionally those starting with `prefix`), the \
                entries containing `search`, or one entry's value by `key`. Example: {\"job\": \
                \"sprint digest\", \"search\": \"ada\"}",
            input: input::<MemoryArgs>(),
            output: object(
                json!({ "entries": { "type": "array", "items": { "type": "object" } }, "count": { "type": "integer" } }),
                &["entries", "count"],
            ),
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "set_job_memory",
            title: "Change a job's memory",
            description: "Stores a value under a key in a job's memory, which its next runs read \
                through the `memory` server, or deletes the entry (value null). Example: \
                {\"job\": \"sprint digest\", \"key\": \"recipients\", \"value\": \
                \"ada@example.com\"}",
            input: input::<SetMemoryArgs>(),
            output: object(
                json!({ "key": { "type": "string" }, "stored": { "type": "boolean" }, "created": { "type": "boolean" } }),
                &["key", "stored"],
            ),
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
            input: input::<PreviewInput>(),
            output: object(
                json!({ "next_fires": { "type": "array", "items": { "type": "string" } } }),
                &["next_fires"],
            ),
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: false,
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
        "list_jobs" => list(app, args).await,
        "get_job" => get(app, args).await,
        "create_job" => create(app, args).await,
        "update_job" => update(app, args).await,
        "delete_job" => delete(app, args).await,
        "trigger_job" => trigger(app, args, context).await,
        "preview_schedule" => preview(args),
        "get_job_memory" => get_memory(app, args).await,
        "set_job_memory" => set_memory(app, args).await,
        other => Err(Failure::Message(format!("unknown job tool `{other}`"))),
    }
}

async fn list(app: &App, args: JsonObject) -> Outcome {
    let NoArgs {} = parse(args)?;
    let jobs = jobs::list(app).await?;
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

async fn get(app: &App, args: JsonObject) -> Outcome {
    let JobRef { job } = parse(args)?;
    let job = jobs::find(app, &job).await?;
    let next_fires = upcoming_fires(&job, 5).unwrap_or_default();
    let skipped = rules::list_skipped(app, &job, 10).await?;
    let view = JobView::from(&job);
    let schedule = match (&view.schedule, &view.every) {
        (Some(cron), _) => cron.clone(),
        (None, Some(every)) => format!("every {every}"),
        (None, None) => "none (manual)".to_owned(),
    };
    let mut summary = format!(
        "Job `{}` ({}), {}, schedule {schedule}.",
        view.name,
        view.id,
        if view.enabled { "enabled" } else { "disabled" },
    );
    if let Some(last) = skipped.first() {
        summary.push_str(&format!(
            " Last skipped fire: {} ({}).",
            last.last_at.to_rfc3339(),
            last.reason
        ));
    }
    success(
        summary,
        json!({ "job": to_value(&view)?, "next_fires": next_fires, "skipped_fires": skipped }),
    )
}

async fn create(app: &App, args: JsonObject) -> Outcome {
    let input: JobInput = parse(args)?;
    let view = jobs::create(app, input).await?;
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

async fn update(app: &App, mut args: JsonObject) -> Outcome {
    let job = take_string(&mut args, "job", "the job's id or name")?;
    let patch: JobPatch = parse(args)?;
    let id = jobs::find(app, &job).await?.id;
    let view = jobs::update(app, id, patch).await?;
    let summary = format!("Updated job `{}` ({}).", view.name, view.id);
    success(summary, json!({ "job": to_value(&view)? }))
}

async fn delete(app: &App, args: JsonObject) -> Outcome {
    let JobRef { job } = parse(args)?;
    let found = jobs::find(app, &job).await?;
    jobs::delete(app, found.id).await?;
    success(
        format!(
            "Deleted job `{}` ({}); its runs stay.",
            found.name, found.id
        ),
        json!({ "deleted": true, "job_id": found.id, "name": found.name }),
    )
}

async fn trigger(
    app: &Arc<App>,
    args: JsonObject,
    context: &RequestContext<RoleServer>,
) -> Outcome {
    let TriggerArgs { job, wait } = parse(args)?;
    let job = jobs::find(app, &job).await?;
    let updates = Updates::subscribe(app);
    let run = jobs::trigger(app, job).await?;
    finish_run_call(app, run, wait, updates, context).await
}

async fn get_memory(app: &App, args: JsonObject) -> Outcome {
    let MemoryArgs {
        job,
        key,
        prefix,
        search,
    } = parse(args)?;
    let job = jobs::find(app, &job).await?;
    let scope = MemoryScope::Job(job.id);
    let count = memory::count(app, &scope).await?;
    let (entries, summary) = match key {
        Some(key) => {
            let item = memory::get(app, &scope, &key).await?;
            let summary = format!(
                "`{}` (written {}): {}",
                item.key,
                item.updated_at.to_rfc3339(),
                item.value.as_deref().unwrap_or_default()
            );
            (vec![to_value(&item)?], summary)
        }
        None => match memory::list(app, &scope, prefix, search).await? {
            MemoryAnswer::Entries { entries, more } => {
                let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
                let summary = format!(
                    "Job `{}` keeps {count} entries; these match: {}{}",
                    job.name,
                    if keys.is_empty() {
                        "none".to_owned()
                    } else {
                        keys.join(", ")
                    },
                    if more { " (and more)" } else { "" }
                );
                (
                    entries.iter().map(to_value).collect::<Result<_, _>>()?,
                    summary,
                )
            }
            other => return Err(Failure::Message(format!("unexpected answer {other:?}"))),
        },
    };
    success(summary, json!({ "entries": entries, "count": count }))
}

async fn set_memory(app: &App, args: JsonObject) -> Outcome {
    let SetMemoryArgs { job, key, value } = parse(args)?;
    let job = jobs::find(app, &job).await?;
    let scope = MemoryScope::Job(job.id);
    match value {
        Some(value) => {
            let created = memory::put(app, &scope, key.clone(), value).await?;
            success(
                format!("Stored `{key}` in job `{}`'s memory.", job.name),
                json!({ "key": key, "stored": true, "created": created }),
            )
        }
        None => {
            memory::delete(app, &scope, &key).await?;
            success(
                format!("Deleted `{key}` from job `{}`'s memory.", job.name),
                json!({ "key": key, "stored": false }),
            )
        }
    }
}

fn preview(args: JsonObject) -> Outcome {
    let input: PreviewInput = parse(args)?;
    let fires = preview_schedule(&input)?;
    let summary = format!(
        "`{}` in {} fires next at: {}",
        input.schedule,
        input.timezone.as_deref().unwrap_or("UTC"),
        fires
            .iter()
            .map(|at| at.to_rfc3339())
            .collect::<Vec<_>>()
            .join(", ")
    );
    success(summary, json!({ "next_fires": fires }))
}
