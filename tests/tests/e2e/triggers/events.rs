//! Claude Code hook events (the real CLI's hooks calling `autopilot hook`) and file watches.

use autopilot_tests::fake_anthropic::Reply;
use serde_json::json;

use super::*;

/// The real CLI, its hooks calling `autopilot hook`, against the fake model: a Bash call and the
/// session's end reach Autopilot, and the jobs answering them run (once per debounce window).
#[tokio::test]
async fn claude_code_hook_events_start_the_jobs_that_answer_them() {
    let Some(autopilot) = autopilot_tests::components::autopilot_bin() else {
        return;
    };
    let Some(claude) = autopilot_tests::components::claude_bin() else {
        return;
    };
    let fake = autopilot_tests::fake_anthropic::FakeAnthropic::start()
        .await
        .expect("fake API");
    let server = TestServer::builder().start().await;
    let (status, token) = server
        .call(
            Method::POST,
            "/api/v1/hook-tokens",
            Some(json!({ "name": "laptop" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{token}");
    let secret = token["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("aph_"));
    let listed = server.get("/api/v1/hook-tokens").await;
    assert_eq!(listed["hook_tokens"][0]["name"], "laptop");
    assert!(!listed.to_string().contains(&secret), "never shown again");

    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(
                json!({ "name": "bad", "command": "true", "on_hook": { "events": ["AfterTool"] } }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("on_hook.events"), "{body}");
    let after_bash = server
        .create_job(json!({
            "name": "after bash", "command": "cat > event.json",
            "on_hook": { "events": ["PostToolUse"], "matcher": "Bash", "debounce_secs": 600 },
        }))
        .await;
    let on_stop = server
        .create_job(
            json!({ "name": "on stop", "command": "true", "on_hook": { "events": ["Stop"] } }),
        )
        .await;
    let on_write = server
        .create_job(json!({
            "name": "on write", "command": "true",
            "on_hook": { "events": ["PostToolUse"], "matcher": "Write|Edit" },
        }))
        .await;

    // A hook token opens nothing else.
    let (status, _) = server
        .call_with_token(Method::GET, "/api/v1/jobs", None, Some(&secret))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The intake wants a hook token: not the admin token, not a made-up one.
    let client = reqwest::Client::new();
    let intake = format!("{}/hook-events", server.api.base_url);
    for bearer in ["aph_made_up", autopilot_tests::harness::ADMIN_TOKEN] {
        let answer = client
            .post(&intake)
            .bearer_auth(bearer)
            .body(r#"{"hook_event_name":"Stop"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }

    let home = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    let hook = json!([{ "type": "command", "command": format!("{} hook", autopilot.display()), "timeout": 10 }]);
    let settings = json!({
        "hooks": {
            "PostToolUse": [{ "matcher": "Bash", "hooks": hook }],
            "Stop": [{ "hooks": hook }],
        }
    });
    fake.push(Reply::tool_use(
        "Bash",
        json!({ "command": "echo hook-test-one", "description": "say one" }),
    ));
    fake.push(Reply::tool_use(
        "Bash",
        json!({ "command": "echo hook-test-two", "description": "say two" }),
    ));
    fake.push(Reply::text("said both"));
    let output = tokio::process::Command::new(&claude)
        .args([
            "-p",
            "say things",
            "--output-format",
            "stream-json",
            "--verbose",
            "--allowedTools",
            "Bash",
            "--settings",
            &settings.to_string(),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", fake.base_url())
        .env("ANTHROPIC_API_KEY", "sk-ant-hooks")
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("AUTOPILOT_HOOK_URL", &server.api.base_url)
        .env("AUTOPILOT_HOOK_TOKEN", &secret)
        .env("AUTOPILOT_HOOK_DEBUG", "1")
        .current_dir(workspace.path())
        .output()
        .await
        .expect("the CLI runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("said both"),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    let runs = finished_runs(&server, &after_bash, 1).await;
    let stop_runs = finished_runs(&server, &on_stop, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.runs_of(id(&after_bash)).await.len(),
        1,
        "two Bash calls within the debounce window start one run"
    );
    assert!(server.runs_of(id(&on_write)).await.is_empty());
    assert_eq!(stop_runs[0]["trigger"], "hook");
    let run = &runs[0];
    assert_eq!(
        (run["trigger"].as_str(), run["status"].as_str()),
        (Some("hook"), Some("succeeded")),
        "{run:#}"
    );
    let events = server.events(id(run)).await;
    let queued = &events[0]["data"];
    assert_eq!(queued["hook_event"], "PostToolUse", "{queued:#}");
    assert_eq!(queued["tool_name"], "Bash");
    assert_eq!(queued["hook_token"], "laptop");
    // The shell job got the event on standard input.
    let saved = std::fs::read_to_string(server.workspace_of(&after_bash).join("event.json"))
        .expect("the event the job saved");
    let event: Value = serde_json::from_str(&saved).expect("the event is JSON");
    assert_eq!(event["hook_event_name"], "PostToolUse");
    assert!(saved.contains("hook-test-one"), "{saved}");

    // A deleted token admits nothing more.
    let (status, _) = server
        .call(Method::DELETE, "/api/v1/hook-tokens/laptop", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let answer = client
        .post(&intake)
        .bearer_auth(&secret)
        .body(r#"{"hook_event_name":"Stop"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
}

/// Writes `text` to `path` in three pieces, 50 ms apart (a file written slowly).
async fn write_slowly(path: &std::path::Path, text: &str, append: bool) {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(path)
        .await
        .unwrap();
    for piece in text.as_bytes().chunks(text.len().div_ceil(3).max(1)) {
        file.write_all(piece).await.unwrap();
        file.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_watched_file_change_starts_one_run_with_the_file() {
    let server = TestServer::builder().start().await;
    let inbox = tempfile::tempdir().unwrap();
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "relative", "command": "true", "on_file": { "paths": ["inbox/*.csv"] } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("on_file.paths"), "{body}");
    let job = server
        .create_job(json!({
            "name": "ingest", "command": "cat > file.json",
            "on_file": {
                "paths": [format!("{}/*.csv", inbox.path().display())],
                "events": ["create", "modify"], "debounce_ms": 300,
            },
        }))
        .await;
    assert_eq!(job["on_file"]["pool"], "default");
    // The worker is told at once; give it a moment to watch the directory.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let csv = inbox.path().join("orders.csv");
    let orders = "id,total\n1,20\n2,35\n";
    write_slowly(&csv, orders, false).await;
    let first = finished_runs(&server, &job, 1).await;
    assert_eq!(first[0]["trigger"], "file", "{:#}", first[0]);
    assert_eq!(first[0]["status"], "succeeded");
    let seen: Value = serde_json::from_str(
        &std::fs::read_to_string(server.workspace_of(&job).join("file.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(seen["path"], csv.display().to_string());
    assert_eq!(
        (seen["event"].as_str(), seen["name"].as_str()),
        (Some("create"), Some("orders.csv"))
    );
    assert_eq!(seen["size"], orders.len());
    // Another kind of file, and a delete (not watched), start nothing; a change does.
    std::fs::write(inbox.path().join("notes.txt"), "x").unwrap();
    write_slowly(&csv, "3,50\n", true).await;
    let runs = finished_runs(&server, &job, 2).await;
    let events = server.events(id(&runs[0])).await;
    assert_eq!(events[0]["data"]["event"], "modify", "{:#}", events[0]);
    std::fs::remove_file(&csv).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        server.runs_of(id(&job)).await.len(),
        2,
        "one run per settled change"
    );
}
