//! The entry point of the fuzz target `mcp_tool_args` (`fuzz/`), not an API: a tool call's
//! arguments read the way the tool reads them (the same argument types, `parse`, `take_string`,
//! `take_wait`, `parse_run_id`), then put through the checks of the services they reach that
//! need no store: a job described by `create_job` or `update_job` is checked whole, as the
//! service checks it; `preview_schedule` computes its fires; `quick_run` resolves its run
//! settings. A webhook's description is only read, because its checks look its job up in the
//! store (the template and signature parsers it relies on have fuzz targets of their own).

use autopilot_fixed_servers::memory_wire::MemoryOp;
use chrono::Utc;
use rmcp::model::{CallToolResult, JsonObject};

use super::approvals::{DecideArgs, ListArgs};
use super::jobs::{JobRef, MemoryArgs, SetMemoryArgs, TriggerArgs};
use super::runs::{GetRunArgs, ListRunsArgs, RunRef};
use super::webhooks::{ReplayArgs, WebhookRef};
use super::{parse, parse_run_id, take_string, take_wait, Failure, NoArgs};
use crate::domain::{Job, JobKind, RetryPolicy};
use crate::services::jobs::{self, JobInput, JobPatch, PreviewInput};
use crate::services::runs::QuickRunInput;
use crate::services::webhooks::{RotateInput, WebhookInput, WebhookPatch};

/// Reads and checks the arguments of tool `name`. `Ok` carries the job that `create_job` or
/// `update_job` would store (`update_job` applies its patch to a fixed example job); `Err` is
/// the tool error the model would read, as the tool writes it.
pub fn check_tool_arguments(name: &str, args: JsonObject) -> Result<Option<Job>, CallToolResult> {
    check(name, args).map_err(|failure| failure.into_result(name))
}

/// `update_job` with nothing to change, applied to `job`: the job checked again as it is
/// stored. A job that passed the checks once should pass them again unchanged.
pub fn recheck_job(job: &Job) -> Result<Job, CallToolResult> {
    jobs::validate(jobs::apply(job, JobPatch::default()), Some(job), Utc::now())
        .map_err(|err| Failure::from(err).into_result("update_job"))
}

fn check(name: &str, mut args: JsonObject) -> Result<Option<Job>, Failure> {
    match name {
        "list_jobs" | "list_webhooks" | "get_server_info" => {
            let NoArgs {} = parse(args)?;
        }
        "get_job" | "delete_job" => {
            let JobRef { .. } = parse(args)?;
        }
        "create_job" => {
            let input: JobInput = parse(args)?;
            return Ok(Some(jobs::validate(input, None, Utc::now())?));
        }
        "update_job" => {
            take_string(&mut args, "job", "the job's id or name")?;
            let patch: JobPatch = parse(args)?;
            let existing = example_job();
            let now = Utc::now();
            let job = jobs::validate(jobs::apply(&existing, patch), Some(&existing), now)?;
            return Ok(Some(job));
        }
        "trigger_job" => {
            let TriggerArgs { .. } = parse(args)?;
        }
        "get_job_memory" => {
            let MemoryArgs { .. } = parse(args)?;
        }
        "set_job_memory" => {
            let SetMemoryArgs { key, value, .. } = parse(args)?;
            let op = match value {
                Some(value) => MemoryOp::Put { key, value },
                None => MemoryOp::Delete { key },
            };
            crate::services::memory::check(&op)?;
        }
        "preview_schedule" => {
            let input: PreviewInput = parse(args)?;
            jobs::preview_schedule(&input)?;
        }
        "list_runs" => {
            let ListRunsArgs { .. } = parse(args)?;
        }
        "get_run" => {
            let GetRunArgs { run_id, .. } = parse(args)?;
            parse_run_id("run_id", &run_id)?;
        }
        "kill_run" => {
            let RunRef { run_id } = parse(args)?;
            parse_run_id("run_id", &run_id)?;
        }
        "quick_run" => {
            take_wait(&mut args)?;
            let input: QuickRunInput = parse(args)?;
            input.run.resolve(JobKind::Claude, RetryPolicy::NONE)?;
        }
        "create_webhook" => {
            let _: WebhookInput = parse(args)?;
        }
        "get_webhook" | "delete_webhook" => {
            let WebhookRef { .. } = parse(args)?;
        }
        "update_webhook" => {
            take_string(&mut args, "webhook", "the webhook's id or name")?;
            let _: WebhookPatch = parse(args)?;
        }
        "rotate_webhook_secret" => {
            take_string(&mut args, "webhook", "the webhook's id or name")?;
            let _: RotateInput = parse(args)?;
        }
        "replay_delivery" => {
            let ReplayArgs { run_id, .. } = parse(args)?;
            parse_run_id("run_id", &run_id)?;
        }
        "list_approvals" => {
            let _: ListArgs = parse(args)?;
        }
        "decide_approval" => {
            let _: DecideArgs = parse(args)?;
        }
        other => {
            if !super::registry::check_arguments(other, args)? {
                return Err(Failure::Message(format!("unknown tool `{other}`")));
            }
        }
    }
    Ok(None)
}

/// The stored job an `update_job` call is applied to: a weekday claude job in Paris.
fn example_job() -> Job {
    let input = JobInput {
        name: "sprint digest".to_owned(),
        prompt: Some("Summarise yesterday's commits into digest.md".to_owned()),
        schedule: Some("0 9 * * 1-5".to_owned()),
        timezone: Some("Europe/Paris".to_owned()),
        ..JobInput::default()
    };
    jobs::validate(input, None, Utc::now()).expect("the example job is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tool is known here, so the fuzz target reaches them all.
    #[test]
    fn every_tool_is_checked() {
        for tool in super::super::definitions() {
            if let Err(result) = check_tool_arguments(&tool.name, JsonObject::new()) {
                let text = serde_json::to_string(&result.content).unwrap_or_default();
                assert!(!text.contains("unknown tool"), "{}: {text}", tool.name);
            }
        }
    }
}
