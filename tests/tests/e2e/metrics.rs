//! `/metrics`: what a workload of scheduled, manual, quick and webhook runs leaves in the
//! Prometheus text a control plane serves, read back by labels.

use std::time::Duration;

use autopilot_tests::fake_anthropic::{expected_cost_usd, Reply, Usage};
use autopilot_tests::harness::TestServer;
use serde_json::json;

const MODEL: &str = "claude-opus-5-5";
const WAIT: Duration = Duration::from_secs(60);

/// The samples of `name` whose labels include all of `labels`, summed (`None`: no such sample).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(key, val)| label_text.contains(&format!("{key}=\"{val}\"")))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[tokio::test]
async fn a_workload_is_counted_by_job_trigger_status_model_and_outcome() {
    let Some((server, fake)) = crate::claude::start().await else {
        return;
    };

    // Manual runs of shell jobs, one that succeeds and one that fails.
    for (name, command, status) in [("ok", "true", "succeeded"), ("bad", "false", "failed")] {
        let job = server
            .create_job(json!({ "name": name, "command": command }))
            .await;
        let run = server.trigger(job["id"].as_str().unwrap()).await;
        let ended = server
            .wait_until_finished(run["id"].as_str().unwrap(), WAIT)
            .await;
        assert_eq!(ended["status"], status, "{ended}");
    }
    // A quick Claude run, with known usage.
    let usage = Usage::new(900, 21);
    fake.push(Reply::text("Hello.").usage(usage));
    let quick = server.quick_run(json!({ "prompt": "say hello" })).await;
    let quick = server
        .wait_until_finished(quick["id"].as_str().unwrap(), WAIT)
        .await;
    assert_eq!(quick["status"], "succeeded", "{quick}");
    // A scheduled job fires at least once.
    let ticking = server
        .create_job(json!({ "name": "tick", "command": "true", "schedule": "* * * * * *" }))
        .await;
    server
        .wait_for_runs(ticking["id"].as_str().unwrap(), 1, WAIT)
        .await;
    // Webhook deliveries: accepted, a duplicate, a refused signature, an unknown URL, too big.
    let tick_id = ticking["id"].as_str().unwrap();
    let hook = server
        .create_webhook(json!({
            "name": "hook",
            "job": tick_id,
            "signature": { "scheme": "hmac_sha256", "secret": "a-shared-secret" },
            "max_body_bytes": 64,
        }))
        .await;
    let url = hook["url"].as_str().unwrap();
    let body = b"{\"n\":1}";
    let signature = {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"a-shared-secret").unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    };
    let signed = [
        ("content-type", "application/json"),
        ("x-signature-256", signature.as_str()),
        ("idempotency-key", "delivery-1"),
    ];
    for expected in [202, 200] {
        let (status, _, answer) = server.deliver(url, &signed, body.to_vec()).await;
        assert_eq!(status.as_u16(), expected, "{answer}");
    }
    let unsigned = [("content-type", "application/json")];
    let (status, _, _) = server.deliver(url, &unsigned, body.to_vec()).await;
    assert_eq!(status.as_u16(), 401);
    let unknown = format!("{}/hooks/wh_nothing-here", server.base_url);
    let (status, _, _) = server.deliver(&unknown, &unsigned, body.to_vec()).await;
    assert_eq!(status.as_u16(), 404);
    let (status, _, _) = server.deliver(url, &unsigned, vec![b' '; 1000]).await;
    assert_eq!(status.as_u16(), 413);

    // No token needed, like the health checks.
    let response = reqwest::get(format!("{}/metrics", server.base_url))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);

    assert_eq!(
        value("autopilot_runs_created_total", &[("trigger", "manual")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value("autopilot_runs_created_total", &[("trigger", "quick")]),
        Some(1.0)
    );
    assert!(value("autopilot_runs_created_total", &[("trigger", "schedule")]) >= Some(1.0));
    assert!(value("autopilot_runs_created_total", &[("trigger", "webhook")]) >= Some(1.0));
    for (job, status) in [("ok", "succeeded"), ("bad", "failed")] {
        let labels = [("job", job), ("trigger", "manual"), ("status", status)];
        assert_eq!(
            value("autopilot_runs_finished_total", &labels),
            Some(1.0),
            "{job}: {text}"
        );
    }
    let quick_labels = [("job", ""), ("trigger", "quick"), ("status", "succeeded")];
    assert_eq!(
        value("autopilot_runs_finished_total", &quick_labels),
        Some(1.0)
    );
    let tokens = |kind| {
        value(
            "autopilot_tokens_total",
            &[("job", ""), ("model", MODEL), ("kind", kind)],
        )
    };
    assert_eq!(tokens("input"), Some(900.0), "{text}");
    assert_eq!(tokens("output"), Some(21.0));
    let cost = value("autopilot_cost_usd_total", &[("job", ""), ("model", MODEL)])
        .expect("the quick run's cost");
    let expected = expected_cost_usd(MODEL, &usage).expect("a priced model");
    assert!((cost - expected).abs() < 1e-9, "{cost} against {expected}");
    for (webhook, outcome) in [
        ("hook", "accepted"),
        ("hook", "duplicate"),
        ("hook", "401"),
        ("", "404"),
        ("hook", "413"),
    ] {
        let labels = [("webhook", webhook), ("outcome", outcome)];
        assert_eq!(
            value("autopilot_webhook_deliveries_total", &labels),
            Some(1.0),
            "{webhook} {outcome}: {text}"
        );
    }
    assert_eq!(value("autopilot_scheduler_leader", &[]), Some(1.0));
    // The embedded worker's slots: the default concurrency, and no more busy than that.
    assert_eq!(
        value("autopilot_worker_slots", &[("state", "total")]),
        Some(4.0)
    );
    assert!(value("autopilot_worker_slots", &[("state", "busy")]) <= Some(4.0));
    assert!(value("autopilot_fire_lateness_seconds_count", &[]) >= Some(1.0));
    assert!(value("autopilot_dispatch_latency_seconds_count", &[]) >= Some(4.0));
    assert!(
        value(
            "autopilot_run_duration_seconds_count",
            &[("status", "succeeded")]
        ) >= Some(2.0)
    );
    // Nothing that grows with every run: no run id appears.
    assert!(
        !text.contains(quick["id"].as_str().unwrap()),
        "a run id in the labels: {text}"
    );
}

/// The queue by worker pool, read at each scrape: depth and the oldest run's age; a pool that
/// empties reads 0 rather than its last depth.
#[tokio::test]
async fn the_queue_is_shown_by_pool_and_an_emptied_pool_reads_zero() {
    let server = TestServer::builder().start().await;
    let job = server
        .create_job(json!({ "name": "stuck", "command": "true", "pool": "nowhere", "overlap_policy": "allow" }))
        .await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        let run = server.trigger(job["id"].as_str().unwrap()).await;
        runs.push(run["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scrape = || async {
        reqwest::get(format!("{}/metrics", server.base_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let text = scrape().await;
    assert_eq!(
        sample(&text, "autopilot_queue_runs", &[("pool", "nowhere")]),
        Some(2.0),
        "{text}"
    );
    let age = sample(
        &text,
        "autopilot_queue_oldest_age_seconds",
        &[("pool", "nowhere")],
    )
    .expect("the oldest age");
    assert!((0.2..60.0).contains(&age), "{age}");
    for run in &runs {
        let (status, body) = server
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/runs/{run}/kill"),
                None,
            )
            .await;
        assert!(status.is_success(), "{body}");
    }
    let text = scrape().await;
    assert_eq!(
        sample(&text, "autopilot_queue_runs", &[("pool", "nowhere")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "autopilot_runs_finished_total",
            &[("job", "stuck"), ("status", "cancelled")]
        ),
        Some(2.0)
    );
}
