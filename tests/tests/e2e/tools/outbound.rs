//! The fixed `notify` and `http` servers with the real CLI: a notification reaches a webhook
//! channel whose URL is a credential, and a REST call reaches a configured host with its
//! credential header injected by the server, which the model never reads back.

use std::sync::{Arc, Mutex};

use autopilot_tests::fake_anthropic::Reply;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::set_credential;

const HOOK_TOKEN: &str = "hook-token-7f3a9c1e5b";
const API_TOKEN: &str = "api-token-2d8e4f6a0c";

type Seen = Arc<Mutex<Vec<(String, Value)>>>;

#[tokio::test]
async fn notify_and_http_reach_their_endpoints_with_credentials_the_model_never_reads() {
    // One local service playing both the chat webhook and the REST API; it echoes the
    // Authorization header back, as a careless API might.
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            &format!("/hooks/{HOOK_TOKEN}"),
            axum::routing::post(
                |State(seen): State<Seen>, Json(body): Json<Value>| async move {
                    seen.lock().unwrap().push(("hook".into(), body));
                    "ok"
                },
            ),
        )
        .route(
            "/api/issues",
            axum::routing::get(|State(seen): State<Seen>, headers: HeaderMap| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen.lock()
                    .unwrap()
                    .push(("api".into(), json!({ "authorization": auth })));
                Json(json!({ "open": 3, "you_sent": auth }))
            }),
        )
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let Some((server, fake)) = super::fixed_server().await else {
        return;
    };
    set_credential(&server, "TEAM_HOOK", HOOK_TOKEN).await;
    set_credential(&server, "TRACKER_TOKEN", API_TOKEN).await;
    for (name, env) in [
        (
            "notify",
            json!({
                "NOTIFY_ALLOW_PRIVATE": "true",
                "NOTIFY_CHANNELS": format!("{{\"team\": {{\"kind\": \"slack\", \"url\": \"{base}/hooks/${{TEAM_HOOK}}\"}}}}"),
            }),
        ),
        (
            "http",
            json!({
                "HTTP_ALLOW_PRIVATE": "true",
                "HTTP_HOSTS": format!("{{\"tracker\": {{\"base_url\": \"{base}/api\", \"headers\": {{\"Authorization\": \"Bearer ${{TRACKER_TOKEN}}\"}}}}}}"),
            }),
        ),
    ] {
        let (status, body) = server
            .call(
                Method::POST,
                "/api/v1/servers",
                Some(json!({ "name": name, "transport": { "type": "fixed", "server": name, "env": env } })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    fake.push(Reply::tool_use(
        "mcp__http__http_request",
        json!({ "host": "tracker", "method": "GET", "path": "/issues" }),
    ));
    fake.push(Reply::tool_use(
        "mcp__notify__send_notification",
        json!({ "channel": "team", "title": "Issues", "text": "3 open issues" }),
    ));
    fake.push(Reply::text("Posted."));
    let job = server
        .create_job(json!({
            "name": "triage",
            "prompt": "Count the open issues and tell the team.",
            "servers": [{ "server": "http", "access": "write" }, { "server": "notify", "access": "write" }],
        }))
        .await;
    let (run, events) = super::run_once(&server, &job).await;
    assert_eq!(run["status"], "succeeded", "{run:#} {events:#?}");

    let seen = seen.lock().unwrap().clone();
    let api = seen
        .iter()
        .find(|(what, _)| what == "api")
        .expect("the API was called");
    assert_eq!(api.1["authorization"], format!("Bearer {API_TOKEN}"));
    let hook = seen
        .iter()
        .find(|(what, _)| what == "hook")
        .expect("the hook was posted to");
    assert!(
        hook.1["text"].as_str().unwrap().contains("3 open issues"),
        "{hook:?}"
    );

    // What the model read (the echo included) and what the run recorded hold neither credential.
    let to_model = super::read_by_model(&fake);
    assert!(
        to_model.contains("open"),
        "the API's answer reached the model: {to_model}"
    );
    for secret in [HOOK_TOKEN, API_TOKEN] {
        assert!(
            !to_model.contains(secret),
            "the model read {secret}: {to_model}"
        );
        assert!(!Value::Array(events.clone()).to_string().contains(secret));
    }
}
