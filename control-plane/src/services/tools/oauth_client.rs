//! Autopilot as the OAuth client of a remote MCP server that needs OAuth (many hosted ones do).
//! An operator connects a registered `http` server once: Autopilot discovers its authorization
//! server (RFC 9728 protected resource metadata, then RFC 8414 metadata), registers itself
//! there (RFC 7591 dynamic registration), and hands back an authorization URL (code flow with
//! PKCE, S256) to open in a browser. The redirect comes back to `/oauth/servers/callback`, where
//! the code is exchanged. The tokens go to the vault, sealed like any credential; a run granted
//! the server gets only the access token, in its `Authorization` header, refreshed before it is
//! handed out when it is about to expire. The refresh token never leaves the control plane.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::credentials::{open_credentials, set_credential};
use super::servers::find_server;
use crate::app::App;
use crate::domain::tools::{McpServer, ServerOAuth, Transport};
use crate::domain::{ServiceError, ServiceResult};

/// Where the authorization server sends the operator's browser back.
pub const CALLBACK_PATH: &str = "/oauth/servers/callback";
/// How long an authorization started may take to come back.
const PENDING_TTL_SECS: i64 = 15 * 60;
/// An access token expiring sooner than this is refreshed before a run gets it.
const REFRESH_MARGIN_SECS: i64 = 120;
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// An authorization started, kept (under its `state`) until the browser comes back.
#[derive(Serialize, Deserialize)]
struct Pending {
    server: String,
    verifier: String,
    client_id: String,
    token_endpoint: String,
    redirect_uri: String,
    resource: String,
    started_at: DateTime<Utc>,
}

fn pending_key(state: &str) -> String {
    format!("oauth_client_pending:{state}")
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a default HTTP client always builds")
}

fn failed(what: &str, detail: impl std::fmt::Display) -> ServiceError {
    ServiceError::invalid("server", format!("{what}: {detail}"))
}

async fn get_json(client: &reqwest::Client, url: &str, what: &str) -> ServiceResult<Value> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|err| failed(what, format!("{url} cannot be reached ({err})")))?;
    if !response.status().is_success() {
        return Err(failed(
            what,
            format!("{url} answered HTTP {}", response.status()),
        ));
    }
    response
        .json()
        .await
        .map_err(|err| failed(what, format!("{url} is not JSON ({err})")))
}

/// The protected resource metadata's URL for `resource` (RFC 9728: the well-known path is
/// inserted before the resource's path).
fn resource_metadata_url(resource: &reqwest::Url) -> String {
    let path = resource.path().trim_end_matches('/');
    format!(
        "{}/.well-known/oauth-protected-resource{path}",
        resource.origin().ascii_serialization()
    )
}

/// The authorization server metadata's URL for `issuer` (RFC 8414).
fn server_metadata_url(issuer: &reqwest::Url) -> String {
    let path = issuer.path().trim_end_matches('/');
    format!(
        "{}/.well-known/oauth-authorization-server{path}",
        issuer.origin().ascii_serialization()
    )
}

fn text<'a>(document: &'a Value, field: &str, what: &str) -> ServiceResult<&'a str> {
    document
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| failed(what, format!("it names no `{field}`")))
}

/// What `start` answers: the URL the operator opens to let Autopilot in.
#[derive(Serialize, Debug)]
pub struct Started {
    pub server: String,
    pub authorization_url: String,
    /// Where the authorization server will send the browser back.
    pub redirect_uri: String,
    pub expires_in_secs: i64,
}

/// A client the operator registered with the authorization server themselves (for one that
/// offers no dynamic registration).
#[derive(Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct GivenClient {
    /// The client id the authorization server gave.
    pub client_id: String,
    /// Its secret, for a confidential client (kept in the vault, sent to the token endpoint).
    #[serde(default)]
    pub client_secret: Option<String>,
}

