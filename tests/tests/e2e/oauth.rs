//! The OAuth 2.1 authorization server through real HTTP: discovery, registration, the consent
//! page, PKCE, codes, refresh rotation, revocation, and what `/mcp` answers without a token.

use autopilot_tests::clients::{
    authorization_request, auto_approved_tokens, no_redirects, pkce, query_param,
};
use autopilot_tests::harness::{TestServer, OPERATOR_PASSWORD};
use base64::Engine;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::{json, Value};

mod signing_keys;

const REDIRECT: &str = "http://127.0.0.1:45678/callback";

async fn register(server: &TestServer, body: Value) -> (StatusCode, Value) {
    let response = no_redirects()
        .post(format!("{}/register", server.base_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// Walks the consent page with `password`; returns the redirect (or page) response.
async fn authorize(
    server: &TestServer,
    client_id: &str,
    challenge: &str,
    password: &str,
) -> reqwest::Response {
    let http = no_redirects();
    let params = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("state", "xyz-state"),
        ("scope", "autopilot:read autopilot:write"),
    ];
    let page = http
        .get(format!("{}/authorize", server.base_url))
        .query(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let set_cookie = page.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && !set_cookie.contains("Secure"),
        "over plain HTTP the cookie cannot be Secure: {set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = cookie.split_once('=').unwrap().1.to_owned();
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Operator password") && html.contains(&csrf),
        "{html}"
    );
    let mut form: Vec<(&str, &str)> = params.to_vec();
    form.extend([
        ("csrf", csrf.as_str()),
        ("password", password),
        ("decision", "approve"),
    ]);
    http.post(format!("{}/authorize", server.base_url))
        .header("cookie", cookie)
        .form(&form)
        .send()
        .await
        .unwrap()
}

async fn token(
    server: &TestServer,
    form: &[(&str, &str)],
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, Value) {
    let response = no_redirects()
        .post(format!("{}/token", server.base_url))
        .headers(headers)
        .form(form)
        .send()
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn discovery_documents_point_at_each_other() {
    let server = TestServer::builder().start().await;
    let unauthenticated = no_redirects()
        .post(format!("{}/mcp", server.base_url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    let challenge = unauthenticated.headers()[WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .to_owned();
    let metadata_url = format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        server.base_url
    );
    assert_eq!(
        challenge,
        format!(
            "Bearer resource_metadata=\"{metadata_url}\", scope=\"autopilot:read autopilot:write\""
        )
    );

    let oversized = no_redirects()
        .post(format!("{}/mcp", server.base_url))
        .bearer_auth(autopilot_tests::harness::ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let resource: Value = no_redirects()
        .get(&metadata_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resource["resource"], format!("{}/mcp", server.base_url));
    let issuer = resource["authorization_servers"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let root: Value = no_redirects()
        .get(format!(
            "{}/.well-known/oauth-protected-resource",
            server.base_url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root, resource);
    let metadata: Value = no_redirects()
        .get(format!("{issuer}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["issuer"], issuer);
    assert_eq!(
        metadata["code_challenge_methods_supported"],
        json!(["S256"])
    );
    assert_eq!(
        metadata["registration_endpoint"],
        format!("{issuer}/register")
    );
    assert_eq!(
        metadata["token_endpoint_auth_methods_supported"],
        json!(["none", "client_secret_post", "client_secret_basic"])
    );
}

#[tokio::test]
async fn the_full_flow_with_pkce_refresh_rotation_and_reuse_detection() {
    let server = TestServer::builder().start().await;
    let (status, registered) = register(&server, json!({ "redirect_uris": [REDIRECT], "client_name": "Test client", "token_endpoint_auth_method": "none" })).await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    assert!(
        registered.get("client_secret").is_none(),
        "public clients get no secret"
    );
    let client_id = registered["client_id"].as_str().unwrap();

    // A wrong password shows the page again and issues nothing.
    let (_, challenge) = pkce();
    let refused = authorize(&server, client_id, &challenge, "not the password").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.text().await.unwrap().contains("Wrong password"));

    // Right password: a code, the state and the issuer come back.
    let (verifier, challenge) = pkce();
    let approved = authorize(&server, client_id, &challenge, OPERATOR_PASSWORD).await;
    assert_eq!(approved.status(), StatusCode::FOUND);
    let location = approved.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some("xyz-state")
    );
    assert_eq!(
        query_param(&location, "iss").as_deref(),
        Some(server.base_url.as_str())
    );
    let code = query_param(&location, "code").expect("code");

    // A wrong verifier fails, and burns the code.
    let exchange = |code: String, verifier: String| {
        let form = [
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code),
            ("redirect_uri".to_owned(), REDIRECT.to_owned()),
            ("code_verifier".to_owned(), verifier),
            ("client_id".to_owned(), client_id.to_owned()),
        ];
        let server = &server;
        async move {
            let form: Vec<(&str, &str)> =
                form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            token(server, &form, HeaderMap::new()).await
        }
    };
    let (status, _, body) = exchange(
        code.clone(),
        "wrong-verifier-wrong-verifier-wrong-verifier-0000".into(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );
    let (status, _, body) = exchange(code, verifier.clone()).await;
    assert_eq!(
        body["error"], "invalid_grant",
        "a code is used up by any attempt: {status} {body}"
    );

    let (verifier, challenge) = pkce();
    let location = authorize(&server, client_id, &challenge, OPERATOR_PASSWORD)
        .await
        .headers()[LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let code = query_param(&location, "code").unwrap();
    let (status, headers, tokens) = exchange(code.clone(), verifier.clone()).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], "autopilot:read autopilot:write");
    let (_, _, replay) = exchange(code, verifier).await;
    assert_eq!(replay["error"], "invalid_grant", "codes are single-use");

    // The access token opens /mcp; a forged one does not.
    let access = tokens["access_token"].as_str().unwrap();
    let with_token = no_redirects()
        .post(format!("{}/mcp", server.base_url))
        .bearer_auth(access)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_ne!(with_token.status(), StatusCode::UNAUTHORIZED);
    let forged = format!("{}x", &access[..access.len() - 1]);
    let rejected = no_redirects()
        .post(format!("{}/mcp", server.base_url))
        .bearer_auth(forged)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
    assert!(rejected.headers()[WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\""));

    // Refresh rotates; replaying the old refresh token revokes the whole grant.
    let old_refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |refresh_token: String| {
        let server = &server;
        async move {
            token(
                server,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh_token),
                    ("client_id", client_id),
                ],
                HeaderMap::new(),
            )
            .await
        }
    };
    let (status, _, rotated) = refresh(old_refresh.clone()).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_refresh = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(new_refresh, old_refresh);
    let (_, _, reused) = refresh(old_refresh).await;
    assert_eq!(reused["error"], "invalid_grant");
    assert!(
        reused["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{reused}"
    );
    let (_, _, after) = refresh(new_refresh).await;
    assert_eq!(
        after["error"], "invalid_grant",
        "the family is revoked with it"
    );
}

#[tokio::test]
async fn confidential_clients_authenticate_and_bad_registrations_are_refused() {
    let server = TestServer::builder().start().await;
    let (status, body) = register(
        &server,
        json!({ "redirect_uris": ["https://evil.example/callback"] }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_redirect_uri")),
        "{body}"
    );
    let (status, body) = register(
        &server,
        json!({ "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt" }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_client_metadata"))
    );

    let (status, registered) = register(
        &server,
        json!({ "redirect_uris": [REDIRECT, "https://claude.ai/api/mcp/auth_callback"] }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        registered["token_endpoint_auth_method"],
        "client_secret_basic"
    );
    let client_id = registered["client_id"].as_str().unwrap();
    let secret = registered["client_secret"].as_str().unwrap();

    // An unregistered redirect URI is never redirected to.
    let page = no_redirects()
        .get(format!("{}/authorize", server.base_url))
        .query(&[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", "http://127.0.0.1:1/other"),
            ("code_challenge", "x"),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.headers().get(LOCATION).is_none());
    // Without PKCE the client is told through its redirect URI.
    let page = no_redirects()
        .get(format!("{}/authorize", server.base_url))
        .query(&[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("state", "s"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::FOUND);
    let location = page.headers()[LOCATION].to_str().unwrap().to_owned();
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("invalid_request")
    );

    let (verifier, challenge) = pkce();
    let location = authorize(&server, client_id, &challenge, OPERATOR_PASSWORD)
        .await
        .headers()[LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let code = query_param(&location, "code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    let basic = |secret: &str| {
        let mut headers = HeaderMap::new();
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
        headers.insert(
            "authorization",
            format!("Basic {credentials}").parse().unwrap(),
        );
        headers
    };
    let (status, _, body) = token(&server, &form, basic("wrong-secret")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let (status, _, tokens) = token(&server, &form, basic(secret)).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");

    // Revocation ends the grant.
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    let revoked = no_redirects()
        .post(format!("{}/revoke", server.base_url))
        .headers(basic(secret))
        .form(&[("token", refresh_token)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let (_, _, body) = token(
        &server,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
        basic(secret),
    )
    .await;
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn the_test_switch_approves_without_the_consent_page() {
    let server = TestServer::builder().auto_approve().start().await;
    let (_, registered) = register(
        &server,
        json!({ "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none" }),
    )
    .await;
    let client_id = registered["client_id"].as_str().unwrap();
    let (verifier, challenge) = pkce();
    let response = no_redirects()
        .get(format!("{}/authorize", server.base_url))
        .query(&[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("resource", &format!("{}/mcp", server.base_url)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let code = query_param(response.headers()[LOCATION].to_str().unwrap(), "code").expect("code");
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
        ("client_id", client_id),
        ("resource", &format!("{}/mcp", server.base_url)),
    ];
    let (status, _, tokens) = token(&server, &form, HeaderMap::new()).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
}

/// Serves the documents `make(base_url)` returns (path → body) on a loopback port; returns the
/// base URL.
async fn serve_documents(make: impl FnOnce(&str) -> Vec<(&'static str, String)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut router = axum::Router::new();
    for (path, body) in make(&base) {
        router = router.route(
            path,
            axum::routing::get(
                move || async move { ([("content-type", "application/json")], body) },
            ),
        );
    }
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

async fn authorize_url_client(
    server: &TestServer,
    client_id: &str,
    challenge: &str,
) -> reqwest::Response {
    authorization_request(&server.base_url, client_id, REDIRECT, challenge, &[]).await
}

#[tokio::test]
async fn clients_identified_by_a_metadata_document_url() {
    let document = |client_id: String| {
        json!({ "client_id": client_id, "client_name": "Doc client", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none" })
            .to_string()
    };
    let base = serve_documents(|base| {
        vec![
            ("/good.json", document(format!("{base}/good.json"))),
            (
                "/mismatch.json",
                document("https://someone.else/client.json".into()),
            ),
            (
                "/huge.json",
                format!("{{\"pad\": \"{}\"}}", "x".repeat(10_000)),
            ),
        ]
    })
    .await;
    let good = format!("{base}/good.json");
    let (_, challenge) = pkce();

    // By default a plain-http, loopback document is refused: the SSRF guard.
    let strict = TestServer::builder().auto_approve().start().await;
    let refused = authorize_url_client(&strict, &good, &challenge).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(refused.text().await.unwrap().contains("must use https"));
    let private =
        authorize_url_client(&strict, "https://127.0.0.1:9/client.json", &challenge).await;
    assert!(
        private.text().await.unwrap().contains("non-public address"),
        "loopback is refused even over https"
    );

    let server = TestServer::builder()
        .auto_approve()
        .allow_private_metadata()
        .start()
        .await;
    let metadata: Value = no_redirects()
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            server.base_url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["client_id_metadata_document_supported"], true);
    let (verifier, challenge) = pkce();
    let approved = authorize_url_client(&server, &good, &challenge).await;
    assert_eq!(approved.status(), StatusCode::FOUND);
    let code = query_param(approved.headers()[LOCATION].to_str().unwrap(), "code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
        ("client_id", good.as_str()),
    ];
    let (status, _, tokens) = token(&server, &form, HeaderMap::new()).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");

    for (path, needle) in [
        ("/mismatch.json", "not the URL it was fetched from"),
        ("/huge.json", "larger than"),
    ] {
        let refused = authorize_url_client(&server, &format!("{base}{path}"), &challenge).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let page = refused.text().await.unwrap();
        assert!(page.contains(needle), "{path}: {page}");
    }
}

#[tokio::test]
async fn registration_is_rate_limited() {
    let server = TestServer::builder().start().await;
    let mut statuses = Vec::new();
    for _ in 0..25 {
        let response = no_redirects()
            .post(format!("{}/register", server.base_url))
            .json(&json!({ "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none" }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry_after >= 1);
            let body: Value = response.json().await.unwrap();
            assert!(body["error_description"]
                .as_str()
                .unwrap()
                .contains("too many"));
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        20,
        "the burst is 20"
    );
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
}

#[tokio::test]
async fn mcp_refuses_foreign_origins_and_hosts() {
    let server = TestServer::builder()
        .mcp_allowed_origins(&["https://mcp-client.example", "http://tools.example:*"])
        .start()
        .await;
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } }
    });
    let send = |origin: Option<&str>, host: Option<&str>| {
        let mut request = no_redirects()
            .post(format!("{}/mcp", server.base_url))
            .bearer_auth(autopilot_tests::harness::ADMIN_TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(host) = host {
            request = request.header("host", host);
        }
        request.send()
    };
    assert_eq!(send(None, None).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        send(Some(&server.base_url), None).await.unwrap().status(),
        StatusCode::OK,
        "its own origin is fine"
    );
    for allowed in [
        "https://mcp-client.example",
        "http://tools.example:8080",
        "http://tools.example",
    ] {
        assert_eq!(
            send(Some(allowed), None).await.unwrap().status(),
            StatusCode::OK,
            "{allowed} is in AUTOPILOT_MCP_ALLOWED_ORIGINS"
        );
    }
    for foreign in [
        "https://evil.example",
        "https://mcp-client.example:8443",
        "http://mcp-client.example",
    ] {
        assert_eq!(
            send(Some(foreign), None).await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "DNS rebinding: a foreign Origin ({foreign}) is refused"
        );
    }
    let foreign_host = send(None, Some("evil.example")).await.unwrap();
    assert!(
        foreign_host.status().is_client_error(),
        "a foreign Host is refused: {}",
        foreign_host.status()
    );
}

async fn call_mcp(server: &TestServer, access_token: &str) -> reqwest::Response {
    no_redirects()
        .post(format!("{}/mcp", server.base_url))
        .bearer_auth(access_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_expired_access_token_is_refused_with_the_reason() {
    let server = TestServer::builder()
        .auto_approve()
        .access_token_ttl(std::time::Duration::from_secs(1))
        .start()
        .await;
    let tokens = auto_approved_tokens(&server.base_url, REDIRECT, None).await;
    assert_eq!(tokens["expires_in"], 1);
    // One second of life and five of clock-skew leeway.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let refused = call_mcp(&server, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers()[WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\""));
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
}

#[tokio::test]
async fn a_token_for_another_resource_is_refused() {
    // Same data directory, so the same signing key, but another address: another resource.
    let data_dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let first = TestServer::builder()
        .data_dir(data_dir.clone())
        .auto_approve()
        .start()
        .await;
    let tokens = auto_approved_tokens(&first.base_url, REDIRECT, None).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_ne!(
        call_mcp(&first, &access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    first.stop().await.unwrap();
    let second = TestServer::builder().data_dir(data_dir).start().await;
    let refused = call_mcp(&second, &access).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("another"),
        "{body}"
    );
}
