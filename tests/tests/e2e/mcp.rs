//! The MCP server, through an independent client: the official Python `mcp` SDK
//! (`tests/mcp_client/client.py`), over streamable HTTP against a test server and over stdio
//! against the `autopilot mcp` binary.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use autopilot_tests::clients::{assert_tool_ok, tool_text};
use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{expected_cost_usd, Reply, Usage};
use autopilot_tests::harness::{kinds, Store, TestServer, ADMIN_TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::process::Command;

/// The CLI's default model, which the fake echoes back.
const DEFAULT_MODEL: &str = "claude-opus-5-5";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

const TOOLS: [&str; 43] = [
    "list_jobs",
    "get_job",
    "create_job",
    "update_job",
    "delete_job",
    "trigger_job",
    "get_job_memory",
    "set_job_memory",
    "preview_schedule",
    "list_runs",
    "get_run",
    "kill_run",
    "quick_run",
    "create_webhook",
    "list_webhooks",
    "get_webhook",
    "update_webhook",
    "delete_webhook",
    "rotate_webhook_secret",
    "replay_delivery",
    "register_server",
    "update_server",
    "list_servers",
    "get_server",
    "import_mcp_json",
    "test_server",
    "delete_server",
    "invoke_server_tool",
    "save_dynamic_server",
    "list_dynamic_versions",
    "validate_dynamic_server",
    "approve_dynamic_version",
    "create_bundle",
    "update_bundle",
    "list_bundles",
    "delete_bundle",
    "assign_bundle",
    "set_credential",
    "list_credentials",
    "delete_credential",
    "get_server_info",
    "list_approvals",
    "decide_approval",
];

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp_client/client.py")
}

/// Runs the Python client with `args` and `env`; returns what it printed.
async fn run_client(python: &Path, args: &[String], env: &[(&str, String)]) -> Value {
    let mut command = Command::new(python);
    command
        .arg(client_script())
        .args(args)
        .env_remove("AUTOPILOT_API_URL")
        .env_remove("AUTOPILOT_ADMIN_TOKEN")
        .env_remove("AUTOPILOT_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(CLIENT_TIMEOUT, command.output())
        .await
        .expect("the MCP client finished in time")
        .expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "MCP client failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
        panic!("MCP client printed no JSON ({err}):\nstdout: {stdout}\nstderr: {stderr}")
    })
}

/// Runs `steps` over streamable HTTP against `server`.
async fn over_http(python: &Path, server: &TestServer, steps: Value) -> Value {
    run_client(
        python,
        &[
            "http".into(),
            format!("{}/mcp", server.base_url),
            ADMIN_TOKEN.into(),
            steps.to_string(),
        ],
        &[],
    )
    .await
}