/// Starts connecting the `http` server `name`: discovery, registration (unless `given`), and
/// the authorization URL for the operator's browser.
pub async fn start(app: &App, name: &str, given: Option<GivenClient>) -> ServiceResult<Started> {
    let server = find_server(app, name).await?;
    let Transport::Http { url, .. } = &server.transport else {
        return Err(ServiceError::invalid(
            "server",
            format!("`{name}` is not a remote (http) server; only those connect with OAuth"),
        ));
    };
    let resource = reqwest::Url::parse(url).map_err(|err| failed("the server's URL", err))?;
    let http = client();
    let metadata = get_json(
        &http,
        &resource_metadata_url(&resource),
        "the server's protected resource metadata",
    )
    .await?;
    let issuer = metadata
        .get("authorization_servers")
        .and_then(Value::as_array)
        .and_then(|servers| servers.first())
        .and_then(Value::as_str)
        .ok_or_else(|| {
            failed(
                "the server's protected resource metadata",
                "it names no authorization server",
            )
        })?;
    let issuer = reqwest::Url::parse(issuer).map_err(|err| failed("its issuer", err))?;
    let what = "its authorization server's metadata";
    let server_metadata = get_json(&http, &server_metadata_url(&issuer), what).await?;
    let authorization_endpoint = text(&server_metadata, "authorization_endpoint", what)?;
    let token_endpoint = text(&server_metadata, "token_endpoint", what)?.to_owned();
    let redirect_uri = format!("{}{CALLBACK_PATH}", app.config.public_url);
    let client_id = match given {
        Some(given) => {
            if let Some(secret) = &given.client_secret {
                set_credential(app, &ServerOAuth::client_secret_credential(name), secret).await?;
            }
            given.client_id
        }
        None => register(&http, &server_metadata, &redirect_uri).await?,
    };

    let verifier = random_token();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    let state = random_token();
    let pending = Pending {
        server: name.to_owned(),
        verifier,
        client_id: client_id.clone(),
        token_endpoint,
        redirect_uri: redirect_uri.clone(),
        resource: url.clone(),
        started_at: Utc::now(),
    };
    let pending_json = serde_json::to_string(&pending).map_err(anyhow::Error::new)?;
    app.store
        .put_setting(&pending_key(&state), &pending_json)
        .await?;
    let mut authorization_url = reqwest::Url::parse(authorization_endpoint)
        .map_err(|err| failed(what, format!("its authorization endpoint ({err})")))?;
    authorization_url
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", &state)
        .append_pair("resource", url);
    tracing::info!(server.name = %name, "OAuth connection started");
    Ok(Started {
        server: name.to_owned(),
        authorization_url: authorization_url.to_string(),
        redirect_uri,
        expires_in_secs: PENDING_TTL_SECS,
    })
}

/// Registers Autopilot with the authorization server (RFC 7591) as a public client; its id.
async fn register(
    http: &reqwest::Client,
    server_metadata: &Value,
    redirect_uri: &str,
) -> ServiceResult<String> {
    let what = "its authorization server's metadata";
    let endpoint = text(server_metadata, "registration_endpoint", what).map_err(|_| {
        failed(
            what,
            "it offers no dynamic client registration: register a client there yourself and \
             give its `client_id` (and `client_secret`)",
        )
    })?;
    let registration = serde_json::json!({
        "client_name": "Autopilot",
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    let what = "registering with the authorization server";
    let registered = http
        .post(endpoint)
        .json(&registration)
        .send()
        .await
        .map_err(|err| failed(what, err))?;
    if !registered.status().is_success() {
        let status = registered.status();
        let body: String = registered
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        return Err(failed(what, format!("HTTP {status}: {body}")));
    }
    let registered: Value = registered.json().await.map_err(|err| failed(what, err))?;
    Ok(text(&registered, "client_id", "the registration's answer")?.to_owned())
}

/// The given client's secret, if the operator gave one.
fn client_secret(
    app: &App,
    stored: &[crate::domain::tools::Credential],
    server: &str,
) -> Option<String> {
    let name = ServerOAuth::client_secret_credential(server);
    open_credentials(app, stored, std::slice::from_ref(&name))
        .ok()
        .and_then(|secrets| secrets.get(&name).cloned())
}

#[derive(Deserialize)]
struct Tokens {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

/// Posts `form` to the token endpoint, with the client's secret when it has one.
async fn token_request(
    endpoint: &str,
    form: &[(&str, &str)],
    secret: Option<&str>,
) -> ServiceResult<Tokens> {
    let mut form = form.to_vec();
    if let Some(secret) = secret {
        form.push(("client_secret", secret));
    }
    let response = client()
        .post(endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|err| failed("the token endpoint", err))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let error = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no error code");
        return Err(failed(
            "the token endpoint",
            format!("HTTP {status} ({error})"),
        ));
    }
    serde_json::from_value(body).map_err(|err| failed("the token endpoint's answer", err))
}

/// Keeps `tokens` for `server`: both sealed in the vault, the expiry on the server.
async fn keep(
    app: &App,
    mut server: McpServer,
    oauth: ServerOAuth,
    tokens: Tokens,
) -> ServiceResult<()> {
    set_credential(
        app,
        &ServerOAuth::access_credential(&server.name),
        &tokens.access_token,
    )
    .await?;
    if let Some(refresh) = &tokens.refresh_token {
        set_credential(app, &ServerOAuth::refresh_credential(&server.name), refresh).await?;
    }
    let now = Utc::now();
    server.oauth = Some(ServerOAuth {
        expires_at: tokens
            .expires_in
            .map(|secs| now + chrono::Duration::seconds(secs)),
        connected_at: Some(now),
        ..oauth
    });
    server.updated_at = now;
    app.store.update_server(&server).await?;
    Ok(())
}

/// The browser came back with `code` for the authorization `state`: the code is exchanged and
/// the tokens kept. Answers the server's name.
pub async fn finish(app: &App, state: &str, code: &str) -> ServiceResult<String> {
    let key = pending_key(state);
    let Some(pending) = app.store.get_setting(&key).await? else {
        return Err(ServiceError::invalid(
            "state",
            "no OAuth connection was started with this state (or it finished already); start \
             again with POST /api/v1/servers/{name}/oauth",
        ));
    };
    // Used once, whatever comes of it.
    app.store.put_setting(&key, "").await?;
    let pending: Pending = serde_json::from_str(&pending).map_err(|_| {
        ServiceError::invalid(
            "state",
            "this OAuth connection was already used; start again",
        )
    })?;
    if (Utc::now() - pending.started_at).num_seconds() > PENDING_TTL_SECS {
        return Err(ServiceError::invalid(
            "state",
            "this OAuth connection was started more than 15 minutes ago; start again",
        ));
    }
    let stored = app.store.list_credentials().await?;
    let secret = client_secret(app, &stored, &pending.server);
    let tokens = token_request(
        &pending.token_endpoint,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &pending.redirect_uri),
            ("client_id", &pending.client_id),
            ("code_verifier", &pending.verifier),
            ("resource", &pending.resource),
        ],
        secret.as_deref(),
    )
    .await?;
    let server = find_server(app, &pending.server).await?;
    let oauth = ServerOAuth {
        client_id: pending.client_id,
        token_endpoint: pending.token_endpoint,
        resource: pending.resource,
        expires_at: None,
        connected_at: None,
    };
    keep(app, server, oauth, tokens).await?;
    tracing::info!(server.name = %pending.server, "OAuth connection made");
    Ok(pending.server)
}

