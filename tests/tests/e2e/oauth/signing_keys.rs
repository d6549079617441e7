//! Rotating the keys that sign access tokens with the `autopilot signing-key rotate` command,
//! run as the operator would, against the database of a running server: no client is logged
//! out, new tokens name the new key, and the tokens of a dropped key get 401 with the reason.

use std::process::Command;

use autopilot_tests::clients::{auto_approved_tokens, no_redirects};
use autopilot_tests::components;
use autopilot_tests::harness::TestServer;
use base64::Engine;
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{call_mcp, REDIRECT};

/// A JWT's header or claims (`part` 0 or 1), decoded without checking anything.
fn jwt_part(token: &str, part: usize) -> Value {
    let encoded = token.split('.').nth(part).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

fn kid_of(token: &str) -> String {
    jwt_part(token, 0)["kid"]
        .as_str()
        .expect("the token names its key")
        .to_owned()
}

/// Runs `autopilot signing-key rotate` on the server's installation; returns what it printed.
fn rotate(bin: &std::path::Path, server: &TestServer, extra: &[&str]) -> String {
    let output = Command::new(bin)
        .args(["signing-key", "rotate"])
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUTOPILOT_DATA_DIR", server.data_dir.path())
        .env("AUTOPILOT_DATABASE_URL", &server.database_url)
        .output()
        .expect("run autopilot signing-key rotate");
    let printed = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "rotate failed: {printed}");
    printed
}

/// A refresh-token grant for the public client the access token was issued to.
async fn refresh(server: &TestServer, access_token: &str, refresh_token: &str) -> Value {
    let client_id = jwt_part(access_token, 1)["client_id"]
        .as_str()
        .expect("client_id claim")
        .to_owned();
    let response = no_redirects()
        .post(format!("{}/token", server.base_url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn assert_accepted(server: &TestServer, access_token: &str, what: &str) {
    let status = call_mcp(server, access_token).await.status();
    assert!(
        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
        "{what}: {status}"
    );
}

#[tokio::test]
async fn a_rotated_signing_key_logs_nobody_out_and_a_dropped_one_is_refused_with_the_reason() {
    let Some(bin) = components::autopilot_bin() else {
        return;
    };
    let server = TestServer::builder().auto_approve().start().await;
    let issued = auto_approved_tokens(&server.base_url, REDIRECT, None).await;
    let before = issued["access_token"].as_str().unwrap().to_owned();
    let first_kid = kid_of(&before);
    assert_accepted(&server, &before, "a fresh token").await;

    // Rotation: the old key is told to verify on for the token lifetime and a margin.
    let printed = rotate(&bin, &server, &[]);
    assert!(
        printed.contains(&format!("Key {first_kid} still verifies")),
        "{printed}"
    );
    assert_accepted(&server, &before, "a token issued before the rotation").await;

    // Tokens issued now name the new key, and pass too.
    let refreshed = refresh(&server, &before, issued["refresh_token"].as_str().unwrap()).await;
    let after = refreshed["access_token"].as_str().unwrap().to_owned();
    let second_kid = kid_of(&after);
    assert_ne!(second_kid, first_kid);
    assert!(printed.contains(&second_kid), "{printed}");
    assert_accepted(&server, &after, "a token issued after the rotation").await;
    assert_accepted(&server, &before, "the old token, still").await;

    // An emergency rotation drops every earlier key at once.
    let printed = rotate(&bin, &server, &["--revoke-previous"]);
    assert!(printed.contains("dropped"), "{printed}");
    let latest = refresh(
        &server,
        &after,
        refreshed["refresh_token"].as_str().unwrap(),
    )
    .await;
    let latest = latest["access_token"].as_str().unwrap().to_owned();
    let third_kid = kid_of(&latest);
    assert!(third_kid != first_kid && third_kid != second_kid);
    assert_accepted(&server, &latest, "a token of the new key").await;
    for (token, what) in [(&before, "first"), (&after, "second")] {
        let refused = call_mcp(&server, token).await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{what} key");
        let challenge = refused.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.contains("error=\"invalid_token\"")
                && challenge.contains("error_description=\"the access token was signed with a key that has been retired"),
            "{what} key: {challenge}"
        );
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], json!("invalid_token"));
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("retired"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn rotating_without_the_installations_secret_key_says_what_to_set() {
    let Some(bin) = components::autopilot_bin() else {
        return;
    };
    let server = TestServer::builder().start().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let output = Command::new(&bin)
        .args(["signing-key", "rotate"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUTOPILOT_DATA_DIR", elsewhere.path())
        .env("AUTOPILOT_DATABASE_URL", &server.database_url)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(printed.contains("AUTOPILOT_SECRET_KEY"), "{printed}");
    assert!(!elsewhere.path().join("secret.key").exists());
}