#[tokio::test]
async fn mcp_lists_every_tool_with_annotations_and_needs_the_token() {
    let Some(python) = components::mcp_python() else {
        return;
    };
    let server = TestServer::builder().start().await;

    // No token, no MCP.
    let (status, _) = server
        .call_with_token(
            Method::POST,
            "/mcp",
            Some(json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" })),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let out = over_http(
        &python,
        &server,
        json!([{ "list_tools": true }, { "tool": "get_server_info" }]),
    )
    .await;
    assert_eq!(out["initialize"]["protocolVersion"], "2025-11-25");
    assert_eq!(out["initialize"]["serverInfo"]["name"], "autopilot");
    let tools = out["steps"][0]["tools"].as_array().expect("tools");
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, TOOLS);
    for tool in tools {
        let name = tool["name"].as_str().unwrap();
        assert!(tool["title"].is_string(), "{name} has a title");
        assert!(
            tool["description"].as_str().unwrap().contains("Example"),
            "{name} shows an example"
        );
        assert_eq!(tool["inputSchema"]["type"], "object", "{name}");
        assert!(
            tool["outputSchema"].is_object(),
            "{name} has an output schema"
        );
        let annotations = &tool["annotations"];
        for hint in ["readOnlyHint", "destructiveHint", "idempotentHint"] {
            assert!(annotations[hint].is_boolean(), "{name} has {hint}");
        }
    }
    let by_name = |name: &str| tools.iter().find(|t| t["name"] == name).unwrap();
    assert_eq!(by_name("list_jobs")["annotations"]["readOnlyHint"], true);
    assert_eq!(
        by_name("delete_job")["annotations"]["destructiveHint"],
        true
    );
    assert_eq!(by_name("trigger_job")["annotations"]["readOnlyHint"], false);
    assert_eq!(
        by_name("list_runs")["inputSchema"]["properties"]["limit"]["default"],
        20
    );

    let info = &out["steps"][1];
    assert_tool_ok(info);
    assert_eq!(info["structuredContent"]["mode"], "embedded");
    assert_eq!(info["structuredContent"]["store"], server.store().name());
    assert_eq!(info["structuredContent"]["jobs"], 0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn mcp_create_job_is_visible_over_http_and_a_bad_cron_names_the_field() {
    let Some(python) = components::mcp_python() else {
        return;
    };
    let server = TestServer::builder().start().await;
    let out = over_http(
        &python,
        &server,
        json!([
            { "tool": "create_job", "args": {
                "name": "nightly", "command": "echo hi", "schedule": "0 61 * * *" } },
            { "tool": "create_job", "args": {
                "name": "nightly", "command": "echo hi", "schedule": "30 2 * * *",
                "timezone": "Europe/Paris" } },
            { "tool": "preview_schedule", "args": { "schedule": "0 9 * * 1-5", "count": 3 } },
            { "tool": "update_job", "args": { "job": "nightly", "enabled": false } },
            { "tool": "get_job", "args": { "job": "no such job" } },
            { "tool": "create_job", "args": { "name": "x", "command": "true", "retries": 3 } },
        ]),
    )
    .await;
    let steps = out["steps"].as_array().unwrap();

    let bad = &steps[0];
    assert_eq!(bad["isError"], true, "{bad:#}");
    let text = tool_text(bad);
    assert!(text.contains("`schedule`"), "names the field: {text}");
    assert!(text.contains("0 61 * * *"), "shows the expression: {text}");
    assert!(text.contains('^'), "points at the error: {text}");

    let created = &steps[1];
    assert_tool_ok(created);
    let job = &created["structuredContent"]["job"];
    assert_eq!(job["name"], "nightly");
    assert_eq!(job["timezone"], "Europe/Paris");
    let over_api = server.get("/api/v1/jobs/nightly").await;
    assert_eq!(over_api["id"], job["id"]);
    assert_eq!(over_api["schedule"], "30 2 * * *");

    assert_tool_ok(&steps[2]);
    assert_eq!(
        steps[2]["structuredContent"]["next_fires"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    assert_tool_ok(&steps[3]);
    assert_eq!(server.get("/api/v1/jobs/nightly").await["enabled"], false);

    assert_eq!(steps[4]["isError"], true);
    assert!(tool_text(&steps[4]).contains("no such job"));

    assert_eq!(steps[5]["isError"], true);
    assert!(
        tool_text(&steps[5]).contains("retries"),
        "unknown argument named: {}",
        tool_text(&steps[5])
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn mcp_trigger_job_waits_for_a_claude_run_with_progress() {
    let Some(python) = components::mcp_python() else {
        return;
    };
    let Some((server, fake)) = crate::claude::start().await else {
        return;
    };
    let usage = Usage::new(1500, 42);
    fake.push(Reply::text("All checks passed.").usage(usage));

    let out = over_http(
        &python,
        &server,
        json!([
            { "tool": "create_job", "args": {
                "name": "checker", "prompt": "Check the workspace and report." } },
            { "tool": "trigger_job", "args": { "job": "checker", "wait": true }, "progress": true },
            { "tool": "get_run", "args": {
                "run_id": { "$from": [1, "structuredContent", "run", "id"] }, "limit": 2 } },
            { "tool": "get_run", "args": {
                "run_id": { "$from": [1, "structuredContent", "run", "id"] },
                "after_seq": { "$from": [2, "structuredContent", "next_after_seq"] },
                "limit": 1000 } },
            { "tool": "list_runs", "args": { "job": "checker", "status": ["succeeded"] } },
        ]),
    )
    .await;
    let steps = out["steps"].as_array().unwrap();
    assert_tool_ok(&steps[0]);

    let waited = &steps[1];
    assert_tool_ok(waited);
    let result = &waited["structuredContent"];
    assert_eq!(result["finished"], true, "{result:#}");
    assert_eq!(result["status"], "succeeded", "{result:#}");
    assert_eq!(result["result"], "All checks passed.");
    assert_eq!(result["tokens"]["input"], 1500);
    assert_eq!(result["tokens"]["output"], 42);
    let expected = expected_cost_usd(DEFAULT_MODEL, &usage).unwrap();
    let cost = result["cost_usd"].as_f64().expect("cost");
    assert!(
        (cost - expected).abs() < 1e-9,
        "cost {cost}, expected {expected}"
    );
    assert!(tool_text(waited).contains("All checks passed."));
    let progress = waited["progress"].as_array().unwrap();
    assert!(!progress.is_empty(), "progress notifications arrived");
    let values: Vec<f64> = progress
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect();
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
    assert!(progress
        .iter()
        .any(|p| p["message"].as_str().unwrap_or("").contains("succeeded")));

    // Events, paged.
    let first = &steps[2];
    assert_tool_ok(first);
    assert_eq!(first["structuredContent"]["run"]["status"], "succeeded");
    assert_eq!(
        first["structuredContent"]["events"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(first["structuredContent"]["has_more"], true);
    let rest = &steps[3];
    assert_tool_ok(rest);
    assert_eq!(rest["structuredContent"]["has_more"], false);
    let mut events = first["structuredContent"]["events"]
        .as_array()
        .unwrap()
        .clone();
    events.extend(
        rest["structuredContent"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
    );
    let kinds = kinds(&events);
    assert!(kinds.contains(&"assistant_text".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"result".to_owned()), "{kinds:?}");
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let listed = &steps[4];
    assert_tool_ok(listed);
    assert_eq!(
        listed["structuredContent"]["runs"][0]["id"],
        result["run"]["id"]
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn mcp_over_stdio_lists_and_creates_jobs() {
    let Some(python) = components::mcp_python() else {
        return;
    };
    let Some(bin) = components::autopilot_bin() else {
        return;
    };
    let data_dir = tempfile::tempdir().unwrap();
    // `autopilot mcp` runs Autopilot in its own process, on the store the suite runs on.
    let store = Store::from_env();
    let Some(database_url) = store.new_database(data_dir.path()).await else {
        return;
    };
    let out = run_client(
        &python,
        &[
            "stdio".into(),
            bin.display().to_string(),
            json!([
                { "tool": "list_jobs" },
                { "tool": "create_job", "args": { "name": "from desktop", "command": "date" } },
                { "tool": "list_jobs" },
                { "tool": "get_server_info" },
            ])
            .to_string(),
        ],
        &[
            ("AUTOPILOT_DATA_DIR", data_dir.path().display().to_string()),
            ("AUTOPILOT_DATABASE_URL", database_url),
            ("AUTOPILOT_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ],
    )
    .await;
    assert_eq!(out["initialize"]["protocolVersion"], "2025-11-25");
    let steps = out["steps"].as_array().unwrap();
    assert_tool_ok(&steps[0]);
    assert_eq!(steps[0]["structuredContent"]["count"], 0);
    assert_tool_ok(&steps[1]);
    assert_eq!(steps[1]["structuredContent"]["job"]["kind"], "shell");
    assert_tool_ok(&steps[2]);
    assert_eq!(
        steps[2]["structuredContent"]["jobs"][0]["name"],
        "from desktop"
    );
    assert_tool_ok(&steps[3]);
    assert_eq!(steps[3]["structuredContent"]["store"], store.name());
}

#[tokio::test]
async fn mcp_over_stdio_forwards_to_a_running_autopilot() {
    let Some(python) = components::mcp_python() else {
        return;
    };
    let Some(bin) = components::autopilot_bin() else {
        return;
    };
    let server = TestServer::builder().start().await;
    let out = run_client(
        &python,
        &[
            "stdio".into(),
            bin.display().to_string(),
            json!([
                { "tool": "create_job", "args": { "name": "forwarded", "command": "echo forwarded" } },
                { "tool": "trigger_job", "args": { "job": "forwarded", "wait": true }, "progress": true },
            ])
            .to_string(),
        ],
        &[
            ("AUTOPILOT_API_URL", server.base_url.clone()),
            ("AUTOPILOT_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ],
    )
    .await;
    let steps = out["steps"].as_array().unwrap();
    assert_tool_ok(&steps[0]);
    // The job lives in the running server.
    assert_eq!(
        server.get("/api/v1/jobs/forwarded").await["command"],
        "echo forwarded"
    );
    assert_tool_ok(&steps[1]);
    assert_eq!(steps[1]["structuredContent"]["status"], "succeeded");
    assert!(!steps[1]["progress"].as_array().unwrap().is_empty());
    server.stop().await.unwrap();
}

/// Raw HTTP, as a client that keeps no session would talk: a 2025-06-18 handshake, then a tool
/// call without `Mcp-Session-Id`, answered as plain JSON. Foreign `Host`s are refused.
#[tokio::test]
async fn mcp_is_stateless_json_and_accepts_2025_06_18_clients() {
    let server = TestServer::builder().start().await;
    let post = |body: Value, version: Option<&str>, host: Option<&str>| {
        let mut request = server
            .client
            .post(format!("{}/mcp", server.base_url))
            .bearer_auth(ADMIN_TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(version) = version {
            request = request.header("mcp-protocol-version", version);
        }
        if let Some(host) = host {
            request = request.header("host", host);
        }
        request.send()
    };
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": { "name": "raw-test", "version": "0" },
        },
    });
    let response = post(initialize.clone(), None, None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("mcp-session-id").is_none());
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"]["protocolVersion"], "2025-06-18", "{body:#}");

    let call = json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": { "name": "preview_schedule", "arguments": { "schedule": "@daily" } },
    });
    let response = post(call.clone(), Some("2025-06-18"), None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"]["isError"], false, "{body:#}");
    assert_eq!(
        body["result"]["structuredContent"]["next_fires"]
            .as_array()
            .unwrap()
            .len(),
        5
    );

    // DNS rebinding protection: only loopback and the public URL's host.
    let response = post(call, Some("2025-06-18"), Some("evil.example"))
        .await
        .unwrap();
    assert!(
        response.status().is_client_error(),
        "foreign host answered {}",
        response.status()
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn mcp_webhook_tools_create_rotate_replay_and_delete_a_webhook() {
    let Some(python) = components::mcp_python() else {
        return;
    };
    let server = TestServer::builder().start().await;
    let out = over_http(
        &python,
        &server,
        json!([
            { "tool": "create_webhook", "args": {
                "name": "issues", "prompt_template": "Triage {{payload.title}}", "pool": "nowhere",
                "signature": { "scheme": "github" } } },
            { "tool": "update_webhook", "args": { "webhook": "issues", "prompt_template": "{{payload.title" } },
            { "tool": "update_webhook", "args": { "webhook": "issues", "prompt_template": "Label {{payload.title}}" } },
            { "tool": "rotate_webhook_secret", "args": { "webhook": "issues", "grace_secs": 60 } },
            { "tool": "list_webhooks", "args": {} },
            { "tool": "get_webhook", "args": { "webhook": "nope" } },
        ]),
    )
    .await;
    let steps = out["steps"].as_array().unwrap();
    let created = &steps[0];
    assert_tool_ok(created);
    let first_url = created["structuredContent"]["url"].as_str().unwrap();
    let secret = created["structuredContent"]["signing_secret"]
        .as_str()
        .unwrap();
    assert!(
        tool_text(created).contains(first_url),
        "the URL is shown once, in the answer"
    );
    let bad = &steps[1];
    assert_eq!(bad["isError"], true, "{bad:#}");
    let text = tool_text(bad);
    assert!(
        text.contains("`prompt_template`") && text.contains("line 1, column 1"),
        "{text}"
    );
    assert_tool_ok(&steps[2]);
    let rotated = &steps[3];
    assert_tool_ok(rotated);
    let url = rotated["structuredContent"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(url, first_url);
    assert_eq!(steps[4]["structuredContent"]["count"], 1);
    assert_eq!(steps[5]["isError"], true);
    assert!(
        tool_text(&steps[5]).contains("list_webhooks"),
        "{:#}",
        steps[5]
    );

    // A delivery to the rotated URL, signed with the secret given at creation.
    let body = r#"{"title":"crash"}"#;
    let signature = {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let (status, _, answer) = server
        .deliver(
            &url,
            &[
                ("content-type", "application/json"),
                ("x-hub-signature-256", &signature),
            ],
            body,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let run_id = answer["run_id"].as_str().unwrap().to_owned();

    let out = over_http(
        &python,
        &server,
        json!([
            { "tool": "replay_delivery", "args": { "run_id": run_id } },
            { "tool": "get_webhook", "args": { "webhook": "issues" } },
            { "tool": "list_runs", "args": { "webhook": "issues" } },
            { "tool": "delete_webhook", "args": { "webhook": "issues" } },
            { "tool": "list_webhooks", "args": {} },
        ]),
    )
    .await;
    let steps = out["steps"].as_array().unwrap();
    let replayed = &steps[0];
    assert_tool_ok(replayed);
    let replay_id = replayed["structuredContent"]["run"]["id"].as_str().unwrap();
    assert_ne!(replay_id, run_id);
    let prompt = server.run(replay_id).await["settings"]["prompt"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        prompt.contains("Label <webhook-data source=\"payload.title\">crash</webhook-data>"),
        "{prompt}"
    );
    assert_eq!(
        steps[1]["structuredContent"]["recent_runs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        steps[2]["structuredContent"]["runs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_tool_ok(&steps[3]);
    assert_eq!(steps[4]["structuredContent"]["count"], 0);
    let (status, _, _) = server
        .deliver(&url, &[("content-type", "application/json")], body)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await.unwrap();
}
