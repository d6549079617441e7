//! The scheduler through the whole stack with shell jobs: every fire exactly once, restarts,
//! misfire and overlap policies, one-shot jobs, kill and timeout.

use std::sync::Arc;
use std::time::Duration;

use autopilot_tests::harness::{shell_job, steps, TestServer};
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};

fn time(run: &Value, field: &str) -> Option<DateTime<Utc>> {
    run[field]
        .as_str()
        .map(|t| t.parse().expect("RFC 3339 time"))
}

/// Scheduled fire times of a job's runs, oldest first.
fn fire_times(runs: &[Value]) -> Vec<DateTime<Utc>> {
    let mut fires: Vec<_> = runs
        .iter()
        .filter_map(|run| time(run, "scheduled_for"))
        .collect();
    fires.sort();
    fires
}

fn assert_every_second_once(fires: &[DateTime<Utc>]) {
    assert!(fires.len() >= 2, "{fires:?}");
    assert!(
        fires.iter().all(|fire| fire.timestamp_subsec_millis() == 0),
        "fires fall on whole seconds: {fires:?}"
    );
    for pair in fires.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_milliseconds(),
            1000,
            "fires must be one second apart: {fires:?}"
        );
    }
}

async fn disable(server: &TestServer, job: &Value) {
    server
        .patch_job(job["id"].as_str().unwrap(), json!({ "enabled": false }))
        .await;
}

