//! Dynamic servers: Python written through the API or by Claude over MCP, kept as versions,
//! each validated on a worker before runs can use it; an agent's version that uses a credential
//! waits for an operator's approval, and until then runs keep the version before it; a tool is
//! called directly (`invoke_server_tool`) by a worker.

use autopilot_tests::fake_anthropic::Reply;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{call_tool, run_once, set_credential};

const TOKEN: &str = "dice-s3cret-771";

/// A dice server whose answer says which version it is, and what token it was given.
pub(super) fn dice(face: u32) -> String {
    format!(
        r#"import os
from mcp.server.mcpserver import MCPServer

server = MCPServer("dice")

@server.tool()
def roll_die() -> str:
    """Rolls a die."""
    return f"rolled {face} with token {{os.environ.get('DICE_TOKEN', 'none')}}"

server.run()
"#
    )
}

/// What the model read from the last `roll_die` of a run of `job`.
async fn roll(
    server: &autopilot_tests::harness::TestServer,
    fake: &autopilot_tests::fake_anthropic::FakeAnthropic,
    job: &Value,
) -> String {
    fake.push(Reply::tool_use("mcp__dice__roll_die", json!({})));
    fake.push(Reply::text("Rolled."));
    let (run, events) = run_once(server, job).await;
    assert_eq!(run["status"], "succeeded", "{run:#} {events:#?}");
    events
        .iter()
        .filter(|e| e["kind"] == "tool_result")
        .map(|e| e["data"].to_string())
        .next_back()
        .unwrap_or_default()
}

#[tokio::test]
async fn dynamic_server_versions_are_validated_approved_and_run() {
    let Some((server, fake)) = super::fixed_server().await else {
        return;
    };
    // The operator's version: validated on the worker, usable at once.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/dynamic-servers",
            Some(json!({ "name": "dice", "code": dice(4), "description": "dice" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["version"].as_u64(), body["state"].as_str()),
        (Some(1), Some("valid")),
        "{body}"
    );
    assert_eq!(body["active"], true);
    assert_eq!(body["tools"][0]["name"], "roll_die", "{body}");
    assert_eq!(body["scan"]["env_vars"], json!(["DICE_TOKEN"]), "{body}");
    assert_eq!(body["env_vars_not_given"], json!(["DICE_TOKEN"]), "{body}");
    let job = server
        .create_job(
            json!({ "name": "gambler", "prompt": "Roll.", "servers": [{ "server": "dice", "access": "write" }] }),
        )
        .await;
    let first = roll(&server, &fake, &job).await;
    assert!(first.contains("rolled 4 with token none"), "{first}");

    // Claude's version uses a credential: valid, but it waits for the operator.
    let saved = call_tool(
        &server,
        "save_dynamic_server",
        json!({ "name": "dice", "code": dice(6), "env": { "DICE_TOKEN": "${DICE_TOKEN}" } }),
    )
    .await;
    assert!(
        saved.contains("awaiting_approval") && saved.contains("DICE_TOKEN"),
        "{saved}"
    );
    assert!(
        saved.contains("\"missing_credentials\":[\"DICE_TOKEN\"]"),
        "the vault has no DICE_TOKEN yet: {saved}"
    );
    let still = roll(&server, &fake, &job).await;
    assert!(
        still.contains("rolled 4"),
        "runs keep the usable version: {still}"
    );

    set_credential(&server, "DICE_TOKEN", TOKEN).await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/dynamic-servers/dice/versions/2/approve",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["state"].as_str(), body["active"].as_bool()),
        (Some("valid"), Some(true)),
        "{body}"
    );
    let approved = roll(&server, &fake, &job).await;
    assert!(approved.contains("rolled 6 with token"), "{approved}");
    assert!(
        !approved.contains(TOKEN),
        "the guard removed the credential: {approved}"
    );

    // invoke_server_tool: one call made by a worker, with a placeholder for the credential.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers/dice/invoke",
            Some(json!({ "tool": "roll_die", "arguments": {} })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let said = body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(said, "rolled 6 with token autopilot-placeholder", "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers/dice/invoke",
            Some(json!({ "tool": "no_such_tool" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.to_string().contains("roll_die"),
        "names the tools: {body}"
    );
    let invoked = call_tool(
        &server,
        "invoke_server_tool",
        json!({ "server": "dice", "tool": "roll_die" }),
    )
    .await;
    assert!(invoked.contains("rolled 6"), "{invoked}");

    // A broken version is kept, with what Python said, and runs go on with the approved one.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/dynamic-servers",
            Some(json!({ "name": "dice", "code": "def broken(:\n" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "invalid", "{body}");
    assert!(body["error"].to_string().contains("SyntaxError"), "{body}");
    let versions = server.get("/api/v1/dynamic-servers/dice/versions").await;
    let states: Vec<(u64, &str, bool)> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["state"].as_str().unwrap(),
                v["active"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (1, "valid", false),
            (2, "valid", true),
            (3, "invalid", false)
        ]
    );
    let listed = call_tool(
        &server,
        "list_dynamic_versions",
        json!({ "server": "dice" }),
    )
    .await;
    assert!(listed.contains("v2 valid (active)"), "{listed}");
    // The operator's MCP connection may approve, but only a version that validated (one
    // through OAuth may not at all: `mcp::tools::tests`).
    let invalid = call_tool(
        &server,
        "approve_dynamic_version",
        json!({ "server": "dice", "version": 3 }),
    )
    .await;
    assert!(invalid.contains("did not validate"), "{invalid}");

    // A python transport is not registered around the versions; deleting the server takes them.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({ "name": "sneaky", "transport": { "type": "python", "code": dice(1), "version": 1 } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("dynamic-servers"), "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/dynamic-servers",
            Some(json!({ "name": "dice", "code": "" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = server
        .call(Method::DELETE, "/api/v1/servers/dice", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .call(Method::GET, "/api/v1/dynamic-servers/dice/versions", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
