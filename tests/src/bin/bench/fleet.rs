//! Fleet benchmarks, on a cluster of real processes on loopback (nats-server with JetStream,
//! PostgreSQL, 3 control planes, 3 workers; see `autopilot_tests::cluster`):
//!
//! - pipeline throughput: shell runs (`true`) triggered through the API of every replica at a
//!   fixed offered rate for S seconds, then every run's final state checked;
//! - dispatch latency: per-second jobs, due time to the worker's `started` event;
//! - leader failover: kill -9 of the leader to the first fire by the next one, K times;
//! - idle resident memory of a worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use autopilot_tests::cluster::{Cluster, ClusterOptions};
use autopilot_tests::harness::ApiClient;
use autopilot_tests::postgres::PrivatePostgres;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection;

use crate::{
    p50_p99_max, percentile, sorted, CpuTimes, FireRow, ProcessTimes, Row, FIRES_IN_WINDOW,
};

async fn start(options: ClusterOptions) -> anyhow::Result<Cluster> {
    Cluster::start(options).await.context(
        "the fleet needs nats-server, PostgreSQL (TEST_DATABASE_URL) and the autopilot binary: run \
         `bash tests/run.sh` once, then `cargo build --release --bin autopilot --bin bench`",
    )
}

async fn create_job(api: &ApiClient, body: serde_json::Value) -> anyhow::Result<String> {
    let (status, job) = api.call(Method::POST, "/api/v1/jobs", Some(body)).await;
    anyhow::ensure!(status == StatusCode::CREATED, "create job: {job}");
    Ok(job["id"].as_str().context("job id")?.to_owned())
}

