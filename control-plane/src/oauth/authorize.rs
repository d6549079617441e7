//! `/authorize`: the operator's login and consent page, and the code it issues.

use std::sync::Arc;

use crate::app::App;
use crate::domain::auth::Scopes;
use crate::domain::oauth::AuthCode;
use crate::http::oauth::no_store;
use crate::services::oauth;
use crate::tokens;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use chrono::Utc;
use serde::Deserialize;

const CSRF_COOKIE: &str = "ap_csrf";
/// How long an authorization code stays valid.
const CODE_TTL_SECS: i64 = 60;

#[derive(Deserialize, Default, Clone)]
pub struct AuthorizeParams {
    #[serde(default)]
    response_type: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    redirect_uri: String,
    #[serde(default)]
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    resource: Option<String>,
}

#[derive(Deserialize)]
pub struct Decision {
    #[serde(flatten)]
    params: AuthorizeParams,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    decision: String,
}

/// A request that passed every check, and what it asks for.
struct Valid {
    client_name: String,
    scope: String,
}

enum Refusal {
    /// The redirect URI cannot be trusted: show the error, never redirect.
    Page(String),
    /// Tell the client through its redirect URI.
    Redirect {
        error: &'static str,
        description: String,
    },
}

async fn validate(app: &App, params: &AuthorizeParams) -> Result<Valid, Refusal> {
    let client = match super::find_client(app, &params.client_id).await {
        Ok(Some(client)) => client,
        Ok(None) => {
            return Err(Refusal::Page(format!(
                "unknown client `{}`; register it first",
                params.client_id
            )))
        }
        Err(reason) => {
            return Err(Refusal::Page(format!(
                "cannot use client `{}`: {reason}",
                params.client_id
            )))
        }
    };
    if !client
        .redirect_uris
        .iter()
        .any(|uri| uri == &params.redirect_uri)
    {
        return Err(Refusal::Page(
            "the redirect_uri is not one this client registered (it must match exactly)".into(),
        ));
    }
    let redirect = |error, description: &str| {
        Err(Refusal::Redirect {
            error,
            description: description.to_owned(),
        })
    };
    if params.response_type != "code" {
        return redirect("unsupported_response_type", "response_type must be `code`");
    }
    if params.code_challenge_method != "S256" || params.code_challenge.len() < 43 {
        return redirect(
            "invalid_request",
            "PKCE is required: send code_challenge with code_challenge_method=S256",
        );
    }
    if let Some(asked) = &params.resource {
        if asked.trim_end_matches('/') != app.config.mcp_resource() {
            return redirect(
                "invalid_target",
                "resource must be this server's MCP endpoint",
            );
        }
    }
    let asked = Scopes::parse(params.scope.as_deref().unwrap_or(&client.scope));
    let allowed = Scopes::parse(&client.scope);
    let granted = Scopes {
        read: asked.read && allowed.read,
        write: asked.write && allowed.write,
    };
    if granted == Scopes::default() {
        return redirect(
            "invalid_scope",
            "ask for autopilot:read and/or autopilot:write",
        );
    }
    Ok(Valid {
        client_name: client.client_name.unwrap_or(client.client_id),
        scope: granted.to_string(),
    })
}

/// The consent form's CSRF cookie: `Secure` (sent over HTTPS only) when Autopilot is reached
/// over HTTPS.
fn csrf_cookie(csrf: &str, public_url: &str) -> String {
    let secure = if public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!("{CSRF_COOKIE}={csrf}; Path=/authorize; HttpOnly; SameSite=Strict; Max-Age=600{secure}")
}

pub async fn show(State(app): State<Arc<App>>, Query(params): Query<AuthorizeParams>) -> Response {
    match validate(&app, &params).await {
        Ok(valid) => {
            if app.config.oauth_auto_approve {
                return approve(&app, &params, &valid).await;
            }
            let csrf = tokens::mint(tokens::OAUTH_PREFIX);
            let mut response = page(&params, &valid, &csrf, None, StatusCode::OK);
            let cookie = csrf_cookie(&csrf, &app.config.public_url);
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(refusal) => refuse(&app, &params, refusal),
    }
}

pub async fn decide(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<Decision>,
) -> Response {
    let params = form.params;
    let valid = match validate(&app, &params).await {
        Ok(valid) => valid,
        Err(refusal) => return refuse(&app, &params, refusal),
    };
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            pair.trim()
                .strip_prefix(&format!("{CSRF_COOKIE}="))
                .map(str::to_owned)
        })
        .next()
        .unwrap_or_default();
    if form.csrf.is_empty() || !tokens::same(form.csrf.as_bytes(), cookie.as_bytes()) {
        return no_store((StatusCode::FORBIDDEN, Html("The form expired or came from elsewhere (CSRF check failed). Start the connection again.")).into_response());
    }
    if form.decision != "approve" {
        return refuse(
            &app,
            &params,
            Refusal::Redirect {
                error: "access_denied",
                description: "the operator declined".into(),
            },
        );
    }
    if !app.keys.operator_password_matches(&form.password) {
        tracing::warn!(client.id = %params.client_id, "wrong operator password on the consent page");
        return page(
            &params,
            &valid,
            &form.csrf,
            Some("Wrong password."),
            StatusCode::UNAUTHORIZED,
        );
    }
    approve(&app, &params, &valid).await
}

