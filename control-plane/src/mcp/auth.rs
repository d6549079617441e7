//! Who may call `/mcp`: the admin token, or an OAuth access token issued for this resource by
//! the authorization server (`crate::oauth`). Without one the answer is 401 pointing at the
//! resource metadata, as MCP clients expect; a token without the scope a call needs gets 403
//! naming it (step-up authorization).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::App;
use crate::domain::auth::{Caller, Scopes, SCOPE_READ, SCOPE_WRITE};
use crate::domain::limits::MAX_REQUEST_BODY_BYTES;
use crate::http::closing;
use crate::http::oauth::oauth_error;
use crate::tokens;

/// Authenticates a call to `/mcp` and puts its [`Caller`] into the request's extensions.
pub async fn require_caller(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = tokens::bearer(request.headers()) else {
        return unauthorized(
            &app,
            None,
            "send an OAuth access token (or the admin token) as a bearer token",
        );
    };
    let caller = if app.keys.is_admin_token(token) {
        Caller::admin()
    } else {
        let config = &app.config;
        let verified = app
            .keys
            .signing()
            .verify(&config.oauth_issuer(), &config.mcp_resource(), token)
            .await;
        match verified {
            Ok(claims) => Caller {
                subject: claims.client_id,
                scopes: Scopes::parse(&claims.scope),
            },
            Err(refusal) => return unauthorized(&app, Some("invalid_token"), &refusal.to_string()),
        }
    };
    if !caller.scopes.read {
        return insufficient_scope(
            &app,
            SCOPE_READ,
            format!("the token needs the `{SCOPE_READ}` scope"),
        );
    }
    if !caller.scopes.write {
        // Step-up authorization: a call to a tool that changes state is refused at the HTTP level
        // so the client can ask the user for the wider scope.
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_REQUEST_BODY_BYTES).await else {
            return oauth_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "the request body is larger than 1 MiB",
            );
        };
        if let Some(tool) = state_changing_call(&bytes) {
            let scopes = format!("{SCOPE_READ} {SCOPE_WRITE}");
            return insufficient_scope(
                &app,
                &scopes,
                format!("`{tool}` changes state and needs the `{SCOPE_WRITE}` scope"),
            );
        }
        request = Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// 403 naming the scope the call needs (RFC 6750 §3.1, MCP step-up authorization).
fn insufficient_scope(app: &App, scope: &str, description: String) -> Response {
    let challenge = format!(
        "Bearer error=\"insufficient_scope\", scope=\"{scope}\", resource_metadata=\"{}\"",
        app.config.mcp_resource_metadata_url()
    );
    let mut response = oauth_error(StatusCode::FORBIDDEN, "insufficient_scope", description);
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    closing(response)
}

/// The name of a state-changing tool the JSON-RPC message (or batch) calls, if any.
fn state_changing_call(body: &[u8]) -> Option<String> {
    let message: serde_json::Value = serde_json::from_slice(body).ok()?;
    let messages = match message {
        serde_json::Value::Array(batch) => batch,
        single => vec![single],
    };
    messages.iter().find_map(|message| {
        let name = message.get("params")?.get("name")?.as_str()?;
        (message.get("method")?.as_str()? == "tools/call" && super::tools::changes_state(name))
            .then(|| name.to_owned())
    })
}

/// 401 with the challenge that starts a client's authorization: where the resource's metadata
/// is and which scopes to ask for (MCP authorization 2025-11-25 §Protected Resource Metadata
/// Discovery; RFC 6750 §3). A token that was refused is named with `error` and why with
/// `error_description` (RFC 6750 §3.1), kept to the printable ASCII
/// the RFC allows there, without quotes or backslashes.
fn unauthorized(app: &App, error: Option<&str>, description: &str) -> Response {
    let mut challenge = format!(
        "Bearer resource_metadata=\"{}\", scope=\"{SCOPE_READ} {SCOPE_WRITE}\"",
        app.config.mcp_resource_metadata_url()
    );
    if let Some(error) = error {
        let description: String = description
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control() && !matches!(c, '"' | '\\'))
            .collect();
        challenge.push_str(&format!(
            ", error=\"{error}\", error_description=\"{description}\""
        ));
    }
    let mut response = oauth_error(
        StatusCode::UNAUTHORIZED,
        error.unwrap_or("invalid_request"),
        description,
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    closing(response)
}
