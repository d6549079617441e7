//! Real Claude Code runs: the real CLI against the fake Anthropic API, through Autopilot.

use std::time::Duration;

use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{expected_cost_usd, FakeAnthropic, Reply, Usage};
use autopilot_tests::harness::{event_ids, kinds, steps, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The CLI's default model, which the fake echoes back.
const DEFAULT_MODEL: &str = "claude-opus-5-5";
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// An in-process Autopilot whose Claude runs use the real CLI against a fresh fake model API.
pub(crate) async fn start() -> Option<(TestServer, FakeAnthropic)> {
    let claude = components::claude_bin()?;
    let fake = FakeAnthropic::start().await.expect("fake API");
    let server = TestServer::builder()
        .claude_bin(claude)
        .model_api(&fake.base_url())
        .kill_grace(Duration::from_secs(1))
        .start()
        .await;
    Some((server, fake))
}

fn position(kinds: &[String], kind: &str, from: usize) -> usize {
    kinds
        .iter()
        .skip(from)
        .position(|k| k == kind)
        .map(|p| p + from)
        .unwrap_or_else(|| panic!("no `{kind}` after {from} in {kinds:?}"))
}

#[tokio::test]
async fn a_scheduled_claude_run_changes_its_workspace_and_records_everything() {
    let Some((server, fake)) = start().await else {
        return;
    };
    let usages = [
        Usage::new(1200, 40),
        Usage {
            cache_read_input_tokens: 300,
            ..Usage::new(1300, 30)
        },
        Usage::new(1500, 12),
    ];
    let job = server
        .create_job(json!({
            "name": "report writer",
            "prompt": "Write the daily report into the workspace.",
            "schedule": "* * * * * *",
            "allowed_tools": ["Bash", "Write"],
        }))
        .await;
    let workspace = server.workspace_of(&job);
    fake.push(
        Reply::tool_use(
            "Bash",
            json!({ "command": "echo from-bash > bash.txt", "description": "write a file" }),
        )
        .usage(usages[0]),
    );
    fake.push(
        Reply::tool_use("Write", json!({ "file_path": workspace.join("report.md").display().to_string(), "content": "# Daily report\n" }))
            .usage(usages[1]),
    );
    fake.push(Reply::text("Report written.").usage(usages[2]));
    let job_id = job["id"].as_str().unwrap();
    let runs = server
        .wait_for_runs(job_id, 1, Duration::from_secs(5))
        .await;
    server.patch_job(job_id, json!({ "enabled": false })).await;
    let run_id = runs.last().unwrap()["id"].as_str().unwrap().to_owned();

    // Follow it live while it runs.
    let follower = tokio::spawn(server.follow_events(&run_id, None));

    let run = server.wait_until_finished(&run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["trigger"], "schedule");
    assert_eq!(run["result"], "Report written.");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(
        std::fs::read_to_string(workspace.join("bash.txt")).unwrap(),
        "from-bash\n"
    );
    assert_eq!(
        std::fs::read_to_string(workspace.join("report.md")).unwrap(),
        "# Daily report\n"
    );

    // Tokens and cost, as the fake reported them and the CLI priced them.
    let total = |f: fn(&Usage) -> u64| usages.iter().map(f).sum::<u64>();
    assert_eq!(run["input_tokens"], total(|u| u.input_tokens));
    assert_eq!(run["output_tokens"], total(|u| u.output_tokens));
    assert_eq!(
        run["cache_read_tokens"],
        total(|u| u.cache_read_input_tokens)
    );
    let expected_cost: f64 = usages
        .iter()
        .map(|u| expected_cost_usd(DEFAULT_MODEL, u).unwrap())
        .sum();
    let cost = run["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - expected_cost).abs() < 1e-9,
        "cost {cost}, expected {expected_cost}"
    );
    assert_eq!(run["num_turns"], 3);
    assert_eq!(run["models"], json!([DEFAULT_MODEL]));

    // Every line became an ordered event.
    let events = server.events(&run_id).await;
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let kinds = kinds(&events);
    let init = position(&kinds, "system_init", 0);
    let first_tool = position(&kinds, "tool_use", init);
    let first_result = position(&kinds, "tool_result", first_tool);
    let second_tool = position(&kinds, "tool_use", first_result);
    let second_result = position(&kinds, "tool_result", second_tool);
    let text = position(&kinds, "assistant_text", second_result);
    position(&kinds, "result", text);
    assert_eq!(events[first_tool]["data"]["name"], "Bash");
    assert_eq!(
        events[first_tool]["data"]["input"]["command"],
        "echo from-bash > bash.txt"
    );
    assert_eq!(events[second_tool]["data"]["name"], "Write");
    assert_eq!(kinds.iter().filter(|k| *k == "usage").count(), 3);
    assert_eq!(steps(&events), ["queued", "started", "exited", "finished"]);

    // The live stream delivered the same events, then `end`.
    let streamed = follower.await.unwrap();
    let ids = event_ids(&streamed);
    assert_eq!(
        ids, seqs,
        "the live stream carries every event once, in order"
    );
    assert!(streamed.contains("event: end"), "{streamed}");

    // The job's prompt reached the model API, and so did the tool results.
    let requests = fake.requests();
    let first_user = requests[0].messages()[0].to_string();
    assert!(
        first_user.contains("Write the daily report into the workspace."),
        "{first_user}"
    );
    assert!(requests[1].tool_results()[0]
        .to_string()
        .contains("tool_use_id"));
}

#[tokio::test]
async fn following_a_run_resumes_from_last_event_id() {
    let Some((server, fake)) = start().await else {
        return;
    };
    fake.push(Reply::text("hello"));
    let run = server.quick_run(json!({ "prompt": "say hello" })).await;
    let run_id = run["id"].as_str().unwrap();
    server.wait_until_finished(run_id, RUN_TIMEOUT).await;
    let events = server.events(run_id).await;
    let resume_from = events[2]["seq"].as_i64().unwrap();
    let body = server.follow_events(run_id, Some(resume_from)).await;
    let ids = event_ids(&body);
    let expected: Vec<i64> = events
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .filter(|seq| *seq > resume_from)
        .collect();
    assert_eq!(ids, expected);
    assert!(
        body.contains("event: end") && body.contains("\"succeeded\""),
        "{body}"
    );
}

#[tokio::test]
async fn kill_stops_a_running_claude_run_and_keeps_its_events() {
    let Some((server, fake)) = start().await else {
        return;
    };
    fake.push(Reply::stalled());
    let run = server
        .quick_run(json!({ "prompt": "think for a very long time" }))
        .await;
    let run_id = run["id"].as_str().unwrap();
    assert!(
        fake.wait_for_requests(1, Duration::from_secs(30)).await,
        "the CLI reached the model API"
    );
    let (status, body) = server
        .call(Method::POST, &format!("/api/v1/runs/{run_id}/kill"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let run = server
        .wait_until_finished(run_id, Duration::from_secs(10))
        .await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    let events = server.events(run_id).await;
    assert!(
        kinds(&events).contains(&"system_init".to_owned()),
        "events before the kill are kept"
    );
    let exited = events
        .iter()
        .find(|e| e["data"]["step"] == "exited")
        .expect("exited event");
    assert_eq!(exited["data"]["stopped"], "cancelled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.in_flight(),
        0,
        "the CLI went away and closed its request"
    );
}

#[tokio::test]
async fn a_run_past_its_timeout_is_timed_out() {
    let Some((server, fake)) = start().await else {
        return;
    };
    fake.push(Reply::stalled());
    let run = server
        .quick_run(json!({ "prompt": "hang", "timeout_secs": 3 }))
        .await;
    let run = server
        .wait_until_finished(run["id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    assert_eq!(run["status"], "timed_out", "{run:#}");
    assert!(run["error"]
        .as_str()
        .unwrap()
        .contains("timed out after 3s"));
}

#[tokio::test]
async fn a_transient_api_error_is_retried_by_the_jobs_policy() {
    let Some((server, fake)) = start().await else {
        return;
    };
    fake.push(Reply::error(529, "overloaded_error", "Overloaded"));
    fake.push(Reply::text("second time lucky"));
    let job = server
        .create_job(
            json!({ "name": "flaky", "prompt": "try", "retry": { "count": 1, "backoff_secs": 1 } }),
        )
        .await;
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run = server
        .wait_until_finished(run["id"].as_str().unwrap(), RUN_TIMEOUT)
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["attempt"], 2);
    assert_eq!(run["result"], "second time lucky");
    let events = server.events(run["id"].as_str().unwrap()).await;
    let retry = events
        .iter()
        .find(|e| e["data"]["step"] == "retry_scheduled")
        .expect("retry recorded");
    assert!(
        retry["data"]["error"].as_str().unwrap().contains("529"),
        "{retry}"
    );
    assert_eq!(
        events.iter().filter(|e| e["kind"] == "result").count(),
        2,
        "both attempts' output is kept"
    );
}

#[tokio::test]
async fn a_permanent_api_error_fails_without_retry() {
    let Some((server, fake)) = start().await else {
        return;
    };
    fake.set_default(Reply::error(
        400,
        "invalid_request_error",
        "temperature: out of range",
    ));
    let job = server
        .create_job(
            json!({ "name": "broken", "prompt": "x", "retry": { "count": 3, "backoff_secs": 1 } }),
        )
        .await;
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run = server
        .wait_until_finished(run["id"].as_str().unwrap(), RUN_TIMEOUT)
        .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["attempt"], 1);
    assert!(
        run["error"].as_str().unwrap().contains("out of range"),
        "{run:#}"
    );
}

#[tokio::test]
async fn a_denied_tool_is_recorded_and_the_run_goes_on() {
    let Some((server, fake)) = start().await else {
        return;
    };
    fake.push(Reply::tool_use(
        "Bash",
        json!({ "command": "touch should-not-exist" }),
    ));
    fake.push(Reply::text("Bash is not allowed here."));
    let job = server
        .create_job(
            json!({ "name": "write-only", "prompt": "try bash", "allowed_tools": ["Write"] }),
        )
        .await;
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run = server
        .wait_until_finished(run["id"].as_str().unwrap(), RUN_TIMEOUT)
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["permission_denials"], 1);
    assert!(!server.workspace_of(&job).join("should-not-exist").exists());
    let events = server.events(run["id"].as_str().unwrap()).await;
    let denied = events
        .iter()
        .find(|e| e["kind"] == "permission_denied")
        .expect("denial event");
    assert_eq!(denied["data"]["tool_name"], "Bash");
}

#[tokio::test]
async fn a_run_is_stopped_when_it_passes_its_budget() {
    let Some((server, fake)) = start().await else {
        return;
    };
    // 200k input tokens on the default model cost $0.80, far past the $0.05 budget.
    fake.push(
        Reply::tool_use("Bash", json!({ "command": "sleep 20" })).usage(Usage::new(200_000, 10)),
    );
    fake.set_default(Reply::text("should never be asked"));
    let run = server
        .quick_run(json!({ "prompt": "spend", "max_cost_usd": 0.05, "allowed_tools": ["Bash"] }))
        .await;
    let run = server
        .wait_until_finished(run["id"].as_str().unwrap(), RUN_TIMEOUT)
        .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = run["error"].as_str().unwrap().to_lowercase();
    assert!(
        error.contains("budget") || error.contains("max_cost_usd"),
        "{error}"
    );
    assert_eq!(
        fake.request_count(),
        1,
        "no further model call after the budget was passed"
    );
}

#[tokio::test]
async fn a_missing_claude_binary_fails_the_run_with_what_to_do() {
    let fake = FakeAnthropic::start().await.unwrap();
    let server = TestServer::builder()
        .claude_bin("/nonexistent/bin/claude")
        .model_api(&fake.base_url())
        .start()
        .await;
    let run = server.quick_run(json!({ "prompt": "hello" })).await;
    let run = server
        .wait_until_finished(run["id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(run["status"], "failed");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("AUTOPILOT_CLAUDE_BIN") && error.contains("/nonexistent/bin/claude"),
        "{error}"
    );
}

#[tokio::test]
async fn a_missing_api_key_fails_the_run_with_what_to_do() {
    let Some(claude) = components::claude_bin() else {
        return;
    };
    let server = TestServer::builder().claude_bin(claude).start().await;
    let run = server.quick_run(json!({ "prompt": "hello" })).await;
    let run = server
        .wait_until_finished(run["id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(run["status"], "failed");
    assert!(
        run["error"].as_str().unwrap().contains("ANTHROPIC_API_KEY"),
        "{run:#}"
    );
}

#[tokio::test]
async fn quick_run_validates_its_input() {
    let server = TestServer::builder().start().await;
    for (body, field) in [
        (json!({ "prompt": "" }), "prompt"),
        (json!({ "prompt": "x", "max_cost_usd": 0 }), "max_cost_usd"),
        (json!({ "prompt": "x", "tools": [] }), "tools"),
    ] {
        let (status, answer): (StatusCode, Value) = server
            .call(Method::POST, "/api/v1/quick-run", Some(body))
            .await;
        assert_eq!(
            (status, answer["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{answer}"
        );
    }
}
