//! Failures injected into real processes under a steady load, each scenario measuring what the
//! promises are about: acknowledged work lost, fires run twice or missed, runs stuck, and how
//! long recovery took. The end-to-end tests run each in a short form and assert the counts are
//! zero; `bench chaos` runs them longer and writes the table of RELIABILITY.md from the
//! findings.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, ClusterOptions};
use crate::harness::{is_terminal, ApiClient};
use crate::proxy::TcpProxy;

mod intake;
pub use intake::{disk_full, postgres_outage};

/// What one scenario showed.
#[derive(Debug, Clone)]
pub struct Finding {
    pub promise: &'static str,
    pub fault: String,
    pub load: String,
    /// Acknowledged work that is gone (deliveries answered 202, runs accepted).
    pub lost: u64,
    /// Fires or deliveries that ran twice.
    pub duplicated: u64,
    /// Fires neither run nor recorded as missed.
    pub missing: u64,
    /// Runs that did not end as they should have (stuck, `lost`, failed).
    pub stuck: u64,
    pub recovery: String,
    /// The test that runs this scenario in its short form.
    pub shown_by: &'static str,
}

impl Finding {
    /// Whether every promise held.
    pub fn held(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.missing == 0 && self.stuck == 0
    }

    /// This finding, after printing what `cluster`'s processes warned of when a promise broke.
    fn explained_by(self, cluster: &Cluster) -> Self {
        if !self.held() {
            eprintln!("{}", cluster.warnings(40));
        }
        self
    }

    /// A row of RELIABILITY.md's table.
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} lost, {} duplicated, {} missing, {} stuck | {} | `{}` |",
            self.promise,
            self.fault,
            self.load,
            self.lost,
            self.duplicated,
            self.missing,
            self.stuck,
            self.recovery,
            self.shown_by
        )
    }
}

/// The table's heading, matching [`Finding::row`].
pub const TABLE_HEADING: &str = "| promise | fault injected | load held | lost / duplicated / missing / stuck | recovery | short form |\n| --- | --- | --- | --- | --- | --- |";

