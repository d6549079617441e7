//! The dashboard's figures:
//!
//! - `dashboard-render [EVENTS]`: the server's answer to a run's page with 5,000 events (a mix
//!   of markdown text, tool calls with their results, usage lines), from the request to the
//!   last byte, on SQLite and on PostgreSQL; alone, and while runs write events;
//! - `dashboard-live [EVENTS]`: from the worker reading an output line to the entry being in
//!   the open page's DOM, measured in Chromium (tests/browser/dashboard.py `bench-live`);
//! - `dashboard-overview [JOBS RUNS]`: the overview with 10,000 jobs and 1,000,000 runs in
//!   PostgreSQL, and the plans of its queries.

use std::time::{Duration, Instant};

use autopilot_control_plane::domain::RunFilter;
use autopilot_proto::{EventKind, EventOrigin, NewRunEvent, RunId, RunStatus};
use autopilot_tests::components;
use autopilot_tests::dashboard::DashboardClient;
use autopilot_tests::harness::{TestServer, OPERATOR_PASSWORD};
use chrono::Utc;
use serde_json::{json, Value};
use sqlx::Connection;

use super::{percentile, sorted, spawn_serve, Row};

/// Page loads measured per row.
const LOADS: usize = 30;

/// Markdown of the kind a model writes: a heading, a list, code, a link, a table.
fn assistant_text(i: usize) -> String {
    format!(
        "## Step {i}\n\nI looked at the **sprint board** and found:\n\n- ticket `ABC-{i}` is blocked\n\
         - the [release notes](https://example.com/notes/{i}) need a review\n\n```rust\nfn main() {{ println!(\"{i}\"); }}\n```\n\n\
         | owner | open |\n| --- | --- |\n| ana | {i} |\n"
    )
}

/// `count` events of a run, in the proportions of a real transcript.
fn events(run_id: RunId, count: usize) -> Vec<NewRunEvent> {
    let now = Utc::now();
    (0..count)
        .map(|i| {
            let (kind, data) = match i % 10 {
                0..=2 => (EventKind::AssistantText, json!({ "message_id": format!("m{i}"), "text": assistant_text(i) })),
                3 | 4 => (EventKind::ToolUse, json!({ "id": format!("t{i}"), "name": "Bash", "input": { "command": format!("grep -rn TODO src/ | head -{i}") } })),
                5 | 6 => (EventKind::ToolResult, json!({ "tool_use_id": format!("t{}", i - 2), "content": "src/lib.rs:12: // TODO tidy\n".repeat(40 + i % 200), "is_error": i % 50 == 5 })),
                7 => (EventKind::Thinking, json!({ "message_id": format!("m{i}"), "text": "Let me think about which ticket matters most. ".repeat(10) })),
                8 => (EventKind::Usage, json!({ "message_id": format!("m{i}"), "model": "claude-sonnet-4-5", "usage": { "input_tokens": 1200 + i, "output_tokens": 80, "cache_read_tokens": 900, "cache_write_tokens": 0 } })),
                _ => (EventKind::Output, json!({ "text": format!("line {i} of plain output") })),
            };
            NewRunEvent {
                run_id,
                attempt: 1,
                origin: EventOrigin::Worker,
                origin_seq: i as u64 + 1,
                at: now,
                kind,
                data,
            }
        })
        .collect()
}

async fn load_times(browser: &DashboardClient, path: &str, loads: usize) -> (Vec<f64>, usize) {
    let mut times = Vec::with_capacity(loads);
    let mut bytes = 0;
    for _ in 0..loads {
        let started = Instant::now();
        // As a browser asks for it: compressed.
        let page = browser.get_with(path, &[("accept-encoding", "gzip")]).await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(page.status, reqwest::StatusCode::OK, "{path}");
        bytes = page.bytes;
    }
    (sorted(times), bytes)
}

fn summary(times: &[f64]) -> String {
    format!(
        "p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        percentile(times, 50.0),
        percentile(times, 95.0),
        percentile(times, 100.0)
    )
}

