//! `metrics-scrape`: how long a `/metrics` scrape takes on a control plane with many jobs and
//! webhooks that all ran: every job and webhook name is a label value, so the text grows with
//! them.

use std::time::{Duration, Instant};

use autopilot_tests::harness::TestServer;
use futures::StreamExt;
use serde_json::json;

use super::{percentile, sorted, Row};

/// Requests in flight at once while the installation is filled.
const PARALLEL: usize = 16;

pub async fn scrape(jobs: usize, webhooks: usize) -> anyhow::Result<Vec<Row>> {
    // The embedded default, with a queue: jobs run on a pool nobody serves, so every run waits
    // there and the scrape also reads a long queue from the store.
    let server = TestServer::builder()
        .sqlite()
        .max_queued_runs(jobs as u64 * 4 + 1000)
        .start()
        .await;
    eprintln!("creating and triggering {jobs} jobs, {webhooks} webhooks…");
    let api = &server.api;
    futures::stream::iter(0..jobs)
        .map(|index| async move {
            let job = api
                .create_job(json!({
                    "name": format!("job-{index:05}"),
                    "command": "true",
                    "pool": if index % 2 == 0 { "default" } else { "elsewhere" },
                }))
                .await;
            api.trigger(job["id"].as_str().unwrap()).await;
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<()>>()
        .await;
    futures::stream::iter(0..webhooks)
        .map(|index| async move {
            let hook = api
                .create_webhook(json!({
                    "name": format!("hook-{index:03}"),
                    "prompt_template": "{{payload}}",
                    "pool": "elsewhere",
                }))
                .await;
            api.deliver_json(hook["url"].as_str().unwrap(), &json!({ "n": index }))
                .await;
        })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<()>>()
        .await;
    // Let the runs of the served pool end, so their counters exist.
    let client = reqwest::Client::new();
    let url = format!("{}/metrics", server.base_url);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let active = server.get("/api/v1/runs?status=running&limit=1").await;
        let text = client.get(&url).send().await?.text().await?;
        let default_queued = text
            .lines()
            .find(|line| line.starts_with("autopilot_queue_runs{pool=\"default\"}"))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0);
        let idle = active["runs"].as_array().is_none_or(|runs| runs.is_empty());
        if (default_queued == 0.0 && idle) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut took = Vec::new();
    let mut bytes = 0;
    for _ in 0..50 {
        let start = Instant::now();
        let text = client.get(&url).send().await?.text().await?;
        took.push(start.elapsed().as_secs_f64() * 1000.0);
        bytes = text.len();
    }
    let took = sorted(took);
    if let Ok(path) = std::env::var("BENCH_METRICS_TEXT") {
        std::fs::write(path, client.get(&url).send().await?.text().await?)?;
    }
    server.stop().await?;
    Ok(vec![Row {
        name: format!(
            "`/metrics` scrape, {jobs} jobs and {webhooks} webhooks that all ran, half the runs \
             still queued (50 scrapes, {} KiB each)",
            bytes / 1024
        ),
        value: format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&took, 50.0),
            percentile(&took, 99.0),
            took.last().copied().unwrap_or(f64::NAN)
        ),
        target: "< 50 ms".into(),
    }])
}
