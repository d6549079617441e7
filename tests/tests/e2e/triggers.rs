//! More ways to start runs, and what holds them back: intervals, chains (with the real CLI and
//! the fake model), conditions and budgets, through the whole stack on the store the
//! environment names (SQLite and PostgreSQL passes).

use std::sync::Arc;
use std::time::Duration;

use autopilot_tests::fake_anthropic::Reply;
use autopilot_tests::harness::{is_terminal, TestServer};
use chrono::{DateTime, Timelike, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn id(value: &Value) -> &str {
    value["id"].as_str().expect("an id")
}

fn time(value: &Value, field: &str) -> DateTime<Utc> {
    value[field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time `{field}` in {value:#}"))
}

async fn skipped_fires(server: &TestServer, job: &Value) -> Vec<Value> {
    let body = server
        .get(&format!("/api/v1/jobs/{}/skipped-fires", id(job)))
        .await;
    body["skipped_fires"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `job` has `count` finished runs, and returns them (newest first).
async fn finished_runs(server: &TestServer, job: &Value, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let runs = server.runs_of(id(job)).await;
        if runs.len() >= count && runs.iter().all(is_terminal) {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} has {} run(s), wanted {count} finished: {runs:#?}",
            job["name"],
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
    let skips = skipped_fires(&server, &closed).await;
    assert!(skips[0]["fires"].as_u64().unwrap() >= 3, "{skips:#?}");
    assert!(
        skips[0]["reason"]
            .as_str()
            .unwrap()
            .contains("outside the job's time windows"),
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

async fn run_status(server: &TestServer, run_id: &str, status: &str) -> Value {
    let wanted = status.to_owned();
    server
        .wait_for_run(run_id, Duration::from_secs(30), move |run| {
            run["status"] == wanted
        })
        .await
}

async fn kill(server: &TestServer, run_id: &str) {
    let (status, body) = server
        .call(Method::POST, &format!("/api/v1/runs/{run_id}/kill"), None)
        .await;
    assert!(status.is_success(), "kill: {status} {body}");
}

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

/// The real CLI, its hooks calling `autopilot hook`, against the fake model: a Bash call and the
/// session's end reach Autopilot, and the jobs answering them run (once per debounce window).
#[tokio::test]
async fn claude_code_hook_events_start_the_jobs_that_answer_them() {
    let Some(autopilot) = autopilot_tests::components::autopilot_bin() else {
        return;
    };
    let Some(claude) = autopilot_tests::components::claude_bin() else {
        return;
    };
    let fake = autopilot_tests::fake_anthropic::FakeAnthropic::start()
        .await
        .expect("fake API");
    let server = TestServer::builder().start().await;
    let (status, token) = server
        .call(
            Method::POST,
            "/api/v1/hook-tokens",
            Some(json!({ "name": "laptop" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{token}");
    let secret = token["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("aph_"));
    let listed = server.get("/api/v1/hook-tokens").await;
    assert_eq!(listed["hook_tokens"][0]["name"], "laptop");
    assert!(!listed.to_string().contains(&secret), "never shown again");

    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(
                json!({ "name": "bad", "command": "true", "on_hook": { "events": ["AfterTool"] } }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("on_hook.events"), "{body}");
    let after_bash = server
        .create_job(json!({
            "name": "after bash", "command": "cat > event.json",
            "on_hook": { "events": ["PostToolUse"], "matcher": "Bash", "debounce_secs": 600 },
        }))
        .await;
    let on_stop = server
        .create_job(
            json!({ "name": "on stop", "command": "true", "on_hook": { "events": ["Stop"] } }),
        )
        .await;
    let on_write = server
        .create_job(json!({
            "name": "on write", "command": "true",
            "on_hook": { "events": ["PostToolUse"], "matcher": "Write|Edit" },
        }))
        .await;

    // A hook token opens nothing else.
    let (status, _) = server
        .call_with_token(Method::GET, "/api/v1/jobs", None, Some(&secret))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The intake wants a hook token: not the admin token, not a made-up one.
    let client = reqwest::Client::new();
    let intake = format!("{}/hook-events", server.api.base_url);
    for bearer in ["aph_made_up", autopilot_tests::harness::ADMIN_TOKEN] {
        let answer = client
            .post(&intake)
            .bearer_auth(bearer)
            .body(r#"{"hook_event_name":"Stop"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }

    let home = tempfile::tempdir().unwrap();
    let workspace = tempfile::tempdir().unwrap();
    let hook = json!([{ "type": "command", "command": format!("{} hook", autopilot.display()), "timeout": 10 }]);
    let settings = json!({
        "hooks": {
            "PostToolUse": [{ "matcher": "Bash", "hooks": hook }],
            "Stop": [{ "hooks": hook }],
        }
    });
    fake.push(Reply::tool_use(
        "Bash",
        json!({ "command": "echo hook-test-one", "description": "say one" }),
    ));
    fake.push(Reply::tool_use(
        "Bash",
        json!({ "command": "echo hook-test-two", "description": "say two" }),
    ));
    fake.push(Reply::text("said both"));
    let output = tokio::process::Command::new(&claude)
        .args([
            "-p",
            "say things",
            "--output-format",
            "stream-json",
            "--verbose",
            "--allowedTools",
            "Bash",
            "--settings",
            &settings.to_string(),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", fake.base_url())
        .env("ANTHROPIC_API_KEY", "sk-ant-hooks")
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("AUTOPILOT_HOOK_URL", &server.api.base_url)
        .env("AUTOPILOT_HOOK_TOKEN", &secret)
        .env("AUTOPILOT_HOOK_DEBUG", "1")
        .current_dir(workspace.path())
        .output()
        .await
        .expect("the CLI runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("said both"),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    let runs = finished_runs(&server, &after_bash, 1).await;
    let stop_runs = finished_runs(&server, &on_stop, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.runs_of(id(&after_bash)).await.len(),
        1,
        "two Bash calls within the debounce window start one run"
    );
    assert!(server.runs_of(id(&on_write)).await.is_empty());
    assert_eq!(stop_runs[0]["trigger"], "hook");
    let run = &runs[0];
    assert_eq!(
        (run["trigger"].as_str(), run["status"].as_str()),
        (Some("hook"), Some("succeeded")),
        "{run:#}"
    );
    let events = server.events(id(run)).await;
    let queued = &events[0]["data"];
    assert_eq!(queued["hook_event"], "PostToolUse", "{queued:#}");
    assert_eq!(queued["tool_name"], "Bash");
    assert_eq!(queued["hook_token"], "laptop");
    // The shell job got the event on standard input.
    let saved = std::fs::read_to_string(server.workspace_of(&after_bash).join("event.json"))
        .expect("the event the job saved");
    let event: Value = serde_json::from_str(&saved).expect("the event is JSON");
    assert_eq!(event["hook_event_name"], "PostToolUse");
    assert!(saved.contains("hook-test-one"), "{saved}");

    // A deleted token admits nothing more.
    let (status, _) = server
        .call(Method::DELETE, "/api/v1/hook-tokens/laptop", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let answer = client
        .post(&intake)
        .bearer_auth(&secret)
        .body(r#"{"hook_event_name":"Stop"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
}

/// What a result handler's endpoint received: headers and body.
type Received = Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// An endpoint on loopback that records what it gets and answers 500 the first time, 200 after.
async fn handler_endpoint() -> (String, Received) {
    let received: Received = Arc::default();
    let seen = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/outcome",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = Arc::clone(&seen);
                async move {
                    let mut seen = seen.lock().unwrap();
                    seen.push((headers, body.to_vec()));
                    if seen.len() == 1 {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/outcome"), received)
}

#[tokio::test]
async fn result_handlers_post_the_signed_outcome_and_retry() {
    let server = TestServer::builder().start().await;
    let (url, received) = handler_endpoint().await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({
                "name": "unsigned", "command": "true",
                "on_end": [{ "post": url, "sign_with": "MISSING_KEY", "allow_private": true }],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("on_end.0.sign_with"), "{body}");
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "plain http", "command": "true", "on_end": [{ "post": url }] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("https"), "{body}");
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1/credentials/HANDLER_KEY",
            Some(json!({ "value": "handler-s3cret" })),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let job = server
        .create_job(json!({
            "name": "reported", "command": "echo reported",
            "on_end": [
                { "post": url, "sign_with": "HANDLER_KEY", "allow_private": true },
                { "post": url.replace("http://", "https://"), "on": "success" },
                { "post": url, "on": "failure", "allow_private": true },
            ],
        }))
        .await;
    assert_eq!(job["on_end"].as_array().unwrap().len(), 3);
    let run = server.trigger(id(&job)).await;
    let run = server
        .wait_until_finished(id(&run), Duration::from_secs(30))
        .await;
    assert_eq!(run["status"], "succeeded");
    // The first answer was a 500: the handler tried again a second later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events = server.events(id(&run)).await;
        let handled = events
            .iter()
            .filter(|event| event["data"]["step"] == "result_handler")
            .count();
        if handled == 2 {
            break events;
        }
        assert!(tokio::time::Instant::now() < deadline, "{events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let outcome = |index: u64| {
        events
            .iter()
            .find(|event| {
                event["data"]["step"] == "result_handler" && event["data"]["handler"] == index
            })
            .map(|event| event["data"].clone())
            .unwrap_or_else(|| panic!("handler {index}: {events:#?}"))
    };
    assert_eq!(outcome(0)["delivered"], true, "{:#}", outcome(0));
    assert_eq!(outcome(0)["attempts"], 2);
    // Loopback without `allow_private` is refused, at once, and said so.
    assert_eq!(outcome(1)["delivered"], false);
    assert!(
        outcome(1)["error"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{:#}",
        outcome(1)
    );
    let received = received.lock().unwrap().clone();
    assert_eq!(
        received.len(),
        2,
        "the failure handler was not called for a success"
    );
    let (headers, body) = &received[1];
    let sent: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        (sent["run_id"].as_str(), sent["status"].as_str()),
        (Some(id(&run)), Some("succeeded"))
    );
    assert_eq!(sent["job"], "reported");
    // The signature is HMAC-SHA256 of "<t>.<body>" with the credential's value.
    let signature = headers["x-autopilot-signature"].to_str().unwrap();
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .expect("t=…,v1=…");
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"handler-s3cret").unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()));
    assert!(
        !server.store_contains("handler-s3cret").await,
        "the key is sealed at rest"
    );
}

/// Writes `text` to `path` in three pieces, 50 ms apart (a file written slowly).
async fn write_slowly(path: &std::path::Path, text: &str, append: bool) {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(path)
        .await
        .unwrap();
    for piece in text.as_bytes().chunks(text.len().div_ceil(3).max(1)) {
        file.write_all(piece).await.unwrap();
        file.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_watched_file_change_starts_one_run_with_the_file() {
    let server = TestServer::builder().start().await;
    let inbox = tempfile::tempdir().unwrap();
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "relative", "command": "true", "on_file": { "paths": ["inbox/*.csv"] } })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("on_file.paths"), "{body}");
    let job = server
        .create_job(json!({
            "name": "ingest", "command": "cat > file.json",
            "on_file": {
                "paths": [format!("{}/*.csv", inbox.path().display())],
                "events": ["create", "modify"], "debounce_ms": 300,
            },
        }))
        .await;
    assert_eq!(job["on_file"]["pool"], "default");
    // The worker is told at once; give it a moment to watch the directory.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let csv = inbox.path().join("orders.csv");
    let orders = "id,total\n1,20\n2,35\n";
    write_slowly(&csv, orders, false).await;
    let first = finished_runs(&server, &job, 1).await;
    assert_eq!(first[0]["trigger"], "file", "{:#}", first[0]);
    assert_eq!(first[0]["status"], "succeeded");
    let seen: Value = serde_json::from_str(
        &std::fs::read_to_string(server.workspace_of(&job).join("file.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(seen["path"], csv.display().to_string());
    assert_eq!(
        (seen["event"].as_str(), seen["name"].as_str()),
        (Some("create"), Some("orders.csv"))
    );
    assert_eq!(seen["size"], orders.len());
    // Another kind of file, and a delete (not watched), start nothing; a change does.
    std::fs::write(inbox.path().join("notes.txt"), "x").unwrap();
    write_slowly(&csv, "3,50\n", true).await;
    let runs = finished_runs(&server, &job, 2).await;
    let events = server.events(id(&runs[0])).await;
    assert_eq!(events[0]["data"]["event"], "modify", "{:#}", events[0]);
    std::fs::remove_file(&csv).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        server.runs_of(id(&job)).await.len(),
        2,
        "one run per settled change"
    );
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
