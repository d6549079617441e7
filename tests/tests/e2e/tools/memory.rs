//! The fixed `memory` server: what one run of a job puts, the next run of it gets and finds, on
//! the local and the Docker executor; another job and a quick run do not see it; an operator
//! reads and changes it through the API; the run's Bash cannot use the memory socket.

use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply};
use autopilot_tests::harness::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{run_once, RUN_TIMEOUT};

pub(crate) async fn register_memory(server: &TestServer) {
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({ "name": "memory", "transport": { "type": "fixed", "server": "memory" } })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let levels: Vec<(&str, &str)> = body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["access"].as_str().unwrap()))
        .collect();
    assert!(
        levels.contains(&("memory_delete", "write")) && levels.contains(&("memory_get", "read")),
        "{levels:?}"
    );
}

/// The tool results of a run's events, as text, in order.
fn results(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "tool_result")
        .map(|e| e["data"].to_string())
        .collect()
}

/// Two runs of one job: the first puts, the second gets and searches what it put.
async fn put_then_get(server: &TestServer, fake: &FakeAnthropic, job: &Value) -> Value {
    fake.push(Reply::tool_use(
        "mcp__memory__memory_put",
        json!({ "key": "reports/last-sent", "value": "Sent the sprint report to Ada on Monday." }),
    ));
    fake.push(Reply::text("Remembered."));
    let (first, events) = run_once(server, job).await;
    assert_eq!(first["status"], "succeeded", "{first:#} {events:#?}");
    let stored = results(&events);
    assert!(stored[0].contains("Stored a new entry"), "{stored:?}");

    fake.push(Reply::tool_use(
        "mcp__memory__memory_get",
        json!({ "key": "reports/last-sent" }),
    ));
    fake.push(Reply::tool_use(
        "mcp__memory__memory_search",
        json!({ "query": "ADA" }),
    ));
    fake.push(Reply::tool_use(
        "mcp__memory__memory_list",
        json!({ "prefix": "reports/" }),
    ));
    fake.push(Reply::text("Last week's report went to Ada."));
    let (second, events) = run_once(server, job).await;
    assert_eq!(second["status"], "succeeded", "{second:#} {events:#?}");
    let read = results(&events);
    assert_eq!(read.len(), 3, "{events:#?}");
    for (what, text) in ["get", "search"].iter().zip(&read) {
        assert!(
            text.contains("Sent the sprint report to Ada on Monday."),
            "{what}: {read:?}"
        );
    }
    assert!(read[2].contains("reports/last-sent"), "{}", read[2]);
    assert!(
        !read[2].contains("Monday"),
        "a list shows keys only: {}",
        read[2]
    );
    first
}

