//! MCP tool arguments: what a model sends to Autopilot's tools, read and checked as each tool
//! does before it reaches the store.
//!
//! Input: `TOOL-NAME \n ARGUMENTS`: a tool's name on the first line, then its arguments as a JSON
//! object (other JSON is left out: the protocol only carries objects).
//!
//! Properties: no arguments make a tool panic; a refusal is a tool error with text, and one that
//! blames an argument names it and says to fix it; a job that `create_job` or `update_job`
//! accepts has a name, a prompt or command, and a schedule that compiles and fires in the future
//! (or never), within every limit of its run settings; and such a job, checked again as an
//! update that changes nothing, passes unchanged.
#![no_main]

use autopilot_control_plane::domain::limits::MAX_PROMPT_BYTES;
use autopilot_control_plane::domain::schedule::Compiled;
use autopilot_control_plane::domain::{Job, Schedule};
use autopilot_control_plane::mcp::fuzzing::{check_tool_arguments, recheck_job};
use chrono::Utc;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (tool, arguments) = text.split_once('\n').unwrap_or((&text, "{}"));
    let Ok(Value::Object(arguments)) = serde_json::from_str::<Value>(arguments) else {
        return;
    };
    let before = Utc::now();
    // An argument may be named by the empty string, and is then blamed as ``.
    let has_nameless_argument = arguments.contains_key("");
    match check_tool_arguments(tool.trim(), arguments) {
        Err(result) => {
            assert_eq!(result.is_error, Some(true));
            let content = serde_json::to_value(&result.content).expect("content is JSON");
            let text = content[0]["text"].as_str().expect("a text block");
            assert!(!text.is_empty());
            if let Some(rest) = text.strip_prefix("invalid argument `") {
                // `invalid argument `FIELD`: …`, where a client's field name may hold backticks.
                let (field, _) = rest.split_once("`: ").expect("the field is quoted");
                assert!(!field.is_empty() || has_nameless_argument, "{text}");
                assert!(text.contains(&format!("Fix `{field}`")), "{text}");
            }
        }
        Ok(None) => {}
        Ok(Some(job)) => {
            check_job(&job, before);
            let mut again = recheck_job(&job).unwrap_or_else(|refused| {
                panic!(
                    "an unchanged job is refused: {:?}\n{job:?}",
                    refused.content
                )
            });
            again.updated_at = job.updated_at;
            assert_eq!(again, job, "checking it again changed the job");
        }
    }
});

fn check_job(job: &Job, before: chrono::DateTime<Utc>) {
    assert!(
        !job.name.is_empty() && job.name.trim() == job.name,
        "{:?}",
        job.name
    );
    assert!(job.name.chars().count() <= 100 && !job.name.chars().any(char::is_control));
    assert!(!job.prompt.trim().is_empty() && job.prompt.len() <= MAX_PROMPT_BYTES);
    assert!((1..=1000).contains(&job.misfire_cap));
    let compiled = Compiled::new(&job.schedule, &job.timezone)
        .unwrap_or_else(|message| panic!("a stored schedule does not compile: {message}"));
    if let Some(next) = compiled.next_after(before) {
        assert!(next > before);
    }
    if let Schedule::At(at) = job.schedule {
        assert!(
            at > before,
            "a one-shot time in the past was accepted: {at}"
        );
    }
    let settings = &job.settings;
    assert!((1..=604_800).contains(&settings.timeout_secs));
    assert!(settings
        .max_cost_usd
        .is_none_or(|cost| cost.is_finite() && cost > 0.0));
    assert!(settings
        .max_turns
        .is_none_or(|turns| (1..=1000).contains(&turns)));
    for tools in [&settings.allowed_tools, &settings.disallowed_tools] {
        for (index, tool) in tools.iter().enumerate() {
            assert!(!tool.trim().is_empty());
            assert!(!tools[..index].contains(tool), "{tool} twice in {tools:?}");
        }
    }
    let sandbox = &settings.sandbox;
    assert!((64..=65_536).contains(&sandbox.memory_mb));
    assert!(sandbox.cpus.is_finite() && (0.1..=64.0).contains(&sandbox.cpus));
    assert!((16..=65_536).contains(&sandbox.pids));
}
