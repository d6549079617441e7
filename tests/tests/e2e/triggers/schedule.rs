//! Intervals, conditions, budgets and usage limits: when fires run, and what holds them back.

use autopilot_tests::fake_anthropic::Reply;
use chrono::Timelike;
use serde_json::json;

use super::*;

#[tokio::test]
async fn an_interval_job_keeps_its_beat_from_its_start_across_a_restart() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let server = TestServer::builder()
        .data_dir(data_dir.clone())
        .start()
        .await;
    // A beat off the whole second (.250), so fires that followed process start or the cursor
    // instead of the anchor would show.
    let now = Utc::now();
    let start = now.with_nanosecond(250_000_000).unwrap() + chrono::Duration::seconds(1);
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "bad beat", "command": "true", "every": "10x" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("`x` is not a unit"), "{body}");
    let job = server
        .create_job(json!({
            "name": "beat", "command": "true", "every": "1s", "start": start,
            "overlap_policy": "allow", "misfire_policy": "run_all", "misfire_cap": 100,
        }))
        .await;
    assert_eq!(job["every"], "1s");
    assert_eq!(time(&job, "start"), start);
    assert_eq!(time(&job, "next_fire_at"), start);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    server.stop().await.expect("clean stop");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server = TestServer::builder().data_dir(data_dir).start().await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    server
        .patch_job(id(&job), json!({ "enabled": false }))
        .await;
    let runs = finished_runs(&server, &job, 5).await;
    let mut fires: Vec<DateTime<Utc>> = runs.iter().map(|run| time(run, "scheduled_for")).collect();
    fires.sort();
    assert_eq!(fires[0], start, "the first fire is the start: {fires:?}");
    for pair in fires.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_milliseconds(),
            1000,
            "one fire a second, none lost or repeated over the restart: {fires:?}"
        );
    }
    assert!(runs.iter().all(|run| run["status"] == "succeeded"));
}