/// Refreshes `server`'s access token with its refresh token.
pub async fn refresh(app: &App, server: McpServer) -> ServiceResult<()> {
    let Some(oauth) = server.oauth.clone() else {
        return Err(ServiceError::invalid(
            "server",
            format!("`{}` is not connected with OAuth", server.name),
        ));
    };
    let name = ServerOAuth::refresh_credential(&server.name);
    let stored = app.store.list_credentials().await?;
    let secrets = open_credentials(app, &stored, std::slice::from_ref(&name)).map_err(|_| {
        ServiceError::invalid(
            "server",
            format!(
                "`{}` has no refresh token; connect it again with POST \
                 /api/v1/servers/{}/oauth",
                server.name, server.name
            ),
        )
    })?;
    let refresh_token = secrets.get(&name).cloned().unwrap_or_default();
    let secret = client_secret(app, &stored, &server.name);
    let tokens = token_request(
        &oauth.token_endpoint,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
            ("client_id", &oauth.client_id),
            ("resource", &oauth.resource),
        ],
        secret.as_deref(),
    )
    .await?;
    keep(app, server, oauth, tokens).await
}

/// The registry's servers as a claim hands them out: each server connected with OAuth gets
/// `Authorization: Bearer ${<its access token>}`, refreshed first when it is about to expire
/// (a refresh that fails is logged; the run then fails at the server with its expired token).
pub async fn with_access_tokens(app: &App, servers: Vec<McpServer>) -> Vec<McpServer> {
    let mut handed = Vec::with_capacity(servers.len());
    for mut server in servers {
        if let Some(oauth) = server.oauth.clone() {
            let soon = Utc::now() + chrono::Duration::seconds(REFRESH_MARGIN_SECS);
            if oauth.expires_at.is_some_and(|at| at < soon) {
                match refresh(app, server.clone()).await {
                    Ok(()) => {
                        tracing::info!(server.name = %server.name, "OAuth access token refreshed")
                    }
                    Err(err) => {
                        tracing::warn!(server.name = %server.name, error = %err, "OAuth access token not refreshed")
                    }
                }
            }
            if let Transport::Http { headers, .. } = &mut server.transport {
                let credential = ServerOAuth::access_credential(&server.name);
                headers.insert("Authorization".into(), format!("Bearer ${{{credential}}}"));
            }
        }
        handed.push(server);
    }
    handed
}
