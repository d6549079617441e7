//! The OAuth 2.1 authorization server's endpoints (`/register`, `/authorize`, `/token`,
//! `/revoke`, metadata) taking any parameters, through the real router on a real store (SQLite in
//! memory), as a client or a browser would send them.
//!
//! Input: up to four requests separated by lines `===`, each `METHOD PATH?QUERY`, `name: value`
//! header lines, an empty line, and the body. Placeholders reach what a fuzzer cannot guess:
//! `{public}` and `{confidential}` are clients registered at start (`{secret}` the second's
//! secret, `{basic}` its `Authorization: Basic` credentials), `{redirect}` their redirect URI,
//! `{resource}` the MCP endpoint, `{code}` an authorization code issued to `{public}` for this
//! input with `{verifier}` its PKCE verifier, `{refresh}` a refresh token of `{public}` issued for
//! this input, `{registered}` and `{registered_secret}` the client an earlier `/register` of the
//! input created. A `client_id` that is a URL is left out: the server would fetch its metadata
//! document from the network (that fetch has tests of its own).
//!
//! Properties: no request gets a 5xx or makes a handler panic; a redirect only ever goes to an
//! allowed redirect URI, the one the request named; a token endpoint success carries an access
//! token this server's key accepts, for this issuer and audience, with the scope it says; a code
//! is redeemed and a refresh token used at most once; and no page the server renders carries a
//! script.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use autopilot_control_plane::app::{App, Parts};
use autopilot_control_plane::config::{Config, ConfigArgs};
use autopilot_control_plane::domain::auth::Scopes;
use autopilot_control_plane::domain::oauth::{AuthCode, OAuthClient, RefreshToken};
use autopilot_control_plane::keys::Keys;
use autopilot_control_plane::lease::StoreLease;
use autopilot_control_plane::metrics::Metrics;
use autopilot_control_plane::oauth::{redirect_uri_allowed, router};
use autopilot_control_plane::seal::Sealer;
use autopilot_control_plane::services::oauth as grants;
use autopilot_control_plane::store;
use autopilot_control_plane::tokens;
use autopilot_fuzz::{header_lines, header_map};
use autopilot_proto::InMemoryBus;
use axum::body::Body;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chrono::Utc;
use http::{Method, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const PUBLIC_URL: &str = "https://autopilot.example";
const REDIRECT: &str = "https://claude.ai/api/mcp/auth_callback";
const PUBLIC_CLIENT: &str = "apc_fuzz_public";
const CONFIDENTIAL_CLIENT: &str = "apc_fuzz_confidential";
const CLIENT_SECRET: &str = "fuzz-client-secret";
const VERIFIER: &str = "fuzz-verifier-fuzz-verifier-fuzz-verifier-0123456789";
const BOTH_SCOPES: &str = "autopilot:read autopilot:write";
const MAX_REQUESTS: usize = 4;
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The server the requests go to, made once per process.
struct Server {
    runtime: Runtime,
    app: Arc<App>,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let app = runtime.block_on(start()).expect("the OAuth server starts");
        Server { runtime, app }
    })
}

async fn start() -> anyhow::Result<Arc<App>> {
    // A fresh SQLite file of this process's own (an in-memory database would be a different
    // one for each of the store's connections, and the store reads and writes on several).
    let dir = std::env::temp_dir().join(format!("autopilot-fuzz-oauth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = Config::load(ConfigArgs {
        data_dir: Some(dir.clone()),
        database_url: Some(format!("sqlite://{}", dir.join("fuzz.db").display())),
        admin_token: Some("fuzz-admin-token-0123456789".to_owned()),
        public_url: Some(PUBLIC_URL.to_owned()),
        operator_password: Some(cheap_password_hash("fuzz-operator")),
        secret_key: Some("11".repeat(32)),
        ..ConfigArgs::default()
    })?;
    let store = store::connect_with(&config.database_url, 1).await?;
    let sealer = Sealer::load(config.secret_key.as_deref(), &config.data_dir)?;
    let keys = Keys::load(&config, &store, &sealer).await?;
    let app = App::new(Parts {
        config: Arc::new(config),
        store: Arc::clone(&store),
        bus: Arc::new(InMemoryBus::default()),
        lease: Arc::new(StoreLease::new(store, "fuzz", Duration::from_secs(10))),
        keys,
        sealer,
        saved_workspaces: None,
        changes: None,
        shutdown: CancellationToken::new(),
        metrics: Metrics::new(),
    });
    for (client_id, secret, method) in [
        (PUBLIC_CLIENT, None, "none"),
        (
            CONFIDENTIAL_CLIENT,
            Some(CLIENT_SECRET),
            "client_secret_basic",
        ),
    ] {
        let client = OAuthClient {
            client_id: client_id.to_owned(),
            secret_hash: secret.map(tokens::digest_hex),
            auth_method: method.to_owned(),
            redirect_uris: vec![
                REDIRECT.to_owned(),
                "http://127.0.0.1:33418/callback".to_owned(),
            ],
            client_name: Some(format!("fuzz {method}")),
            scope: BOTH_SCOPES.to_owned(),
            created_at: Utc::now(),
        };
        grants::register_client(&app, &client).await?;
    }
    Ok(app)
}

