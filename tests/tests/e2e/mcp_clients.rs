//! `/mcp` through real, independent MCP clients that authenticate the way they do in the field:
//! the Python `mcp` SDK's own OAuth client (discovery, dynamic registration, PKCE, refresh),
//! a read-only OAuth token meeting a write tool, and the Claude Code CLI configured with
//! `claude mcp add`, both with a bearer header and logging in through Autopilot's OAuth server
//! with `claude mcp login`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use autopilot_tests::clients::{
    assert_tool_ok, authorization_request, auto_approved_tokens, no_redirects, pkce, query_param,
    register_public_client,
};
use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply, Usage};
use autopilot_tests::harness::{TestServer, ADMIN_TOKEN};
use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::process::Command;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
/// A loopback redirect URI nobody listens on: the clients read the redirect, never follow it.
const REDIRECT: &str = "http://127.0.0.1:45999/oauth/callback";

/// Runs a program to completion within [`CLIENT_TIMEOUT`]; returns its exit status and output.
async fn output_of(mut command: Command) -> (std::process::ExitStatus, String, String) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(CLIENT_TIMEOUT, command.output())
        .await
        .expect("the client finished in time")
        .expect("start the client");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

// --- 1. The Python SDK's OAuth client ---------------------------------------------------------

fn oauth_client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp_client/oauth_client.py")
}

#[tokio::test]
async fn python_sdk_oauth_client_registers_authorizes_calls_tools_and_refreshes() {
    let Some(python) = components::mcp_python() else {
        return;
    };
    let Some(claude) = components::claude_bin() else {
        return;
    };
    let fake = FakeAnthropic::start().await.expect("fake API");
    let server = TestServer::builder()
        .auto_approve()
        .claude_bin(claude)
        .model_api(&fake.base_url())
        .start()
        .await;
    fake.push(Reply::text("Inventory is complete.").usage(Usage::new(900, 21)));

    let steps = json!([
        { "tool": "create_job", "args": {
            "name": "inventory", "prompt": "Count the files in the workspace." } },
        { "tool": "trigger_job", "args": { "job": "inventory", "wait": true } },
        { "tool": "get_run", "args": {
            "run_id": { "$from": [1, "structuredContent", "run", "id"] } } },
    ]);
    let after_refresh = json!([{ "tool": "list_jobs" }]);
    let mut command = Command::new(&python);
    command
        .arg(oauth_client_script())
        .arg(format!("{}/mcp", server.base_url))
        .arg(REDIRECT)
        .arg(steps.to_string())
        .arg(after_refresh.to_string());
    let (status, stdout, stderr) = output_of(command).await;
    assert!(
        status.success(),
        "OAuth MCP client failed ({status}):\nstdout: {stdout}\nstderr: {stderr}"
    );
    let out: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
        panic!("the OAuth client printed no JSON ({err}):\nstdout: {stdout}\nstderr: {stderr}")
    });

    // Discovery led the SDK to this server as the issuer; it registered a public client.
    assert_eq!(out["initialize"]["serverInfo"]["name"], "autopilot");
    assert_eq!(
        out["issuer"].as_str().map(|i| i.trim_end_matches('/')),
        Some(server.base_url.as_str())
    );
    let client_id = out["client"]["client_id"]
        .as_str()
        .expect("the SDK registered a client")
        .to_owned();
    assert_eq!(out["client"]["token_endpoint_auth_method"], "none");
    assert_eq!(out["client"]["redirect_uris"], json!([REDIRECT]));

    // Exactly one authorization, redirected to the registered loopback URI with the issuer.
    let authorizations = out["authorizations"].as_array().unwrap();
    assert_eq!(authorizations.len(), 1, "{authorizations:#?}");
    let seen = &authorizations[0];
    assert_eq!(seen["status"], 302, "{seen:#}");
    assert_eq!(seen["location_base"], REDIRECT);
    assert_eq!(seen["has_code"], true);
    assert_eq!(seen["state_matches"], true);
    assert_eq!(seen["iss"], server.base_url);
    assert_eq!(seen["asked"]["code_challenge_method"], "S256");
    assert_eq!(
        seen["asked"]["resource"],
        format!("{}/mcp", server.base_url)
    );

    // Every step through the OAuth-authenticated session.
    let steps = out["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4, "{steps:#?}");
    assert_tool_ok(&steps[0]);
    assert_eq!(steps[0]["structuredContent"]["job"]["kind"], "claude");
    let waited = &steps[1]["structuredContent"];
    assert_tool_ok(&steps[1]);
    assert_eq!(waited["status"], "succeeded", "{waited:#}");
    assert_eq!(waited["result"], "Inventory is complete.");
    assert_eq!(waited["tokens"]["input"], 900);
    assert_eq!(waited["tokens"]["output"], 21);
    assert_tool_ok(&steps[2]);
    assert_eq!(
        steps[2]["structuredContent"]["run"]["id"],
        waited["run"]["id"]
    );
    assert_eq!(steps[2]["structuredContent"]["run"]["status"], "succeeded");
    // After the forced refresh.
    assert_tool_ok(&steps[3]);
    assert_eq!(
        steps[3]["structuredContent"]["jobs"][0]["name"],
        "inventory"
    );

    // One token set from the code, one from the refresh: both rotated.
    let tokens = out["tokens"].as_array().unwrap();
    assert_eq!(out["tokens_before_refresh"], 1, "{tokens:#?}");
    assert_eq!(tokens.len(), 2, "{tokens:#?}");
    assert_eq!(
        tokens[0]["token_type"].as_str().map(str::to_lowercase),
        Some("bearer".into())
    );
    assert_eq!(tokens[0]["scope"], "autopilot:read autopilot:write");
    assert!(tokens[0]["refresh_token"].is_string(), "{tokens:#?}");
    assert_ne!(tokens[0]["access_token"], tokens[1]["access_token"]);
    assert_ne!(tokens[0]["refresh_token"], tokens[1]["refresh_token"]);
    assert_eq!(tokens[1]["scope"], "autopilot:read autopilot:write");

    // The server knows the registered client: it authorizes it (and refuses a made-up one).
    let (_, challenge) = pkce();
    let known = authorization_request(
        &server.base_url,
        &client_id,
        REDIRECT,
        &challenge,
        &[("scope", "autopilot:read")],
    )
    .await;
    assert_eq!(known.status(), StatusCode::FOUND);
    let unknown = authorization_request(
        &server.base_url,
        "no-such-client",
        REDIRECT,
        &challenge,
        &[("scope", "autopilot:read")],
    )
    .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);

    // The model was asked once, by the one run.
    assert_eq!(fake.requests().len(), 1);
    server.stop().await.unwrap();
}