pub async fn render(event_count: usize) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let postgres = components::postgres_admin_url().is_some();
    for store in ["sqlite", "postgres"] {
        if store == "postgres" && !postgres {
            eprintln!("skipping PostgreSQL: set TEST_DATABASE_URL");
            continue;
        }
        let builder = TestServer::builder().concurrency(4);
        let server = if store == "sqlite" {
            builder.sqlite()
        } else {
            builder.postgres()
        }
        .start()
        .await;
        let run = server
            .quick_run(json!({ "prompt": "the benchmark's run", "pool": "nobody-serves-this" }))
            .await;
        let run_id: RunId = run["id"].as_str().unwrap().parse()?;
        let store_handle = autopilot_control_plane::store::connect(&server.database_url).await?;
        for chunk in events(run_id, event_count).chunks(500) {
            store_handle.append_events(chunk).await?;
        }
        let browser = DashboardClient::signed_in(&server.base_url).await;
        let path = format!("/runs/{run_id}");
        let compressed = browser
            .get_with(&path, &[("accept-encoding", "gzip")])
            .await;
        anyhow::ensure!(
            compressed
                .headers
                .get("content-encoding")
                .is_some_and(|v| v == "gzip"),
            "the page was not compressed"
        );
        let compressed_kb = compressed.bytes / 1024;
        load_times(&browser, &path, 3).await; // warm the caches
        let (alone, _) = load_times(&browser, &path, LOADS).await;
        let bytes = browser.get(&path).await.bytes;
        rows.push(Row {
            name: format!(
                "run page with {event_count} events, {store}, nothing else going on ({} KB of HTML, {compressed_kb} KB gzipped)",
                bytes / 1024
            ),
            value: summary(&alone),
            target: "< 100 ms".into(),
        });
        if store == "sqlite" {
            rows.push(browser_load(&server.base_url, &path, event_count).await?);
        }
        // The same while four runs print a line every 10 ms each (events ingested meanwhile).
        let job = server
            .create_job(json!({ "name": "chatty", "command": "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); sleep 0.01; done", "overlap_policy": "allow" }))
            .await;
        let mut busy = Vec::new();
        for _ in 0..4 {
            busy.push(server.trigger(job["id"].as_str().unwrap()).await);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (loaded, _) = load_times(&browser, &path, LOADS).await;
        let still_running = store_handle
            .list_runs(&RunFilter {
                statuses: vec![RunStatus::Running],
                limit: 10,
                ..Default::default()
            })
            .await?
            .len();
        rows.push(Row {
            name: format!("… {store}, while 4 runs write 100 events a second each ({still_running} still running at the end)"),
            value: summary(&loaded),
            target: "< 100 ms".into(),
        });
        for run in busy {
            let _ = server
                .api
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/runs/{}/kill", run["id"].as_str().unwrap()),
                    None,
                )
                .await;
        }
        server.stop().await?;
    }
    Ok(rows)
}

