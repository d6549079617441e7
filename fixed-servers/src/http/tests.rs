//! The settings, and the server calling a real HTTP server on loopback: credentials injected
//! and never shown (an echo of them comes back redacted), methods, queries and bodies,
//! refusals, redirects, the quota, private addresses.

use crate::serve::vars;
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method as AxumMethod, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::*;

const TOKEN: &str = "tok-0123456789abcdef";
const API_KEY: &str = "key-abcdef123456";

/// The requests the API got: (method, URI, the Authorization header, the body).
type Received = Arc<Mutex<Vec<(String, String, Option<String>, String)>>>;

async fn start_api() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let router = Router::new()
        .route("/api/echo", any(echo))
        .route(
            "/api/moved",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "/api/echo?from=moved")],
                )
            }),
        )
        .route(
            "/api/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (address, received)
}

/// Answers with what it got, the credentials included, in several forms.
async fn echo(
    State(received): State<Received>,
    method: AxumMethod,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header("authorization");
    let body_text = String::from_utf8_lossy(&body).into_owned();
    received.lock().unwrap().push((
        method.to_string(),
        uri.to_string(),
        authorization.clone(),
        body_text.clone(),
    ));
    let authorization = authorization.unwrap_or_default();
    let token = authorization.trim_start_matches("Bearer ").to_owned();
    Json(serde_json::json!({
        "method": method.to_string(),
        "query": query,
        "authorization": authorization,
        "token_in_text": format!("your token is {token}."),
        "token_base64": STANDARD.encode(&token),
        "x-api-key": header("x-api-key"),
        "content-type": header("content-type"),
        "accept": header("accept"),
        "body": serde_json::from_str::<Value>(&body_text).ok(),
    }))
    .into_response()
}

fn hosts_json(base: &str) -> String {
    serde_json::json!({
        "local": {
            "base_url": base,
            "headers": {"Authorization": format!("Bearer {TOKEN}"), "X-Api-Key": API_KEY},
            "allow_methods": ["get", "POST"]
        },
        "readonly": {"base_url": base},
    })
    .to_string()
}

fn http(pairs: &[(&str, &str)]) -> Arc<Http> {
    Arc::new(Http::new(Settings::read(vars(pairs)).unwrap()))
}

/// Calls `tool` as the MCP client would: (is it an error, its text), checking that no
/// credential shows in any form.
async fn call(server: &Arc<Http>, tool: &str, args: Value) -> (bool, String) {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    let result = serde_json::to_value(server.call(tool, args).await).unwrap();
    let is_error = result["isError"].as_bool().unwrap_or(false);
    let text = result["content"][0]["text"].as_str().unwrap().to_owned();
    for secret in [TOKEN.to_owned(), API_KEY.to_owned(), STANDARD.encode(TOKEN)] {
        assert!(!text.contains(&secret), "a credential in an answer: {text}");
    }
    (is_error, text)
}

#[tokio::test]
async fn calls_carry_the_credentials_and_their_echo_comes_back_redacted() {
    let (api, received) = start_api().await;
    let hosts = hosts_json(&format!("http://{api}/api/"));
    let server = http(&[("HTTP_HOSTS", &hosts), ("HTTP_ALLOW_PRIVATE", "true")]);
    let (is_error, text) = call(
        &server,
        "http_request",
        serde_json::json!({
            "host": "local", "method": "get", "path": "/echo",
            "query": {"q": "a b", "per_page": 50, "all": true},
            "headers": {"Accept": "application/vnd.test+json"}
        }),
    )
    .await;
    assert!(!is_error, "{text}");
    assert!(
        text.starts_with(&format!(
            "GET http://{api}/api/echo?all=true&per_page=50&q=a+b → HTTP 200 OK\n\
             content-type: application/json\n\n{{\n"
        )),
        "{text}"
    );
    for expected in [
        "\"authorization\": \"[redacted local Authorization]\"",
        "\"token_in_text\": \"your token is [redacted local Authorization part 1].\"",
        "\"token_base64\": \"[redacted local Authorization part 1]\"",
        "\"x-api-key\": \"[redacted local X-Api-Key]\"",
        "\"accept\": \"application/vnd.test+json\"",
        "\"q\": \"a b\"",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }

    let (is_error, text) = call(
        &server,
        "http_request",
        serde_json::json!({
            "host": "local", "method": "POST", "path": "/echo?dry_run=1",
            "body": {"title": "Release", "labels": ["ci"]}
        }),
    )
    .await;
    assert!(!is_error, "{text}");
    assert!(
        text.contains("\"content-type\": \"application/json\""),
        "{text}"
    );
    assert!(text.contains("\"title\": \"Release\""), "{text}");

    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].0, "GET");
    assert_eq!(received[0].1, "/api/echo?all=true&per_page=50&q=a+b");
    assert_eq!(
        received[0].2.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(received[1].0, "POST");
    assert_eq!(received[1].1, "/api/echo?dry_run=1");
    assert_eq!(
        received[1].2.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        serde_json::from_str::<Value>(&received[1].3).unwrap(),
        serde_json::json!({"title": "Release", "labels": ["ci"]})
    );
}