fn time_of(run: &Value, field: &str) -> Option<DateTime<Utc>> {
    run[field].as_str().and_then(|t| t.parse().ok())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LeaderFault {
    /// `kill -9`, then started again as a follower.
    Kill,
    /// SIGSTOP for the lease's time and more, then SIGCONT.
    Pause,
}

/// `jobs` per-second jobs on a 3-replica fleet; the scheduler's leader meets `fault`, and the
/// fleet runs on for `after` more. Every (job, second) from the first fire to the last must
/// have exactly one run or a recorded misfire, and every run must succeed. `None` where the
/// components are missing.
pub async fn leader_failover(fault: LeaderFault, jobs: usize, after: Duration) -> Option<Finding> {
    let options = ClusterOptions {
        worker_concurrency: 8,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(options).await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let job_ids = tick_jobs(&cluster, jobs).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let faulted_at = Utc::now();
    let pid = cluster.control_planes[leader]
        .pid()
        .map(|pid| nix::unistd::Pid::from_raw(pid as i32));
    match fault {
        LeaderFault::Kill => cluster.control_planes[leader].kill(),
        LeaderFault::Pause => {
            nix::sys::signal::kill(pid.expect("running"), nix::sys::signal::Signal::SIGSTOP)
                .expect("SIGSTOP")
        }
    }
    let fault_instant = Instant::now();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
    assert_ne!(new_leader, leader);
    // The first fire by the new leader: a run created after the fault.
    let api = cluster.api(new_leader).clone();
    let first_fire = loop {
        let runs = api.runs_of(&job_ids[0]).await;
        if let Some(created) = runs
            .iter()
            .filter_map(|run| time_of(run, "created_at"))
            .filter(|created| *created > faulted_at)
            .min()
        {
            break created;
        }
        assert!(
            fault_instant.elapsed() < Duration::from_secs(30),
            "no fire after the leader's fault\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let failover = (first_fire - faulted_at).to_std().unwrap_or_default();
    match fault {
        // The killed replica comes back as a follower.
        LeaderFault::Kill => cluster.start_control_plane(leader).await,
        // The paused one wakes up well past its lease, believing it still leads until it
        // checks.
        LeaderFault::Pause => {
            let ttl = Duration::from_secs(ClusterOptions::default().lease_ttl_secs);
            let asleep = ttl + Duration::from_secs(5);
            if let Some(left) = asleep.checked_sub(fault_instant.elapsed()) {
                tokio::time::sleep(left).await;
            }
            nix::sys::signal::kill(pid.expect("running"), nix::sys::signal::Signal::SIGCONT)
                .expect("SIGCONT");
        }
    }
    tokio::time::sleep(after).await;

    let FireCount {
        fires,
        duplicated,
        missing,
        stuck,
    } = count_fires(&api, &job_ids, faulted_at).await;
    let (what, shown_by) = match fault {
        LeaderFault::Kill => (
            "`kill -9` of the scheduler's leader (fleet of 3), started again as a follower",
            "fleet::a_new_leader_fires_every_second_exactly_once_after_the_leader_is_killed",
        ),
        LeaderFault::Pause => (
            "the scheduler's leader paused (`SIGSTOP`) for its lease TTL + 5 s, then woken (fleet of 3)",
            "fleet::a_leader_paused_past_its_lease_does_not_fire_when_it_wakes",
        ),
    };
    Some(
        Finding {
            promise: "every fire exactly once",
            fault: what.to_owned(),
            load: format!("{jobs} per-second jobs, {fires} fires checked"),
            lost: 0,
            duplicated,
            missing,
            stuck,
            recovery: format!(
                "the new leader's first fire {:.1} s after the fault (lease TTL {} s)",
                failover.as_secs_f64(),
                ClusterOptions::default().lease_ttl_secs
            ),
            shown_by,
        }
        .explained_by(&cluster),
    )
}

/// What the runs of per-second jobs show once their schedules are stopped.
struct FireCount {
    /// Distinct (job, second) fires.
    fires: u64,
    duplicated: u64,
    missing: u64,
    /// Runs that did not succeed.
    stuck: u64,
}

/// Stops the schedules of `job_ids`, lets their last runs finish (a minute at most), then looks
/// at every (job, second): from a job's first fire to its last, each second must have exactly
/// one run or a recorded misfire, and fires must have gone on well after `faulted_at`.
async fn count_fires(api: &ApiClient, job_ids: &[String], faulted_at: DateTime<Utc>) -> FireCount {
    for job_id in job_ids {
        let (status, body) = api
            .call(
                Method::PATCH,
                &format!("/api/v1/jobs/{job_id}"),
                Some(json!({ "enabled": false })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    'settle: loop {
        for job_id in job_ids {
            if !api.runs_of(job_id).await.iter().all(is_terminal) {
                if Instant::now() > deadline {
                    break 'settle;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue 'settle;
            }
        }
        break;
    }
    let mut count = FireCount {
        fires: 0,
        duplicated: 0,
        missing: 0,
        stuck: 0,
    };
    for job_id in job_ids {
        let job = api.get(&format!("/api/v1/jobs/{job_id}")).await;
        let runs = api.runs_of(job_id).await;
        let seconds: Vec<i64> = runs
            .iter()
            .map(|run| {
                time_of(run, "scheduled_for")
                    .expect("a fire has its time")
                    .timestamp()
            })
            .collect();
        let distinct: BTreeSet<i64> = seconds.iter().copied().collect();
        count.duplicated += (seconds.len() - distinct.len()) as u64;
        let (Some(first), Some(last)) = (distinct.first(), distinct.last()) else {
            continue;
        };
        assert!(
            *last > faulted_at.timestamp() + 3,
            "fires went on after the fault: {seconds:?}"
        );
        // Fires missed while nobody led are within the misfire grace, so the policy runs them:
        // every second from the first fire to the last has its run, unless counted as missed.
        let recorded = job["missed_fires"].as_u64().expect("missed_fires")
            + job["overlap_skipped"].as_u64().expect("overlap_skipped");
        let expected = (last - first + 1) as u64;
        count.missing += expected.saturating_sub(distinct.len() as u64 + recorded);
        count.fires += distinct.len() as u64;
        for run in runs.iter().filter(|run| run["status"] != "succeeded") {
            count.stuck += 1;
            if count.stuck <= 3 {
                eprintln!("a run that did not succeed: {run}");
            }
        }
    }
    count
}

/// Creates `jobs` per-second jobs of `true`, spread over the control planes.
async fn tick_jobs(cluster: &Cluster, jobs: usize) -> Vec<String> {
    let mut job_ids = Vec::new();
    for index in 0..jobs {
        let api = cluster.api(index % cluster.control_planes.len()).clone();
        // `allow`: a run held up by the faulty replica (its completion is retried on another
        // one) must not make later fires skip; every second has its run.
        let job = api
            .create_job(json!({ "name": format!("tick-{index}"), "command": "true", "schedule": "* * * * * *", "overlap_policy": "allow" }))
            .await;
        job_ids.push(job["id"].as_str().unwrap().to_owned());
    }
    job_ids
}

/// Triggers `job_id` through `apis` in turn, one every 20 ms, until `stop`: the runs answered
/// `202`, and how many requests were refused or unanswered (a replica going down).
fn trigger_load(
    apis: Vec<ApiClient>,
    job_id: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<(Vec<String>, usize)> {
    tokio::spawn(async move {
        let (mut accepted, mut refused) = (Vec::new(), 0usize);
        let mut index = 0usize;
        while !stop.is_cancelled() {
            let api = &apis[index % apis.len()];
            index += 1;
            let path = format!("/api/v1/jobs/{job_id}/trigger");
            match api.try_call(Method::POST, &path, None).await {
                Some((StatusCode::ACCEPTED, body)) => {
                    accepted.push(body["id"].as_str().unwrap().to_owned())
                }
                _ => refused += 1,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (accepted, refused)
    })
}

/// How many of the runs `run_ids` did not succeed (waiting up to `patience` for them to end),
/// and when the last of them ended.
async fn unsucceeded(
    api: &ApiClient,
    run_ids: &[String],
    patience: Duration,
) -> (u64, Option<DateTime<Utc>>) {
    let deadline = Instant::now() + patience;
    let (mut stuck, mut last_end) = (0u64, None);
    for run_id in run_ids {
        let run = loop {
            let run = api.run(run_id).await;
            if is_terminal(&run) || Instant::now() > deadline {
                break run;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if run["status"] != "succeeded" {
            stuck += 1;
            if stuck <= 3 {
                eprintln!("an acknowledged run did not succeed: {run}");
            }
        }
        last_end = last_end.max(time_of(&run, "finished_at"));
    }
    (stuck, last_end)
}

/// Every control plane of a 3-replica fleet, leader included, stopped (`SIGTERM`) and started
/// again in turn, `between` apart, under `jobs` per-second jobs and manual runs through the
/// replicas: every fire exactly once, every acknowledged run succeeds.
pub async fn rolling_restart(jobs: usize, between: Duration) -> Option<Finding> {
    let options = ClusterOptions {
        worker_concurrency: 8,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(options).await?;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let job_ids = tick_jobs(&cluster, jobs).await;
    let light = cluster
        .api(0)
        .create_job(json!({ "name": "light", "command": "true", "overlap_policy": "allow" }))
        .await;
    let apis: Vec<ApiClient> = (0..3).map(|index| cluster.api(index).clone()).collect();
    tokio::time::sleep(Duration::from_secs(4)).await;

    let faulted_at = Utc::now();
    let stop_load = CancellationToken::new();
    let load = trigger_load(
        apis,
        light["id"].as_str().unwrap().to_owned(),
        stop_load.clone(),
    );
    let (mut slowest, mut graceful) = (Duration::ZERO, 0);
    for index in 0..3 {
        let stopping = Instant::now();
        if cluster.control_planes[index]
            .terminate(Duration::from_secs(30))
            .await
        {
            graceful += 1;
        }
        cluster.start_control_plane(index).await;
        slowest = slowest.max(stopping.elapsed());
        tokio::time::sleep(between).await;
    }
    stop_load.cancel();
    let (accepted, refused) = load.await.unwrap();
    assert!(accepted.len() > 100, "{} accepted", accepted.len());
    let api = cluster.api(0).clone();
    let (unfinished, _) = unsucceeded(&api, &accepted, Duration::from_secs(120)).await;
    let FireCount {
        fires,
        duplicated,
        missing,
        stuck,
    } = count_fires(&api, &job_ids, faulted_at).await;
    Some(
        Finding {
            promise: "every fire exactly once; no acknowledged run lost",
            fault: format!(
                "a rolling restart: each of 3 control planes stopped (`SIGTERM`) and started again in turn, {} s apart",
                between.as_secs()
            ),
            load: format!(
                "{jobs} per-second jobs ({fires} fires), and manual runs through the replicas, one per 20 ms: {} answered 202, {refused} refused or unanswered",
                accepted.len()
            ),
            lost: unfinished,
            duplicated,
            missing,
            stuck,
            recovery: format!(
                "each control plane ready again within {:.1} s of its SIGTERM ({graceful} of 3 stopped within their grace); every acknowledged run `succeeded`",
                slowest.as_secs_f64()
            ),
            shown_by: "fleet::a_rolling_restart_of_every_control_plane_loses_and_repeats_nothing",
        }
        .explained_by(&cluster),
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WorkerFault {
    /// SIGSTOP of the worker process (its runs' processes go on), then SIGCONT.
    Pause,
    /// Its NATS connections reset and refused by a proxy in between, then let through again.
    Partition,
}

/// Runs of a 20 s command on a fleet of 2 control planes and 2 workers (4 slots each,
/// `retry.lost`); one worker, holding runs, is cut off by `fault` for `isolated_for` (past the
/// lost-after time, 15 s), then comes back while its runs' replacements go on elsewhere. Every
/// run must succeed, each decided once: the attempt that lost its lease is refused when it
/// reports, and a run read again later has not changed.
pub async fn worker_isolated(fault: WorkerFault, isolated_for: Duration) -> Option<Finding> {
    let options = ClusterOptions {
        control_planes: 2,
        workers: 2,
        worker_concurrency: 4,
        lost_after_secs: 15,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(options).await?;
    let proxy = match fault {
        WorkerFault::Pause => None,
        WorkerFault::Partition => {
            let nats = cluster.nats.url();
            let target = nats
                .trim_start_matches("nats://")
                .parse()
                .expect("NATS address");
            let proxy = TcpProxy::start(target).await.expect("proxy");
            cluster.workers[0].env = vec![(
                "AUTOPILOT_NATS_URL".to_owned(),
                format!("nats://{}", proxy.addr()),
            )];
            cluster.workers[0].kill();
            cluster.start_worker(0);
            Some(proxy)
        }
    };
    let api = cluster.api(0).clone();
    let job = api
        .create_job(json!({
            "name": "long",
            "command": "sleep 20",
            "overlap_policy": "allow",
            "retry": { "count": 1, "backoff_secs": 1, "lost": true },
        }))
        .await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    let mut run_ids = Vec::new();
    for _ in 0..8 {
        let (status, body) = api
            .call(
                Method::POST,
                &format!("/api/v1/jobs/{job_id}/trigger"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        run_ids.push(body["id"].as_str().unwrap().to_owned());
    }
    // Both workers' slots fill: four runs each.
    let deadline = Instant::now() + Duration::from_secs(30);
    let on_isolated: Vec<String> = loop {
        let runs = api.runs_of(&job_id).await;
        let held: Vec<String> = runs
            .iter()
            .filter(|run| run["status"] == "running" && run["worker_id"] == "worker0")
            .map(|run| run["id"].as_str().unwrap().to_owned())
            .collect();
        if held.len() == 4 {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "worker0 did not take its runs: {runs:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pid = nix::unistd::Pid::from_raw(cluster.workers[0].pid().expect("worker0") as i32);
    match &proxy {
        None => nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP"),
        Some(proxy) => proxy.cut(),
    }
    tokio::time::sleep(isolated_for).await;
    match &proxy {
        None => nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT"),
        Some(proxy) => proxy.restore(),
    }
    let back = Instant::now();

    let settled = Instant::now() + Duration::from_secs(120);
    let mut first_read = Vec::new();
    for run_id in &run_ids {
        let run = loop {
            let run = api.run(run_id).await;
            if is_terminal(&run) || Instant::now() > settled {
                break run;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        first_read.push(run);
    }
    let settled_after = back.elapsed();
    // The isolated worker reports what it did meanwhile; nothing it says may change a run.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (mut stuck, mut duplicated, mut replaced) = (0u64, 0u64, 0u64);
    for (run_id, first) in run_ids.iter().zip(&first_read) {
        let run = api.run(run_id).await;
        let events = api.events(run_id).await;
        let finished = crate::harness::steps(&events)
            .iter()
            .filter(|step| *step == "finished")
            .count();
        if run != *first || finished > 1 {
            duplicated += 1;
            eprintln!("a run decided twice ({finished} finished): {first} then {run}");
        }
        if run["status"] != "succeeded" {
            stuck += 1;
            eprintln!("a run that did not succeed: {run}");
        }
        if on_isolated.contains(run_id) && run["attempt"].as_u64() == Some(2) {
            replaced += 1;
        }
    }
    // The isolated worker did report (else nothing was tried): refused, each of them.
    let log = cluster.workers[0].log();
    let refused = log.matches("completion refused").count();
    assert!(
        refused > 0 || duplicated > 0,
        "the isolated worker reported none of its runs' ends:\n{}",
        cluster.warnings(40)
    );
    let what = match fault {
        WorkerFault::Pause => format!(
            "a worker holding 4 runs paused (`SIGSTOP`) for {} s, past the lost-after time (15 s), then woken",
            isolated_for.as_secs()
        ),
        WorkerFault::Partition => format!(
            "a worker holding 4 runs cut off from NATS for {} s (its connections reset by a proxy; its runs' processes go on), then let through again",
            isolated_for.as_secs()
        ),
    };
    Some(
        Finding {
            promise: "every run decided once",
            fault: what,
            load: "8 runs of `sleep 20` (`retry.lost`) on 2 workers × 4 slots, 2 control planes".to_owned(),
            lost: 0,
            duplicated,
            missing: 0,
            stuck,
            recovery: format!(
                "{replaced} of the isolated worker's 4 runs ran again as attempt 2; its {refused} late reports of attempt 1 refused; {}",
                if settled_after < Duration::from_millis(500) {
                    "every run had `succeeded` by the time it was back".to_owned()
                } else {
                    format!("every run `succeeded` {:.1} s after it was back", settled_after.as_secs_f64())
                }
            ),
            shown_by: match fault {
                WorkerFault::Pause => "fleet::a_paused_worker_s_runs_are_decided_once_when_it_wakes",
                WorkerFault::Partition => {
                    "fleet::a_worker_cut_off_from_nats_cannot_overwrite_the_attempt_that_replaced_it"
                }
            },
        }
        .explained_by(&cluster),
    )
}

/// Runs triggered steadily through the 3 replicas of a fleet while its NATS server is killed
/// and, `down` later, started again on its store. Every run accepted (202) must end
/// `succeeded`, and every process must ride it out without restarting.
pub async fn nats_outage(down: Duration) -> Option<Finding> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let pids: Vec<Option<u32>> = cluster
        .control_planes
        .iter()
        .chain(&cluster.workers)
        .map(|node| node.pid())
        .collect();
    let apis: Vec<ApiClient> = (0..3).map(|index| cluster.api(index).clone()).collect();
    let job = apis[0]
        .create_job(json!({ "name": "light", "command": "true", "overlap_policy": "allow" }))
        .await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    let stop_load = CancellationToken::new();
    let load = trigger_load(apis, job_id, stop_load.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.nats.kill();
    tokio::time::sleep(down).await;
    cluster.nats.restart().await.expect("nats-server back");
    let back_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop_load.cancel();
    let (accepted, refused) = load.await.unwrap();
    assert!(accepted.len() > 100, "{} accepted", accepted.len());

    let api = cluster.api(0).clone();
    let (stuck, last_end) = unsucceeded(&api, &accepted, Duration::from_secs(120)).await;
    let last_end = last_end.unwrap_or(back_at).max(back_at);
    // Rode it out: the same processes, still running.
    let now: Vec<Option<u32>> = cluster
        .control_planes
        .iter_mut()
        .chain(cluster.workers.iter_mut())
        .map(|node| node.is_running().then(|| node.pid()).flatten())
        .collect();
    assert_eq!(now, pids, "no process restarted or died");
    Some(Finding {
        promise: "no acknowledged run lost",
        fault: format!(
            "NATS killed for {} s, then started again on its store (fleet of 3 control planes, 3 workers)",
            down.as_secs()
        ),
        load: format!(
            "manual runs through the 3 replicas, one per 20 ms: {} answered 202, {refused} refused",
            accepted.len()
        ),
        lost: 0,
        duplicated: 0,
        missing: 0,
        stuck,
        recovery: format!(
            "every acknowledged run `succeeded`, the last {:.1} s after NATS was back; no process restarted",
            (last_end - back_at).to_std().unwrap_or_default().as_secs_f64()
        ),
        shown_by: "fleet::nothing_acknowledged_is_lost_when_nats_restarts_under_load",
    }
    .explained_by(&cluster))
}
