//! The error and caching rules of OAuth responses, shared by the authorization server
//! (`crate::oauth`) and the resource it protects (`crate::mcp`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// OAuth responses carrying secrets must never be cached.
pub fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// An OAuth error response (RFC 6749 §5.2).
pub fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    let body = Json(json!({ "error": error, "error_description": description.into() }));
    no_store((status, body).into_response())
}
