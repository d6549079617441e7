//! HTTP jobs: one request made by the worker, credentials filled in from the vault on the worker
//! only, the answer's status deciding success and its body (credentials removed) the result.

use std::sync::Arc;
use std::time::Duration;

use autopilot_tests::harness::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

type Seen = Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>;

/// `/echo` answers 200 with the request's `authorization` header in its body; `/fail` 503.
async fn endpoint() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let app = axum::Router::new()
        .route(
            "/echo",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let record = Arc::clone(&record);
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    record.lock().unwrap().push((headers, body));
                    format!("{{\"you_sent\": \"{auth}\"}}")
                }
            }),
        )
        .route(
            "/fail",
            axum::routing::get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "try later") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), seen)
}

async fn run_once(server: &TestServer, job: &Value) -> Value {
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    server
        .wait_until_finished(run["id"].as_str().unwrap(), Duration::from_secs(30))
        .await
}

#[tokio::test]
async fn an_http_job_makes_its_request_with_vault_credentials() {
    let server = TestServer::builder().start().await;
    let (base, seen) = endpoint().await;
    for (request, field) in [
        (
            json!({ "method": "FETCH", "url": format!("{base}/echo"), "allow_private": true }),
            "request.method",
        ),
        (json!({ "url": "ftp://example.com/x" }), "request.url"),
        (json!({ "url": format!("{base}/echo") }), "request.url"),
        (
            json!({ "url": "https://example.com", "headers": { "Authorization": "Bearer ${MISSING_TOKEN}" } }),
            "request.headers",
        ),
    ] {
        let (status, body) = server
            .call(
                Method::POST,
                "/api/v1/jobs",
                Some(json!({ "name": "bad", "request": request })),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.to_string().contains(field), "{field}: {body}");
    }
    let token = "tok-0123456789abcdef";
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1/credentials/API_TOKEN",
            Some(json!({ "value": token })),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let job = server
        .create_job(json!({
            "name": "ping",
            "request": {
                "method": "post", "url": format!("{base}/echo"), "allow_private": true,
                "headers": { "Authorization": "Bearer ${API_TOKEN}", "Content-Type": "application/json" },
                "body": "{\"hello\": 1}",
            },
        }))
        .await;
    assert_eq!(job["kind"], "http");
    assert_eq!(job["request"]["method"], "POST");
    let run = run_once(&server, &job).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    // The endpoint got the credential; the run's record has it removed.
    let (headers, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(headers["authorization"], format!("Bearer {token}"));
    assert_eq!(body, "{\"hello\": 1}");
    let result = run["result"].as_str().unwrap();
    assert!(result.contains("[redacted API_TOKEN]"), "{result}");
    let events = server.events(run["id"].as_str().unwrap()).await;
    let recorded = format!("{}{run}", serde_json::to_string(&events).unwrap());
    assert!(!recorded.contains(token), "{recorded}");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "output" && e["data"]["status"] == 200),
        "{events:#?}"
    );

    let failing = server
        .create_job(json!({
            "name": "flaky", "retry": { "count": 0 },
            "request": { "url": format!("{base}/fail"), "allow_private": true },
        }))
        .await;
    let run = run_once(&server, &failing).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        run["error"].as_str().unwrap().contains("answered 503"),
        "{run:#}"
    );
    assert_eq!(run["result"], "try later");

    let inside = server
        .create_job(json!({
            "name": "inside", "retry": { "count": 0 },
            "request": { "url": format!("{}/echo", base.replace("http://", "https://")) },
        }))
        .await;
    let run = run_once(&server, &inside).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{run:#}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "nothing reached the endpoint"
    );
}