/// Waits until no run is queued or running (or `timeout`).
async fn settle(db: &mut sqlx::PgConnection, timeout: Duration) -> anyhow::Result<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let (active,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM runs WHERE status IN ('queued', 'running', 'cancelling')",
        )
        .fetch_one(&mut *db)
        .await?;
        if active == 0 || Instant::now() > deadline {
            return Ok(active);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Shell runs offered at `rate` per second for `seconds`, spread over the three replicas.
pub async fn pipeline(rate: u64, seconds: u64) -> anyhow::Result<Vec<Row>> {
    Ok(pipeline_with(rate, seconds, &[]).await?.rows)
}

/// What one pipeline run measured.
pub struct Pipeline {
    pub rows: Vec<Row>,
    /// Runs completed a second.
    pub runs_per_second: f64,
    /// CPU time of the `autopilot` processes (control planes and workers, with the runs'
    /// processes they reaped) per run, in milliseconds.
    pub autopilot_cpu_ms_per_run: f64,
}

/// The pipeline with `env` added to every control plane's and worker's environment.
pub async fn pipeline_with(
    rate: u64,
    seconds: u64,
    env: &[(String, String)],
) -> anyhow::Result<Pipeline> {
    let concurrency: usize = std::env::var("BENCH_WORKER_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let control_planes: usize = std::env::var("BENCH_CONTROL_PLANES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // BENCH_DURABLE_POSTGRES=1: a PostgreSQL of the benchmark's own with `fsync` on, as
    // production runs it, instead of the test server (`fsync=off`).
    let durable = std::env::var("BENCH_DURABLE_POSTGRES").is_ok_and(|v| v == "1");
    let postgres = match durable {
        true => Some(
            PrivatePostgres::start_with(true)
                .context("BENCH_DURABLE_POSTGRES needs PostgreSQL's server binaries")?,
        ),
        false => None,
    };
    let database_url = match &postgres {
        Some(postgres) => Some(postgres.fresh_database().await),
        None => None,
    };
    let cluster = start(ClusterOptions {
        control_planes,
        worker_concurrency: concurrency,
        worker_env: env.to_vec(),
        control_plane_env: env.to_vec(),
        database_url,
        ..ClusterOptions::default()
    })
    .await?;
    let apis: Vec<ApiClient> = (0..control_planes)
        .map(|index| cluster.api(index).clone())
        .collect();
    let job_id = create_job(
        &apis[0],
        json!({ "name": "pipeline", "command": "true", "overlap_policy": "allow" }),
    )
    .await?;
    eprintln!(
        "offering {rate} runs/s for {seconds}s to {control_planes} control plane(s), 3 workers…"
    );
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let cpu = CpuTimes::now();
    let processes = ProcessTimes::now();
    let started = Instant::now();
    let total = rate * seconds;
    // Open loop: request i is due at i / rate; up to 256 may be in flight.
    let slots = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..total {
        let due = started + Duration::from_secs_f64(index as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let api = apis[index as usize % apis.len()].clone();
        let path = format!("/api/v1/jobs/{job_id}/trigger");
        let (accepted, refused) = (Arc::clone(&accepted), Arc::clone(&refused));
        tasks.spawn(async move {
            let (status, _) = api.call(Method::POST, &path, None).await;
            if status == StatusCode::ACCEPTED {
                accepted.fetch_add(1, Ordering::Relaxed);
            } else {
                refused.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let offered_for = started.elapsed();
    let mut db = sqlx::PgConnection::connect(&cluster.database_url).await?;
    let left = settle(&mut db, Duration::from_secs(300)).await?;
    let drained_for = started.elapsed();
    // Every process on the machine, the bench included: the whole cost of a run.
    let busy_ms = CpuTimes::busy_ms_since(cpu);
    let steal = CpuTimes::steal_since(cpu);
    let by_program = ProcessTimes::now().spent_since(&processes);
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status")
            .fetch_all(&mut db)
            .await?;
    let (first_ms, last_ms): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT MIN(finished_at_ms), MAX(finished_at_ms) FROM runs")
            .fetch_one(&mut db)
            .await?;
    // Where a run's time goes: waiting for a worker, executing, having its end recorded.
    let phases: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT r.started_at_ms - r.created_at_ms, r.finished_at_ms - r.started_at_ms, \
           (SELECT MAX(e.at_ms) FROM run_events e WHERE e.run_id = r.id) - r.finished_at_ms \
         FROM runs r WHERE r.started_at_ms IS NOT NULL AND r.finished_at_ms IS NOT NULL",
    )
    .fetch_all(&mut db)
    .await?;
    let phase = |pick: fn(&(i64, i64, i64)) -> i64| {
        let values = sorted(phases.iter().map(|row| pick(row) as f64).collect());
        format!(
            "p50 {:.0} ms, p99 {:.0} ms",
            percentile(&values, 50.0),
            percentile(&values, 99.0)
        )
    };
    eprintln!(
        "created → claimed: {}; claimed → process ended: {}; process ended → end recorded: {}",
        phase(|row| row.0),
        phase(|row| row.1),
        phase(|row| row.2)
    );
    let succeeded = counts
        .iter()
        .find(|(status, _)| status == "succeeded")
        .map_or(0, |(_, count)| *count);
    eprintln!(
        "CPU per run by program (ms; a worker's includes the processes it ran): {}",
        by_program
            .iter()
            .take(8)
            .map(|(program, ms)| format!("{program} {:.2}", ms / succeeded.max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let accepted = accepted.load(Ordering::Relaxed);
    let finish_span = (last_ms.unwrap_or(0) - first_ms.unwrap_or(0)).max(1) as f64 / 1000.0;
    let autopilot_ms: f64 = by_program
        .iter()
        .filter(|(program, _)| program.starts_with("autopilot"))
        .map(|(_, ms)| ms)
        .sum();
    let rows = vec![Row {
        name: format!(
            "pipeline: shell `true` runs offered at {rate}/s for {seconds}s through {control_planes} control plane(s), \
             PostgreSQL ({}), JetStream, 3 workers × {concurrency} slots (accepted {accepted}, refused {}; final states {counts:?}; \
             {left} still active after {:.0}s)",
            if durable { "`fsync` on" } else { "`fsync=off`" },
            refused.load(Ordering::Relaxed),
            drained_for.as_secs_f64()
        ),
        value: format!(
            "**{:.0} runs/s** completed ({succeeded} succeeded in {finish_span:.1}s from first to last \
             finish; offered over {:.1}s); machine CPU {:.2} ms per run ({steal})",
            succeeded as f64 / finish_span,
            offered_for.as_secs_f64(),
            busy_ms.unwrap_or(f64::NAN) / succeeded.max(1) as f64
        ),
        target: "≥ 500 runs/s sustained for 60 s, every run's state correct".into(),
    }];
    let measured = Pipeline {
        rows,
        runs_per_second: succeeded as f64 / finish_span,
        autopilot_cpu_ms_per_run: autopilot_ms / succeeded.max(1) as f64,
    };
    Ok(measured)
}

/// `jobs` per-second jobs for `seconds`: due time to the worker's `started` event.
pub async fn dispatch(jobs: usize, seconds: u64) -> anyhow::Result<Vec<Row>> {
    let cluster = start(ClusterOptions {
        worker_concurrency: 16,
        ..ClusterOptions::default()
    })
    .await?;
    let api = cluster.api(0).clone();
    let mut ids = Vec::new();
    for index in 0..jobs {
        ids.push(
            create_job(
                &api,
                json!({ "name": format!("tick-{index}"), "command": "true", "schedule": "* * * * * *", "overlap_policy": "allow" }),
            )
            .await?,
        );
    }
    let window_start = chrono::Utc::now().timestamp_millis() + 2000;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let window_end = chrono::Utc::now().timestamp_millis();
    for id in &ids {
        api.call(
            Method::PATCH,
            &format!("/api/v1/jobs/{id}"),
            Some(json!({ "enabled": false })),
        )
        .await;
    }
    let mut db = sqlx::PgConnection::connect(&cluster.database_url).await?;
    settle(&mut db, Duration::from_secs(60)).await?;
    let rows: Vec<FireRow> = sqlx::query_as(FIRES_IN_WINDOW)
        .bind(window_start)
        .bind(window_end)
        .fetch_all(&mut db)
        .await?;
    let failed = rows.iter().filter(|row| row.3 != "succeeded").count();
    let latency = sorted(
        rows.iter()
            .filter_map(|(due, _, started, _)| started.map(|s| (s - due) as f64))
            .collect(),
    );
    Ok(vec![Row {
        name: format!(
            "fleet dispatch latency, due time → process spawned, {jobs} per-second job(s) × {seconds}s \
             ({} fires, {failed} not succeeded)",
            rows.len()
        ),
        value: p50_p99_max(&latency),
        target: "p50 ≤ 20 ms, p99 ≤ 100 ms".into(),
    }])
}

/// kill -9 of the leader to the first fire by the next one, `kills` times.
pub async fn failover(kills: usize) -> anyhow::Result<Vec<Row>> {
    let mut cluster = start(ClusterOptions {
        workers: 1,
        ..ClusterOptions::default()
    })
    .await?;
    let api = cluster.api(0).clone();
    create_job(
        &api,
        json!({ "name": "tick", "command": "true", "schedule": "* * * * * *", "overlap_policy": "allow" }),
    )
    .await?;
    let mut db = sqlx::PgConnection::connect(&cluster.database_url).await?;
    let mut times = Vec::new();
    for round in 0..kills {
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
        // Let it fire a little first, so it is the leader in deed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed_at = chrono::Utc::now().timestamp_millis();
        cluster.control_planes[leader].kill();
        let deadline = Instant::now() + Duration::from_secs(60);
        let first = loop {
            let (first,): (Option<i64>,) =
                sqlx::query_as("SELECT MIN(created_at_ms) FROM runs WHERE created_at_ms > $1")
                    .bind(killed_at)
                    .fetch_one(&mut db)
                    .await?;
            if let Some(first) = first {
                break first;
            }
            anyhow::ensure!(Instant::now() < deadline, "no fire within 60 s of the kill");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = (first - killed_at) as f64 / 1000.0;
        eprintln!(
            "kill {}: first fire by the new leader after {took:.2}s",
            round + 1
        );
        times.push(took);
        cluster.start_control_plane(leader).await;
    }
    let times = sorted(times);
    Ok(vec![Row {
        name: format!(
            "leader failover, kill -9 of the leader → first fire by the new one ({kills} kills, lease TTL {} s)",
            cluster.options.lease_ttl_secs
        ),
        value: format!(
            "p50 {:.1} s, max {:.1} s",
            percentile(&times, 50.0),
            times.last().copied().unwrap_or(f64::NAN)
        ),
        target: "report p50 / max (a new leader within 15 s)".into(),
    }])
}

/// `VmRSS` of an idle worker a few seconds after it announced itself.
pub async fn worker_memory() -> anyhow::Result<Vec<Row>> {
    let cluster = start(ClusterOptions {
        control_planes: 1,
        workers: 1,
        ..ClusterOptions::default()
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = cluster.workers[0].pid().context("worker pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .context("VmRSS")?;
    Ok(vec![Row {
        name: "idle resident memory of `autopilot worker` (connected to NATS, concurrency 4)"
            .into(),
        value: format!("{:.1} MB", kb / 1024.0),
        target: "≤ 20 MB".into(),
    }])
}