/// Issues a code for an approved request and sends the browser back to the client.
async fn approve(app: &App, params: &AuthorizeParams, valid: &Valid) -> Response {
    let code = tokens::mint(tokens::OAUTH_PREFIX);
    let stored = AuthCode {
        code_hash: tokens::digest_hex(&code),
        client_id: params.client_id.clone(),
        redirect_uri: params.redirect_uri.clone(),
        code_challenge: params.code_challenge.clone(),
        resource: app.config.mcp_resource(),
        scope: valid.scope.clone(),
        expires_at: Utc::now() + chrono::Duration::seconds(CODE_TTL_SECS),
    };
    if let Err(err) = oauth::save_code(app, &stored).await {
        tracing::error!(error = %err, "storing an authorization code failed");
        return refuse(
            app,
            params,
            Refusal::Redirect {
                error: "temporarily_unavailable",
                description: "try again".into(),
            },
        );
    }
    tracing::info!(client.id = %params.client_id, scope = %valid.scope, "operator approved an oauth client");
    redirect_to(app, params, &[("code", code.as_str())])
}

fn refuse(app: &App, params: &AuthorizeParams, refusal: Refusal) -> Response {
    match refusal {
        Refusal::Page(message) => {
            let body = format!(
                "<!doctype html><title>Autopilot</title><h1>Cannot connect</h1><p>{}</p>",
                escape(&message)
            );
            no_store((StatusCode::BAD_REQUEST, Html(body)).into_response())
        }
        Refusal::Redirect { error, description } => redirect_to(
            app,
            params,
            &[
                ("error", error),
                ("error_description", description.as_str()),
            ],
        ),
    }
}

/// 302 to the client's redirect URI with `extra`, `state` and `iss` (RFC 9207).
fn redirect_to(app: &App, params: &AuthorizeParams, extra: &[(&str, &str)]) -> Response {
    let issuer = app.config.oauth_issuer();
    let mut query: Vec<(&str, &str)> = extra.to_vec();
    if let Some(state) = &params.state {
        query.push(("state", state));
    }
    query.push(("iss", &issuer));
    let encoded: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect();
    let separator = if params.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!("{}{separator}{}", params.redirect_uri, encoded.join("&"));
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    no_store(response)
}

fn page(
    params: &AuthorizeParams,
    valid: &Valid,
    csrf: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let hidden: String = [
        ("response_type", params.response_type.as_str()),
        ("client_id", &params.client_id),
        ("redirect_uri", &params.redirect_uri),
        ("code_challenge", &params.code_challenge),
        ("code_challenge_method", &params.code_challenge_method),
        ("state", params.state.as_deref().unwrap_or_default()),
        ("scope", &valid.scope),
        ("resource", params.resource.as_deref().unwrap_or_default()),
        ("csrf", csrf),
    ]
    .iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(name, value)| {
        format!(
            "<input type=hidden name=\"{name}\" value=\"{}\">",
            escape(value)
        )
    })
    .collect();
    let can_write = Scopes::parse(&valid.scope).write;
    let body = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>Connect to Autopilot</title>\
         <style>body{{font-family:system-ui;max-width:32rem;margin:3rem auto}}.error{{color:#b00}}</style></head><body>\
         <h1>Connect “{name}” to Autopilot?</h1>\
         <p>It will be able to <b>read</b> jobs, runs and their output{write}.</p>\
         <p>It will come back to <code>{redirect}</code>.</p>\
         {error}<form method=post action=/authorize>{hidden}\
         <label>Operator password <input type=password name=password autofocus autocomplete=current-password></label>\
         <p><button name=decision value=approve>Allow</button> <button name=decision value=deny>Deny</button></p>\
         </form></body></html>",
        name = escape(&valid.client_name),
        write = if can_write { ", and <b>create, change, run and stop</b> them" } else { "" },
        redirect = escape(&params.redirect_uri),
        error = error.map(|e| format!("<p class=error>{}</p>", escape(e))).unwrap_or_default(),
    );
    let mut response = (status, Html(body)).into_response();
    // The page must not be framed (clickjacking the consent button).
    response
        .headers_mut()
        .insert("x-frame-options", HeaderValue::from_static("DENY"));
    response.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static("frame-ancestors 'none'; default-src 'self' 'unsafe-inline'"),
    );
    no_store(response)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_cookie_is_secure_when_autopilot_is_reached_over_https() {
        let cookie = csrf_cookie("ap_oauth_x", "https://autopilot.example.com");
        assert!(cookie.ends_with("; Secure"), "{cookie}");
        assert!(cookie.contains("HttpOnly; SameSite=Strict"), "{cookie}");
        let cookie = csrf_cookie("ap_oauth_x", "http://127.0.0.1:8080");
        assert!(!cookie.contains("Secure"), "{cookie}");
    }
}
