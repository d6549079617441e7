//! Helpers for tests that act as OAuth and MCP clients.

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// An HTTP client that shows redirects instead of following them (OAuth answers with them).
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// A fresh PKCE pair: (code_verifier, S256 code_challenge).
pub fn pkce() -> (String, String) {
    let verifier = format!(
        "verifier-{}-{}",
        uuid::Uuid::now_v7().simple(),
        uuid::Uuid::now_v7().simple()
    );
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// A decoded query parameter of a URL (such as a redirect's `Location`).
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    url.query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The text blocks of an MCP tool result, joined.
pub fn tool_text(result: &Value) -> String {
    result["content"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|block| block["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Asserts that an MCP tool call succeeded with structured content.
pub fn assert_tool_ok(result: &Value) {
    assert_ne!(
        result["isError"],
        true,
        "tool failed: {}",
        tool_text(result)
    );
    assert!(result["structuredContent"].is_object(), "{result:#}");
}

/// Registers a public OAuth client (`none` auth) for `redirect_uri`; returns its client id.
pub async fn register_public_client(base_url: &str, name: &str, redirect_uri: &str) -> String {
    let registered: Value = no_redirects()
        .post(format!("{base_url}/register"))
        .json(&serde_json::json!({
            "client_name": name,
            "redirect_uris": [redirect_uri],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("registration answer");
    registered["client_id"]
        .as_str()
        .expect("client_id")
        .to_owned()
}

/// GET `/authorize` for a PKCE authorization-code request, with `extra` parameters; the answer is
/// returned as it is (redirects are not followed).
pub async fn authorization_request(
    base_url: &str,
    client_id: &str,
    redirect_uri: &str,
    challenge: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut query = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ];
    query.extend_from_slice(extra);
    no_redirects()
        .get(format!("{base_url}/authorize"))
        .query(&query)
        .send()
        .await
        .expect("authorize")
}

/// A public client's token response from a server that approves without the consent page:
/// registration, PKCE, code (with `state` checked) and exchange, for the MCP resource.
pub async fn auto_approved_tokens(
    base_url: &str,
    redirect_uri: &str,
    scope: Option<&str>,
) -> Value {
    let client_id = register_public_client(base_url, "test client", redirect_uri).await;
    tokens_for_client(base_url, &client_id, redirect_uri, scope).await
}

/// [`auto_approved_tokens`] for a client registered already.
pub async fn tokens_for_client(
    base_url: &str,
    client_id: &str,
    redirect_uri: &str,
    scope: Option<&str>,
) -> Value {
    let (verifier, challenge) = pkce();
    let resource = format!("{base_url}/mcp");
    let mut extra = vec![("state", "test-state"), ("resource", resource.as_str())];
    if let Some(scope) = scope {
        extra.push(("scope", scope));
    }
    let redirected =
        authorization_request(base_url, client_id, redirect_uri, &challenge, &extra).await;
    assert_eq!(redirected.status(), reqwest::StatusCode::FOUND);
    let location = redirected.headers()[reqwest::header::LOCATION]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(location.starts_with(redirect_uri), "{location}");
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some("test-state")
    );
    let code = query_param(&location, "code").expect("a code");
    let response = no_redirects()
        .post(format!("{base_url}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri),
            ("client_id", client_id),
            ("code_verifier", verifier.as_str()),
            ("resource", resource.as_str()),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    response.json().await.expect("token answer")
}
