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
