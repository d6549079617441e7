//! Triggers beside cron: fire lateness of many interval jobs, and a chain's hop (the parent's
//! end to the child's run being created), both on the embedded default.

use std::time::Duration;

use autopilot_tests::harness::TestServer;
use serde_json::json;

use crate::{fires_in_window, p50_p99_max, percentile, sorted, Row};

/// `jobs` shell jobs (`true`) firing every `every_secs`, their beats spread evenly over the
/// interval, measured for `seconds` once all exist.
pub async fn intervals(jobs: usize, every_secs: u64, seconds: u64) -> anyhow::Result<Vec<Row>> {
    let server = TestServer::builder().sqlite().concurrency(16).start().await;
    let base = chrono::Utc::now();
    let spread_ms = (every_secs * 1000) as f64 / jobs as f64;
    eprintln!("creating {jobs} interval jobs, every {every_secs}s…");
    for i in 0..jobs {
        let start = base + chrono::Duration::milliseconds((i as f64 * spread_ms) as i64);
        server
            .create_job(json!({
                "name": format!("every-{i}"), "command": "true", "every": format!("{every_secs}s"),
                "start": start, "overlap_policy": "allow",
            }))
            .await;
    }
    eprintln!("measuring {seconds}s…");
    let window_start = chrono::Utc::now().timestamp_millis() + 1000;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let window_end = chrono::Utc::now().timestamp_millis();
    let rows = fires_in_window(&server, window_start, window_end).await?;
    let lateness = sorted(
        rows.iter()
            .map(|(due, created, _, _)| (created - due) as f64)
            .collect(),
    );
    server.stop().await?;
    Ok(vec![Row {
        name: format!(
            "interval fire lateness, {jobs} jobs every {every_secs}s, beats spread, {seconds}s ({} fires, each run executed)",
            rows.len()
        ),
        value: p50_p99_max(&lateness),
        target: "p99 ≤ 20 ms".into(),
    }])
}

/// `hops` times: a parent shell job run by hand, and the child that follows it; the time from
/// the parent's end (as stored) to the child's run being created.
pub async fn chain_hop(hops: usize) -> anyhow::Result<Vec<Row>> {
    let server = TestServer::builder().sqlite().start().await;
    let parent = server
        .create_job(json!({ "name": "parent", "command": "true" }))
        .await;
    let child = server
        .create_job(json!({ "name": "child", "command": "true", "after": { "jobs": ["parent"] } }))
        .await;
    let (parent_id, child_id) = (
        parent["id"].as_str().unwrap().to_owned(),
        child["id"].as_str().unwrap().to_owned(),
    );
    let mut gaps = Vec::with_capacity(hops);
    for hop in 1..=hops {
        let run = server.trigger(&parent_id).await;
        let ended = server
            .wait_until_finished(run["id"].as_str().unwrap(), Duration::from_secs(30))
            .await;
        let children = server
            .wait_for_runs(&child_id, hop, Duration::from_secs(30))
            .await;
        let newest = children
            .iter()
            .max_by_key(|run| run["created_at"].as_str().unwrap_or_default().to_owned())
            .expect("a child run");
        let time = |value: &serde_json::Value, field: &str| {
            value[field]
                .as_str()
                .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .expect("a time")
        };
        let gap = time(newest, "created_at") - time(&ended, "finished_at");
        gaps.push(gap.num_microseconds().unwrap_or_default() as f64 / 1000.0);
        // Let the child end before the next round, so each hop is alone.
        server
            .wait_until_finished(newest["id"].as_str().unwrap(), Duration::from_secs(30))
            .await;
    }
    server.stop().await?;
    let gaps = sorted(gaps);
    Ok(vec![Row {
        name: format!(
            "chain hop, parent's end → child's run created, embedded SQLite ({hops} hops)"
        ),
        value: format!(
            "p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
            percentile(&gaps, 50.0),
            percentile(&gaps, 95.0),
            gaps.last().copied().unwrap_or(f64::NAN)
        ),
        target: "p50 ≤ 20 ms".into(),
    }])
}

/// `changes` times: a new file in a watched directory (debounce `debounce_ms`), and the time from
/// its write to the run's process start (the run's `started_at`) and to its creation.
pub async fn file_change(changes: usize, debounce_ms: u64) -> anyhow::Result<Vec<Row>> {
    let server = TestServer::builder().sqlite().start().await;
    let inbox = tempfile::tempdir()?;
    let job = server
        .create_job(json!({
            "name": "watcher", "command": "true",
            "on_file": {
                "paths": [format!("{}/*.txt", inbox.path().display())],
                "events": ["create"], "debounce_ms": debounce_ms,
            },
        }))
        .await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut to_start, mut to_created) = (Vec::new(), Vec::new());
    for change in 1..=changes {
        let written = chrono::Utc::now();
        std::fs::write(inbox.path().join(format!("{change}.txt")), "x")?;
        let runs = server
            .wait_for_runs(&job_id, change, Duration::from_secs(30))
            .await;
        let newest = runs
            .iter()
            .max_by_key(|run| run["created_at"].as_str().unwrap_or_default().to_owned())
            .expect("a run");
        let newest = server
            .wait_for_run(
                newest["id"].as_str().unwrap(),
                Duration::from_secs(30),
                |run| run["started_at"].is_string(),
            )
            .await;
        let time = |field: &str| {
            newest[field]
                .as_str()
                .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .expect("a time")
        };
        let ms = |to: chrono::DateTime<chrono::Utc>| {
            (to - written).num_microseconds().unwrap_or_default() as f64 / 1000.0
        };
        to_start.push(ms(time("started_at")));
        to_created.push(ms(time("created_at")));
        server
            .wait_until_finished(newest["id"].as_str().unwrap(), Duration::from_secs(30))
            .await;
    }
    server.stop().await?;
    let (to_start, to_created) = (sorted(to_start), sorted(to_created));
    let figure = |values: &[f64]| {
        format!(
            "p50 {:.0} ms, p95 {:.0} ms (p50 {:.0} ms past the debounce)",
            percentile(values, 50.0),
            percentile(values, 95.0),
            percentile(values, 50.0) - debounce_ms as f64
        )
    };
    Ok(vec![
        Row {
            name: format!("file change → run created, embedded, debounce {debounce_ms} ms ({changes} new files)"),
            value: figure(&to_created),
            target: String::new(),
        },
        Row {
            name: format!("file change → run's process started, embedded, debounce {debounce_ms} ms ({changes} new files)"),
            value: figure(&to_start),
            target: "p50 ≤ 50 ms plus the debounce".into(),
        },
    ])
}
