//! Webhooks' concurrency keys, and a webhook job's prompt values.

use autopilot_tests::fake_anthropic::Reply;
use serde_json::json;

use super::*;

#[tokio::test]
async fn a_newer_delivery_of_the_same_key_cancels_the_older_run() {
    let server = TestServer::builder().start().await;
    server
        .create_job(json!({ "name": "review", "command": "sleep 30", "overlap_policy": "allow" }))
        .await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/webhooks",
            Some(json!({
                "name": "static", "job": "review", "signature": { "scheme": "none" },
                "concurrency": { "key": "every delivery" },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("concurrency.key"), "{body}");
    let hook = server
        .create_webhook(json!({
            "name": "pull requests", "job": "review", "signature": { "scheme": "none" },
            "concurrency": { "key": "{{payload.repo}}#{{payload.pr}}", "newest_wins": true },
        }))
        .await;
    assert_eq!(hook["concurrency"]["newest_wins"], true);
    let url = hook["url"].as_str().unwrap();
    let older = server
        .deliver_json(url, &json!({ "repo": "a/b", "pr": 1 }))
        .await;
    run_status(&server, &older, "running").await;
    let other = server
        .deliver_json(url, &json!({ "repo": "a/b", "pr": 2 }))
        .await;
    let newer = server
        .deliver_json(url, &json!({ "repo": "a/b", "pr": 1 }))
        .await;
    let cancelled = run_status(&server, &older, "cancelled").await;
    let events = server.events(&older).await;
    assert!(
        events
            .iter()
            .any(|event| event["data"]["superseded_by"] == newer.as_str()),
        "{events:#?}"
    );
    assert!(cancelled["finished_at"].is_string());
    // Another key, and the newest, run on.
    run_status(&server, &newer, "running").await;
    run_status(&server, &other, "running").await;
    kill(&server, &newer).await;
    kill(&server, &other).await;
}

#[tokio::test]
async fn runs_of_one_key_wait_for_the_limit() {
    let server = TestServer::builder().start().await;
    server
        .create_job(json!({ "name": "deploy", "command": "sleep 30", "overlap_policy": "allow" }))
        .await;
    let hook = server
        .create_webhook(json!({
            "name": "deploys", "job": "deploy", "signature": { "scheme": "none" },
            "concurrency": { "key": "{{payload.env}}", "limit": 1 },
        }))
        .await;
    let url = hook["url"].as_str().unwrap();
    let first = server.deliver_json(url, &json!({ "env": "prod" })).await;
    run_status(&server, &first, "running").await;
    let second = server.deliver_json(url, &json!({ "env": "prod" })).await;
    let staging = server.deliver_json(url, &json!({ "env": "staging" })).await;
    run_status(&server, &staging, "running").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        server.run(&second).await["status"],
        "queued",
        "prod is at its limit"
    );
    kill(&server, &first).await;
    run_status(&server, &second, "running").await;
    kill(&server, &second).await;
    kill(&server, &staging).await;
}

#[tokio::test]
async fn a_webhook_job_prompt_uses_the_run_values_and_not_the_payload_as_a_template() {
    let Some((server, fake)) = crate::claude::start().await else {
        return;
    };
    fake.set_default(Reply::text("triaged"));
    server
        .create_job(json!({ "name": "triager", "prompt": "Triage for {{ job.name }} ({{ trigger }}, run {{ run.id }})." }))
        .await;
    let hook = server
        .create_webhook(
            json!({ "name": "issues", "job": "triager", "signature": { "scheme": "none" } }),
        )
        .await;
    // A payload that looks like a template stays data.
    let run_id = server
        .deliver_json(
            hook["url"].as_str().unwrap(),
            &json!({ "title": "{{ job.name }} is broken" }),
        )
        .await;
    let run = server
        .wait_until_finished(&run_id, Duration::from_secs(60))
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let prompt = run["settings"]["prompt"].as_str().unwrap();
    assert!(
        prompt.contains(&format!("Triage for triager (webhook, run {run_id}).")),
        "{prompt}"
    );
    assert!(prompt.contains("{{ job.name }} is broken"), "{prompt}");
}