#[tokio::test]
async fn refused_calls_say_why_and_send_nothing() {
    let (api, received) = start_api().await;
    let hosts = hosts_json(&format!("http://{api}/api"));
    let server = http(&[
        ("HTTP_HOSTS", &hosts),
        ("HTTP_ALLOW_PRIVATE", "true"),
        ("HTTP_MAX_CALLS_PER_RUN", "2"),
    ]);
    let request = |host: &str, method: &str, path: &str| serde_json::json!({"host": host, "method": method, "path": path});
    for (args, expected) in [
        (
            request("readonly", "POST", "/echo"),
            "host `readonly` allows only GET, not `POST` (the job's HTTP_HOSTS setting decides)",
        ),
        (request("local", "DELETE", "/echo"), "allows only GET, POST"),
        (
            request("other", "GET", "/echo"),
            "no host `other`; the hosts are: local, readonly",
        ),
        (
            request("local", "GET", "../echo"),
            "`path` must start with `/`",
        ),
        (request("local", "GET", "/../echo"), "`..` segments"),
        (
            request("local", "GET", "//evil.example/x"),
            "must not start with `//`",
        ),
        (
            serde_json::json!({"host": "readonly", "method": "GET", "path": "/echo",
                               "headers": {"authorization": "Bearer mine"}}),
            "`headers`: `authorization` cannot be set: credentials are added by the server",
        ),
        (
            serde_json::json!({"host": "local", "method": "GET", "path": "/echo",
                               "headers": {"Authorization": "Bearer mine"}}),
            "`headers`: `Authorization` is set by the host's configuration",
        ),
        (
            serde_json::json!({"host": "local", "method": "GET", "path": "/echo",
                               "headers": {"X-API-KEY": "mine"}}),
            "set by the host's configuration",
        ),
        (
            serde_json::json!({"host": "local", "method": "GET", "path": "/echo", "body": {}}),
            "a GET request takes no `body`",
        ),
        (
            serde_json::json!({"host": "local", "method": "GET", "path": "/echo", "query": {"a": [1]}}),
            "invalid arguments",
        ),
    ] {
        let (is_error, text) = call(&server, "http_request", args).await;
        assert!(is_error && text.contains(expected), "{expected}: {text}");
    }
    assert!(received.lock().unwrap().is_empty());

    // An error status is an error result with the answer; a redirect is reported, not followed.
    let (is_error, text) = call(&server, "http_request", request("local", "GET", "/fail")).await;
    assert!(is_error);
    assert!(
        text.starts_with(&format!(
            "GET http://{api}/api/fail → HTTP 500 Internal Server Error\n"
        )) && text.ends_with("\n\nboom"),
        "{text}"
    );
    let (is_error, text) = call(&server, "http_request", request("local", "GET", "/moved")).await;
    assert!(!is_error, "{text}");
    assert!(
        text.contains("(a redirect, which http_request does not follow)")
            && text.contains(
                "location: /api/echo?from=moved (this host: call http_request with the path \
                 `/echo?from=moved`)"
            ),
        "{text}"
    );
    assert!(
        received.lock().unwrap().is_empty(),
        "the redirect was not followed"
    );
    let (is_error, text) = call(&server, "http_request", request("local", "GET", "/echo")).await;
    assert!(is_error);
    assert_eq!(
        text,
        "this run has made its 2 calls (HTTP_MAX_CALLS_PER_RUN); nothing was sent"
    );
    let (_, text) = call(&server, "list_hosts", serde_json::json!({})).await;
    assert_eq!(
        text,
        format!(
            "Hosts (call them with http_request and a path from the base URL):\n\
             - local: http://{api}/api (GET, POST)\n\
             - readonly: http://{api}/api (GET)\n\
             Calls this run may still make: 0 of 2."
        )
    );
}

