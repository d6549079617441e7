//! Client ID Metadata Documents: a client whose `client_id` is an HTTPS URL publishes its
//! metadata at that URL, so it needs no registration. Fetching someone else's URL from inside the
//! server is an SSRF risk, so the fetch is fenced: HTTPS only, public addresses only (the checked
//! address is the one connected to, so DNS cannot be rebound in between), no redirects, a size
//! and a time limit, and a cache so one client cannot make us fetch on every request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Deserialize;

use super::redirect_uri_allowed;
use crate::app::App;
use crate::domain::auth::{SCOPE_READ, SCOPE_WRITE};
use crate::domain::oauth::OAuthClient;
use autopilot_proto::address::is_public;

const MAX_DOCUMENT_BYTES: usize = 5 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const CACHE_TTL: Duration = Duration::from_secs(600);

#[derive(Deserialize)]
struct Document {
    client_id: String,
    #[serde(default)]
    client_name: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
}

/// Whether a `client_id` names a metadata document rather than a registered client.
pub fn is_metadata_url(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

fn cache() -> &'static Mutex<HashMap<String, (OAuthClient, Instant)>> {
    static CACHE: std::sync::OnceLock<Mutex<HashMap<String, (OAuthClient, Instant)>>> =
        std::sync::OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The client a metadata document describes, fetched or from the cache. The error says what
/// was wrong with the URL or the document.
pub async fn resolve(app: &App, client_id: &str) -> Result<OAuthClient, String> {
    if let Some((client, fetched)) = cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(client_id)
    {
        if fetched.elapsed() < CACHE_TTL {
            return Ok(client.clone());
        }
    }
    let allow_private = app.config.oauth_allow_private_metadata;
    let url = reqwest::Url::parse(client_id)
        .map_err(|err| format!("client_id is not a valid URL: {err}"))?;
    if url.scheme() != "https" && !(allow_private && url.scheme() == "http") {
        return Err("a client_id URL must use https".into());
    }
    if url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.path() == "/"
    {
        return Err("a client_id URL needs a path, and no fragment or credentials".into());
    }
    let host = url
        .host_str()
        .ok_or("the client_id URL has no host")?
        .to_owned();
    let port = url
        .port_or_known_default()
        .ok_or("the client_id URL has no port")?;
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|err| format!("cannot resolve {host}: {err}"))?
        .collect();
    let address = addresses
        .first()
        .copied()
        .ok_or_else(|| format!("{host} has no address"))?;
    if let Some(private) = addresses.iter().find(|a| !is_public(a.ip())) {
        if !allow_private {
            return Err(format!(
                "{host} resolves to a non-public address ({}); metadata documents must be public",
                private.ip()
            ));
        }
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT)
        .resolve(&host, address)
        .build()
        .map_err(|err| format!("cannot build an HTTP client: {err}"))?;
    let mut response = client
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|err| format!("fetching the client metadata document failed: {err}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "the client metadata document answered {}",
            response.status()
        ));
    }
    if response
        .content_length()
        .is_some_and(|length| length as usize > MAX_DOCUMENT_BYTES)
    {
        return Err(format!(
            "the client metadata document is larger than {MAX_DOCUMENT_BYTES} bytes"
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| format!("reading the client metadata document failed: {err}"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(format!(
                "the client metadata document is larger than {MAX_DOCUMENT_BYTES} bytes"
            ));
        }
    }
    let document: Document = serde_json::from_slice(&body)
        .map_err(|err| format!("the client metadata document is not valid JSON metadata: {err}"))?;
    if document.client_id != client_id {
        return Err("the document's client_id is not the URL it was fetched from".into());
    }
    if document.redirect_uris.is_empty() {
        return Err("the document lists no redirect_uris".into());
    }
    if let Some(bad) = document
        .redirect_uris
        .iter()
        .find(|uri| !redirect_uri_allowed(&app.config.oauth_redirect_allowlist, uri))
    {
        return Err(format!("redirect URI `{bad}` is not allowed"));
    }
    match document.token_endpoint_auth_method.as_deref() {
        None | Some("none") => {}
        Some(other) => return Err(format!("token_endpoint_auth_method `{other}` is not supported for metadata documents; use none")),
    }
    let client = OAuthClient {
        client_id: client_id.to_owned(),
        secret_hash: None,
        auth_method: "none".into(),
        redirect_uris: document.redirect_uris,
        client_name: document
            .client_name
            .map(|name| name.chars().take(200).collect()),
        scope: format!("{SCOPE_READ} {SCOPE_WRITE}"),
        created_at: Utc::now(),
    };
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(client_id.to_owned(), (client.clone(), Instant::now()));
    Ok(client)
}
