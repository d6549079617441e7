//! Tools for jobs: MCP servers from the registry granted to runs, with their credentials from
//! the vault. The real CLI, driven by the fake model, starts a real Python MCP server (the `mcp`
//! SDK 2, `MCPServer`) and calls its tools. Here: local runs and the API; the Docker executor in
//! `docker`, the email server in `email`, the web server in `web`, notify and http in `outbound`,
//! the fleet's bus in `fleet`.

mod docker;
mod dynamic;
mod email;
mod fleet;
pub(crate) mod memory;
mod oauth;
mod outbound;
mod planted;
mod web;

use std::path::Path;
use std::time::Duration;

use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply};
use autopilot_tests::harness::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub(super) const RUN_TIMEOUT: Duration = Duration::from_secs(90);
pub(super) const SECRET: &str = "s3cret-notes-token-42";

/// A stdio MCP server with a tool that reads (and answers with) its credential, and one that
/// would erase notes by writing a marker file.
pub(super) const NOTES_SERVER: &str = r#"
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

pub(super) async fn start() -> Option<(
    TestServer,
    autopilot_tests::fake_anthropic::FakeAnthropic,
    std::path::PathBuf,
)> {
    let python = components::mcp_python()?;
    let (server, fake) = super::claude::start().await?;
    Some((server, fake, python))
}

/// Calls one of Autopilot's MCP tools as the admin and returns the response's text.
pub(super) async fn call_tool(server: &TestServer, name: &str, arguments: Value) -> String {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": { "name": name, "arguments": arguments } });
    let response = server
        .client
        .post(format!("{}/mcp", server.base_url))
        .bearer_auth(autopilot_tests::harness::ADMIN_TOKEN)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{name}");
    response.text().await.unwrap()
}

/// An Autopilot whose local runs start the fixed servers, against a fresh fake model API;
/// `None` without the CLI or the servers' program.
pub(super) async fn fixed_server() -> Option<(TestServer, FakeAnthropic)> {
    let claude = components::claude_bin()?;
    let fixed_servers = components::fixed_servers_bin()?;
    let fake = FakeAnthropic::start().await.expect("fake API");
    let server = TestServer::builder()
        .claude_bin(claude)
        .fixed_servers_bin(fixed_servers)
        .model_api(&fake.base_url())
        .start()
        .await;
    Some((server, fake))
}