#[tokio::test]
async fn a_loopback_host_is_refused_unless_private_addresses_are_allowed() {
    let (api, received) = start_api().await;
    let error = Settings::read(vars(&[(
        "HTTP_HOSTS",
        &hosts_json(&format!("http://{api}/api")),
    )]))
    .unwrap_err();
    assert!(error.contains("HTTP_ALLOW_PRIVATE"), "{error}");
    let hosts = hosts_json(&format!("https://{api}/api"));
    let server = http(&[("HTTP_HOSTS", &hosts)]);
    let (is_error, text) = call(
        &server,
        "http_request",
        serde_json::json!({"host": "local", "method": "GET", "path": "/echo"}),
    )
    .await;
    assert!(is_error);
    assert_eq!(
        text,
        "host `local`: 127.0.0.1 is a loopback address; http_request reaches only \
         public addresses unless the job's HTTP_ALLOW_PRIVATE setting is true"
    );
    assert!(received.lock().unwrap().is_empty());
    let (_, text) = call(&server, "list_hosts", serde_json::json!({})).await;
    assert!(text.ends_with("may still make: 100 of 100."), "{text}");
}

#[test]
fn settings_are_read_and_each_mistake_names_its_variable_never_a_value() {
    let settings = Settings::read(vars(&[(
        "HTTP_HOSTS",
        &hosts_json("https://api.example.com/v3/"),
    )]))
    .unwrap();
    assert_eq!(
        settings.hosts["local"].methods,
        vec![Method::GET, Method::POST]
    );
    assert_eq!(settings.hosts["readonly"].methods, vec![Method::GET]);
    assert_eq!(settings.max_response_bytes, 1024 * 1024);
    assert_eq!(settings.max_calls_per_run, 100);
    assert!(!settings.allow_private);
    let debug = format!("{settings:?}");
    assert!(
        !debug.contains(TOKEN) && !debug.contains(API_KEY),
        "{debug}"
    );

    let host = |value: Value| serde_json::json!({ "gh": value }).to_string();
    let good = hosts_json("https://api.example.com");
    let cases = [
        (vec![], "HTTP_HOSTS is required"),
        (
            vec![("HTTP_HOSTS", "{\"gh\": {".to_owned())],
            "HTTP_HOSTS is not valid JSON",
        ),
        (
            vec![("HTTP_HOSTS", "{}".to_owned())],
            "HTTP_HOSTS names no host",
        ),
        (
            vec![("HTTP_HOSTS", host(serde_json::json!({"headers": {}})))],
            "host `gh`: `base_url` is required",
        ),
        (
            vec![(
                "HTTP_HOSTS",
                host(serde_json::json!({"base_url": "https://bot:secret-pass@api.example.com"})),
            )],
            "host `gh`: `base_url` must not hold credentials",
        ),
        (
            vec![(
                "HTTP_HOSTS",
                host(serde_json::json!({"base_url": "https://api.example.com/?key=secret-key"})),
            )],
            "host `gh`: `base_url` must not have a query",
        ),
        (
            vec![(
                "HTTP_HOSTS",
                host(serde_json::json!({"base_url": "ftp://api.example.com/secret"})),
            )],
            "host `gh`: `base_url` must be an https URL",
        ),
        (
            vec![(
                "HTTP_HOSTS",
                host(
                    serde_json::json!({"base_url": "https://h", "allow_methods": ["GET", "secret"]}),
                ),
            )],
            "host `gh`: `allow_methods` holds something other than GET",
        ),
        (
            vec![(
                "HTTP_HOSTS",
                host(serde_json::json!({"base_url": "https://h", "allow_methods": []})),
            )],
            "host `gh`: `allow_methods` must be a list",
        ),
        (
            vec![(
                "HTTP_HOSTS",
                host(
                    serde_json::json!({"base_url": "https://h", "headers": {"Authorization": "Bearer secret\n"}}),
                ),
            )],
            "host `gh`: the value of `Authorization` is not a valid header value",
        ),
        (
            vec![(
                "HTTP_HOSTS",
                host(serde_json::json!({"base_url": "https://h", "header": {}})),
            )],
            "host `gh`: unknown field `header`",
        ),
        (
            vec![
                ("HTTP_HOSTS", good.clone()),
                ("HTTP_MAX_RESPONSE_BYTES", "0".to_owned()),
            ],
            "HTTP_MAX_RESPONSE_BYTES must be a whole number of at least 1",
        ),
        (
            vec![
                ("HTTP_HOSTS", good.clone()),
                ("HTTP_MAX_CALLS_PER_RUN", "lots".to_owned()),
            ],
            "HTTP_MAX_CALLS_PER_RUN must be a whole number",
        ),
        (
            vec![
                ("HTTP_HOSTS", good.clone()),
                ("HTTP_ALLOW_PRIVATE", "perhaps".to_owned()),
            ],
            "HTTP_ALLOW_PRIVATE must be `true` or `false`",
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
    let server = http(&[("HTTP_HOSTS", &hosts_json("https://api.example.com"))]);
    for tool in server.server().tools {
        assert_eq!(
            server.input_schema(tool.name)["type"],
            "object",
            "{}",
            tool.name
        );
    }
}