async fn wait_all_finished(server: &TestServer, job: &Value) -> Vec<Value> {
    let id = job["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let runs = server.runs_of(id).await;
        if runs.iter().all(autopilot_tests::harness::is_terminal) {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runs of {} did not finish",
            job["name"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_per_second_job_fires_every_second_exactly_once_on_time() {
    let server = TestServer::builder().start().await;
    let job = server.create_job(json!({ "name": "tick", "command": "echo tick-$PWD", "schedule": "* * * * * *", "overlap_policy": "allow" })).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    disable(&server, &job).await;
    let runs = wait_all_finished(&server, &job).await;
    assert!(runs.len() >= 3, "{} runs", runs.len());
    assert_every_second_once(&fire_times(&runs));
    for run in &runs {
        assert_eq!(run["status"], "succeeded", "{run:#}");
        assert_eq!(run["trigger"], "schedule");
        let lateness = time(run, "created_at").unwrap() - time(run, "scheduled_for").unwrap();
        assert!(
            lateness < chrono::Duration::milliseconds(500),
            "fired {lateness} late"
        );
    }
    // The shell job ran in the job's own workspace and its output was recorded.
    let events = server.events(runs[0]["id"].as_str().unwrap()).await;
    let output = events
        .iter()
        .find(|e| e["kind"] == "output")
        .expect("output event");
    let workspace = server.workspace_of(&job);
    assert_eq!(
        output["data"]["text"],
        format!("tick-{}", workspace.display())
    );
    assert_eq!(steps(&events), ["queued", "started", "exited", "finished"]);
}

#[tokio::test]
async fn a_restart_neither_loses_nor_repeats_a_fire() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let server = TestServer::builder()
        .data_dir(data_dir.clone())
        .start()
        .await;
    let job = server
        .create_job(json!({
            "name": "steady", "command": "true", "schedule": "* * * * * *",
            "overlap_policy": "allow", "misfire_policy": "run_all", "misfire_cap": 100,
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    server.stop().await.expect("clean stop");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server = TestServer::builder().data_dir(data_dir).start().await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    disable(&server, &job).await;
    let runs = wait_all_finished(&server, &job).await;
    let fires = fire_times(&runs);
    assert!(fires.len() >= 5, "{fires:?}");
    assert_every_second_once(&fires);
    assert!(runs.iter().all(|run| run["status"] == "succeeded"));
    assert_eq!(
        server
            .get(&format!("/api/v1/jobs/{}", job["id"].as_str().unwrap()))
            .await["missed_fires"],
        0
    );
}

#[tokio::test]
async fn missed_fires_follow_each_jobs_misfire_policy() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let grace = Duration::from_millis(800);
    let server = TestServer::builder()
        .data_dir(data_dir.clone())
        .misfire_grace(grace)
        .start()
        .await;
    let mut jobs = Vec::new();
    for (name, policy) in [
        ("skipper", "skip"),
        ("once", "run_once"),
        ("all", "run_all"),
    ] {
        let mut body = shell_job(name, "true");
        body["misfire_policy"] = json!(policy);
        body["misfire_cap"] = json!(2);
        body["overlap_policy"] = json!("allow");
        jobs.push(server.create_job(body).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.stop().await.unwrap();
    // Down for about four fires.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let server = TestServer::builder()
        .data_dir(data_dir)
        .misfire_grace(grace)
        .start()
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for job in &jobs {
        disable(&server, job).await;
    }
    // At least four fires fall in the downtime, at most one of them within the grace period.
    for (job, (expected_catch_up, least_missed)) in
        jobs.iter().zip([(0usize, 3u64), (1, 2), (2, 1)])
    {
        let runs = wait_all_finished(&server, job).await;
        let catch_up = runs
            .iter()
            .filter(|run| {
                time(run, "created_at").unwrap() - time(run, "scheduled_for").unwrap()
                    > chrono::Duration::from_std(grace).unwrap()
            })
            .count();
        assert_eq!(
            catch_up, expected_catch_up,
            "{}: catch-up runs",
            job["name"]
        );
        let view = server
            .get(&format!("/api/v1/jobs/{}", job["id"].as_str().unwrap()))
            .await;
        let missed = view["missed_fires"].as_u64().unwrap();
        assert!(
            missed >= least_missed,
            "{}: {missed} missed fires recorded",
            job["name"]
        );
        // Every fire is accounted for: run or counted as missed.
        let fires = fire_times(&runs);
        let span = (*fires.last().unwrap() - fires[0]).num_seconds() as u64 + 1;
        assert_eq!(
            fires.len() as u64 + missed,
            span,
            "{}: fires {fires:?}, missed {missed}",
            job["name"]
        );
    }
}

#[tokio::test]
async fn overlap_policies_skip_queue_or_allow() {
    let server = TestServer::builder().concurrency(8).start().await;
    let mut jobs = Vec::new();
    for policy in ["skip", "queue", "allow"] {
        let mut body = shell_job(&format!("overlap-{policy}"), "sleep 1.5");
        body["overlap_policy"] = json!(policy);
        jobs.push(server.create_job(body).await);
    }
    tokio::time::sleep(Duration::from_millis(4200)).await;
    for job in &jobs {
        disable(&server, job).await;
    }
    let overlapping = |runs: &[Value]| {
        let mut spans: Vec<_> = runs
            .iter()
            .map(|run| {
                (
                    time(run, "started_at").unwrap(),
                    time(run, "finished_at").unwrap(),
                )
            })
            .collect();
        spans.sort();
        spans.windows(2).any(|pair| pair[1].0 < pair[0].1)
    };
    let skip = wait_all_finished(&server, &jobs[0]).await;
    assert!(!overlapping(&skip), "skip must never run two at once");
    let view = server
        .get(&format!("/api/v1/jobs/{}", jobs[0]["id"].as_str().unwrap()))
        .await;
    assert!(view["overlap_skipped"].as_u64().unwrap() >= 1, "{view}");

    let queue = wait_all_finished(&server, &jobs[1]).await;
    assert!(!overlapping(&queue), "queue must run one at a time");
    assert_every_second_once(&fire_times(&queue));
    assert!(queue.iter().all(|run| run["status"] == "succeeded"));

    let allow = wait_all_finished(&server, &jobs[2]).await;
    assert!(
        overlapping(&allow),
        "allow runs overlap when runs outlast the interval"
    );
    assert_every_second_once(&fire_times(&allow));
}

#[tokio::test]
async fn a_one_shot_job_fires_once_and_is_disabled() {
    let server = TestServer::builder().start().await;
    let at = Utc::now() + chrono::Duration::milliseconds(1200);
    let job = server
        .create_job(json!({ "name": "once", "command": "echo once", "at": at.to_rfc3339() }))
        .await;
    assert_eq!(
        job["at"]
            .as_str()
            .map(|t| t.parse::<DateTime<Utc>>().unwrap()),
        Some(at)
    );
    let runs = server
        .wait_for_runs(job["id"].as_str().unwrap(), 1, Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let runs_after = server.runs_of(job["id"].as_str().unwrap()).await;
    assert_eq!(runs_after.len(), 1);
    assert_eq!(
        time(&runs[0], "scheduled_for").map(|t| t.timestamp_millis()),
        Some(at.timestamp_millis())
    );
    let view = server
        .get(&format!("/api/v1/jobs/{}", job["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (view["enabled"].as_bool(), view["next_fire_at"].clone()),
        (Some(false), Value::Null)
    );
}

#[tokio::test]
async fn kill_and_timeout_stop_a_shell_run_and_keep_its_output() {
    let server = TestServer::builder()
        .kill_grace(Duration::from_millis(500))
        .start()
        .await;
    let job = server
        .create_job(json!({ "name": "long", "command": "echo started; exec sleep 30" }))
        .await;
    let job_id = job["id"].as_str().unwrap();
    let run = server.trigger(job_id).await;
    let run_id = run["id"].as_str().unwrap();
    server
        .wait_for_run(run_id, Duration::from_secs(5), |run| {
            run["status"] == "running"
        })
        .await;
    // Trigger again while it runs: overlap_policy skip refuses with a clear message.
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{job_id}/trigger"),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("overlap_policy"),
        "{body}"
    );

    let (status, _) = server
        .call(Method::POST, &format!("/api/v1/runs/{run_id}/kill"), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    let run = server
        .wait_until_finished(run_id, Duration::from_secs(5))
        .await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    let events = server.events(run_id).await;
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "output" && e["data"]["text"] == "started"),
        "output before the kill is kept"
    );
    assert!(steps(&events).contains(&"cancel_requested".to_owned()));
    let (status, body) = server
        .call(Method::POST, &format!("/api/v1/runs/{run_id}/kill"), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{body}");

    server.patch_job(job_id, json!({ "timeout_secs": 1 })).await;
    let run = server.trigger(job_id).await;
    let run = server
        .wait_until_finished(run["id"].as_str().unwrap(), Duration::from_secs(6))
        .await;
    assert_eq!(run["status"], "timed_out", "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 1s"),
        "{run:#}"
    );
}

#[tokio::test]
async fn shutdown_lets_short_runs_finish_and_stops_the_rest() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let start = || {
        TestServer::builder()
            .data_dir(data_dir.clone())
            .kill_grace(Duration::from_millis(1500))
            .start()
    };
    let server = start().await;
    let short = server
        .create_job(json!({ "name": "short", "command": "sleep 0.5; echo done" }))
        .await;
    let long = server
        .create_job(json!({ "name": "long", "command": "exec sleep 30" }))
        .await;
    let short_run = server.trigger(short["id"].as_str().unwrap()).await;
    let long_run = server.trigger(long["id"].as_str().unwrap()).await;
    for run in [&short_run, &long_run] {
        server
            .wait_for_run(run["id"].as_str().unwrap(), Duration::from_secs(5), |run| {
                run["status"] == "running"
            })
            .await;
    }
    server.stop().await.expect("clean stop");

    let server = start().await;
    let short_run = server.run(short_run["id"].as_str().unwrap()).await;
    assert_eq!(
        short_run["status"], "succeeded",
        "a run that ends within the grace finishes: {short_run:#}"
    );
    let long_run = server.run(long_run["id"].as_str().unwrap()).await;
    assert_eq!(long_run["status"], "lost", "{long_run:#}");
    assert!(
        long_run["error"]
            .as_str()
            .unwrap()
            .contains("worker shut down"),
        "{long_run:#}"
    );
}