#[tokio::test]
async fn conditions_skip_fires_and_record_why() {
    let server = TestServer::builder().start().await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({
                "name": "bad window", "command": "true",
                "conditions": { "windows": [{ "from": "9am", "to": "17:00" }] },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("conditions.windows"), "{body}");

    let limited = server
        .create_job(json!({
            "name": "limited", "command": "true", "every": "1s", "overlap_policy": "allow",
            "conditions": { "max_runs_per_day": 2 },
        }))
        .await;
    // A window that is never now: three hours ahead, for an hour.
    let later = Utc::now() + chrono::Duration::hours(3);
    let window = json!({
        "from": later.format("%H:%M").to_string(),
        "to": (later + chrono::Duration::hours(1)).format("%H:%M").to_string(),
    });
    let closed = server
        .create_job(json!({
            "name": "closed", "command": "true", "every": "1s",
            "conditions": { "windows": [window] },
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(4200)).await;
    for job in [&limited, &closed] {
        server.patch_job(id(job), json!({ "enabled": false })).await;
    }
    assert_eq!(finished_runs(&server, &limited, 2).await.len(), 2);
    let skips = skipped_fires(&server, &limited).await;
    assert_eq!(
        skips.len(),
        1,
        "repeats of one reason are one record: {skips:#?}"
    );
    assert!(skips[0]["fires"].as_u64().unwrap() >= 1, "{skips:#?}");
    assert_eq!(skips[0]["trigger"], "schedule");
    assert!(
        skips[0]["reason"]
            .as_str()
            .unwrap()
            .contains("started 2 run(s) today"),
        "{skips:#?}"
    );
    assert!(server.runs_of(id(&closed)).await.is_empty());
    // The dashboard's job page shows them too.
    let browser =
        autopilot_tests::dashboard::DashboardClient::signed_in(&server.api.base_url).await;
    let page = browser.get(&format!("/jobs/{}", id(&limited))).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("Skipped fires") && page.body.contains("started 2 run(s) today"),
        "{}",
        page.body
    );
    // The reason names the minute it is: a test that runs across a minute's end has two.
    let skips = skipped_fires(&server, &closed).await;
    let fires: u64 = skips
        .iter()
        .map(|skip| skip["fires"].as_u64().unwrap())
        .sum();
    assert!(fires >= 3 && skips.len() <= 2, "{skips:#?}");
    assert!(
        skips.iter().all(|skip| skip["reason"]
            .as_str()
            .unwrap()
            .contains("outside the job's time windows")),
        "{skips:#?}"
    );
}

#[tokio::test]
async fn a_budget_reached_refuses_new_runs_with_the_reason() {
    let Some((server, fake)) = crate::claude::start().await else {
        return;
    };
    fake.set_default(Reply::text("done"));
    let (alert_url, alerts) = handler_endpoint().await;
    let job = server
        .create_job(json!({
            "name": "spender", "prompt": "Spend a little.",
            "budget": { "daily_usd": 0.000001, "alert": { "post": alert_url, "allow_private": true } },
        }))
        .await;
    assert_eq!(job["budget"]["daily_usd"], 0.000001);
    server.trigger(id(&job)).await;
    let runs = finished_runs(&server, &job, 1).await;
    assert!(
        runs[0]["cost_usd"].as_f64().unwrap() > 0.000001,
        "{:#}",
        runs[0]
    );
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{}/trigger", id(&job)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("over its daily budget"), "{body}");
    // Its fires are skipped and recorded.
    server
        .patch_job(id(&job), json!({ "every": "1s", "start": Utc::now() }))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server
        .patch_job(id(&job), json!({ "enabled": false }))
        .await;
    assert_eq!(server.runs_of(id(&job)).await.len(), 1);
    let skips = skipped_fires(&server, &job).await;
    assert!(
        skips[0]["reason"]
            .as_str()
            .unwrap()
            .contains("daily budget"),
        "{skips:#?}"
    );
    // The alert went out at 80 % and at 100 % of the day's ceiling, once each (the endpoint's
    // first answer was a 500, so one of them was sent twice).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let thresholds = loop {
        let received = alerts.lock().unwrap().clone();
        let mut thresholds: Vec<u64> = received
            .iter()
            .skip(1)
            .map(|(_, body)| {
                serde_json::from_slice::<Value>(body).unwrap()["threshold_percent"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        thresholds.sort();
        if thresholds.len() >= 2 || tokio::time::Instant::now() > deadline {
            break thresholds;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(thresholds, [80, 100]);
    let first: Value = serde_json::from_slice(&alerts.lock().unwrap()[1].1).unwrap();
    assert_eq!(
        (first["alert"].as_str(), first["period"].as_str()),
        (Some("budget"), Some("daily"))
    );
}

#[tokio::test]
async fn the_dashboard_editor_sets_intervals_and_rules() {
    let server = TestServer::builder().start().await;
    let browser =
        autopilot_tests::dashboard::DashboardClient::signed_in(&server.api.base_url).await;
    let form = |rules: &'static str| {
        vec![
            ("name", "paced"),
            ("kind", "shell"),
            ("text", "true"),
            ("when", "every"),
            ("every", "15m"),
            ("timezone", "UTC"),
            ("enabled", "true"),
            ("misfire_policy", "run_once"),
            ("misfire_cap", "10"),
            ("overlap_policy", "skip"),
            ("timeout_secs", "600"),
            ("pool", "default"),
            ("rules", rules),
        ]
    };
    let created = browser
        .post(
            "/jobs/new",
            &form(r#"{ "conditions": { "max_runs_per_day": 3 }, "budget": { "daily_usd": 2 } }"#),
        )
        .await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    let job = &server.get("/api/v1/jobs").await["jobs"][0];
    assert_eq!(job["every"], "15m");
    assert_eq!(job["conditions"]["max_runs_per_day"], 3);
    assert_eq!(job["budget"]["daily_usd"], 2.0);
    let job_id = id(job).to_owned();
    let editor = browser.get(&format!("/jobs/{job_id}/edit")).await;
    assert!(
        editor.body.contains("max_runs_per_day") && editor.body.contains(r#"value="15m""#),
        "{}",
        editor.body
    );
    let refused = browser
        .post(&format!("/jobs/{job_id}/edit"), &form("{ not json"))
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        refused.body.contains(r#"data-field="rules""#),
        "{}",
        refused.body
    );
    let refused = browser
        .post(
            &format!("/jobs/{job_id}/edit"),
            &form(r#"{ "schedule": "x" }"#),
        )
        .await;
    assert!(
        refused.body.contains("is not one of after"),
        "{}",
        refused.body
    );
    // An edit keeps the interval's beat, and an emptied rules text takes the rules away.
    let saved = browser
        .post(&format!("/jobs/{job_id}/edit"), &form(""))
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let after = server.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(after["every"], "15m");
    assert_eq!(after["start"], job["start"]);
    assert!(
        after.get("conditions").is_none() && after.get("budget").is_none(),
        "{after:#}"
    );
}

/// The API answers a subscription's usage limit with its reset time: the run is retried at the
/// reset, not after its hour-long backoff, and the job starts nothing before it.
#[tokio::test]
async fn a_usage_limit_pauses_the_job_until_its_reset() {
    let Some((server, fake)) = crate::claude::start().await else {
        return;
    };
    let reset = Utc::now() + chrono::Duration::seconds(4);
    fake.push(Reply::error(
        429,
        "rate_limit_error",
        format!("Claude AI usage limit reached|{}", reset.timestamp()),
    ));
    fake.set_default(Reply::text("after the reset"));
    let job = server
        .create_job(json!({
            "name": "subscriber", "prompt": "go", "overlap_policy": "allow",
            "retry": { "count": 1, "backoff_secs": 3600 },
        }))
        .await;
    let run = server.trigger(id(&job)).await;
    let run_id = id(&run).to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let retry = loop {
        let events = server.events(&run_id).await;
        if let Some(retry) = events
            .iter()
            .find(|event| event["data"]["step"] == "retry_scheduled")
        {
            break retry["data"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(retry["api_error"], "usage_limit", "{retry:#}");
    assert!(retry["delay_secs"].as_u64().unwrap() <= 4, "{retry:#}");
    let paused = server.get(&format!("/api/v1/jobs/{}", id(&job))).await;
    assert_eq!(
        time(&paused, "paused_until").timestamp(),
        reset.timestamp(),
        "{paused:#}"
    );
    // Fires while the limit holds start nothing, and say why.
    server
        .patch_job(id(&job), json!({ "every": "1s", "start": Utc::now() }))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let skips = skipped_fires(&server, &job).await;
    assert!(
        skips[0]["reason"].as_str().unwrap().contains("usage limit"),
        "{skips:#?}"
    );
    let run = server
        .wait_until_finished(&run_id, Duration::from_secs(60))
        .await;
    server
        .patch_job(id(&job), json!({ "enabled": false }))
        .await;
    assert_eq!(
        (run["status"].as_str(), run["attempt"].as_u64()),
        (Some("succeeded"), Some(2)),
        "{run:#}"
    );
    assert!(time(&run, "started_at") >= reset - chrono::Duration::milliseconds(1000));
}

#[tokio::test]
async fn a_concurrency_key_holds_runs_of_every_job_that_renders_it() {
    let server = TestServer::builder().start().await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "bad key", "command": "true", "concurrency": { "key": "{{ payload.x }}" } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("concurrency.key"), "{body}");
    // Two jobs share the key `deploy-<trigger>`: one of their manual runs goes at a time.
    let mut jobs = Vec::new();
    for name in ["deploy-a", "deploy-b"] {
        let job = server
            .create_job(json!({
                "name": name, "command": "sleep 1", "overlap_policy": "allow",
                "concurrency": { "key": "deploy-{{ trigger }}", "limit": 1 },
            }))
            .await;
        assert_eq!(job["concurrency"]["limit"], 1, "{job}");
        jobs.push(job);
    }
    let mut run_ids = Vec::new();
    for job in [&jobs[0], &jobs[0], &jobs[1]] {
        let run = server.trigger(id(job)).await;
        assert_eq!(
            run["settings"]["concurrency"]["key"], "deploy-manual",
            "{run}"
        );
        run_ids.push(run["id"].as_str().unwrap().to_owned());
    }
    let mut spans = Vec::new();
    for run_id in &run_ids {
        let run = server
            .wait_until_finished(run_id, Duration::from_secs(30))
            .await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let at = |field: &str| {
            run[field]
                .as_str()
                .unwrap()
                .parse::<chrono::DateTime<Utc>>()
                .unwrap()
        };
        spans.push((at("started_at"), at("finished_at")));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "runs of one key overlapped: {spans:?}"
        );
    }
}

#[tokio::test]
async fn the_fleet_budget_refuses_runs_and_alerts_once_per_threshold() {
    let Some(claude) = autopilot_tests::components::claude_bin() else {
        return;
    };
    let fake = autopilot_tests::fake_anthropic::FakeAnthropic::start()
        .await
        .expect("fake API");
    fake.set_default(Reply::text("done"));
    let (alert_url, alerts) = handler_endpoint().await;
    let alert = json!({ "post": alert_url, "allow_private": true }).to_string();
    let server = TestServer::builder()
        .claude_bin(claude)
        .model_api(&fake.base_url())
        .fleet_budget(0.000001, Some(&alert))
        .start()
        .await;
    let job = server
        .create_job(json!({ "name": "any spender", "prompt": "Spend a little." }))
        .await;
    server.trigger(id(&job)).await;
    finished_runs(&server, &job, 1).await;
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{}/trigger", id(&job)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.to_string().contains("fleet's monthly budget"),
        "{body}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let bodies = loop {
        // The endpoint answers its first request with a 500: that alert is sent again.
        let received: Vec<Value> = alerts
            .lock()
            .unwrap()
            .iter()
            .skip(1)
            .map(|(_, body)| serde_json::from_slice(body).unwrap())
            .collect();
        if received.len() >= 2 || tokio::time::Instant::now() > deadline {
            break received;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut thresholds: Vec<u64> = bodies
        .iter()
        .map(|body| body["threshold_percent"].as_u64().unwrap())
        .collect();
    thresholds.sort();
    assert_eq!(thresholds, [80, 100], "{bodies:#?}");
    assert_eq!(bodies[0]["scope"], "fleet", "{bodies:#?}");
    assert_eq!(bodies[0]["period"], "monthly", "{bodies:#?}");
    // Another run's end sends nothing more this month.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(alerts.lock().unwrap().len(), 3, "once per threshold");
}

#[tokio::test]
async fn runs_on_a_subscription_are_their_own_pool_and_budgets_leave_them_out() {
    let Some(claude) = autopilot_tests::components::claude_bin() else {
        return;
    };
    let fake = autopilot_tests::fake_anthropic::FakeAnthropic::start()
        .await
        .expect("fake API");
    fake.set_default(Reply::text("done"));
    // The CLI is given a subscription's OAuth token, no API key.
    let server = TestServer::builder()
        .claude_bin(claude)
        .run_env("ANTHROPIC_BASE_URL", &fake.base_url())
        .run_env(
            "CLAUDE_CODE_OAUTH_TOKEN",
            "sk-ant-oat01-test-not-a-real-token",
        )
        .run_env("CLAUDE_CODE_MAX_RETRIES", "0")
        .start()
        .await;
    let job = server
        .create_job(json!({
            "name": "on the plan", "prompt": "Spend a little.", "overlap_policy": "allow",
            "budget": { "daily_usd": 0.000001 },
        }))
        .await;
    server.trigger(id(&job)).await;
    let runs = finished_runs(&server, &job, 1).await;
    assert_eq!(runs[0]["status"], "succeeded", "{:#}", runs[0]);
    assert_eq!(runs[0]["billing"], "subscription", "{:#}", runs[0]);
    assert!(
        runs[0]["cost_usd"].as_f64().unwrap() > 0.000001,
        "the CLI's estimate is kept"
    );
    // Its estimate is not spend: the tiny budget does not refuse the next run.
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{}/trigger", id(&job)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    finished_runs(&server, &job, 2).await;
    let browser =
        autopilot_tests::dashboard::DashboardClient::signed_in(&server.api.base_url).await;
    let usage = browser.get("/usage").await;
    assert!(
        usage.body.contains("Subscription (the CLI"),
        "{}",
        usage.body
    );
}