#[tokio::test]
async fn a_jobs_runs_keep_memory_that_other_jobs_and_quick_runs_do_not_see() {
    let Some((server, fake)) = super::fixed_server().await else {
        return;
    };
    register_memory(&server).await;
    let job = server
        .create_job(json!({
            "name": "reporter",
            "prompt": "Send the sprint report, unless it went out already.",
            "servers": [{ "server": "memory", "access": "write" }],
        }))
        .await;
    let first = put_then_get(&server, &fake, &job).await;

    // Another job has a memory of its own.
    let other = server
        .create_job(json!({
            "name": "other",
            "prompt": "Check.",
            "servers": [{ "server": "memory", "access": "read" }],
        }))
        .await;
    fake.push(Reply::tool_use(
        "mcp__memory__memory_get",
        json!({ "key": "reports/last-sent" }),
    ));
    fake.push(Reply::tool_use(
        "mcp__memory__memory_put",
        json!({ "key": "x", "value": "y" }),
    ));
    fake.push(Reply::text("Nothing there."));
    let (run, events) = run_once(&server, &other).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let read = results(&events);
    assert!(read[0].contains("No entry"), "{read:?}");
    assert!(
        read[1].contains("is_error\":true") || run["permission_denials"] == 1,
        "a read grant cannot put: {read:?} {run:#}"
    );

    // A quick run belongs to no job: its memory calls are refused, saying why.
    fake.push(Reply::tool_use("mcp__memory__memory_list", json!({})));
    fake.push(Reply::text("No memory."));
    let quick = server
        .quick_run(json!({
            "prompt": "What do you remember?",
            "servers": [{ "server": "memory" }],
        }))
        .await;
    let quick = server
        .wait_until_finished(quick["id"].as_str().unwrap(), RUN_TIMEOUT)
        .await;
    let events = server.events(quick["id"].as_str().unwrap()).await;
    let read = results(&events);
    assert!(read[0].contains("save it as a job"), "{read:?}");

    // The operator's view and changes.
    let listed = server.get("/api/v1/jobs/reporter/memory").await;
    assert_eq!(listed["count"], 1, "{listed:#}");
    assert_eq!(
        listed["entries"][0]["key"], "reports/last-sent",
        "{listed:#}"
    );
    let entry = server
        .get("/api/v1/jobs/reporter/memory/reports/last-sent")
        .await;
    assert_eq!(entry["value"], "Sent the sprint report to Ada on Monday.");
    assert_eq!(entry["run_id"], first["id"], "who wrote it");
    let path = "/api/v1/jobs/reporter/memory/notes/tone";
    let (status, body) = server
        .call(
            Method::PUT,
            path,
            Some(json!({ "value": "Keep it short." })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["run_id"], Value::Null, "an operator wrote it");
    let (status, body) = server
        .call(
            Method::PUT,
            path,
            Some(json!({ "value": "x".repeat(70_000) })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("64"), "{body}");
    let (status, body) = server
        .call(Method::PUT, path, Some(json!({ "text": "wrong field" })))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let searched = server
        .get("/api/v1/jobs/reporter/memory?search=short")
        .await;
    assert_eq!(
        searched["entries"][0]["value"], "Keep it short.",
        "{searched:#}"
    );
    let (status, _) = server.call(Method::DELETE, path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = server.call(Method::GET, path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.to_string().contains("notes/tone"), "{body}");
    let (status, body) = server
        .call(Method::GET, "/api/v1/jobs/nobody/memory", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Through MCP: an entry set, searched, read and deleted.
    let call_tool =
        |name: &'static str, arguments: Value| super::call_tool(&server, name, arguments);
    let set = call_tool(
        "set_job_memory",
        json!({ "job": "reporter", "key": "recipients", "value": "ada@example.com" }),
    )
    .await;
    assert!(set.contains("\"created\":true"), "{set}");
    let found = call_tool(
        "get_job_memory",
        json!({ "job": "reporter", "search": "ADA@" }),
    )
    .await;
    assert!(
        found.contains("ada@example.com") && found.contains("\"count\":2"),
        "{found}"
    );
    let one = call_tool(
        "get_job_memory",
        json!({ "job": "reporter", "key": "recipients" }),
    )
    .await;
    assert!(one.contains("ada@example.com"), "{one}");
    let deleted = call_tool(
        "set_job_memory",
        json!({ "job": "reporter", "key": "recipients", "value": null }),
    )
    .await;
    assert!(deleted.contains("\"stored\":false"), "{deleted}");
    let missing = call_tool(
        "get_job_memory",
        json!({ "job": "reporter", "key": "recipients" }),
    )
    .await;
    assert!(
        missing.contains("isError\":true") && missing.contains("recipients"),
        "{missing}"
    );

    // A deleted job's memory goes with it.
    let (status, _) = server
        .call(Method::DELETE, "/api/v1/jobs/reporter", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let job = server
        .create_job(json!({ "name": "reporter", "prompt": "Again." }))
        .await;
    let listed = server
        .get(&format!(
            "/api/v1/jobs/{}/memory",
            job["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(listed["count"], 0, "{listed:#}");
}

/// On the Docker executor the server runs in the run's container and reaches the worker
/// through the socket in its mounted configuration directory; the run's Bash finds the socket
/// but, without the token (in a settings file the server deleted), is refused.
#[tokio::test]
async fn memory_works_in_a_container_and_the_runs_bash_cannot_use_the_socket() {
    let Some((server, fake)) = super::docker::docker_server().await else {
        return;
    };
    register_memory(&server).await;
    let job = server
        .create_job(json!({
            "name": "container memory",
            "prompt": "Remember.",
            "allowed_tools": ["Bash"],
            "servers": [{ "server": "memory", "access": "write" }],
        }))
        .await;
    put_then_get(&server, &fake, &job).await;

    let probe = "python3 - <<'EOF'\n\
import json, socket\n\
s = socket.socket(socket.AF_UNIX)\n\
s.connect('/run/autopilot-mcp/memory.sock')\n\
s.sendall(json.dumps({'token': 'guess', 'op': {'op': 'list'}}).encode() + b'\\n')\n\
print('ANSWER', s.makefile().readline())\n\
EOF\n\
ls /run/autopilot-mcp";
    fake.push(Reply::tool_use("mcp__memory__memory_list", json!({})));
    fake.push(Reply::tool_use(
        "Bash",
        json!({ "command": probe, "description": "use the memory socket directly" }),
    ));
    fake.push(Reply::text("Done."));
    let (run, events) = run_once(&server, &job).await;
    assert_eq!(run["status"], "succeeded", "{run:#} {events:#?}");
    let read = results(&events);
    assert!(read[0].contains("reports/last-sent"), "{read:?}");
    assert!(
        read[1].contains("only the run") && !read[1].contains("reports/last-sent"),
        "{}",
        read[1]
    );
    assert!(
        !read[1].contains("memory.settings.json"),
        "the server deleted its settings file: {}",
        read[1]
    );
}
