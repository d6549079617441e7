//! More ways to start runs, and what holds them back, through the whole stack on the store the
//! environment names (SQLite and PostgreSQL passes): intervals, conditions, budgets and usage
//! limits (`schedule`), chains (`chains`), Claude Code hook events and file watches (`events`),
//! webhook concurrency keys and prompt values (`webhooks`), result handlers (`handlers`). The
//! helpers they share are here.

mod chains;
mod events;
mod handlers;
mod schedule;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use autopilot_tests::harness::{is_terminal, TestServer};
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub(super) fn id(value: &Value) -> &str {
    value["id"].as_str().expect("an id")
}

pub(super) fn time(value: &Value, field: &str) -> DateTime<Utc> {
    value[field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time `{field}` in {value:#}"))
}

pub(super) async fn skipped_fires(server: &TestServer, job: &Value) -> Vec<Value> {
    let body = server
        .get(&format!("/api/v1/jobs/{}/skipped-fires", id(job)))
        .await;
    body["skipped_fires"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `job` has `count` finished runs, and returns them (newest first).
pub(super) async fn finished_runs(server: &TestServer, job: &Value, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let runs = server.runs_of(id(job)).await;
        if runs.len() >= count && runs.iter().all(is_terminal) {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} has {} run(s), wanted {count} finished: {runs:#?}",
            job["name"],
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) async fn run_status(server: &TestServer, run_id: &str, status: &str) -> Value {
    let wanted = status.to_owned();
    server
        .wait_for_run(run_id, Duration::from_secs(30), move |run| {
            run["status"] == wanted
        })
        .await
}

pub(super) async fn kill(server: &TestServer, run_id: &str) {
    let (status, body) = server
        .call(Method::POST, &format!("/api/v1/runs/{run_id}/kill"), None)
        .await;
    assert!(status.is_success(), "kill: {status} {body}");
}

/// What a result handler's endpoint received: headers and body.
pub(super) type Received = Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// An endpoint on loopback that records what it gets and answers 500 the first time, 200 after.
pub(super) async fn handler_endpoint() -> (String, Received) {
    let received: Received = Arc::default();
    let seen = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/outcome",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = Arc::clone(&seen);
                async move {
                    let mut seen = seen.lock().unwrap();
                    seen.push((headers, body.to_vec()));
                    if seen.len() == 1 {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/outcome"), received)
}
