//! The settings, and the server posting to a real HTTP server on loopback: each kind's body
//! arriving, a refusal shown without the channel's secrets, the quota, private addresses.

use crate::serve::vars;
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use super::*;

/// A path segment the receiver takes for a token, as Slack's and Discord's URLs have.
const URL_TOKEN: &str = "tok3n-abcdefghijklmnopqrstuv";
const HEADER_KEY: &str = "hook-key-0123456789";

/// What the receiver got: (path, the `x-hook-key` header, the JSON body).
type Received = Arc<Mutex<Vec<(String, Option<String>, Value)>>>;

async fn start_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let router = Router::new()
        .route("/{kind}/{token}", post(receive))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (address, received)
}

async fn receive(
    State(received): State<Received>,
    Path((kind, token)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let key = headers
        .get("x-hook-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    if kind == "refuse" {
        // Quotes its token and the header, as some receivers' errors do, and runs long.
        let text = format!(
            "invalid_token: {token} (key {}) for https://hooks.example/refuse/{token} {}",
            key.unwrap_or_default(),
            "x".repeat(500)
        );
        return (StatusCode::FORBIDDEN, text).into_response();
    }
    if kind == "moved" {
        return (StatusCode::FOUND, [(header::LOCATION, "/slack/elsewhere")]).into_response();
    }
    received
        .lock()
        .unwrap()
        .push((format!("/{kind}/{token}"), key, body));
    match kind.as_str() {
        "discord" => StatusCode::NO_CONTENT.into_response(),
        "teams" => "1".into_response(),
        _ => "ok".into_response(),
    }
}

fn channels_json(site: SocketAddr, scheme: &str) -> String {
    serde_json::json!({
        "team": {"kind": "slack", "url": format!("{scheme}://{site}/slack/{URL_TOKEN}")},
        "alerts": {"kind": "discord", "url": format!("{scheme}://{site}/discord/{URL_TOKEN}")},
        "ops": {"kind": "teams", "url": format!("{scheme}://{site}/teams/{URL_TOKEN}")},
        "ci": {
            "kind": "webhook",
            "url": format!("{scheme}://{site}/hook/{URL_TOKEN}"),
            "headers": {"X-Hook-Key": HEADER_KEY}
        },
        "broken": {
            "kind": "webhook",
            "url": format!("{scheme}://{site}/refuse/{URL_TOKEN}"),
            "headers": {"X-Hook-Key": HEADER_KEY}
        },
        "moved": {"kind": "slack", "url": format!("{scheme}://{site}/moved/{URL_TOKEN}")},
    })
    .to_string()
}

fn notify(pairs: &[(&str, &str)]) -> Arc<Notify> {
    Arc::new(Notify::new(Settings::read(vars(pairs)).unwrap()))
}

/// Calls `tool` as the MCP client would: (is it an error, its text).
async fn call(server: &Arc<Notify>, tool: &str, args: Value) -> (bool, String) {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    let result = serde_json::to_value(server.call(tool, args).await).unwrap();
    let is_error = result["isError"].as_bool().unwrap_or(false);
    let text = result["content"][0]["text"].as_str().unwrap().to_owned();
    assert!(
        !text.contains(URL_TOKEN) && !text.contains(HEADER_KEY),
        "a secret in an answer: {text}"
    );
    (is_error, text)
}

fn send(channel: &str, title: Option<&str>, text: &str) -> Value {
    serde_json::json!({"channel": channel, "title": title, "text": text})
}

#[tokio::test]
async fn a_notification_of_each_kind_arrives_with_its_body() {
    let (site, received) = start_receiver().await;
    let channels = channels_json(site, "http");
    let server = notify(&[
        ("NOTIFY_CHANNELS", &channels),
        ("NOTIFY_ALLOW_PRIVATE", "true"),
    ]);
    for channel in ["team", "alerts", "ops", "ci"] {
        let (is_error, text) = call(
            &server,
            "send_notification",
            send(channel, Some("Nightly"), "All green"),
        )
        .await;
        assert!(!is_error, "{channel}: {text}");
        assert!(
            text.starts_with(&format!("Posted to `{channel}` (")),
            "{text}"
        );
    }
    let received = received.lock().unwrap().clone();
    let expected = [
        (
            "/slack",
            None,
            serde_json::json!({"text": "*Nightly*\nAll green"}),
        ),
        (
            "/discord",
            None,
            serde_json::json!({"content": "**Nightly**\nAll green", "allowed_mentions": {"parse": []}}),
        ),
        (
            "/teams",
            None,
            serde_json::json!({
                "@type": "MessageCard", "@context": "http://schema.org/extensions",
                "title": "Nightly", "text": "All green"
            }),
        ),
        (
            "/hook",
            Some(HEADER_KEY.to_owned()),
            serde_json::json!({"channel": "ci", "title": "Nightly", "text": "All green"}),
        ),
    ];
    assert_eq!(received.len(), expected.len());
    for ((path, key, body), (prefix, expected_key, expected_body)) in received.iter().zip(expected)
    {
        assert_eq!(*path, format!("{prefix}/{URL_TOKEN}"));
        assert_eq!(*key, expected_key, "{path}");
        assert_eq!(*body, expected_body, "{path}");
    }
    let (_, text) = call(&server, "list_channels", serde_json::json!({})).await;
    assert_eq!(
        text,
        "Channels: alerts (discord), broken (webhook), ci (webhook), moved (slack), ops (teams), \
         team (slack). Notifications this run may still send: 16 of 20."
    );
}

#[tokio::test]
async fn a_refusal_is_an_error_without_the_channels_secrets_and_does_not_count() {
    let (site, received) = start_receiver().await;
    let channels = channels_json(site, "http");
    let server = notify(&[
        ("NOTIFY_CHANNELS", &channels),
        ("NOTIFY_ALLOW_PRIVATE", "true"),
        ("NOTIFY_MAX_PER_RUN", "1"),
    ]);
    let (is_error, text) = call(&server, "send_notification", send("broken", None, "hi")).await;
    assert!(is_error);
    assert!(
        text.starts_with("channel `broken` answered HTTP 403 Forbidden: invalid_token: [redacted ")
            && text.contains("(key [redacted broken X-Hook-Key])")
            && text.ends_with("…; the notification was not posted"),
        "{text}"
    );
    let (is_error, text) = call(&server, "send_notification", send("moved", None, "hi")).await;
    assert!(is_error);
    assert_eq!(
        text,
        "channel `moved` answered HTTP 302 Found (a redirect, which notify does not follow: \
         configure the final URL): (no answer body); the notification was not posted"
    );
    // Neither failure counted: the one notification allowed still goes, and then no more.
    let (is_error, text) = call(&server, "send_notification", send("team", None, "hi")).await;
    assert!(!is_error, "{text}");
    assert!(text.ends_with("notification 1 of 1 this run."), "{text}");
    let (is_error, text) = call(&server, "send_notification", send("team", None, "again")).await;
    assert!(is_error);
    assert_eq!(
        text,
        "this run has sent its 1 notifications (NOTIFY_MAX_PER_RUN); nothing was sent"
    );
    assert_eq!(received.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let (site, received) = start_receiver().await;
    // Without NOTIFY_ALLOW_PRIVATE, http is refused when the settings are read …
    let channels = channels_json(site, "http");
    let error = Settings::read(vars(&[("NOTIFY_CHANNELS", &channels)])).unwrap_err();
    assert!(
        error.contains("`url` must be https") && error.contains("NOTIFY_ALLOW_PRIVATE"),
        "{error}"
    );
    // … and an https URL to a loopback address when it is sent, before any connection.
    let channels = channels_json(site, "https");
    let server = notify(&[("NOTIFY_CHANNELS", &channels)]);
    let (is_error, text) = call(&server, "send_notification", send("team", None, "hi")).await;
    assert!(is_error);
    assert_eq!(
        text,
        "channel `team`: its URL leads to a loopback address, and notify reaches only public \
         addresses unless the job's NOTIFY_ALLOW_PRIVATE setting is true; nothing was posted"
    );
    assert!(received.lock().unwrap().is_empty());
    let (_, text) = call(&server, "list_channels", serde_json::json!({})).await;
    assert!(text.ends_with("may still send: 20 of 20."), "{text}");
}

#[tokio::test]
async fn mistakes_in_a_call_are_errors_saying_what_to_do() {
    let (site, _) = start_receiver().await;
    let channels = channels_json(site, "http");
    let server = notify(&[
        ("NOTIFY_CHANNELS", &channels),
        ("NOTIFY_ALLOW_PRIVATE", "true"),
    ]);
    for (args, expected) in [
        (
            send("nope", None, "hi"),
            "no channel `nope`; the channels are: alerts, broken, ci, moved, ops, team",
        ),
        (send("team", None, "  "), "`text` must not be empty"),
        (
            send("alerts", None, &"x".repeat(2_001)),
            "a discord channel takes at most 2000",
        ),
        (
            serde_json::json!({"channel": "team", "message": "hi"}),
            "invalid arguments",
        ),
    ] {
        let (is_error, text) = call(&server, "send_notification", args).await;
        assert!(is_error && text.contains(expected), "{text}");
    }
}

#[test]
fn settings_are_read_and_each_mistake_names_its_variable_never_a_value() {
    let secret_url = "https://hooks.slack.com/services/T0/B0/secretsecretsecret";
    let channels = serde_json::json!({
        "team": {"kind": "Slack", "url": secret_url},
        "ci": {"kind": "webhook", "url": "https://ci.example/hook", "headers": {"X-Key": "secret-key-1"}},
    })
    .to_string();
    let settings = Settings::read(vars(&[("NOTIFY_CHANNELS", &channels)])).unwrap();
    assert_eq!(settings.max_per_run, 20);
    assert!(!settings.allow_private);
    assert_eq!(settings.channels["team"].kind, Kind::Slack);
    assert_eq!(settings.channels["ci"].headers["X-Key"], "secret-key-1");
    let debug = format!("{settings:?}");
    assert!(
        !debug.contains("secretsecret") && !debug.contains("secret-key-1"),
        "{debug}"
    );

    let entry = |value: Value| serde_json::json!({ "team": value }).to_string();
    let cases = [
        (vec![], "NOTIFY_CHANNELS is required"),
        (
            vec![("NOTIFY_CHANNELS", "{\"team\": ".into())],
            "NOTIFY_CHANNELS is not valid JSON",
        ),
        (
            vec![("NOTIFY_CHANNELS", format!("[\"{secret_url}\"]"))],
            "NOTIFY_CHANNELS must be a JSON object",
        ),
        (
            vec![("NOTIFY_CHANNELS", "{}".into())],
            "NOTIFY_CHANNELS names no channel",
        ),
        (
            vec![(
                "NOTIFY_CHANNELS",
                serde_json::json!({secret_url: {}}).to_string(),
            )],
            "NOTIFY_CHANNELS: one channel name is not",
        ),
        (
            vec![("NOTIFY_CHANNELS", entry(secret_url.into()))],
            "channel `team` must be a JSON object",
        ),
        (
            vec![(
                "NOTIFY_CHANNELS",
                entry(serde_json::json!({"url": secret_url})),
            )],
            "channel `team`: `kind` is required",
        ),
        (
            vec![(
                "NOTIFY_CHANNELS",
                entry(serde_json::json!({"kind": secret_url, "url": secret_url})),
            )],
            "channel `team`: `kind` must be one of slack, discord, teams, webhook",
        ),
        (
            vec![(
                "NOTIFY_CHANNELS",
                entry(serde_json::json!({"kind": "slack", "url": "secret"})),
            )],
            "channel `team`: `url` is not a URL",
        ),
        (
            vec![(
                "NOTIFY_CHANNELS",
                entry(serde_json::json!({"kind": "slack", "url": "ftp://h/secret"})),
            )],
            "channel `team`: `url` must be an https URL",
        ),
        (
            vec![(
                "NOTIFY_CHANNELS",
                entry(serde_json::json!({"kind": "slack", "uri": secret_url})),
            )],
            "channel `team`: unknown field `uri`",
        ),
        (
            vec![(
                "NOTIFY_CHANNELS",
                entry(
                    serde_json::json!({"kind": "webhook", "url": secret_url, "headers": {"X-Key": "secret\n"}}),
                ),
            )],
            "channel `team`: the value of `X-Key` is not a valid header value",
        ),
        (
            vec![
                ("NOTIFY_CHANNELS", channels.clone()),
                ("NOTIFY_MAX_PER_RUN", "many".into()),
            ],
            "NOTIFY_MAX_PER_RUN must be a whole number",
        ),
        (
            vec![
                ("NOTIFY_CHANNELS", channels.clone()),
                ("NOTIFY_ALLOW_PRIVATE", "maybe".into()),
            ],
            "NOTIFY_ALLOW_PRIVATE must be `true` or `false`",
        ),
    ];
    for (pairs, expected) in cases {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let error = Settings::read(vars(&pairs)).unwrap_err();
        assert!(error.contains(expected), "{pairs:?}: {error}");
        assert!(!error.contains("secret"), "{error}");
    }
}

#[test]
fn every_tool_has_a_schema_of_its_arguments() {
    let channels = r#"{"team": {"kind": "slack", "url": "https://hooks.example/x"}}"#;
    let server = notify(&[("NOTIFY_CHANNELS", channels)]);
    for tool in server.server().tools {
        assert_eq!(
            server.input_schema(tool.name)["type"],
            "object",
            "{}",
            tool.name
        );
    }
}