// --- 2. Scopes, end to end ----------------------------------------------------------------------

async fn token_with_scope(server: &TestServer, scope: &str) -> Value {
    auto_approved_tokens(&server.base_url, REDIRECT, Some(scope)).await
}

/// One JSON-RPC request to `/mcp` with `token`; the answer's body.
async fn rpc(server: &TestServer, token: &str, id: u64, method: &str, params: Value) -> Value {
    let response = server
        .client
        .post(format!("{}/mcp", server.base_url))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{method}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_read_only_oauth_token_lists_jobs_but_cannot_create_one() {
    let server = TestServer::builder().auto_approve().start().await;
    server
        .create_job(json!({ "name": "existing", "command": "true" }))
        .await;
    let granted = token_with_scope(&server, "autopilot:read").await;
    assert_eq!(granted["scope"], "autopilot:read", "{granted:#}");
    let token = granted["access_token"].as_str().unwrap().to_owned();

    let init = rpc(
        &server,
        &token,
        1,
        "initialize",
        json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": { "name": "scope-test", "version": "0" },
        }),
    )
    .await;
    assert_eq!(
        init["result"]["serverInfo"]["name"], "autopilot",
        "{init:#}"
    );

    let listed = rpc(
        &server,
        &token,
        2,
        "tools/call",
        json!({ "name": "list_jobs", "arguments": {} }),
    )
    .await;
    assert_tool_ok(&listed["result"]);
    assert_eq!(
        listed["result"]["structuredContent"]["jobs"][0]["name"],
        "existing"
    );

    // A tool that changes state is refused at the HTTP level, naming the scope to ask for.
    let refused = server
        .client
        .post(format!("{}/mcp", server.base_url))
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({ "jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": { "name": "create_job", "arguments": { "name": "sneaky", "command": "true" } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let challenge = refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"autopilot:read autopilot:write\""),
        "{challenge}"
    );
    // Nothing was created.
    let (status, _) = server
        .call(reqwest::Method::GET, "/api/v1/jobs/sneaky", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The same calls with a read+write token succeed.
    let both = token_with_scope(&server, "autopilot:read autopilot:write").await;
    let created = rpc(
        &server,
        both["access_token"].as_str().unwrap(),
        4,
        "tools/call",
        json!({ "name": "create_job", "arguments": { "name": "allowed", "command": "true" } }),
    )
    .await;
    assert_tool_ok(&created["result"]);
    server.stop().await.unwrap();
}

// --- 3. The Claude Code CLI as an MCP client ------------------------------------------------------

/// The CLI with a clean environment: its own `HOME`, the fake API, no network chatter.
fn claude_command(claude: &Path, home: &Path, api: &str) -> Command {
    let mut command = Command::new(claude);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("ANTHROPIC_BASE_URL", api)
        .env("ANTHROPIC_API_KEY", "sk-ant-test")
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("ENABLE_TOOL_SEARCH", "false")
        .env("MCP_TIMEOUT", "15000")
        .current_dir(home);
    command
}

/// `claude -p`, with the fake model calling `mcp__autopilot__list_jobs` once: the CLI connected
/// to `autopilot`, offered its tool, and the tool result it sent back names `job_name`.
async fn assert_claude_lists_jobs(
    claude: &Path,
    home: &Path,
    fake: &FakeAnthropic,
    job_name: &str,
) {
    fake.push(Reply::tool_use("mcp__autopilot__list_jobs", json!({})));
    fake.push(Reply::text("There is one job."));
    let mut run = claude_command(claude, home, &fake.base_url());
    run.args([
        "-p",
        "Which Autopilot jobs exist?",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "dontAsk",
        "--allowedTools",
        "mcp__autopilot__list_jobs",
    ]);
    let (status, stdout, stderr) = output_of(run).await;
    assert!(status.success(), "claude -p: {stdout}\n{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let init = lines
        .iter()
        .find(|line| line["type"] == "system" && line["subtype"] == "init")
        .unwrap_or_else(|| panic!("no system/init line: {stdout}"));
    let servers = init["mcp_servers"].as_array().expect("mcp_servers");
    assert!(
        servers
            .iter()
            .any(|s| s["name"] == "autopilot" && s["status"] == "connected"),
        "{servers:#?}"
    );
    let tools: Vec<&str> = init["tools"]
        .as_array()
        .map(|tools| tools.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(tools.contains(&"mcp__autopilot__list_jobs"), "{tools:?}");
    let result = lines
        .iter()
        .rev()
        .find(|line| line["type"] == "result")
        .expect("a result line");
    assert_eq!(result["result"], "There is one job.", "{result:#}");

    let requests = fake.requests();
    assert!(requests.len() >= 2, "{} requests", requests.len());
    assert!(requests[0]
        .tool_names()
        .contains(&"mcp__autopilot__list_jobs".to_owned()));
    let results = requests[1].tool_results();
    assert_eq!(results.len(), 1, "{results:#?}");
    assert_ne!(results[0]["is_error"], true, "{results:#?}");
    assert!(
        results[0].to_string().contains(job_name),
        "the tool result carries the job: {results:#?}"
    );
}

#[tokio::test]
async fn claude_code_cli_added_with_mcp_add_calls_an_autopilot_tool() {
    let Some(claude) = components::claude_bin() else {
        return;
    };
    let fake = FakeAnthropic::start().await.expect("fake API");
    let server = TestServer::builder().start().await;
    server
        .create_job(json!({ "name": "made-through-the-api", "command": "true" }))
        .await;
    let home = tempfile::tempdir().unwrap();
    let url = format!("{}/mcp", server.base_url);

    let mut add = claude_command(&claude, home.path(), &fake.base_url());
    add.args([
        "mcp",
        "add",
        "--scope",
        "user",
        "--transport",
        "http",
        "autopilot",
    ])
    .arg(&url)
    .arg("--header")
    .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"));
    let (status, stdout, stderr) = output_of(add).await;
    assert!(status.success(), "claude mcp add: {stdout}\n{stderr}");

    let mut get = claude_command(&claude, home.path(), &fake.base_url());
    get.args(["mcp", "get", "autopilot"]);
    let (status, stdout, stderr) = output_of(get).await;
    assert!(status.success(), "claude mcp get: {stdout}\n{stderr}");
    assert!(stdout.contains(&url), "{stdout}");
    assert!(stdout.to_lowercase().contains("http"), "{stdout}");

    let mut list = claude_command(&claude, home.path(), &fake.base_url());
    list.args(["mcp", "list"]);
    let (status, stdout, stderr) = output_of(list).await;
    assert!(status.success(), "claude mcp list: {stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|line| line.starts_with("autopilot"))
        .unwrap_or_else(|| panic!("autopilot is not listed: {stdout}\n{stderr}"));
    assert!(line.contains(&url), "{line}");
    assert!(
        line.contains("Connected"),
        "the health check connected: {line}"
    );

    assert_claude_lists_jobs(&claude, home.path(), &fake, "made-through-the-api").await;
    server.stop().await.unwrap();
}

/// `command` run inside a pseudo-terminal (util-linux `script`): `claude mcp login` refuses to
/// run without one. The environment and working directory carry over.
fn in_a_terminal(command: &Command) -> Command {
    let command = command.as_std();
    let quote =
        |arg: &std::ffi::OsStr| format!("'{}'", arg.to_string_lossy().replace('\'', r"'\''"));
    let line = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ");
    let mut terminal = Command::new("script");
    terminal
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env_clear()
        .env("TERM", "dumb");
    for (name, value) in command.get_envs() {
        if let Some(value) = value {
            terminal.env(name, value);
        }
    }
    if let Some(dir) = command.get_current_dir() {
        terminal.current_dir(dir);
    }
    terminal
}

#[tokio::test]
async fn claude_code_cli_logs_in_through_autopilot_oauth_and_calls_a_tool() {
    let Some(claude) = components::claude_bin() else {
        return;
    };
    let fake = FakeAnthropic::start().await.expect("fake API");
    let server = TestServer::builder().auto_approve().start().await;
    server
        .create_job(json!({ "name": "seen-through-oauth", "command": "true" }))
        .await;
    let home = tempfile::tempdir().unwrap();
    let url = format!("{}/mcp", server.base_url);

    // A public client registered up front for the CLI's fixed loopback callback.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let callback = format!("http://localhost:{port}/callback");
    let client_id = register_public_client(&server.base_url, "Claude Code", &callback).await;

    // Added with that client and port, and no header at all.
    let mut add = claude_command(&claude, home.path(), &fake.base_url());
    add.args(["mcp", "add", "--scope", "user", "--transport", "http"])
        .args(["--client-id", &client_id])
        .args(["--callback-port", &port.to_string()])
        .arg("autopilot")
        .arg(&url);
    let (status, stdout, stderr) = output_of(add).await;
    assert!(status.success(), "claude mcp add: {stdout}\n{stderr}");
    let config = std::fs::read_to_string(home.path().join(".claude.json")).unwrap();
    assert!(!config.contains("Authorization"), "{config}");

    // Without a login the CLI cannot connect: `/mcp` wants a token.
    let mut list = claude_command(&claude, home.path(), &fake.base_url());
    list.args(["mcp", "list"]);
    let (status, stdout, stderr) = output_of(list).await;
    assert!(status.success(), "claude mcp list: {stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|line| line.starts_with("autopilot"))
        .unwrap_or_else(|| panic!("autopilot is not listed: {stdout}\n{stderr}"));
    assert!(line.contains("Needs authentication"), "{line}");

    // `claude mcp login` "opens a browser": `BROWSER` writes the authorization URL to a file.
    let url_file = home.path().join("authorization-url");
    let browser = home.path().join("browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > '{}'\n", url_file.display()),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut login = claude_command(&claude, home.path(), &fake.base_url());
    login
        .env("BROWSER", &browser)
        .args(["mcp", "login", "autopilot"]);
    let mut login = in_a_terminal(&login);
    login
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = login.spawn().expect("start `script` (util-linux)");
    let deadline = tokio::time::Instant::now() + CLIENT_TIMEOUT;
    let authorization = loop {
        match std::fs::read_to_string(&url_file) {
            Ok(url) if !url.is_empty() => break url,
            _ if tokio::time::Instant::now() > deadline => {
                let output = child.wait_with_output().await.unwrap();
                panic!(
                    "the CLI never opened an authorization URL: {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(
        authorization.starts_with(&format!("{}/authorize?", server.base_url)),
        "{authorization}"
    );
    assert_eq!(
        query_param(&authorization, "client_id").as_deref(),
        Some(client_id.as_str())
    );
    assert_eq!(
        query_param(&authorization, "redirect_uri").as_deref(),
        Some(callback.as_str())
    );
    assert_eq!(
        query_param(&authorization, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(&authorization, "resource").as_deref(),
        Some(url.as_str())
    );

    // The "user" approves (auto-approve) and the browser follows the redirect to the CLI.
    let approved = no_redirects().get(&authorization).send().await.unwrap();
    assert_eq!(approved.status(), StatusCode::FOUND);
    let location = approved.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with(&callback), "{location}");
    let delivered = no_redirects().get(&location).send().await.unwrap();
    assert!(delivered.status().is_success(), "{}", delivered.status());
    let output = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .expect("the login finished in time")
        .unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "claude mcp login: {shown}");
    assert!(shown.contains("Authenticated"), "{shown}");

    // The token the CLI obtained is what it calls the tool with.
    assert_claude_lists_jobs(&claude, home.path(), &fake, "seen-through-oauth").await;
    server.stop().await.unwrap();
}
