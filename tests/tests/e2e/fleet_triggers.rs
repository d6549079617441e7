//! Triggers in the fleet: a pool's file watch is kept by one worker at a time, and by the next
//! when that one stops.

use std::time::Duration;

use autopilot_tests::cluster::{Cluster, ClusterOptions};
use autopilot_tests::harness::{is_terminal, ApiClient};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Writes `name` in `dir` and waits for the job's run that it starts; returns that run's first
/// event (which names the worker that saw the change).
async fn change_seen(
    api: &ApiClient,
    job_id: &str,
    dir: &std::path::Path,
    name: &str,
    runs_before: usize,
) -> Value {
    std::fs::write(dir.join(name), name).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = api.runs_of(job_id).await;
        if runs.len() > runs_before {
            assert_eq!(runs.len(), runs_before + 1, "one run per change: {runs:#?}");
            let run_id = runs[0]["id"].as_str().unwrap();
            api.wait_for_run(run_id, Duration::from_secs(30), is_terminal)
                .await;
            return api.events(run_id).await[0].clone();
        }
        assert!(Instant::now() < deadline, "no run for {name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_of_a_pool_watches_its_files_and_another_takes_over() {
    let options = ClusterOptions {
        control_planes: 1,
        workers: 2,
        lost_after_secs: 15,
        ..ClusterOptions::default()
    };
    let Some(mut cluster) = Cluster::start(options).await else {
        return;
    };
    let api = cluster.api(0).clone();
    let inbox = tempfile::tempdir().unwrap();
    let job = api
        .create_job(json!({
            "name": "ingest", "command": "cat",
            "on_file": { "paths": [format!("{}/*.txt", inbox.path().display())], "events": ["create"], "debounce_ms": 200 },
        }))
        .await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    // Both workers share this directory: only the elected one (the first by id) reports.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (index, name) in ["a.txt", "b.txt"].into_iter().enumerate() {
        let seen = change_seen(&api, &job_id, inbox.path(), name, index).await;
        assert_eq!(seen["data"]["seen_by"], "worker0", "{seen:#}");
    }
    // The watcher goes away: the other worker takes over once it is no longer live.
    cluster.workers[0].kill();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut written = 2;
    loop {
        let name = format!("late-{written}.txt");
        std::fs::write(inbox.path().join(&name), &name).unwrap();
        written += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let runs = api.runs_of(&job_id).await;
        if runs.len() > 2 {
            let first = api.events(runs[0]["id"].as_str().unwrap()).await[0].clone();
            assert_eq!(first["data"]["seen_by"], "worker1", "{first:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no worker took the watch over:\n{}",
            cluster.logs()
        );
    }
}
