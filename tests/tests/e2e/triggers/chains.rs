//! Chains: jobs that run after others end.

use autopilot_tests::fake_anthropic::Reply;
use serde_json::json;

use super::*;

#[tokio::test]
async fn a_chain_of_jobs_follows_success_and_failure_with_the_parent_result() {
    let Some((server, fake)) = crate::claude::start().await else {
        return;
    };
    fake.push(Reply::text("collected 3 items"));
    fake.set_default(Reply::text("noted"));
    let collect = server
        .create_job(json!({ "name": "collect", "prompt": "Collect the items." }))
        .await;
    // Two jobs follow `collect` by name: one fails, one reads its result.
    let analyse = server
        .create_job(json!({
            "name": "analyse", "command": "echo analysing; exit 3",
            "after": { "jobs": ["collect"] },
        }))
        .await;
    let summarise = server
        .create_job(json!({
            "name": "summarise",
            "prompt": "Summarise what {{ parent.job }} found: {{ parent.result }} (job {{ job.name }}, trigger {{ trigger }}, {{ date }})",
            "after": { "jobs": [id(&collect)], "on": "success" },
        }))
        .await;
    assert_eq!(summarise["chain"]["after"][0], id(&collect));
    let on_failure = server
        .create_job(json!({
            "name": "alert",
            "prompt": "{{ parent.job }} ended {{ parent.status }} in run {{ parent.run_id }}.",
            "after": { "jobs": ["analyse"], "on": "failure" },
        }))
        .await;
    let on_success = server
        .create_job(json!({
            "name": "publish", "command": "true",
            "after": { "jobs": ["analyse"], "on": "success" },
        }))
        .await;

    // A loop is refused when saved, and named.
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/jobs/{}", id(&collect)),
            Some(json!({ "after": { "jobs": ["alert"], "on": "any" } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body.to_string();
    assert!(
        message.contains("loop") && message.contains("collect ← alert ← analyse ← collect"),
        "{message}"
    );
    // A parent that does not exist is named too.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "orphan", "command": "true", "after": { "jobs": ["nope"] } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("after.jobs.0"), "{body}");

    let parent = server.trigger(id(&collect)).await;
    let alert_runs = finished_runs(&server, &on_failure, 1).await;
    let summary_runs = finished_runs(&server, &summarise, 1).await;
    let analyse_run = &finished_runs(&server, &analyse, 1).await[0];
    assert_eq!(analyse_run["status"], "failed", "{analyse_run:#}");
    assert_eq!(analyse_run["trigger"], "chain");

    // The summary saw the parent's result, as data, and its own values.
    let summary = &summary_runs[0];
    assert_eq!(summary["status"], "succeeded", "{summary:#}");
    assert_eq!(summary["trigger"], "chain");
    let prompt = summary.to_string();
    let today = Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        prompt
            .contains(r#"<webhook-data source=\"parent.result\">collected 3 items</webhook-data>"#),
        "{prompt}"
    );
    assert!(
        prompt.contains("Summarise what collect found")
            && prompt.contains("job summarise, trigger chain")
            && prompt.contains(&today),
        "{prompt}"
    );
    // The real CLI sent it to the model.
    let sent = serde_json::to_string(
        &fake
            .requests()
            .iter()
            .map(|request| request.body.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(sent.contains("Summarise what collect found"), "{sent}");

    // The failure branch ran, knowing which run failed; the success branch did not.
    let alert = &alert_runs[0];
    assert_eq!(alert["status"], "succeeded", "{alert:#}");
    let alert_text = alert.to_string();
    assert!(
        alert_text.contains("ended failed in run") && alert_text.contains(id(analyse_run)),
        "{alert_text}"
    );
    let events = server.events(id(alert)).await;
    assert_eq!(
        events[0]["data"]["parent_run_id"],
        id(analyse_run),
        "{:#}",
        events[0]
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(server.runs_of(id(&on_success)).await.is_empty());
    // Each end started each follower once.
    for job in [&analyse, &summarise, &on_failure] {
        assert_eq!(server.runs_of(id(job)).await.len(), 1, "{}", job["name"]);
    }
    assert_eq!(server.runs_of(id(&collect)).await[0]["id"], parent["id"]);
}

#[tokio::test]
async fn require_all_waits_for_every_parent_in_each_round() {
    let server = TestServer::builder().start().await;
    let first = server
        .create_job(json!({ "name": "first", "command": "true" }))
        .await;
    let second = server
        .create_job(json!({ "name": "second", "command": "true" }))
        .await;
    let joined = server
        .create_job(json!({
            "name": "joined", "command": "true",
            "after": { "jobs": ["first", "second"], "require_all": true },
        }))
        .await;
    server.trigger(id(&first)).await;
    finished_runs(&server, &first, 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        server.runs_of(id(&joined)).await.is_empty(),
        "one parent is not all"
    );
    server.trigger(id(&second)).await;
    finished_runs(&server, &joined, 1).await;
    // A new round: `first` alone again is not enough.
    server.trigger(id(&first)).await;
    finished_runs(&server, &first, 2).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(server.runs_of(id(&joined)).await.len(), 1);
    server.trigger(id(&second)).await;
    finished_runs(&server, &joined, 2).await;
}