/// The operator password as an argon2 hash of the lowest cost, so a fuzzed consent form that
/// gets as far as the password check stays fast.
fn cheap_password_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8, 1, 1, None).expect("valid argon2 parameters");
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"fuzz-salt-fuzz-salt").expect("a salt");
    hasher
        .hash_password(password.as_bytes(), &salt)
        .expect("hashing")
        .to_string()
}

fuzz_target!(|data: &[u8]| {
    let server = server();
    let text = String::from_utf8_lossy(data);
    server.runtime.block_on(async {
        let mut session = Session::default();
        for written in text.split("\n===\n").take(MAX_REQUESTS) {
            let written = session.fill_placeholders(&server.app, written).await;
            let Some(sent) = build_request(&written) else {
                continue;
            };
            let response = router(Arc::clone(&server.app))
                .oneshot(sent.request)
                .await
                .expect("the router answers");
            session
                .check_response(&server.app, &sent.path, &sent.params, response)
                .await;
        }
    });
});

/// What one input's requests share: the code and refresh token issued for it (one of each,
/// so replaying them can be tried), and the client it registered.
#[derive(Default)]
struct Session {
    code: Option<String>,
    code_redeemed: bool,
    refresh: Option<String>,
    refresh_used: bool,
    /// The client id and secret a `/register` of this input answered.
    registered: Option<(String, String)>,
}

/// A request ready to send, with the path and the parameters the server reads (the query of a
/// `GET` or `HEAD`, the form body of anything else).
struct Sent {
    request: Request<Body>,
    path: String,
    params: Vec<(String, String)>,
}

impl Session {
    /// Replaces the placeholders, issuing this input's code or refresh token when first asked.
    async fn fill_placeholders(&mut self, app: &App, text: &str) -> String {
        let (registered, registered_secret) = self.registered.clone().unwrap_or_default();
        let mut text = text
            .replace("{public}", PUBLIC_CLIENT)
            .replace("{confidential}", CONFIDENTIAL_CLIENT)
            .replace("{secret}", CLIENT_SECRET)
            .replace(
                "{basic}",
                &STANDARD.encode(format!("{CONFIDENTIAL_CLIENT}:{CLIENT_SECRET}")),
            )
            .replace("{registered}", &registered)
            .replace("{registered_secret}", &registered_secret)
            .replace("{redirect}", REDIRECT)
            .replace("{resource}", &app.config.mcp_resource())
            .replace("{verifier}", VERIFIER);
        if text.contains("{code}") {
            let code = match &self.code {
                Some(code) => code.clone(),
                None => issue_code(app).await,
            };
            text = text.replace("{code}", &code);
            self.code = Some(code);
        }
        if text.contains("{refresh}") {
            let token = match &self.refresh {
                Some(token) => token.clone(),
                None => issue_refresh_token(app).await,
            };
            text = text.replace("{refresh}", &token);
            self.refresh = Some(token);
        }
        text
    }

