//! The fleet as separate processes on loopback: nats-server with JetStream, PostgreSQL, three
//! control planes (`autopilot serve` in fleet mode) and three workers (`autopilot worker`), with
//! processes killed under them.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use autopilot_proto::{
    AttemptEnd, BlobStore, Bus, JetStreamBus, JetStreamConfig, RunAttempt, RunId, RunKind,
    RunOutcome, RunRequest, WorkerId, WorkerReply, WorkerRequest,
};
use autopilot_tests::chaos::{self, LeaderFault, WorkerFault};
use autopilot_tests::cluster::{claude_worker_env, Cluster, ClusterOptions};
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply};
use autopilot_tests::harness::{event_ids, is_terminal, steps, ApiClient};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A job that runs `command` whenever it is triggered, as many at once as asked.
async fn shell_job(api: &ApiClient, name: &str, command: &str) -> String {
    let job = api
        .create_job(json!({ "name": name, "command": command, "overlap_policy": "allow" }))
        .await;
    job["id"].as_str().unwrap().to_owned()
}

async fn trigger(api: &ApiClient, job_id: &str) -> (StatusCode, Value) {
    api.call(
        Method::POST,
        &format!("/api/v1/jobs/{job_id}/trigger"),
        None,
    )
    .await
}

/// A run request the bus lost (here purged from its stream before any worker took it) is
/// published again once the run has waited twice the lost-after time, under a dedup id of its
/// own: the bus still remembers the first one and would drop a copy of it as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_request_the_bus_lost_is_published_again_and_runs() {
    let options = ClusterOptions {
        control_planes: 1,
        workers: 1,
        // The least allowed: the request is published again after 30 s.
        lost_after_secs: 15,
        ..ClusterOptions::default()
    };
    let Some(mut cluster) = Cluster::start(options).await else {
        return;
    };
    cluster.workers[0].kill();
    let api = cluster.api(0).clone();
    let job_id = shell_job(&api, "lost-request", "echo ran").await;
    let (status, run) = trigger(&api, &job_id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let client = async_nats::connect(cluster.nats.url()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("autopilot-runs")
        .await
        .expect("the run stream");
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    stream.purge().await.expect("purge the run stream");
    cluster.start_worker(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = api.run(&run_id).await;
        if run["status"] == "succeeded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lost request was not published again: {run}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The scenario is `autopilot_tests::chaos::rolling_restart`; `bench chaos` spaces the restarts
/// further apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_control_plane_loses_and_repeats_nothing() {
    let Some(finding) = chaos::rolling_restart(20, Duration::from_secs(2)).await else {
        return;
    };
    println!("{}", finding.row());
    assert!(finding.held(), "{finding:?}");
}

/// The scenarios of this one and the next are `autopilot_tests::chaos::worker_isolated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_s_runs_are_decided_once_when_it_wakes() {
    let Some(finding) = chaos::worker_isolated(WorkerFault::Pause, Duration::from_secs(25)).await
    else {
        return;
    };
    println!("{}", finding.row());
    assert!(finding.held(), "{finding:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_nats_cannot_overwrite_the_attempt_that_replaced_it() {
    let Some(finding) =
        chaos::worker_isolated(WorkerFault::Partition, Duration::from_secs(25)).await
    else {
        return;
    };
    println!("{}", finding.row());
    assert!(finding.held(), "{finding:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_serves_and_follows_runs_that_workers_execute() {
    let Some(mut cluster) = Cluster::start(ClusterOptions::default()).await else {
        return;
    };
    for index in 0..3 {
        let ready = cluster.api(index).get("/readyz").await;
        assert_eq!(ready["mode"], "fleet", "{ready}");
        assert_eq!(ready["store"], "postgres", "{ready}");
    }
    assert!(
        cluster.control_planes[0].log().contains("mode=\"fleet\"")
            || cluster.control_planes[0].log().contains("mode=fleet"),
        "the start-up line names the mode:\n{}",
        cluster.control_planes[0].log()
    );

    // Live workers, their pools and capacity, from any replica.
    let workers = cluster.wait_for_workers(3, Duration::from_secs(20)).await;
    let names: BTreeSet<&str> = workers
        .iter()
        .filter_map(|w| w["worker_id"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["worker0", "worker1", "worker2"]),
        "{workers:?}"
    );
    for worker in &workers {
        assert_eq!(worker["pools"], json!(["default"]), "{worker}");
        assert_eq!(worker["capacity"], 4, "{worker}");
        assert_eq!(worker["executor"], "local", "{worker}");
    }

    // Created on one replica, triggered on another, followed live on the third.
    let job = cluster
        .api(0)
        .create_job(json!({ "name": "fleet-echo", "command": "sleep 1; echo from-the-fleet" }))
        .await;
    let job_id = job["id"].as_str().unwrap();
    let (status, run) = cluster
        .api(1)
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{job_id}/trigger"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let stream = tokio::time::timeout(
        Duration::from_secs(30),
        cluster.api(2).follow_events(&run_id, None),
    )
    .await
    .expect("the live stream ends when the run does");
    assert!(stream.contains("from-the-fleet"), "{stream}");
    assert!(stream.contains("event: end"), "{stream}");
    let ids = event_ids(&stream);
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "ordered: {ids:?}"
    );
    let finished = cluster.api(0).run(&run_id).await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert!(
        finished["worker_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("worker")),
        "{finished}"
    );
    // A run in a pool no worker serves waits, and says so by staying queued.
    let gpu = cluster
        .api(2)
        .create_job(json!({ "name": "gpu", "command": "true", "pool": "gpu" }))
        .await;
    let waiting = cluster.api(2).trigger(gpu["id"].as_str().unwrap()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = cluster.api(0).run(waiting["id"].as_str().unwrap()).await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
}

/// The scenario is `autopilot_tests::chaos::leader_failover`; `bench chaos` runs it longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_fires_every_second_exactly_once_after_the_leader_is_killed() {
    leader_failover(LeaderFault::Kill).await;
}

/// A leader paused (SIGSTOP) for longer than its lease loses it; when it wakes up it must not
/// fire what the new leader already fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_does_not_fire_when_it_wakes() {
    leader_failover(LeaderFault::Pause).await;
}

async fn leader_failover(fault: LeaderFault) {
    let Some(finding) = chaos::leader_failover(fault, 50, Duration::from_secs(4)).await else {
        return;
    };
    eprintln!("{}", finding.row());
    assert_eq!(
        (finding.duplicated, finding.missing),
        (0, 0),
        "every second fired exactly once: {finding:?}"
    );
    // A claim or completion that NATS handed to a paused replica waits for it to wake, and
    // under load a run may then end `lost` (RELIABILITY.md, "Not yet shown"); a killed
    // replica's requests fail at once and are tried again elsewhere, so there every run ends
    // well.
    if fault == LeaderFault::Kill {
        assert_eq!(finding.stuck, 0, "every run succeeded: {finding:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_run_is_lost_in_time_and_runs_again_where_its_job_allows() {
    let Some(claude) = autopilot_tests::components::claude_bin() else {
        return;
    };
    let fake = FakeAnthropic::start().await.expect("fake API");
    let options = ClusterOptions {
        worker_env: claude_worker_env(&claude, &fake.base_url()),
        ..ClusterOptions::default()
    };
    let Some(mut cluster) = Cluster::start(options).await else {
        return;
    };
    let api = cluster.api(0).clone();
    // Two runs stall in the model API; the second attempt of the retried one does not.
    fake.push_all([Reply::stalled(), Reply::stalled()]);
    fake.set_default(Reply::text("second attempt done"));
    let once = api
        .create_job(json!({ "name": "once", "prompt": "say hi" }))
        .await;
    let again = api
        .create_job(json!({ "name": "again", "prompt": "say hi", "retry": { "count": 1, "backoff_secs": 1, "lost": true } }))
        .await;
    let mut runs = Vec::new();
    for job in [&once, &again] {
        let run = api.trigger(job["id"].as_str().unwrap()).await;
        let run_id = run["id"].as_str().unwrap().to_owned();
        let running = api
            .wait_for_run(&run_id, Duration::from_secs(30), |run| {
                run["status"] == "running"
            })
            .await;
        runs.push((run_id, running["worker_id"].as_str().unwrap().to_owned()));
    }
    // Wait until both CLIs are inside their stalled model calls.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.in_flight() < 2 {
        assert!(
            Instant::now() < deadline,
            "the CLIs never reached the model"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut killed = BTreeSet::new();
    for (_, worker) in &runs {
        let index: usize = worker.trim_start_matches("worker").parse().unwrap();
        if killed.insert(index) {
            cluster.workers[index].kill();
        }
    }
    let killed_at = Instant::now();

    let lost = api
        .wait_for_run(&runs[0].0, Duration::from_secs(60), is_terminal)
        .await;
    let lost_after = killed_at.elapsed();
    assert_eq!(lost["status"], "lost", "{lost}");
    assert!(
        lost_after < Duration::from_secs(45),
        "lost only {lost_after:?} after the kill"
    );
    assert!(
        lost["error"]
            .as_str()
            .unwrap_or_default()
            .contains("heartbeat"),
        "{lost}"
    );

    let retried = api
        .wait_for_run(&runs[1].0, Duration::from_secs(90), is_terminal)
        .await;
    assert_eq!(retried["status"], "succeeded", "{retried}");
    assert_eq!(retried["attempt"], 2, "{retried}");
    assert_ne!(retried["worker_id"], json!(runs[1].1), "{retried}");
    let retried_steps = steps(&api.events(&runs[1].0).await);
    assert!(
        retried_steps.contains(&"lost".to_owned()),
        "{retried_steps:?}"
    );

    // No run stays running, on any replica's view.
    for index in 0..3 {
        let body = cluster.api(index).get("/api/v1/runs?limit=100").await;
        for run in body["runs"].as_array().unwrap() {
            assert!(is_terminal(run), "{run}");
        }
    }
}

/// The scenario is `autopilot_tests::chaos::nats_outage`; `bench chaos` holds NATS down longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_nats_restarts_under_load() {
    let Some(finding) = chaos::nats_outage(Duration::from_secs(3)).await else {
        return;
    };
    eprintln!("{}", finding.row());
    assert!(finding.held(), "{finding:?}");
}

/// NATS down for longer than the lost-after time while runs execute: the control planes hear
/// no heartbeat, but not because the workers died. They do not mark the runs lost; the runs
/// finish and are recorded once NATS is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_longer_than_the_lost_after_time_loses_no_running_run() {
    let options = ClusterOptions {
        control_planes: 2,
        workers: 1,
        lost_after_secs: 15,
        ..ClusterOptions::default()
    };
    let Some(mut cluster) = Cluster::start(options).await else {
        return;
    };
    let api = cluster.api(0).clone();
    let job_id = shell_job(&api, "outlasts-nats", "sleep 25").await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (status, run) = trigger(&api, &job_id).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{run}");
        runs.push(run["id"].as_str().unwrap().to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for run_id in &runs {
        while api.run(run_id).await["status"] != "running" {
            assert!(Instant::now() < deadline, "{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster.nats.kill();
    // Past the lost-after time, and the reaper's period (a third of it) on top.
    tokio::time::sleep(Duration::from_secs(22)).await;
    cluster.nats.restart().await.expect("nats-server back");
    let deadline = Instant::now() + Duration::from_secs(60);
    for run_id in &runs {
        let run = loop {
            let run = api.run(run_id).await;
            if is_terminal(&run) {
                break run;
            }
            assert!(Instant::now() < deadline, "{run}\n{}", cluster.warnings(20));
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            (run["status"].as_str(), run["attempt"].as_u64()),
            (Some("succeeded"), Some(1)),
            "{run}\n{}",
            cluster.warnings(20)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_never_run_twice() {
    let options = ClusterOptions {
        worker_concurrency: 8,
        ..ClusterOptions::default()
    };
    let Some(cluster) = Cluster::start(options).await else {
        return;
    };
    let marks = cluster.dir().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    // Every execution leaves a file of its own.
    let command = format!(
        "touch {}/$(cat /proc/sys/kernel/random/uuid)",
        marks.display()
    );
    let api = cluster.api(0).clone();
    let bus = JetStreamBus::connect(&cluster.nats.url(), JetStreamConfig::default())
        .await
        .expect("the fleet's bus");
    let job_id = shell_job(&api, "mark", &command).await;
    let mut run_ids = Vec::new();
    for _ in 0..60 {
        let (status, run) = trigger(&api, &job_id).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{run}");
        let run_id: RunId = run["id"].as_str().unwrap().parse().unwrap();
        // The same attempt published again four times under other dedup ids: several workers
        // get it at once and race to claim it.
        for copy in 0..4 {
            let request = RunRequest {
                run_id,
                attempt: 1,
                pool: "default".into(),
                dedup_id: format!("duplicate:{run_id}:{copy}"),
                trace_parent: None,
            };
            assert!(bus.publish_run(request).await.unwrap());
        }
        run_ids.push(run_id.to_string());
    }
    let mut workers_seen: HashMap<String, usize> = HashMap::new();
    for run_id in &run_ids {
        let run = api
            .wait_until_finished(run_id, Duration::from_secs(60))
            .await;
        assert_eq!(run["status"], "succeeded", "{run}");
        *workers_seen
            .entry(run["worker_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
        let started = steps(&api.events(run_id).await)
            .iter()
            .filter(|step| *step == "started")
            .count();
        assert_eq!(started, 1, "run {run_id} started {started} times");
    }
    // Let any late duplicate that slipped through finish before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let executions = std::fs::read_dir(&marks).unwrap().count();
    assert_eq!(executions, run_ids.len(), "executions vs runs");
    assert!(
        workers_seen.len() > 1,
        "spread over workers: {workers_seen:?}"
    );
}

/// The worker protocol itself, spoken by the test as a worker would: one claim request for many
/// runs answers each in order, a run named twice is taken once, and one completion request
/// records each run's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_completions_of_many_runs_are_answered_run_by_run() {
    let options = ClusterOptions {
        workers: 0,
        ..ClusterOptions::default()
    };
    let Some(cluster) = Cluster::start(options).await else {
        return;
    };
    let api = cluster.api(0).clone();
    let bus = JetStreamBus::connect(&cluster.nats.url(), JetStreamConfig::default())
        .await
        .expect("the fleet's bus");
    let job_id = shell_job(&api, "by-hand", "true").await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (status, run) = trigger(&api, &job_id).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{run}");
        runs.push(run["id"].as_str().unwrap().parse::<RunId>().unwrap());
    }
    let worker_id = WorkerId::new("by-hand");
    let at = |run_id, attempt| RunAttempt { run_id, attempt };
    let claim = WorkerRequest::Claim {
        worker_id: worker_id.clone(),
        runs: vec![
            at(runs[0], 1),
            at(runs[0], 1),
            at(runs[1], 2),
            at(RunId::new(), 1),
            at(runs[1], 1),
        ],
        claim_token: Some("process-1".to_owned()),
        sealing_key: None,
    };
    let replies = bus.request(claim).await.unwrap().into_each(5).unwrap();
    let reason = |reply: &WorkerReply| match reply {
        WorkerReply::Rejected { reason } => reason.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    for (index, run_id) in [(0, runs[0]), (4, runs[1])] {
        match &replies[index] {
            WorkerReply::Claimed { spec, .. } => {
                assert_eq!((spec.run_id, spec.attempt), (run_id, 1));
                assert!(matches!(spec.kind, RunKind::Shell { .. }), "{spec:?}");
            }
            other => panic!("run {index} not claimed: {other:?}"),
        }
    }
    assert!(reason(&replies[1]).contains("claimed twice"), "{replies:?}");
    assert!(reason(&replies[2]).contains("superseded"), "{replies:?}");
    assert!(reason(&replies[3]).contains("unknown run"), "{replies:?}");
    let run = api.run(&runs[1].to_string()).await;
    assert_eq!(
        (run["status"].as_str(), run["worker_id"].as_str()),
        (Some("running"), Some("by-hand"))
    );
    // The claim repeated by the same process (as when its reply was lost) is answered again;
    // the same worker name from another process, or with no token, is refused.
    let again = |claim_token: Option<&str>| WorkerRequest::Claim {
        worker_id: worker_id.clone(),
        runs: vec![at(runs[1], 1)],
        claim_token: claim_token.map(str::to_owned),
        sealing_key: None,
    };
    let reply = bus.request(again(Some("process-1"))).await.unwrap();
    assert!(
        matches!(&reply.into_each(1).unwrap()[0], WorkerReply::Claimed { spec, .. } if spec.run_id == runs[1]),
        "a repeated claim is answered Claimed"
    );
    for token in [Some("process-2"), None] {
        let replies = bus
            .request(again(token))
            .await
            .unwrap()
            .into_each(1)
            .unwrap();
        assert!(
            reason(&replies[0]).contains("run is running"),
            "{replies:?}"
        );
    }

    let ended = |run_id, exit_code| AttemptEnd {
        run_id,
        attempt: 1,
        outcome: RunOutcome {
            exit_code: Some(exit_code),
            is_error: exit_code != 0,
            error: (exit_code != 0).then(|| format!("exited with code {exit_code}")),
            ..RunOutcome::default()
        },
        events_published: 0,
        last_events: Vec::new(),
    };
    let complete = WorkerRequest::Complete {
        worker_id: worker_id.clone(),
        ended: vec![ended(runs[0], 0), ended(runs[1], 3)],
    };
    let replies = bus
        .request(complete.clone())
        .await
        .unwrap()
        .into_each(2)
        .unwrap();
    assert_eq!(replies, vec![WorkerReply::Ok, WorkerReply::Ok]);
    let first = api.run(&runs[0].to_string()).await;
    let second = api.run(&runs[1].to_string()).await;
    assert_eq!(
        (first["status"].as_str(), first["exit_code"].as_i64()),
        (Some("succeeded"), Some(0))
    );
    assert_eq!(
        (second["status"].as_str(), second["exit_code"].as_i64()),
        (Some("failed"), Some(3))
    );
    // Reported again, each end is refused: the runs are no longer held.
    let replies = bus.request(complete).await.unwrap().into_each(2).unwrap();
    for reply in &replies {
        assert!(
            reason(reply).contains("not held by this worker"),
            "{replies:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_from_any_replica_stops_the_run_within_two_seconds() {
    let Some(cluster) = Cluster::start(ClusterOptions::default()).await else {
        return;
    };
    let job_id = shell_job(cluster.api(0), "sleeper", "sleep 60").await;
    for (creator, killer) in [(0, 1), (1, 2), (2, 0)] {
        let (status, run) = trigger(cluster.api(creator), &job_id).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{run}");
        let run_id = run["id"].as_str().unwrap().to_owned();
        cluster
            .api(killer)
            .wait_for_run(&run_id, Duration::from_secs(30), |run| {
                run["status"] == "running"
            })
            .await;
        // The process is running once the worker said `started`.
        let api = cluster.api(killer).clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !steps(&api.events(&run_id).await).contains(&"started".to_owned()) {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let asked = Instant::now();
        let (status, body) = api
            .call(Method::POST, &format!("/api/v1/runs/{run_id}/kill"), None)
            .await;
        assert!(status.is_success(), "{status} {body}");
        let stopped = api
            .wait_for_run(&run_id, Duration::from_secs(10), is_terminal)
            .await;
        let took = asked.elapsed();
        assert_eq!(stopped["status"], "cancelled", "{stopped}");
        assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_shuts_down_hands_its_runs_back() {
    let Some(mut cluster) = Cluster::start(ClusterOptions {
        workers: 2,
        ..ClusterOptions::default()
    })
    .await
    else {
        return;
    };
    let api = cluster.api(0).clone();
    let job = api
        .create_job(json!({ "name": "long", "command": "sleep 20", "retry": { "count": 1, "backoff_secs": 1, "lost": true } }))
        .await;
    let run = api.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    let running = api
        .wait_for_run(&run_id, Duration::from_secs(30), |run| {
            run["status"] == "running"
        })
        .await;
    let worker = running["worker_id"].as_str().unwrap().to_owned();
    let index: usize = worker.trim_start_matches("worker").parse().unwrap();
    // SIGTERM: the worker stops pulling, waits its grace (5 s), stops the run and hands it back.
    let stopped_by_itself = cluster.workers[index]
        .terminate(Duration::from_secs(20))
        .await;
    assert!(stopped_by_itself, "{}", cluster.workers[index].log());
    let handed_back = api
        .wait_for_run(&run_id, Duration::from_secs(30), |run| {
            run["attempt"] == 2 && run["status"] == "running"
        })
        .await;
    assert_ne!(handed_back["worker_id"], json!(worker), "{handed_back}");
    let all_steps = steps(&api.events(&run_id).await);
    assert!(all_steps.contains(&"lost".to_owned()), "{all_steps:?}");
    assert!(
        cluster.workers[index]
            .log()
            .contains("stopping runs still going at shutdown"),
        "{}",
        cluster.workers[index].log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_job_takes_its_saved_workspace_with_it() {
    let Some(cluster) = Cluster::start(ClusterOptions {
        control_planes: 1,
        workers: 1,
        ..ClusterOptions::default()
    })
    .await
    else {
        return;
    };
    let api = cluster.api(0).clone();
    let job_id = shell_job(&api, "notes", "echo kept > notes.txt").await;
    let run = api.trigger(&job_id).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    let run = api
        .wait_until_finished(&run_id, Duration::from_secs(60))
        .await;
    let events = api.events(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", cluster.logs());
    assert!(
        steps(&events).contains(&"workspace_saved".to_owned()),
        "{:?}",
        steps(&events)
    );
    let bus = JetStreamBus::connect(&cluster.nats.url(), JetStreamConfig::default())
        .await
        .expect("the fleet's bus");
    let saved = bus
        .blobs("workspaces", None)
        .await
        .expect("the workspace store");
    let blob = format!("job-{job_id}.tar.gz");
    let fetched = tempfile::tempdir().unwrap();
    let into = fetched.path().join("saved.tar.gz");
    assert!(
        saved.get(&blob, &into).await.unwrap(),
        "the job's workspace is saved in NATS"
    );

    let (status, _) = api
        .call(Method::DELETE, &format!("/api/v1/jobs/{job_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        !saved.get(&blob, &into).await.unwrap(),
        "the deleted job's saved workspace is gone"
    );
}

/// A rolling update stops workers with SIGTERM: one that runs nothing exits at once, without
/// waiting out its grace (5 s here) and without claiming it still has runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_stops_at_once_on_sigterm() {
    let Some(mut cluster) = Cluster::start(ClusterOptions {
        control_planes: 1,
        workers: 1,
        ..ClusterOptions::default()
    })
    .await
    else {
        return;
    };
    let api = cluster.api(0).clone();
    let job_id = shell_job(&api, "quick", "true").await;
    for _ in 0..3 {
        let run = api.trigger(&job_id).await;
        let run_id = run["id"].as_str().unwrap().to_owned();
        let done = api
            .wait_until_finished(&run_id, Duration::from_secs(30))
            .await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    let asked = Instant::now();
    let stopped_by_itself = cluster.workers[0].terminate(Duration::from_secs(20)).await;
    let took = asked.elapsed();
    let log = cluster.workers[0].log();
    assert!(stopped_by_itself, "{log}");
    assert!(
        took < Duration::from_secs(2),
        "stopped after {took:?}: {log}"
    );
    assert!(
        !log.contains("waiting for running runs"),
        "an idle worker said it waits for runs: {log}"
    );
}

/// A fleet worker serves its slots at `AUTOPILOT_METRICS_BIND`: how many runs it takes at once,
/// and how many it runs now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_its_slots_as_metrics() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(cluster) = Cluster::start(ClusterOptions {
        control_planes: 1,
        workers: 1,
        worker_concurrency: 3,
        worker_env: vec![("AUTOPILOT_METRICS_BIND".into(), format!("127.0.0.1:{port}"))],
        ..ClusterOptions::default()
    })
    .await
    else {
        return;
    };
    let scrape = || async move {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("the worker's metrics listener")
            .text()
            .await
            .unwrap();
        let slots =
            |state| crate::metrics::sample(&text, "autopilot_worker_slots", &[("state", state)]);
        (slots("total"), slots("busy"))
    };
    assert_eq!(scrape().await, (Some(3.0), Some(0.0)));
    let api = cluster.api(0).clone();
    let job_id = shell_job(&api, "slow", "sleep 3").await;
    let run = api.trigger(&job_id).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    api.wait_for_run(&run_id, Duration::from_secs(30), |run| {
        run["status"] == "running"
    })
    .await;
    assert_eq!(scrape().await, (Some(3.0), Some(1.0)));
    api.wait_until_finished(&run_id, Duration::from_secs(30))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while scrape().await.1 != Some(0.0) {
        assert!(Instant::now() < deadline, "the slot stayed busy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
