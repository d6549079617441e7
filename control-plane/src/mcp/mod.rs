//! The MCP server: the same services as the HTTP API, as tools for Claude. Streamable HTTP at
//! `/mcp` (behind the API's authentication) and stdio through `autopilot mcp`.
//!
//! Being built (issue #3): nothing is served yet.

use std::sync::Arc;

use axum::Router;

use crate::app::App;

/// The `/mcp` endpoint. Requests reach it authenticated, with a [`crate::auth::Caller`] in
/// their extensions.
pub fn router(_app: Arc<App>) -> Router {
    Router::new().route("/", axum::routing::any(not_yet))
}

async fn not_yet() -> (axum::http::StatusCode, &'static str) {
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "the MCP tools are not served yet",
    )
}
