//! `docker-start [RUNS]`: how much a container adds to the start of a run. The same Claude job
//! runs on the local executor and on the Docker executor (the runtime image, `model-only`
//! network, through the model proxy), interleaved, against the fake API; each run is measured
//! from its due time (the trigger) to the CLI's first output line (its `system/init`).

use std::time::Duration;

use anyhow::Context;
use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply};
use autopilot_tests::harness::TestServer;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::{percentile, sorted, Row};

fn at(value: &Value) -> anyhow::Result<DateTime<Utc>> {
    let text = value.as_str().context("a timestamp")?;
    Ok(DateTime::parse_from_rfc3339(text)?.with_timezone(&Utc))
}

/// Milliseconds from the run's creation to its first CLI output line (its `system/init`, which
/// the CLI prints once every granted MCP server is connected).
pub(crate) async fn first_output_ms(server: &TestServer, job_id: &str) -> anyhow::Result<f64> {
    let run = server.trigger(job_id).await;
    let run_id = run["id"].as_str().context("run id")?.to_owned();
    let run = server
        .wait_until_finished(&run_id, Duration::from_secs(60))
        .await;
    anyhow::ensure!(run["status"] == "succeeded", "run failed: {run}");
    let events = server.events(&run_id).await;
    let first = events
        .iter()
        .find(|e| e["kind"] == "system_init")
        .context("no system/init line")?;
    let elapsed = at(&first["at"])? - at(&run["created_at"])?;
    Ok(elapsed.num_microseconds().unwrap_or_default() as f64 / 1000.0)
}

pub async fn start_overhead(runs: usize) -> anyhow::Result<Vec<Row>> {
    let claude = components::claude_bin().context("the Claude Code CLI is needed")?;
    components::docker_executor("bench-probe")
        .await
        .context("a Docker Engine with the runtime image is needed")?;
    let fake = FakeAnthropic::start().await?;
    fake.set_default(Reply::text("hello"));
    // Both on the embedded default (SQLite), so only the executor differs.
    let local = TestServer::builder()
        .sqlite()
        .claude_bin(&claude)
        .model_api(&fake.base_url())
        .start()
        .await;
    let docker = TestServer::builder()
        .sqlite()
        .docker()
        .model_api(&fake.base_url())
        .start()
        .await;
    let mut rows = Vec::new();
    // With the default sandbox (2 CPUs: all this machine has, like the local process), then
    // with a 1-core CPU quota, which slows the CLI's own start.
    for (label, sandbox) in [
        ("default sandbox, 2 CPUs", json!({})),
        ("sandbox cpus 1", json!({ "cpus": 1 })),
    ] {
        let job = json!({ "name": format!("start {label}"), "prompt": "say hello", "overlap_policy": "allow", "sandbox": sandbox });
        let local_job = local.create_job(job.clone()).await["id"]
            .as_str()
            .context("job id")?
            .to_owned();
        let docker_job = docker.create_job(job).await["id"]
            .as_str()
            .context("job id")?
            .to_owned();
        // Warm both (file caches, the CLI's first start, the image's layers).
        first_output_ms(&local, &local_job).await?;
        first_output_ms(&docker, &docker_job).await?;
        let (mut on_local, mut on_docker) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            on_local.push(first_output_ms(&local, &local_job).await?);
            on_docker.push(first_output_ms(&docker, &docker_job).await?);
        }
        rows.push(row(runs, label, sorted(on_local), sorted(on_docker)));
    }
    local.stop().await?;
    docker.stop().await?;
    Ok(rows)
}

fn row(runs: usize, label: &str, on_local: Vec<f64>, on_docker: Vec<f64>) -> Row {
    let p = |values: &[f64], q: f64| percentile(values, q);
    let (local_p50, docker_p50) = (p(&on_local, 50.0), p(&on_docker, 50.0));
    Row {
        name: format!(
            "run start, due time to the CLI's first output line, docker ({label}) vs local ({runs} runs each, fake API)"
        ),
        value: format!(
            "local p50 {local_p50:.0} ms / p99 {:.0} ms; docker p50 {docker_p50:.0} ms / p99 {:.0} ms; \
             added p50 {:.0} ms, ratio {:.2}",
            p(&on_local, 99.0),
            p(&on_docker, 99.0),
            docker_p50 - local_p50,
            docker_p50 / local_p50
        ),
        target: "container adds ≤ 300 ms at p50".into(),
    }
}