    async fn check_response(
        &mut self,
        app: &App,
        path: &str,
        params: &[(String, String)],
        response: axum::response::Response,
    ) {
        let status = response.status();
        assert!(!status.is_server_error(), "{path} answered {status}");
        let param = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        if status.is_redirection() {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .expect("a redirect says where to")
                .to_str()
                .expect("a visible location");
            let named = param("redirect_uri").expect("a redirect goes where the request said");
            assert!(
                location.starts_with(named),
                "redirected to {location}, not to {named}"
            );
            assert!(
                redirect_uri_allowed(&app.config.oauth_redirect_allowlist, named),
                "redirected to {named}, which is not allowed"
            );
        }
        let is_html = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/html"));
        let body = axum::body::to_bytes(response.into_body(), MAX_RESPONSE_BYTES)
            .await
            .expect("the body is read");
        if is_html {
            let page = String::from_utf8_lossy(&body).to_ascii_lowercase();
            assert!(!page.contains("<script"), "a script in {page}");
        }
        if path == "/register" && status == StatusCode::CREATED {
            let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            let client_id = answer["client_id"]
                .as_str()
                .expect("a client id")
                .to_owned();
            let secret = answer["client_secret"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            self.registered = Some((client_id, secret));
        }
        if path == "/token" && status == StatusCode::OK {
            check_tokens(app, &body).await;
            let grant = param("grant_type");
            if grant == Some("authorization_code") && param("code") == self.code.as_deref() {
                assert!(!self.code_redeemed, "a code was redeemed twice");
                self.code_redeemed = true;
            }
            if grant == Some("refresh_token") && param("refresh_token") == self.refresh.as_deref() {
                assert!(!self.refresh_used, "a refresh token was used twice");
                self.refresh_used = true;
            }
        }
    }
}

/// An authorization code for the public client, bound to [`VERIFIER`].
async fn issue_code(app: &App) -> String {
    let code = tokens::mint(tokens::OAUTH_PREFIX);
    let stored = AuthCode {
        code_hash: tokens::digest_hex(&code),
        client_id: PUBLIC_CLIENT.to_owned(),
        redirect_uri: REDIRECT.to_owned(),
        code_challenge: URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes())),
        resource: app.config.mcp_resource(),
        scope: BOTH_SCOPES.to_owned(),
        expires_at: Utc::now() + chrono::Duration::seconds(60),
    };
    grants::save_code(app, &stored)
        .await
        .expect("a code is saved");
    code
}

/// A refresh token of the public client, in a family of its own.
async fn issue_refresh_token(app: &App) -> String {
    let token = tokens::mint(tokens::OAUTH_PREFIX);
    let stored = RefreshToken {
        token_hash: tokens::digest_hex(&token),
        family_id: format!("fuzz-{}", &tokens::digest_hex(&token)[..16]),
        client_id: PUBLIC_CLIENT.to_owned(),
        resource: app.config.mcp_resource(),
        scope: BOTH_SCOPES.to_owned(),
        expires_at: Utc::now() + chrono::Duration::days(1),
    };
    grants::save_refresh_token(app, &stored)
        .await
        .expect("a refresh token is saved");
    token
}

/// The request written in `text`; `None` when it is not a request a client could send, or names
/// a metadata document URL as its client.
fn build_request(text: &str) -> Option<Sent> {
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let (method, target) = lines.next()?.trim().split_once(' ')?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let reads_query = method == Method::GET || method == Method::HEAD;
    let mut request = Request::builder().method(method).uri(target.trim());
    let headers = header_lines(&lines.collect::<Vec<_>>().join("\n"));
    for (name, value) in header_map(&headers).iter() {
        request = request.header(name, value);
    }
    let request = request.body(Body::from(body.to_owned())).ok()?;

    let query = request.uri().query().unwrap_or_default().to_owned();
    let form = if reads_query {
        query.as_bytes()
    } else {
        body.as_bytes()
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(form)
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let basic_client = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| STANDARD.decode(encoded.trim()).ok())
        .map(|decoded| String::from_utf8_lossy(&decoded).into_owned());
    let client_ids = form_urlencoded::parse(query.as_bytes())
        .chain(form_urlencoded::parse(body.as_bytes()))
        .filter(|(name, _)| name == "client_id")
        .map(|(_, value)| value.into_owned())
        .chain(basic_client);
    let names_document = client_ids
        .into_iter()
        .any(|id| id.starts_with("https://") || id.starts_with("http://"));
    if names_document {
        return None;
    }
    let path = request.uri().path().to_owned();
    Some(Sent {
        request,
        path,
        params,
    })
}

/// A token endpoint success: an access token this server accepts, with the scope it says.
async fn check_tokens(app: &App, body: &[u8]) {
    let answer: serde_json::Value = serde_json::from_slice(body).expect("a JSON answer");
    let token = answer["access_token"].as_str().expect("an access token");
    let claims = app
        .keys
        .signing()
        .verify(
            &app.config.oauth_issuer(),
            &app.config.mcp_resource(),
            token,
        )
        .await
        .expect("the access token is this server's");
    let granted = Scopes::parse(&claims.scope);
    assert!(granted.read || granted.write, "no scope in {claims:?}");
    assert_eq!(claims.scope, answer["scope"].as_str().unwrap_or_default());
    assert!(answer["refresh_token"]
        .as_str()
        .is_some_and(|token| !token.is_empty()));
}
