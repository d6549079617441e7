//! A remote MCP server that needs OAuth, connected once by the operator: Autopilot discovers the
//! server's authorization server, registers itself there and sends the operator's browser to it;
//! the tokens go to the vault, and a run granted the server reaches it with the access token only.
//! The remote server here is another Autopilot (its `/mcp` is OAuth-protected), whose consent is
//! given by its test switch.

use autopilot_tests::clients::no_redirects;
use autopilot_tests::fake_anthropic::Reply;
use autopilot_tests::harness::TestServer;
use reqwest::header::LOCATION;
use reqwest::{Method, StatusCode};
use serde_json::json;

use super::run_once;

#[tokio::test]
async fn a_remote_server_is_connected_with_oauth_and_runs_get_only_the_access_token() {
    let Some((server, fake)) = super::fixed_server().await else {
        return;
    };
    let remote = TestServer::builder().auto_approve().start().await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({
                "name": "other",
                "transport": { "type": "http", "url": format!("{}/mcp", remote.base_url) },
                "tools": [{ "name": "list_jobs", "access": "read" }],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The operator starts the connection and opens the URL; the remote approves at once.
    let (status, started) = server
        .call(Method::POST, "/api/v1/servers/other/oauth", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let authorization_url = started["authorization_url"].as_str().unwrap();
    assert!(
        authorization_url.starts_with(&format!("{}/authorize?", remote.base_url))
            && authorization_url.contains("code_challenge_method=S256"),
        "{authorization_url}"
    );
    let browser = no_redirects();
    let approved = browser.get(authorization_url).send().await.unwrap();
    assert_eq!(approved.status(), StatusCode::FOUND);
    let back = approved.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(
        back.starts_with(&format!("{}/oauth/servers/callback?", server.base_url)),
        "{back}"
    );
    let connected = browser.get(&back).send().await.unwrap();
    assert_eq!(connected.status(), StatusCode::OK);
    assert!(connected.text().await.unwrap().contains("Connected"));
    // The same state a second time is refused.
    let again = browser.get(&back).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);

    let other = server.get("/api/v1/servers/other").await;
    assert!(other["oauth"]["connected_at"].is_string(), "{other:#}");
    assert!(other["oauth"]["expires_at"].is_string(), "{other:#}");
    let vault = server.get("/api/v1/credentials").await.to_string();
    assert!(
        vault.contains("OAUTH_OTHER_ACCESS_TOKEN") && vault.contains("OAUTH_OTHER_REFRESH_TOKEN"),
        "{vault}"
    );

    // A run granted the server calls it with the access token.
    let job = server
        .create_job(
            json!({ "name": "asks the other", "prompt": "List its jobs.",
                            "servers": [{ "server": "other" }] }),
        )
        .await;
    let ask = || async {
        fake.push(Reply::tool_use("mcp__other__list_jobs", json!({})));
        fake.push(Reply::text("Listed."));
        let (run, events) = run_once(&server, &job).await;
        assert_eq!(run["status"], "succeeded", "{run:#} {events:#?}");
        let granted = events
            .iter()
            .find(|e| e["data"]["event"] == "tools_granted" || e["data"]["servers"].is_array())
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!granted.contains("REFRESH"), "{granted}");
        events
            .iter()
            .filter(|e| e["kind"] == "tool_result")
            .map(|e| e["data"].to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let answered = ask().await;
    assert!(
        answered.contains("\\\"jobs\\\":[]"),
        "the other Autopilot answered: {answered}"
    );

    // Refreshed on demand (and before a claim when it is about to expire): a new access token,
    // which still reaches it.
    let fingerprint = |vault: serde_json::Value| {
        vault["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "OAUTH_OTHER_ACCESS_TOKEN")
            .map(|c| c["fingerprint"].clone())
    };
    let before = fingerprint(server.get("/api/v1/credentials").await);
    let (status, body) = server
        .call(Method::POST, "/api/v1/servers/other/oauth/refresh", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = fingerprint(server.get("/api/v1/credentials").await);
    assert!(before.is_some() && before != after, "{before:?} {after:?}");
    let answered = ask().await;
    assert!(
        answered.contains("\\\"jobs\\\":[]"),
        "the other Autopilot answered: {answered}"
    );

    // A client the operator registered there themselves is used as given.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({
                "name": "other-given",
                "transport": { "type": "http", "url": format!("{}/mcp", remote.base_url) },
                "tools": [{ "name": "list_jobs", "access": "read" }],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let registered: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/register", remote.base_url))
        .json(
            &json!({ "redirect_uris": [format!("{}/oauth/servers/callback", server.base_url)],
                       "token_endpoint_auth_method": "none", "client_name": "by hand" }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registered["client_id"].as_str().unwrap();
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers/other-given/oauth",
            Some(json!({ "client_id": client_id, "scope": "x" })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an unknown field: {body}"
    );
    let (status, started) = server
        .call(
            Method::POST,
            "/api/v1/servers/other-given/oauth",
            Some(json!({ "client_id": client_id })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let url = started["authorization_url"].as_str().unwrap();
    assert!(url.contains(&format!("client_id={client_id}")), "{url}");
    let approved = browser.get(url).send().await.unwrap();
    let back = approved.headers()[LOCATION].to_str().unwrap().to_owned();
    let connected = browser.get(&back).send().await.unwrap();
    assert_eq!(connected.status(), StatusCode::OK);

    // Only http servers connect; a stray callback says what went wrong.
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(
                json!({ "name": "local", "transport": { "type": "stdio", "command": "x" },
                         "tools": [{ "name": "a" }] }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server
        .call(Method::POST, "/api/v1/servers/local/oauth", None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let stray = browser
        .get(format!(
            "{}/oauth/servers/callback?error=access_denied",
            server.base_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stray.status(), StatusCode::BAD_REQUEST);
    assert!(stray.text().await.unwrap().contains("access_denied"));
}