pub(super) async fn register_notes(server: &TestServer, python: &Path, dir: &Path) -> Value {
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

pub(super) async fn set_credential(server: &TestServer, name: &str, value: &str) -> Value {
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

/// Runs `job` once and returns the finished run and its events.
pub(super) async fn run_once(server: &TestServer, job: &Value) -> (Value, Vec<Value>) {
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap();
    let run = server.wait_until_finished(run_id, RUN_TIMEOUT).await;
    let events = server.events(run_id).await;
    (run, events)
}

/// Every tool result the model was sent, as one JSON text.
pub(super) fn read_by_model(fake: &FakeAnthropic) -> String {
    let results: Vec<Value> = fake
        .requests()
        .iter()
        .flat_map(|request| request.tool_results())
        .collect();
    serde_json::to_string(&results).unwrap()
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
    let (run, events) = run_once(&server, &job).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
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
    let to_model = read_by_model(&fake);
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
    let (run, _) = run_once(&server, &job).await;
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
    let (run, _) = run_once(&server, &job).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("`broken` (failed)"), "{error}");

    // A server deleted after the job was saved: the run names it.
    let (status, _) = server
        .call(Method::DELETE, "/api/v1/servers/broken", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (run, _) = run_once(&server, &job).await;
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
    let text = call_tool(
        &server,
        "set_credential",
        json!({ "name": "MCP_SET", "value": "value-from-mcp-789" }),
    )
    .await;
    assert!(
        text.contains("hmac-sha256:") && !text.contains("value-from-mcp-789"),
        "{text}"
    );
    let text = call_tool(&server, "list_servers", json!({})).await;
    assert!(text.contains("list_contacts"), "{text}");
    assert!(!server.store_contains("value-from-mcp-789").await);
    // update_server replaces the definition: here a tool's level is raised.
    let updated = call_tool(
        &server,
        "update_server",
        json!({ "name": "crm",
                "transport": { "type": "http", "url": "https://crm.example/mcp",
                               "headers": { "Authorization": "Bearer ${CRM_TOKEN}" } },
                "tools": [{ "name": "list_contacts", "access": "admin" }] }),
    )
    .await;
    assert!(updated.contains("Updated MCP server"), "{updated}");
    let crm = server.get("/api/v1/servers/crm").await;
    assert_eq!(crm["tools"][0]["access"], "admin", "{crm}");
    let missing = call_tool(
        &server,
        "update_server",
        json!({ "name": "nobody", "transport": { "type": "http", "url": "https://x" } }),
    )
    .await;
    assert!(
        missing.contains("isError\":true") && missing.contains("nobody"),
        "{missing}"
    );

    let (status, _) = server
        .call(Method::DELETE, "/api/v1/credentials/CRM_TOKEN", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .call(Method::DELETE, "/api/v1/credentials/CRM_TOKEN", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
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
    let (run, events) = run_once(&server, &job).await;
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

/// `autopilot secret-key rotate` on a stopped installation: the key file is replaced (the old one
/// kept beside it), and Autopilot started again opens everything: its OAuth signing keys (or it
/// would not start), and the credentials, whose fingerprints follow the new key.
#[tokio::test]
async fn the_secret_key_command_rotates_and_autopilot_starts_again_with_everything() {
    let Some(binary) = components::autopilot_bin() else {
        return;
    };
    let server = TestServer::builder().start().await;
    let stored = set_credential(&server, "NOTES_TOKEN", SECRET).await;
    let (data_dir, database_url) = (server.data_dir.clone(), server.database_url.clone());
    let old_key = std::fs::read_to_string(data_dir.path().join("secret.key")).unwrap();
    server.stop().await.unwrap();

    let output = tokio::process::Command::new(&binary)
        .args(["secret-key", "rotate"])
        .env_remove("AUTOPILOT_SECRET_KEY")
        .env("AUTOPILOT_DATA_DIR", data_dir.path())
        .env("AUTOPILOT_DATABASE_URL", &database_url)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("1 credential keys"), "{said}");
    let new_key = std::fs::read_to_string(data_dir.path().join("secret.key")).unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(
        std::fs::read_to_string(data_dir.path().join("secret.key.old")).unwrap(),
        old_key
    );

    let again = TestServer::builder()
        .data_dir(data_dir)
        .database_url(database_url)
        .start()
        .await;
    let listed = again.get("/api/v1/credentials").await;
    let fingerprint = &listed["credentials"][0]["fingerprint"];
    assert!(fingerprint.as_str().unwrap().starts_with("hmac-sha256:"));
    assert_ne!(fingerprint, &stored["fingerprint"], "keyed by the new key");
}

/// A stdio server registered without `tools` is asked for them by a worker (started through its
/// executor with placeholder credentials, never in the control plane), and testing it later
/// brings the list up to date while keeping the levels the operator set.
#[tokio::test]
async fn a_server_registered_without_tools_is_asked_for_them() {
    let Some(python) = components::mcp_python() else {
        return;
    };
    let server = TestServer::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("notes_server.py");
    std::fs::write(&script, NOTES_SERVER).unwrap();
    let notes = |tools: Option<Value>| {
        let mut body = json!({
            "name": "notes",
            "transport": {
                "type": "stdio",
                "command": python.display().to_string(),
                "args": [script.display().to_string(), dir.path().join("erased").display().to_string()],
                "env": { "NOTES_TOKEN": "${NOTES_TOKEN}" },
            },
        });
        if let Some(tools) = tools {
            body["tools"] = tools;
        }
        body
    };
    // Listed by the worker with a placeholder in place of its credential, which is not set.
    let (status, body) = server
        .call(Method::POST, "/api/v1/servers", Some(notes(None)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let levels = |body: &Value| -> Vec<(String, String)> {
        body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().into(),
                    t["access"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    assert_eq!(
        levels(&body),
        [
            ("lookup_note".to_owned(), "read".to_owned()),
            ("erase_notes".to_owned(), "dangerous".to_owned())
        ]
    );
    assert!(body["tools_listed_at"].is_string(), "{body}");
    assert_eq!(body["tools"][0]["description"], "Looks a note up.");

    // The operator narrows the list and raises a level; a test adds back what the server has.
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1/servers/notes",
            Some(notes(Some(
                json!([{ "name": "lookup_note", "access": "write" }]),
            ))),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .call(Method::POST, "/api/v1/servers/notes/test", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["added"], json!(["erase_notes"]), "{body}");
    assert_eq!(body["removed"], json!([]), "{body}");
    assert_eq!(
        levels(&body),
        [
            ("lookup_note".to_owned(), "write".to_owned()),
            ("erase_notes".to_owned(), "dangerous".to_owned())
        ]
    );

    // A program that does not speak MCP is named with what went wrong.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({ "name": "broken", "transport": { "type": "stdio", "command": "/bin/false" } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let said = body.to_string();
    assert!(
        said.contains("the server exited") && said.contains("on worker"),
        "{body}"
    );
}

/// A streamable-HTTP MCP server (the Python SDK under uvicorn) that answers only with the right
/// bearer token, from `CRM_TOKEN`.
const CRM_SERVER: &str = r#"
import os, sys
import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("crm")

@server.tool(annotations={"readOnlyHint": True})
def count_contacts() -> str:
    """Counts the contacts."""
    # Echoes the key it was called with, as a careless server might.
    return "42 contacts (key " + os.environ["CRM_TOKEN"] + ")"

app = server.streamable_http_app(stateless_http=True, json_response=True)
expected = "Bearer " + os.environ["CRM_TOKEN"]

async def guarded(scope, receive, send):
    if scope["type"] == "http":
        headers = dict(scope["headers"])
        if headers.get(b"authorization", b"").decode() != expected:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
    await app(scope, receive, send)

uvicorn.run(guarded, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"#;

/// A remote (HTTP) server: its tools are asked for over HTTP with the credential in a header,
/// and the real CLI calls one in a run, through the guard, which adds the header and keeps the
/// credential from the model.
#[tokio::test]
async fn an_http_server_is_asked_for_its_tools_and_called_with_its_credential() {
    let Some((server, fake, python)) = start().await else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("crm.py"), CRM_SERVER).unwrap();
    let _crm = tokio::process::Command::new(&python)
        .arg(dir.path().join("crm.py"))
        .arg(port.to_string())
        .env("CRM_TOKEN", SECRET)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let crm = json!({
        "name": "crm",
        "transport": {
            "type": "http",
            "url": format!("http://127.0.0.1:{port}/mcp"),
            "headers": { "Authorization": "Bearer ${CRM_TOKEN}" },
        },
    });
    // A wrong credential: the server refuses, and the registration says so.
    set_credential(&server, "CRM_TOKEN", "not-the-token").await;
    let (status, body) = server
        .call(Method::POST, "/api/v1/servers", Some(crm.clone()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("401"), "{body}");
    set_credential(&server, "CRM_TOKEN", SECRET).await;
    let (status, body) = server
        .call(Method::POST, "/api/v1/servers", Some(crm))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["tools"][0]["name"], "count_contacts", "{body}");
    assert_eq!(body["tools"][0]["access"], "read", "{body}");

    fake.push(Reply::tool_use("mcp__crm__count_contacts", json!({})));
    fake.push(Reply::text("There are 42 contacts."));
    let job = server
        .create_job(json!({
            "name": "crm counter",
            "prompt": "Count the contacts.",
            "servers": [{ "server": "crm" }],
        }))
        .await;
    let (run, events) = run_once(&server, &job).await;
    assert_eq!(run["status"], "succeeded", "{run:#} {events:#?}");
    let result = events
        .iter()
        .find(|e| e["kind"] == "tool_result")
        .expect("a tool result");
    assert!(
        result["data"].to_string().contains("42 contacts"),
        "{result}"
    );
    assert!(!Value::Array(events).to_string().contains(SECRET));
    // Behind the guard, the echoed key reached the model redacted.
    let to_model = read_by_model(&fake);
    assert!(
        to_model.contains("42 contacts (key [redacted CRM_TOKEN])"),
        "{to_model}"
    );
    assert!(!to_model.contains(SECRET), "{to_model}");
}

/// A `.mcp.json` is imported: a credential written in it in plain text goes to the vault (the
/// server keeps a placeholder), each server's tools are asked for, and one that cannot be
/// registered is named with why.
#[tokio::test]
async fn a_mcp_json_is_imported_with_its_plain_credentials_moved_to_the_vault() {
    let Some(python) = components::mcp_python() else {
        return;
    };
    let server = TestServer::builder().start().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("notes_server.py");
    std::fs::write(&script, NOTES_SERVER).unwrap();
    let document = json!({ "mcpServers": {
        "notes": {
            "command": python.display().to_string(),
            "args": [script.display().to_string(), dir.path().join("erased").display().to_string()],
            "env": { "NOTES_TOKEN": SECRET, "LOG_LEVEL": "info" },
        },
        "broken": { "command": "/bin/false" },
    }});
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers/import",
            Some(json!({ "document": document })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.to_string().contains(SECRET), "{body}");
    let imported = body["imported"].as_array().unwrap();
    let notes = imported.iter().find(|i| i["name"] == "notes").unwrap();
    assert_eq!(
        notes["detected_credentials"],
        json!(["NOTES_TOKEN"]),
        "{notes}"
    );
    assert_eq!(
        notes["server"]["transport"]["env"]["NOTES_TOKEN"], "${NOTES_TOKEN}",
        "{notes}"
    );
    assert_eq!(notes["server"]["missing_credentials"], json!([]), "{notes}");
    assert_eq!(
        notes["server"]["tools"].as_array().unwrap().len(),
        2,
        "{notes}"
    );
    let broken = imported.iter().find(|i| i["name"] == "broken").unwrap();
    assert!(
        broken["error"].as_str().unwrap().contains("tools"),
        "{broken}"
    );
    let listed = server.get("/api/v1/credentials").await;
    assert_eq!(listed["credentials"][0]["name"], "NOTES_TOKEN", "{listed}");
    assert!(!server.store_contains(SECRET).await);
}