pub async fn live(lines: usize) -> anyhow::Result<Vec<Row>> {
    let serve = spawn_serve(&[("AUTOPILOT_OPERATOR_PASSWORD", OPERATOR_PASSWORD)]).await?;
    let api = autopilot_tests::harness::ApiClient::new(serve.base_url.clone());
    // The page opens during the first two seconds; then a line every 50 ms.
    let job = api
        .create_job(json!({
            "name": "ticker",
            "command": format!("sleep 3; i=0; while [ $i -lt {lines} ]; do echo tick $i; i=$((i+1)); sleep 0.05; done"),
        }))
        .await;
    let run = api.trigger(job["id"].as_str().unwrap()).await;
    let run_url = format!("{}/runs/{}", serve.base_url, run["id"].as_str().unwrap());
    let output = browser_script(&serve.base_url, &["bench-live", &run_url]).await?;
    let line = output
        .lines()
        .find(|line| line.starts_with("{\"latencies_ms\""))
        .ok_or_else(|| anyhow::anyhow!("no latencies in the browser's output:\n{output}"))?;
    let parsed: Value = serde_json::from_str(line)?;
    let latencies = sorted(
        parsed["latencies_ms"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .collect(),
    );
    anyhow::ensure!(
        latencies.len() >= lines / 2,
        "only {} entries arrived live",
        latencies.len()
    );
    Ok(vec![Row {
        name: format!(
            "a live event from the worker reading the line to the open page's DOM, Chromium ({} events at 20 a second)",
            latencies.len()
        ),
        value: summary(&latencies),
        target: "< 100 ms p95".into(),
    }])
}

/// How long Chromium takes to have the run's page ready (parsed, laid out, its script run).
async fn browser_load(base_url: &str, path: &str, event_count: usize) -> anyhow::Result<Row> {
    let output = browser_script(base_url, &["bench-load", &format!("{base_url}{path}")]).await?;
    let line = output
        .lines()
        .find(|line| line.starts_with("{\"timings\""))
        .ok_or_else(|| anyhow::anyhow!("no timings in the browser's output:\n{output}"))?;
    let parsed: Value = serde_json::from_str(line)?;
    let field = |name: &str| {
        sorted(
            parsed["timings"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|timing| timing[name].as_f64())
                .collect(),
        )
    };
    let (ready, load) = (field("ready_ms"), field("load_ms"));
    Ok(Row {
        name: format!("… the same page in Chromium, from navigation to DOMContentLoaded / load ({event_count} events, 5 loads)"),
        value: format!("p50 {:.0} / {:.0} ms", percentile(&ready, 50.0), percentile(&load, 50.0)),
        target: "measured".into(),
    })
}

async fn browser_script(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let python = components::browser_python()
        .ok_or_else(|| anyhow::anyhow!("install the browser tests' Python (bash tests/run.sh)"))?;
    let chromium = components::chromium().ok_or_else(|| anyhow::anyhow!("install chromium"))?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args(args)
        .env("AUTOPILOT_URL", url)
        .env("AUTOPILOT_OPERATOR_PASSWORD", OPERATOR_PASSWORD)
        .env("AUTOPILOT_TEST_CHROMIUM", chromium)
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(output.status.success(), "the browser failed:\n{text}");
    Ok(text)
}

/// Fills a PostgreSQL database, through SQL, with `jobs` jobs like one made through the API and
/// `runs` runs over the last year like one made through the API (ids time-ordered like
/// UUIDv7, 3 % failed, a few running).
async fn seed(database_url: &str, jobs: usize, runs: usize) -> anyhow::Result<()> {
    let mut db = sqlx::PgConnection::connect(database_url).await?;
    let (template_job,): (String,) = sqlx::query_as("SELECT id FROM jobs LIMIT 1")
        .fetch_one(&mut db)
        .await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO jobs (id, name, description, kind, prompt, schedule_kind, schedule_expr, timezone, enabled, model, \
         allowed_tools, disallowed_tools, max_turns, timeout_secs, max_cost_usd, misfire_policy, misfire_cap, overlap_policy, \
         retry_count, retry_backoff_secs, pool, fire_cursor_ms, created_at_ms, updated_at_ms, retry_lost, sandbox, \
         trace_content, tool_grants, tool_bundles, image) \
         SELECT gen_random_uuid()::text, 'job-' || lpad(n::text, 6, '0'), description, kind, prompt, schedule_kind, \
         (n % 60) || ' ' || (n % 24) || ' * * *', timezone, enabled, model, allowed_tools, disallowed_tools, max_turns, \
         timeout_secs, max_cost_usd, misfire_policy, misfire_cap, overlap_policy, retry_count, retry_backoff_secs, pool, \
         fire_cursor_ms, created_at_ms, updated_at_ms, retry_lost, sandbox, trace_content, tool_grants, tool_bundles, image \
         FROM jobs, generate_series(1, $2) AS n WHERE id = $1",
    )
    .bind(&template_job)
    .bind(jobs as i64 - 1)
    .execute(&mut db)
    .await?;
    eprintln!("{jobs} jobs in {:.1} s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let now_ms = Utc::now().timestamp_millis();
    // A UUIDv7-shaped id from the creation time and the row number, so ids sort by time.
    sqlx::query(
        "WITH times AS (SELECT n, $3::bigint - (($2::bigint - n) * 31536000000 / $2::bigint) AS at_ms FROM generate_series(1, $2) AS n), \
         numbered AS (SELECT n, at_ms, lpad(to_hex(at_ms), 12, '0') || '7' || lpad(to_hex(n % 4096), 3, '0') || '8' \
           || lpad(to_hex(n), 15, '0') AS h FROM times), \
         job_ids AS (SELECT id, name, row_number() OVER (ORDER BY id) AS k FROM jobs) \
         INSERT INTO runs (id, job_id, job_name, trigger, status, attempt, settings, created_at_ms, dispatched_at_ms, started_at_ms, \
           finished_at_ms, is_error, error, input_tokens, output_tokens, cache_read_tokens, cost_usd, num_turns, models, event_seq) \
         SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-' || substr(h, 13, 4) || '-' || substr(h, 17, 4) || '-' || substr(h, 21, 12), \
           j.id, j.name, 'schedule', \
           CASE WHEN n > $2 - 3 THEN 'running' WHEN n % 33 = 0 THEN 'failed' WHEN n % 101 = 0 THEN 'lost' ELSE 'succeeded' END, \
           1, r.settings, at_ms, at_ms, at_ms + 100, CASE WHEN n > $2 - 3 THEN NULL ELSE at_ms + 60000 END, \
           n % 33 = 0, CASE WHEN n % 33 = 0 THEN 'the model API answered 529 overloaded' END, \
           2000 + n % 5000, 300 + n % 900, 1000 + n % 3000, (n % 997) / 1000.0, 3, '[\"claude-sonnet-4-5\"]', 12 \
         FROM numbered JOIN job_ids j ON j.k = 1 + (numbered.n % $4), (SELECT settings FROM runs LIMIT 1) AS r",
    )
    .bind(now_ms)
    .bind(runs as i64)
    .bind(now_ms)
    .bind(jobs as i64)
    .execute(&mut db)
    .await?;
    eprintln!("{runs} runs in {:.1} s", started.elapsed().as_secs_f64());
    // What autovacuum does on a live store, so index-only scans can skip the table.
    sqlx::query("VACUUM ANALYZE").execute(&mut db).await?;
    Ok(())
}

/// The plans PostgreSQL chose for the overview's queries on the seeded database.
async fn plans(database_url: &str) -> anyhow::Result<String> {
    let mut db = sqlx::PgConnection::connect(database_url).await?;
    let month_ms = Utc::now().timestamp_millis() - 30 * 86_400_000;
    let queries = [
        ("runs now", "SELECT id FROM runs WHERE status IN ('queued', 'running', 'cancelling') ORDER BY id DESC LIMIT 10".to_owned()),
        ("recent failures", "SELECT id FROM runs WHERE status IN ('failed', 'timed_out', 'lost') ORDER BY id DESC LIMIT 10".to_owned()),
        ("spend this month", format!("SELECT SUM(cost_usd) FROM runs WHERE created_at_ms >= {month_ms}")),
        ("queue by pool", "SELECT settings::jsonb ->> 'pool', COUNT(*), MIN(created_at_ms) FROM runs WHERE status = 'queued' GROUP BY 1".to_owned()),
    ];
    let mut out = String::new();
    for (what, sql) in queries {
        let plan: Vec<(String,)> = sqlx::query_as(&format!("EXPLAIN (ANALYZE, COSTS OFF) {sql}"))
            .fetch_all(&mut db)
            .await?;
        out.push_str(&format!("-- {what}\n"));
        for (line,) in plan {
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

pub async fn overview(jobs: usize, runs: usize) -> anyhow::Result<Vec<Row>> {
    let Some(database_url) = components::fresh_postgres_database().await else {
        anyhow::bail!("the overview benchmark needs PostgreSQL: set TEST_DATABASE_URL");
    };
    let server = TestServer::builder()
        .database_url(database_url.clone())
        .start()
        .await;
    let job = server
        .create_job(json!({ "name": "template", "prompt": "Summarise the sprint.", "schedule": "0 3 * * *", "pool": "nobody-serves-this" }))
        .await;
    server.trigger(job["id"].as_str().unwrap()).await;
    seed(&database_url, jobs, runs).await?;
    let browser = DashboardClient::signed_in(&server.base_url).await;
    load_times(&browser, "/", 3).await;
    let (times, _) = load_times(&browser, "/", LOADS).await;
    let bytes = browser.get("/").await.bytes;
    // After a job changed, the next fires of every job are computed again: one change before
    // each load.
    let mut cold = Vec::with_capacity(10);
    let template = job["id"].as_str().unwrap();
    for i in 0..10 {
        server
            .patch_job(template, json!({ "description": format!("change {i}") }))
            .await;
        let started = Instant::now();
        let page = browser.get_with("/", &[("accept-encoding", "gzip")]).await;
        cold.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(page.status == reqwest::StatusCode::OK);
    }
    let cold = sorted(cold);
    // The worst case: every job a schedule and a cursor of its own (nothing shared).
    let mut db = sqlx::PgConnection::connect(&database_url).await?;
    sqlx::query("UPDATE jobs SET schedule_expr = (abs(hashtext(id)) % 60) || ' ' || (abs(hashtext(id)) % 24) || ' ' || (1 + abs(hashtext(id)) % 28) || ' * *', fire_cursor_ms = fire_cursor_ms - (abs(hashtext(id)) % 100000)")
        .execute(&mut db)
        .await?;
    let mut distinct = Vec::with_capacity(10);
    for i in 0..10 {
        server
            .patch_job(template, json!({ "description": format!("again {i}") }))
            .await;
        let started = Instant::now();
        let page = browser.get_with("/", &[("accept-encoding", "gzip")]).await;
        distinct.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(page.status == reqwest::StatusCode::OK);
    }
    let distinct = sorted(distinct);
    println!(
        "\nPlans of the overview's queries ({jobs} jobs, {runs} runs):\n\n{}",
        plans(&database_url).await?
    );
    let (runs_page, _) = load_times(&browser, "/runs", 10).await;
    let runs_bytes = browser.get("/runs").await.bytes;
    let (jobs_page, _) = load_times(&browser, "/jobs", 10).await;
    let jobs_bytes = browser.get("/jobs").await.bytes;
    server.stop().await?;
    Ok(vec![
        Row {
            name: format!(
                "overview page, PostgreSQL, {jobs} jobs and {runs} runs ({} KB of HTML), next fires kept from the load before",
                bytes / 1024
            ),
            value: summary(&times),
            target: "< 200 ms".into(),
        },
        Row {
            name: "… the first load after a job changed (every job's next fire computed again; also every 15 s); 1,440 schedules".into(),
            value: summary(&cold),
            target: "< 200 ms".into(),
        },
        Row {
            name: "… the same when no two jobs share a schedule and a cursor (nothing to compute once for many)".into(),
            value: summary(&distinct),
            target: "< 200 ms".into(),
        },
        Row {
            name: format!("… the runs list on the same store, newest 50 with counts by status ({} KB)", runs_bytes / 1024),
            value: summary(&runs_page),
            target: "measured".into(),
        },
        Row {
            name: format!("… the jobs list, first 100 of {jobs} with their last 20 runs each ({} KB)", jobs_bytes / 1024),
            value: summary(&jobs_page),
            target: "measured".into(),
        },
    ])
}
