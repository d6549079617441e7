//! `bench fleet-webhooks [SECONDS]`: webhook deliveries accepted through the 3 control planes
//! of a fleet on PostgreSQL, with their runs queued for a pool nobody serves (ingestion alone)
//! and with them executing meanwhile (a shell job `true` on 3 workers × 64 slots), each on a
//! PostgreSQL with `fsync=off` (as the tests run it) and on one as production runs it (`fsync`
//! and `synchronous_commit` on): four figures in one go. Three wrk processes, one
//! per control plane, send GitHub-style signed deliveries with their own delivery ids; every
//! delivery answered `202` must have its run in the database afterwards.

use anyhow::Context;
use autopilot_tests::cluster::{Cluster, ClusterOptions};
use autopilot_tests::postgres::PrivatePostgres;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection;

use super::webhooks::{wrk_script_for, wrk_summary, Runs, WrkSummary, SECRET};
use super::{CpuTimes, Row};

pub async fn fleet_webhooks(seconds: u64) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for runs in [Runs::Queued, Runs::Executing] {
        for durable in [false, true] {
            rows.push(through_the_fleet(seconds, durable, runs).await?);
        }
    }
    Ok(rows)
}

async fn through_the_fleet(seconds: u64, durable: bool, runs: Runs) -> anyhow::Result<Row> {
    let postgres = PrivatePostgres::start_with(durable)
        .context("the fleet benchmark needs PostgreSQL's server binaries (tests/run.sh)")?;
    let database_url = postgres.fresh_database().await;
    let options = ClusterOptions {
        worker_concurrency: 64,
        database_url: Some(database_url.clone()),
        control_plane_env: vec![
            ("AUTOPILOT_MAX_QUEUED_RUNS".into(), "100000000".into()),
            ("AUTOPILOT_LOG".into(), "warn".into()),
        ],
        worker_env: vec![("AUTOPILOT_LOG".into(), "warn".into())],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options)
        .await
        .context("the fleet needs nats-server and the autopilot binary (tests/run.sh)")?;
    let api = cluster.api(0).clone();
    let (status, job) = api
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "bench-fast", "command": "true", "overlap_policy": "allow" })),
        )
        .await;
    anyhow::ensure!(status == StatusCode::CREATED, "creating the job: {job}");
    let mut webhook = json!({
        "name": "bench",
        "job": "bench-fast",
        "signature": { "scheme": "github", "secret": SECRET },
        "rate_limit": { "per_second": 1_000_000, "burst": 1_000_000 },
    });
    if runs == Runs::Queued {
        let settings = webhook.as_object_mut().expect("an object");
        settings.remove("job");
        settings.insert("pool".into(), json!("bench-unserved"));
        settings.insert(
            "prompt_template".into(),
            json!("Triage issue #{{payload.issue.number}}: {{payload.issue.title}}"),
        );
    }
    let (status, webhook) = api
        .call(Method::POST, "/api/v1/webhooks", Some(webhook))
        .await;
    anyhow::ensure!(
        status == StatusCode::CREATED,
        "creating the webhook: {webhook}"
    );
    let url = webhook["url"].as_str().context("the webhook's url")?;
    let path = url
        .strip_prefix(&api.base_url)
        .context("the webhook's url is on the first control plane")?;

    let mut wrks = Vec::new();
    for index in 0..3 {
        let script = cluster.dir().join(format!("deliveries-{index}.lua"));
        std::fs::write(&script, wrk_script_for(&format!("cp{index}-")))?;
        let target = format!("{}{path}", cluster.api(index).base_url);
        wrks.push(
            tokio::process::Command::new("wrk")
                .args(["-t1", "-c16", &format!("-d{seconds}s"), "-s"])
                .arg(&script)
                .arg(target)
                .output(),
        );
    }
    eprintln!(
        "wrk ×3 (one per control plane, 1 thread, 16 connections each), {seconds}s, PostgreSQL fsync={}…",
        if durable { "on" } else { "off" }
    );
    let cpu = CpuTimes::now();
    let outputs = futures::future::try_join_all(wrks)
        .await
        .context("the fleet webhook benchmark needs wrk: apt-get install wrk")?;
    let steal = CpuTimes::steal_since(cpu);
    let mut total = WrkSummary {
        accepted: 0,
        refused: 0,
        seconds: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
    };
    for output in &outputs {
        let summary = wrk_summary(&String::from_utf8_lossy(&output.stdout))?;
        total.accepted += summary.accepted;
        total.refused += summary.refused;
        total.seconds = total.seconds.max(summary.seconds);
        total.p50_ms = total.p50_ms.max(summary.p50_ms);
        total.p99_ms = total.p99_ms.max(summary.p99_ms);
    }
    let per_second = total.accepted as f64 / total.seconds.max(0.001);
    let mut db = sqlx::PgConnection::connect(&database_url).await?;
    let (stored, ended): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE status IN ('succeeded', 'failed')) \
         FROM runs WHERE webhook_id IS NOT NULL",
    )
    .fetch_one(&mut db)
    .await?;
    anyhow::ensure!(
        stored >= total.accepted,
        "only {stored} runs were stored for {} accepted deliveries",
        total.accepted
    );
    let setting = if durable {
        "`fsync` and `synchronous_commit` on, as in production"
    } else {
        "`fsync=off`, as the tests run it"
    };
    Ok(Row {
        name: format!(
            "fleet: webhook deliveries accepted per second through 3 control planes, PostgreSQL \
             with {setting}, {}; wrk ×3, one per control plane, 16 connections each, {seconds}s \
             ({} accepted, {} refused; {stored} runs stored, {ended} ended by the end of the load)",
            match runs {
                Runs::Queued => "runs queued for a pool no worker serves (ingestion alone)",
                Runs::Executing => "runs executing meanwhile (shell `true`, 3 workers × 64 slots)",
            },
            total.accepted,
            total.refused
        ),
        value: format!(
            "**{per_second:.0}/s** (wrk latency p50 up to {:.1} ms, p99 up to {:.1} ms; {steal})",
            total.p50_ms, total.p99_ms
        ),
        target: "≥ 5,000/s".into(),
    })
}
