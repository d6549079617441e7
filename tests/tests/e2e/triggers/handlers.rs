//! Result handlers: a run's outcome POSTed, signed and retried.

use serde_json::json;

use super::*;

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

#[tokio::test]
async fn result_handlers_write_the_outcome_in_the_workspace_and_notify_a_channel() {
    let server = TestServer::builder().start().await;
    let (url, received) = handler_endpoint().await;
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1/credentials/OPS_HOOK",
            Some(json!({ "value": url })),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let channels = json!({ "ops": { "kind": "webhook", "url": "${OPS_HOOK}" } }).to_string();
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(
                json!({ "name": "team", "transport": { "type": "fixed", "server": "notify",
                "env": { "NOTIFY_CHANNELS": channels, "NOTIFY_ALLOW_PRIVATE": "true" } } }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for (handler, field) in [
        (
            json!({ "notify": { "server": "team", "channel": "dev" } }),
            "on_end.0.notify",
        ),
        (
            json!({ "notify": { "server": "nobody", "channel": "ops" } }),
            "nobody",
        ),
        (json!({ "write": "../outside.json" }), "on_end.0.write"),
        (json!({ "write": "a.json", "post": url }), "exactly one"),
    ] {
        let (status, body) = server
            .call(
                Method::POST,
                "/api/v1/jobs",
                Some(json!({ "name": "bad", "command": "true", "on_end": [handler] })),
            )
            .await;
        assert!(status.is_client_error(), "{handler}: {status} {body}");
        assert!(body.to_string().contains(field), "{handler}: {body}");
    }
    // Each run reads the outcome its predecessor left, and writes its own; a follower runs
    // after each, started by the reporter's own handler.
    let follower = server
        .create_job(json!({ "name": "follower", "command": "echo followed" }))
        .await;
    let job = server
        .create_job(json!({
            "name": "reporter",
            "command": "cat .autopilot/last.json 2>/dev/null || echo none",
            "on_end": [
                { "write": ".autopilot/last.json" },
                { "notify": { "server": "team", "channel": "ops" }, "on": "success" },
                { "trigger": "follower", "on": "success" },
            ],
        }))
        .await;
    assert_eq!(
        job["on_end"][2]["trigger"], follower["id"],
        "stored by id: {job}"
    );
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/jobs/{}", id(&follower)),
            Some(json!({ "on_end": [{ "trigger": "reporter" }] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("would loop"), "{body}");
    assert_eq!(job["on_end"][0]["write"], ".autopilot/last.json", "{job}");
    let first = server.trigger(id(&job)).await;
    let first = server
        .wait_until_finished(id(&first), Duration::from_secs(30))
        .await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(server.workspace_of(&job).join(".autopilot/last.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(written["run_id"], first["id"], "{written}");
    assert_eq!(written["status"], "succeeded", "{written}");
    let second = server.trigger(id(&job)).await;
    let second = server
        .wait_until_finished(id(&second), Duration::from_secs(30))
        .await;
    let events = server.events(id(&second)).await;
    let output: String = events
        .iter()
        .filter(|e| e["kind"] == "output")
        .map(|e| e["data"].to_string())
        .collect();
    assert!(
        output.contains(first["id"].as_str().unwrap()),
        "the second run read the first one's outcome: {output}"
    );
    // The channel got one message per run (its first answer, a 500, was retried).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let messages: Vec<Value> = received
            .lock()
            .unwrap()
            .iter()
            .skip(1)
            .map(|(_, body)| serde_json::from_slice(body).unwrap())
            .collect();
        if messages.len() >= 2 {
            assert_eq!(messages[0]["channel"], "ops", "{messages:#?}");
            let text = messages
                .iter()
                .map(|m| m["text"].to_string())
                .collect::<String>();
            assert!(
                text.contains(first["id"].as_str().unwrap()),
                "{messages:#?}"
            );
            assert!(
                messages[0]["title"]
                    .as_str()
                    .unwrap()
                    .contains("reporter: run succeeded"),
                "{messages:#?}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{messages:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let followed = finished_runs(&server, &follower, 2).await;
    assert_eq!(followed[0]["trigger"], "chain", "{:#}", followed[0]);
    let parents: Vec<Value> = {
        let mut parents = Vec::new();
        for run in &followed {
            parents.push(server.events(id(run)).await[0]["data"]["parent_run_id"].clone());
        }
        parents
    };
    assert!(parents.contains(&first["id"]), "{parents:?}");
    let steps: Vec<Value> = server
        .events(id(&first))
        .await
        .into_iter()
        .filter(|e| e["data"]["step"] == "result_handler" || e["data"]["step"] == "outcome_written")
        .collect();
    assert!(
        steps
            .iter()
            .any(|e| e["data"]["channel"] == "team/ops" && e["data"]["delivered"] == true),
        "{steps:#?}"
    );
    assert!(
        steps
            .iter()
            .any(|e| e["data"]["path"] == ".autopilot/last.json"),
        "{steps:#?}"
    );
}
