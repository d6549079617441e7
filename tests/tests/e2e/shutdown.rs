//! Stopping `autopilot serve` as a rolling update does (SIGTERM): readiness turns false at once,
//! running runs finish, live streams end, and no client keeps the process past the drain.

use std::time::Duration;

use serde_json::{json, Value};

use crate::process::{api, create_and_trigger, drain, spawn};

/// SIGTERM while a run is going: the process stops taking new work and says so on `/readyz`
/// (503, so a load balancer sends traffic elsewhere) while it still answers the API and lets the
/// run finish, then exits by itself.
#[tokio::test]
async fn a_process_that_drains_is_not_ready_but_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let token = "drain-test-admin-token-0123456789";
    let Some(mut process) = spawn(
        dir.path(),
        &[
            ("AUTOPILOT_ADMIN_TOKEN", token),
            ("AUTOPILOT_KILL_GRACE_SECS", "30"),
        ],
    )
    .await
    else {
        return;
    };
    let run = create_and_trigger(
        &process,
        token,
        json!({ "name": "slow", "command": "sleep 2" }),
    )
    .await;
    let run_path = format!("/api/v1/runs/{}", run["id"].as_str().unwrap());
    for _ in 0..200 {
        let (_, run) = api(&process, token, reqwest::Method::GET, &run_path, None).await;
        if run["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    process.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = reqwest::get(format!("{}/readyz", process.base_url))
        .await
        .expect("still answering while it drains");
    assert_eq!(ready.status().as_u16(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["reason"], "shutting down", "{body}");
    let (status, during) = api(&process, token, reqwest::Method::GET, &run_path, None).await;
    assert_eq!(status, 200, "{during}");
    let exit = process
        .exit_by(std::time::Instant::now() + Duration::from_secs(20))
        .await;
    assert!(exit.success(), "{exit:?}: {}", drain(&process));
    // The run finished during the drain: the next start finds it succeeded, not lost.
    drop(process);
    let Some(again) = spawn(dir.path(), &[("AUTOPILOT_ADMIN_TOKEN", token)]).await else {
        return;
    };
    let (_, after) = api(&again, token, reqwest::Method::GET, &run_path, None).await;
    assert_eq!(after["status"], "succeeded", "{after}");
}

/// SIGTERM with clients still connected: a live event stream ends at once (the client reads
/// the end of the stream), and a connection stalled mid-request does not keep the process:
/// it is closed after the drain and the process exits.
#[tokio::test]
async fn a_stopping_process_ends_live_streams_and_does_not_wait_for_stalled_clients() {
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().unwrap();
    let token = "drain-streams-admin-token-0123456789";
    let Some(mut process) = spawn(dir.path(), &[("AUTOPILOT_ADMIN_TOKEN", token)]).await else {
        return;
    };
    let run = create_and_trigger(
        &process,
        token,
        json!({ "name": "quick", "command": "true" }),
    )
    .await;
    // A follower of the run's events, reading as they come.
    let mut stream = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/runs/{}/events",
            process.base_url,
            run["id"].as_str().unwrap()
        ))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    // A client that sent half a request and stalls.
    let address = process.base_url.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    stalled
        .write_all(
            format!(
                "POST /api/v1/jobs HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\n\
                 content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"name\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stopping = std::time::Instant::now();
    process.terminate();
    // The live stream ends cleanly.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = stream.chunk().await.transpose() {
            if chunk.is_err() {
                return false;
            }
        }
        true
    })
    .await;
    assert_eq!(ended, Ok(true), "the event stream did not end cleanly");
    // The process exits within the drain, stalled client or not.
    let exit = process.exit_by(stopping + Duration::from_secs(5 + 5)).await;
    assert!(exit.success(), "{exit:?}: {}", drain(&process));
    assert!(
        drain(&process).contains("connections still open after the drain"),
        "the stalled connection was not what the drain closed"
    );
}
