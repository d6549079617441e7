//! The HTTP API through real HTTP: authentication, validation errors, job lifecycle, previews.

use std::time::Duration;

use autopilot_tests::harness::{TestServer, ADMIN_TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn health_needs_no_token_and_the_api_needs_the_right_one() {
    let server = TestServer::builder().start().await;
    let (status, _) = server
        .call_with_token(Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .call_with_token(Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(
        (status, body["store"].as_str()),
        (StatusCode::OK, Some(server.store().name()))
    );

    let (status, body) = server
        .call_with_token(Method::GET, "/api/v1/jobs", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );
    let (status, body) = server
        .call_with_token(
            Method::GET,
            "/api/v1/jobs",
            None,
            Some("wrong-token-0000000000"),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let (status, _) = server
        .call_with_token(Method::GET, "/api/v1/jobs", None, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = server.call(Method::GET, "/api/v1/nope", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn bad_input_is_answered_with_the_field_that_was_wrong() {
    let server = TestServer::builder().start().await;
    let cases = [
        (
            json!({ "name": "a", "prompt": "p", "schedule": "61 * * * *" }),
            "schedule",
            "field 1 (minute)",
        ),
        (
            json!({ "name": "a", "prompt": "p", "schedule": "0 61 * * *" }),
            "schedule",
            "field 2 (hour)",
        ),
        (
            json!({ "name": "a", "prompt": "p", "schedule": "* * *" }),
            "schedule",
            "3 field(s)",
        ),
        (
            json!({ "name": "a", "prompt": "p", "schedule": "0 9 31 4,6,9,11 *" }),
            "schedule",
            "never fires",
        ),
        (
            json!({ "name": "a", "prompt": "p", "timezone": "Moon/Base" }),
            "timezone",
            "IANA",
        ),
        (
            json!({ "name": "a", "prompt": "p", "shedule": "* * * * *" }),
            "shedule",
            "unknown field",
        ),
        (
            json!({ "name": "a", "prompt": "p", "retry": { "count": 1, "bakoff": 2 } }),
            "retry.bakoff",
            "unknown field",
        ),
        (
            json!({ "name": "a", "prompt": "p", "max_turns": "ten" }),
            "max_turns",
            "invalid type",
        ),
        (
            json!({ "name": "a", "prompt": "p", "overlap_policy": "sometimes" }),
            "overlap_policy",
            "unknown variant",
        ),
        (json!({ "name": "a" }), "prompt", "non-empty"),
        (
            json!({ "name": "a", "prompt": "p", "at": "2001-01-01T00:00:00Z" }),
            "at",
            "in the past",
        ),
        (
            json!({ "name": "a", "command": "ls", "allowed_tools": ["Bash"] }),
            "allowed_tools",
            "claude jobs only",
        ),
        (
            json!({ "name": "a", "prompt": "p", "sandbox": { "network": "none" } }),
            "sandbox.network",
            "model-only",
        ),
        (
            json!({ "name": "a", "command": "ls", "sandbox": { "network": "internet" } }),
            "sandbox.network",
            "unknown variant",
        ),
        (
            json!({ "name": "a", "command": "ls", "sandbox": { "memory": 512 } }),
            "sandbox.memory",
            "unknown field",
        ),
        (
            json!({ "name": "a", "command": "ls", "sandbox": { "memory_mb": 8 } }),
            "sandbox.memory_mb",
            "between 64 and 65536",
        ),
        (
            json!({ "name": "a", "command": "ls", "sandbox": { "pids": 1 } }),
            "sandbox.pids",
            "between 16",
        ),
        (
            json!({ "name": "a", "command": "ls", "sandbox": { "cpus": 0 } }),
            "sandbox.cpus",
            "between 0.1",
        ),
    ];
    for (body, field, needle) in cases {
        let (status, answer) = server
            .call(Method::POST, "/api/v1/jobs", Some(body.clone()))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {answer}"
        );
        assert_eq!(answer["error"]["field"], field, "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{body}: `{message}` should mention `{needle}`"
        );
    }
    // The caret points at the bad field.
    let (_, answer) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "a", "prompt": "p", "schedule": "0 61 * * *" })),
        )
        .await;
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("0 61 * * *\n    ^"),
        "{answer}"
    );

    let response = server
        .client
        .post(format!("{}/api/v1/jobs", server.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = server
        .client
        .post(format!("{}/api/v1/jobs", server.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    let (status, body) = server
        .call(Method::GET, "/api/v1/runs?status=done", None)
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("status"))
    );
    let (status, body) = server
        .call(Method::GET, "/api/v1/runs?colour=red", None)
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("colour"))
    );
    let (status, _) = server
        .call(Method::GET, "/api/v1/runs/not-a-run", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing was created by any of it.
    assert_eq!(
        server.get("/api/v1/jobs").await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn sandboxes_default_by_kind_and_a_patch_changes_only_what_it_names() {
    let server = TestServer::builder().start().await;
    let claude = server
        .create_job(json!({ "name": "c", "prompt": "p" }))
        .await;
    assert_eq!(
        claude["sandbox"],
        json!({ "network": "model-only", "memory_mb": 2048, "cpus": 2.0, "pids": 512 })
    );
    let shell = server
        .create_job(json!({ "name": "s", "command": "ls", "sandbox": { "memory_mb": 256 } }))
        .await;
    assert_eq!(
        shell["sandbox"],
        json!({ "network": "none", "memory_mb": 256, "cpus": 2.0, "pids": 512 })
    );
    let patched = server
        .patch_job(
            shell["id"].as_str().unwrap(),
            json!({ "sandbox": { "network": "open", "pids": 64 } }),
        )
        .await;
    assert_eq!(
        patched["sandbox"],
        json!({ "network": "open", "memory_mb": 256, "cpus": 2.0, "pids": 64 })
    );
    // A run carries the sandbox it was created with.
    let run = server.trigger(shell["id"].as_str().unwrap()).await;
    assert_eq!(run["settings"]["sandbox"], patched["sandbox"], "{run}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn jobs_are_created_read_updated_and_deleted() {
    let server = TestServer::builder().start().await;
    let job = server
        .create_job(json!({
            "name": "sprint digest",
            "prompt": "Summarise the sprint",
            "schedule": "0 9 * * 1-5",
            "timezone": "Europe/Paris",
            "allowed_tools": ["Bash", "github:list_issues"],
            "max_turns": 5,
            "max_cost_usd": 0.5,
        }))
        .await;
    assert_eq!(
        job["allowed_tools"],
        json!(["Bash", "mcp__github__list_issues"])
    );
    assert_eq!(job["timeout_secs"], 1800);
    assert_eq!(job["misfire_policy"], "run_once");
    assert_eq!(job["overlap_policy"], "skip");
    let next: chrono::DateTime<chrono::Utc> =
        job["next_fire_at"].as_str().unwrap().parse().unwrap();
    let local = next.with_timezone(&chrono_tz::Europe::Paris);
    assert_eq!(local.format("%H:%M").to_string(), "09:00");

    let id = job["id"].as_str().unwrap();
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "sprint digest", "prompt": "again" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // By id and by name.
    assert_eq!(
        server.get(&format!("/api/v1/jobs/{id}")).await["name"],
        "sprint digest"
    );
    assert_eq!(server.get("/api/v1/jobs/sprint%20digest").await["id"], id);

    let fires = server
        .get(&format!("/api/v1/jobs/{id}/next-fires?count=3"))
        .await;
    let fires = fires["next_fires"].as_array().unwrap();
    assert_eq!(fires.len(), 3);

    let updated = server
        .patch_job(
            id,
            json!({ "model": "claude-sonnet-4-5", "schedule": null, "enabled": false }),
        )
        .await;
    assert_eq!(updated["model"], "claude-sonnet-4-5");
    assert_eq!(updated["schedule"], json!(null));
    assert_eq!(updated["next_fire_at"], json!(null));
    assert_eq!(
        updated["prompt"], "Summarise the sprint",
        "unnamed fields keep their values"
    );
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/jobs/{id}"),
            Some(json!({ "timeout_secs": 0 })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("timeout_secs"))
    );

    let preview = server
        .call(
            Method::POST,
            "/api/v1/schedule/preview",
            Some(json!({ "schedule": "*/15 * * * *", "count": 4 })),
        )
        .await;
    assert_eq!(preview.1["next_fires"].as_array().unwrap().len(), 4);

    let (status, _) = server
        .call(Method::DELETE, &format!("/api/v1/jobs/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .call(Method::GET, &format!("/api/v1/jobs/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn workers_lists_the_live_workers_with_their_pools_capacity_and_runs() {
    let server = TestServer::builder().concurrency(3).start().await;
    let mut workers = serde_json::Value::Null;
    for _ in 0..100 {
        workers = server.get("/api/v1/workers").await;
        if !workers["workers"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = workers["workers"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{workers}");
    let worker = &listed[0];
    assert!(worker["worker_id"]
        .as_str()
        .unwrap()
        .starts_with("embedded-"));
    assert_eq!(worker["pools"], json!(["default"]));
    assert_eq!(worker["capacity"], 3);
    assert_eq!(worker["executor"], "local");
    assert_eq!(worker["draining"], false);

    let job = server
        .create_job(json!({ "name": "sleeper", "command": "sleep 3" }))
        .await;
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap();
    let mut seen = false;
    for _ in 0..100 {
        let workers = server.get("/api/v1/workers").await;
        let worker = &workers["workers"][0];
        if worker["running"]
            .as_array()
            .unwrap()
            .iter()
            .any(|id| id == run_id)
        {
            assert_eq!(worker["free"], 2, "{worker}");
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "the worker reported the run it executes");
    server.stop().await.unwrap();
}

/// A request refused for its credentials before its body was read: the server cannot go on with
/// that connection (the rest of the body may still be coming), so the answer says
/// `Connection: close` and the client opens a new one, instead of sending its next request into
/// a connection that is being closed (which clients see as "server disconnected").
#[tokio::test]
async fn a_refused_credential_ends_its_connection_and_says_so() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::builder().start().await;
    let address = server.base_url.trim_start_matches("http://").to_owned();
    for (path, token) in [
        ("/mcp", None),
        ("/mcp", Some("not-a-token")),
        ("/api/v1/jobs", None),
        ("/api/v1/jobs", Some("not-a-token")),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let body_bytes = 1_000_000;
        let authorization = token
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\n{authorization}\
             Content-Length: {body_bytes}\r\n\r\n"
        );
        // The headers and only the start of the body: the rest is "still on its way".
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&[b' '; 1024]).await.unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        while !answer.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
                .await
                .expect("an answer")
                .unwrap();
            assert!(read > 0, "{path}: closed without an answer");
            answer.extend_from_slice(&buffer[..read]);
        }
        let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 401"), "{path} {token:?}: {head}");
        assert!(
            head.contains("\r\nconnection: close\r\n"),
            "{path} {token:?}: the refusal must say the connection ends: {head}"
        );
    }
}
