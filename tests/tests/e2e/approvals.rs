//! Approval gates in the fleet, with the real CLI: a gated tool call pauses its run
//! (`waiting_for_approval`, the call on record with who may decide), the run's worker slot is
//! free meanwhile, and the call goes ahead when approved on any replica, is refused with the
//! approver's reason when denied, and is refused when nobody decides in time.

use std::time::Duration;

use autopilot_tests::clients::{register_public_client, tokens_for_client};
use autopilot_tests::cluster::{claude_worker_env, Cluster, ClusterOptions};
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply};
use autopilot_tests::harness::{is_terminal, steps, ApiClient, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// Starts a run of `job` whose model asks to run `command` with Bash, and waits until that call
/// waits for approval; returns the run id and the approval.
async fn gated_call(
    api: &ApiClient,
    fake: &FakeAnthropic,
    job: &str,
    command: &str,
) -> (String, Value) {
    fake.push_all([
        Reply::tool_use("Bash", json!({ "command": command })),
        Reply::text("done"),
    ]);
    let run = api.trigger(job).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    let waiting = api
        .wait_for_run(&run_id, WAIT, |run| {
            run["status"] == "waiting_for_approval" || is_terminal(run)
        })
        .await;
    if waiting["status"] != "waiting_for_approval" {
        let events = api.events(&run_id).await;
        let results: Vec<Value> = fake
            .requests()
            .iter()
            .flat_map(|r| r.tool_results())
            .collect();
        panic!("the call did not wait: {waiting}\nevents: {events:#?}\nresults: {results:?}");
    }
    let listed = api
        .get(&format!("/api/v1/approvals?status=pending&run_id={run_id}"))
        .await;
    let approvals = listed["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 1, "{listed}");
    (run_id, approvals[0].clone())
}

/// The tool result the CLI sent back for the gated call.
fn tool_result(fake: &FakeAnthropic, command_marker: &str) -> Value {
    fake.requests()
        .iter()
        .flat_map(|request| request.tool_results())
        .find(|result| result.to_string().contains(command_marker))
        .unwrap_or_else(|| {
            let last = fake.requests().last().map(|r| r.body.clone());
            panic!("no tool result mentions {command_marker}: {last:?}")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_call_waits_for_a_decision_and_is_approved_denied_or_timed_out() {
    let Some(claude) = autopilot_tests::components::claude_bin() else {
        return;
    };
    let fake = FakeAnthropic::start().await.expect("fake API");
    // One worker with one slot: another run can only execute while the gated one holds none.
    let options = ClusterOptions {
        control_planes: 2,
        workers: 1,
        worker_concurrency: 1,
        worker_env: claude_worker_env(&claude, &fake.base_url()),
        ..ClusterOptions::default()
    };
    let Some(cluster) = Cluster::start(options).await else {
        return;
    };
    let (api, other) = (cluster.api(0).clone(), cluster.api(1).clone());
    let job = api
        .create_job(json!({
            "name": "gated",
            "prompt": "clean up",
            "approval": { "tools": ["Bash"], "approvers": ["claude-ai-client"], "timeout_secs": 120 },
        }))
        .await;
    assert_eq!(
        job["approval"]["approvers"],
        json!(["claude-ai-client"]),
        "{job}"
    );
    let job_id = job["id"].as_str().unwrap().to_owned();
    let quick = api
        .create_job(json!({ "name": "meanwhile", "command": "echo meanwhile" }))
        .await;

    // Approved, on the other replica, while another run used the freed slot.
    let (run_id, approval) = gated_call(&api, &fake, &job_id, "echo approved-output").await;
    assert_eq!(approval["tool"], "Bash", "{approval}");
    assert_eq!(
        approval["input"]["command"], "echo approved-output",
        "{approval}"
    );
    assert_eq!(
        approval["approvers"],
        json!(["claude-ai-client"]),
        "{approval}"
    );
    assert_eq!(approval["status"], "pending", "{approval}");
    let meanwhile = api.trigger(quick["id"].as_str().unwrap()).await;
    let meanwhile = api
        .wait_for_run(meanwhile["id"].as_str().unwrap(), WAIT, is_terminal)
        .await;
    assert_eq!(
        meanwhile["status"], "succeeded",
        "a waiting run holds no slot: {meanwhile}"
    );
    assert_eq!(api.run(&run_id).await["status"], "waiting_for_approval");
    let id = approval["id"].as_str().unwrap();
    let (status, decided) = other
        .call(
            Method::POST,
            &format!("/api/v1/approvals/{id}/approve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!(decided["status"], "approved", "{decided}");
    assert_eq!(decided["decided_by"], "operator", "{decided}");
    assert!(decided["decided_at"].is_string(), "{decided}");
    let (status, again) = api
        .call(Method::POST, &format!("/api/v1/approvals/{id}/deny"), None)
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "one decision per call: {again}"
    );
    let ended = api.wait_for_run(&run_id, WAIT, is_terminal).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let result = tool_result(&fake, "approved-output");
    assert_ne!(result["is_error"], true, "the approved call ran: {result}");
    let events = api.events(&run_id).await;
    let steps = steps(&events);
    let requested = steps.iter().position(|s| s == "approval_requested");
    let decided_step = steps.iter().position(|s| s == "approval_decided");
    assert!(requested.is_some() && requested < decided_step, "{steps:?}");

    // Denied, with a reason the model reads.
    let (run_id, approval) = gated_call(&api, &fake, &job_id, "echo denied-output").await;
    let id = approval["id"].as_str().unwrap();
    let (status, decided) = api
        .call(
            Method::POST,
            &format!("/api/v1/approvals/{id}/deny"),
            Some(json!({ "reason": "not on a Friday" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    assert_eq!(decided["status"], "denied", "{decided}");
    assert_eq!(decided["reason"], "not on a Friday", "{decided}");
    let ended = api.wait_for_run(&run_id, WAIT, is_terminal).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert!(ended["permission_denials"].as_u64() >= Some(1), "{ended}");
    let result = tool_result(&fake, "not on a Friday");
    assert_eq!(result["is_error"], true, "{result}");

    // Nobody decides: denied at the deadline.
    api.call(
        Method::PATCH,
        &format!("/api/v1/jobs/{job_id}"),
        Some(json!({ "approval": { "tools": ["Bash"], "timeout_secs": 5 } })),
    )
    .await;
    let (run_id, approval) = gated_call(&api, &fake, &job_id, "echo late-output").await;
    let ended = api.wait_for_run(&run_id, WAIT, is_terminal).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let id = approval["id"].as_str().unwrap();
    let timed_out = api.get(&format!("/api/v1/approvals/{id}")).await;
    assert_eq!(timed_out["status"], "timed_out", "{timed_out}");
    assert_eq!(timed_out["decided_by"], "autopilot", "{timed_out}");
    let result = tool_result(&fake, "in time");
    assert_eq!(result["is_error"], true, "{result}");
    let (status, late) = api
        .call(
            Method::POST,
            &format!("/api/v1/approvals/{id}/approve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_is_checked_when_saved() {
    let server = autopilot_tests::harness::TestServer::builder()
        .start()
        .await;
    let api = &server.api;
    for (approval, field) in [
        (json!({}), "approval"),
        (json!({ "levels": ["read"] }), "approval.levels"),
        (
            json!({ "tools": ["Bash"], "timeout_secs": 3 }),
            "approval.timeout_secs",
        ),
        (
            json!({ "tools": ["Bash"], "timeout_secs": 4000 }),
            "approval.timeout_secs",
        ),
        (json!({ "tools": ["Bash"], "whom": [] }), "approval"),
    ] {
        let (status, body) = api
            .call(
                Method::POST,
                "/api/v1/jobs",
                Some(json!({ "name": "g", "prompt": "p", "timeout_secs": 3600, "approval": approval })),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{approval}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(field)
                || body.to_string().contains(field),
            "{approval}: {body}"
        );
    }
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "s", "kind": "shell", "command": "ls", "approval": { "tools": ["Bash"] } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = api
        .call(Method::POST, "/api/v1/approvals/apr_none/approve", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api
        .call(Method::GET, "/api/v1/approvals?status=maybe", None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

/// One JSON-RPC call to `/mcp` with `token` (protocol 2025-06-18, no session); the result.
async fn mcp_call(server: &TestServer, token: &str, tool: &str, args: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/mcp", server.base_url))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": { "name": tool, "arguments": args } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{tool}");
    let body: Value = response.json().await.unwrap();
    body["result"].clone()
}

/// The Python SDK's client with a form callback (`tests/mcp_client/elicit_client.py`).
async fn elicit_client(
    python: &std::path::Path,
    server: &TestServer,
    token: &str,
    mode: &str,
    args: Value,
    answer: Value,
) -> Value {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp_client/elicit_client.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(format!("{}/mcp", server.base_url))
        .arg(token)
        .arg(mode)
        .arg("decide_approval")
        .arg(args.to_string())
        .arg(answer.to_string())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the client finished in time")
        .expect("start the client");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|err| panic!("no JSON ({err}): {stdout}\nstderr: {stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mcp_the_operator_decides_and_an_oauth_approver_decides_through_a_person() {
    let (Some(claude), Some(python)) = (
        autopilot_tests::components::claude_bin(),
        autopilot_tests::components::mcp_python(),
    ) else {
        return;
    };
    let fake = FakeAnthropic::start().await.expect("fake API");
    let server = TestServer::builder()
        .auto_approve()
        .claude_bin(claude)
        .model_api(&fake.base_url())
        .start()
        .await;
    let redirect = "http://127.0.0.1:45997/callback";
    let client_id = register_public_client(&server.base_url, "claude.ai", redirect).await;
    let tokens = tokens_for_client(&server.base_url, &client_id, redirect, None).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let job = server
        .create_job(json!({
            "name": "gated",
            "prompt": "clean up",
            "approval": { "tools": ["Bash"], "approvers": [client_id] },
        }))
        .await;
    let job_id = job["id"].as_str().unwrap().to_owned();

    // Claude, through OAuth, cannot decide alone: a client without forms is refused.
    let (run_id, approval) = gated_call(&server.api, &fake, &job_id, "echo formed > f").await;
    let id = approval["id"].as_str().unwrap().to_owned();
    let listed = mcp_call(&server, &token, "list_approvals", json!({})).await;
    assert_eq!(
        listed["structuredContent"]["approvals"][0]["id"],
        id.as_str(),
        "{listed}"
    );
    let args = json!({ "approval_id": id, "decision": "approve" });
    let legacy = elicit_client(
        &python,
        &server,
        &token,
        "legacy",
        args.clone(),
        json!({ "action": "accept" }),
    )
    .await;
    assert_eq!(legacy["result"]["isError"], true, "{legacy}");
    assert!(
        legacy["result"]
            .to_string()
            .contains("confirmed by a person"),
        "{legacy}"
    );
    assert_eq!(legacy["forms"], json!([]), "{legacy}");
    assert_eq!(
        server.get(&format!("/api/v1/approvals/{id}")).await["status"],
        "pending"
    );

    // With forms (MCP 2026-07-28): the person's answer is the decision, not the model's.
    let answer = json!({ "action": "accept", "content": { "decision": "deny", "reason": "the user said no" } });
    let formed = elicit_client(&python, &server, &token, "2026-07-28", args, answer).await;
    let forms = formed["forms"].as_array().unwrap();
    assert_eq!(forms.len(), 1, "{formed}");
    let message = forms[0]["message"].as_str().unwrap();
    assert!(
        message.contains("`Bash`") && message.contains("echo formed > f"),
        "{message}"
    );
    assert_eq!(
        forms[0]["requestedSchema"]["properties"]["decision"]["enum"],
        json!(["approve", "deny"])
    );
    assert_ne!(formed["result"]["isError"], true, "{formed}");
    let decided = server.get(&format!("/api/v1/approvals/{id}")).await;
    assert_eq!(decided["status"], "denied", "{decided}");
    assert_eq!(
        decided["decided_by"],
        format!("{client_id} (confirmed by a person)"),
        "{decided}"
    );
    assert_eq!(decided["reason"], "the user said no", "{decided}");
    let ended = server.wait_for_run(&run_id, WAIT, is_terminal).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(tool_result(&fake, "the user said no")["is_error"], true);

    // The operator's own connection (the admin token) decides directly.
    let (run_id, approval) = gated_call(&server.api, &fake, &job_id, "echo operator > g").await;
    let id = approval["id"].as_str().unwrap();
    let result = mcp_call(
        &server,
        autopilot_tests::harness::ADMIN_TOKEN,
        "decide_approval",
        json!({ "approval_id": id, "decision": "approve" }),
    )
    .await;
    assert_ne!(result["isError"], true, "{result}");
    assert_eq!(
        result["structuredContent"]["approval"]["status"], "approved",
        "{result}"
    );
    assert_eq!(
        result["structuredContent"]["approval"]["decided_by"], "operator",
        "{result}"
    );
    let ended = server.wait_for_run(&run_id, WAIT, is_terminal).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_by_level_holds_a_granted_server_s_write_tools_and_others_stay_denied() {
    let (Some(claude), Some(fixed_servers)) = (
        autopilot_tests::components::claude_bin(),
        autopilot_tests::components::fixed_servers_bin(),
    ) else {
        return;
    };
    let fake = FakeAnthropic::start().await.expect("fake API");
    let server = TestServer::builder()
        .claude_bin(claude)
        .fixed_servers_bin(fixed_servers)
        .model_api(&fake.base_url())
        .start()
        .await;
    crate::tools::memory::register_memory(&server).await;
    // Read tools are free; the write tools of the granted server wait; Write is not granted.
    let job = server
        .create_job(json!({
            "name": "keeper",
            "prompt": "remember",
            "servers": [{ "server": "memory", "access": "read" }],
            "approval": { "levels": ["write"] },
        }))
        .await;
    fake.push_all([
        Reply::tool_use("mcp__memory__memory_list", json!({})),
        Reply::tool_use("Write", json!({ "file_path": "notes.txt", "content": "x" })),
        Reply::tool_use(
            "mcp__memory__memory_put",
            json!({ "key": "k", "value": "kept" }),
        ),
        Reply::text("done"),
    ]);
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    let waiting = server
        .wait_for_run(&run_id, WAIT, |run| {
            run["status"] == "waiting_for_approval" || is_terminal(run)
        })
        .await;
    assert_eq!(waiting["status"], "waiting_for_approval", "{waiting}");
    let listed = server
        .get(&format!("/api/v1/approvals?run_id={run_id}"))
        .await;
    let approvals = listed["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 1, "only the put waits: {listed}");
    assert_eq!(approvals[0]["tool"], "mcp__memory__memory_put");
    let id = approvals[0]["id"].as_str().unwrap();
    let (status, _) = server
        .call(
            Method::POST,
            &format!("/api/v1/approvals/{id}/approve"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let ended = server.wait_for_run(&run_id, WAIT, is_terminal).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    assert_eq!(ended["permission_denials"], 1, "Write was refused: {ended}");
    let written = tool_result(&fake, "not among the tools");
    assert_eq!(written["is_error"], true, "{written}");
    let kept = server
        .get(&format!(
            "/api/v1/jobs/{}/memory/k",
            job["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(kept["value"], "kept", "the approved put ran: {kept}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_waiting_call_and_denies_it() {
    let Some(claude) = autopilot_tests::components::claude_bin() else {
        return;
    };
    let fake = FakeAnthropic::start().await.expect("fake API");
    let server = TestServer::builder()
        .claude_bin(claude)
        .model_api(&fake.base_url())
        .start()
        .await;
    let browser = autopilot_tests::dashboard::DashboardClient::signed_in(&server.base_url).await;
    // The approvers' channel: a webhook kind of the `notify` server, its URL a credential.
    let (channel_url, messages) = channel_endpoint().await;
    server
        .call(
            Method::PUT,
            "/api/v1/credentials/APPROVERS_HOOK",
            Some(json!({ "value": channel_url })),
        )
        .await;
    let channels = json!({ "approvers": { "kind": "webhook", "url": "${APPROVERS_HOOK}" } });
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({ "name": "team", "transport": { "type": "fixed", "server": "notify",
                "env": { "NOTIFY_CHANNELS": channels.to_string(), "NOTIFY_ALLOW_PRIVATE": "true" } } })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = server
        .create_job(json!({ "name": "gated", "prompt": "go", "approval": {
            "tools": ["Bash"], "notify": { "server": "team", "channel": "approvers" } } }))
        .await;
    let (run_id, approval) = gated_call(
        &server.api,
        &fake,
        job["id"].as_str().unwrap(),
        "echo <b>dash</b> > d",
    )
    .await;
    let id = approval["id"].as_str().unwrap();
    let page = browser.get(&format!("/runs/{run_id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("s-waiting_for_approval"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Waiting for approval"), "{}", page.body);
    assert!(
        page.body.contains("&lt;b&gt;dash&lt;/b&gt;"),
        "the input is escaped"
    );
    assert!(page.body.contains(&format!("/approvals/{id}/deny")));
    // The approvers were told, with the tool, the input and where to decide.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let told = loop {
        if let Some(message) = messages.lock().unwrap().first().cloned() {
            break message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the channel was not told"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(told["channel"], "approvers", "{told}");
    assert!(
        told["title"]
            .as_str()
            .unwrap()
            .contains("Approval needed: gated"),
        "{told}"
    );
    let text = told["text"].as_str().unwrap();
    assert!(
        text.contains("`Bash`") && text.contains(&format!("/runs/{run_id}")),
        "{text}"
    );
    let listed = browser.get("/runs?status=waiting_for_approval").await;
    assert!(
        listed.body.contains(&run_id),
        "the runs list filters on the state"
    );
    let denied = browser
        .post(
            &format!("/approvals/{id}/deny"),
            &[("reason", "not from here")],
        )
        .await;
    assert_eq!(denied.status, StatusCode::SEE_OTHER, "{}", denied.body);
    assert_eq!(denied.location(), format!("/runs/{run_id}"));
    let ended = server.wait_for_run(&run_id, WAIT, is_terminal).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let decided = server.get(&format!("/api/v1/approvals/{id}")).await;
    assert_eq!(decided["status"], "denied", "{decided}");
    assert_eq!(decided["reason"], "not from here", "{decided}");
    let again = browser.post(&format!("/approvals/{id}/approve"), &[]).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    server.stop().await.unwrap();
}

/// A channel's receiver: records each message's JSON body.
async fn channel_endpoint() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&messages);
    let app = axum::Router::new().route(
        "/channel",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let seen = std::sync::Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(body);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/channel"), messages)
}
