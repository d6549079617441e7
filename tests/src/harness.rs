//! `TestServer`: Autopilot started in-process on port 0 with its own data directory, and
//! `ApiClient`, a small client for the HTTP API of any Autopilot (in-process or not).
//!
//! The store a `TestServer` runs on: the database URL a test gives; else SQLite or PostgreSQL
//! as the test pins it (`.sqlite()`, `.postgres()`); else `AUTOPILOT_TEST_STORE` (`sqlite` or
//! `postgres`); else PostgreSQL when `TEST_DATABASE_URL` names a server, SQLite otherwise. On
//! PostgreSQL each installation gets a fresh database of its own, and a server started again on
//! the same data directory (`.data_dir(dir)`) finds the same database, as a restarted
//! installation would.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use autopilot_control_plane::config::{Config, ConfigArgs};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::components;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const OPERATOR_PASSWORD: &str = "operator-test-password";

/// Connections each PostgreSQL-backed `TestServer` may open. The product's default is twice the
/// cores (up to 16); with one test per core running at once and up to two servers per test,
/// that would pass the test PostgreSQL's `max_connections` (300) on a machine of 16 cores or
/// more. Four is what a 2-core machine gets by default anyway.
const POSTGRES_CONNECTIONS_PER_SERVER: u32 = 4;

/// The store behind a [`TestServer`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Store {
    Sqlite,
    Postgres,
}

impl Store {
    /// The name Autopilot reports for it (`/readyz`, `get_server_info`).
    pub fn name(self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Postgres => "postgres",
        }
    }

    fn of_url(url: &str) -> Store {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Store::Postgres
        } else {
            Store::Sqlite
        }
    }

    /// The store of tests that do not pin one: `AUTOPILOT_TEST_STORE` (`sqlite` or `postgres`),
    /// else PostgreSQL when `TEST_DATABASE_URL` is set, else SQLite.
    pub fn from_env() -> Store {
        match std::env::var("AUTOPILOT_TEST_STORE")
            .as_deref()
            .map(str::trim)
        {
            Ok("sqlite") => Store::Sqlite,
            Ok("postgres") => Store::Postgres,
            Ok("") | Err(_) => {
                if std::env::var("TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty()) {
                    Store::Postgres
                } else {
                    Store::Sqlite
                }
            }
            Ok(other) => {
                panic!("AUTOPILOT_TEST_STORE must be `sqlite` or `postgres`, got `{other}`")
            }
        }
    }

    /// A database URL for a new installation on this store with its data in `data_dir`: a fresh
    /// PostgreSQL database, or the SQLite file Autopilot makes there by default. `None` (a failure
    /// in CI) when PostgreSQL is asked for and `TEST_DATABASE_URL` is not set.
    pub async fn new_database(self, data_dir: &Path) -> Option<String> {
        match self {
            Store::Sqlite => Some(format!(
                "sqlite://{}",
                data_dir.join("autopilot.db").display()
            )),
            Store::Postgres => components::fresh_postgres_database().await,
        }
    }
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The database of each data directory a `TestServer` used, while that directory exists: a
/// server started again on it uses the same database.
struct Installation {
    dir: Weak<TempDir>,
    path: PathBuf,
    database_url: String,
    /// Made by the harness for this installation (not given by the test), so dropped with it.
    made_here: bool,
}

static INSTALLATIONS: Mutex<Vec<Installation>> = Mutex::new(Vec::new());

/// The database recorded for `dir`, if a server used it before.
fn recorded_database(dir: &Arc<TempDir>) -> Option<String> {
    let installations = INSTALLATIONS.lock().unwrap_or_else(|p| p.into_inner());
    installations
        .iter()
        .find(|i| i.path == dir.path() && i.dir.upgrade().is_some())
        .map(|i| i.database_url.clone())
}

fn record_database(dir: &Arc<TempDir>, database_url: &str, made_here: bool) {
    let mut installations = INSTALLATIONS.lock().unwrap_or_else(|p| p.into_inner());
    if !installations
        .iter()
        .any(|i| i.path == dir.path() && i.dir.upgrade().is_some())
    {
        installations.push(Installation {
            dir: Arc::downgrade(dir),
            path: dir.path().to_path_buf(),
            database_url: database_url.to_owned(),
            made_here,
        });
    }
}

/// Forgets the installations whose data directory is gone and drops the PostgreSQL databases the
/// harness made for them, so a run of the suite does not leave one database per test behind.
/// Best effort: a database that cannot be dropped stays (the test server is thrown away with it).
async fn drop_abandoned_databases() {
    let abandoned: Vec<String> = {
        let mut installations = INSTALLATIONS.lock().unwrap_or_else(|p| p.into_inner());
        let (gone, kept) = std::mem::take(&mut *installations)
            .into_iter()
            .partition::<Vec<_>, _>(|i| i.dir.upgrade().is_none());
        *installations = kept;
        gone.into_iter()
            .filter(|i| i.made_here && Store::of_url(&i.database_url) == Store::Postgres)
            .map(|i| i.database_url)
            .collect()
    };
    if abandoned.is_empty() {
        return;
    }
    let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
        return;
    };
    use sqlx::Connection;
    let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await else {
        return;
    };
    for url in abandoned {
        let Some((_, name)) = url.rsplit_once('/') else {
            continue;
        };
        // A server of a finished test may still be closing its connections: FORCE ends them.
        let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        if let Err(err) = dropped {
            eprintln!("could not drop the test database {name}: {err}");
        }
    }
    let _ = admin.close().await;
}

/// Builds a [`TestServer`].
pub struct TestServerBuilder {
    data_dir: Option<Arc<TempDir>>,
    database_url: Option<String>,
    store: Option<Store>,
    claude_bin: Option<PathBuf>,
    fixed_servers_bin: Option<PathBuf>,
    run_env: Vec<(String, String)>,
    misfire_grace: Duration,
    kill_grace: Duration,
    concurrency: usize,
    auto_approve: bool,
    allow_private_metadata: bool,
    access_token_ttl: Option<Duration>,
    max_queued_runs: Option<u64>,
    /// The fleet's monthly budget and its alert (JSON, as `AUTOPILOT_FLEET_BUDGET_ALERT`).
    fleet_budget: Option<(f64, Option<String>)>,
    docker: bool,
    mcp_allowed_origins: Vec<String>,
}

impl TestServerBuilder {
    /// Runs execute in Docker containers (the runtime image) instead of local processes.
    pub fn docker(mut self) -> Self {
        self.docker = true;
        self
    }

    /// Browser origins `/mcp` accepts besides its own (`AUTOPILOT_MCP_ALLOWED_ORIGINS`).
    pub fn mcp_allowed_origins(mut self, origins: &[&str]) -> Self {
        self.mcp_allowed_origins = origins.iter().map(|origin| origin.to_string()).collect();
        self
    }

    /// Bound the queued runs (webhook deliveries past it get 503).
    /// Caps all runs' spend per month at `usd`, with `alert` (JSON) at 80 % and 100 %.
    pub fn fleet_budget(mut self, usd: f64, alert: Option<&str>) -> Self {
        self.fleet_budget = Some((usd, alert.map(str::to_owned)));
        self
    }

    pub fn max_queued_runs(mut self, max: u64) -> Self {
        self.max_queued_runs = Some(max);
        self
    }

    /// Shorten OAuth access tokens' lifetime (to see them expire).
    pub fn access_token_ttl(mut self, ttl: Duration) -> Self {
        self.access_token_ttl = Some(ttl);
        self
    }

    /// Let client metadata documents come from loopback over plain HTTP.
    pub fn allow_private_metadata(mut self) -> Self {
        self.allow_private_metadata = true;
        self
    }

    /// Approve OAuth authorizations without the consent page (headless OAuth clients).
    pub fn auto_approve(mut self) -> Self {
        self.auto_approve = true;
        self
    }

    /// Reuse a data directory (to restart "the same" installation): on PostgreSQL, with the
    /// database the earlier server used.
    pub fn data_dir(mut self, dir: Arc<TempDir>) -> Self {
        self.data_dir = Some(dir);
        self
    }

    /// Run on this database, whatever the environment says.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// Run on SQLite in the data directory whatever the environment says, for tests of what
    /// only SQLite has (its file, its WAL).
    pub fn sqlite(mut self) -> Self {
        self.store = Some(Store::Sqlite);
        self
    }

    /// Run on a fresh PostgreSQL database whatever `AUTOPILOT_TEST_STORE` says (`TEST_DATABASE_URL`
    /// is needed; see [`TestServerBuilder::try_start`]).
    pub fn postgres(mut self) -> Self {
        self.store = Some(Store::Postgres);
        self
    }

    /// Runs on the local executor start fixed MCP servers with this `autopilot-servers`.
    pub fn fixed_servers_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.fixed_servers_bin = Some(path.into());
        self
    }

    pub fn claude_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.claude_bin = Some(path.into());
        self
    }

    /// Points Claude runs at `base_url` with a fake key and no CLI-side retries.
    pub fn model_api(self, base_url: &str) -> Self {
        self.run_env("ANTHROPIC_BASE_URL", base_url)
            .run_env("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
            .run_env("CLAUDE_CODE_MAX_RETRIES", "0")
    }

    pub fn run_env(mut self, name: &str, value: &str) -> Self {
        self.run_env.retain(|(existing, _)| existing != name);
        self.run_env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn misfire_grace(mut self, grace: Duration) -> Self {
        self.misfire_grace = grace;
        self
    }

    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Starts the server. Panics when its store is not available: PostgreSQL asked for (by
    /// `.postgres()` or `AUTOPILOT_TEST_STORE=postgres`) without `TEST_DATABASE_URL`.
    pub async fn start(self) -> TestServer {
        let postgres_without_server = self.database_url.is_none()
            && self.store.unwrap_or_else(Store::from_env) == Store::Postgres
            && std::env::var("TEST_DATABASE_URL").map_or(true, |url| url.is_empty());
        if postgres_without_server && !components::in_ci() {
            // In CI `try_start` fails the test the way every missing component does.
            panic!(
                "PostgreSQL was asked for ({}) but TEST_DATABASE_URL is not set",
                if self.store.is_some() {
                    "by the test"
                } else {
                    "AUTOPILOT_TEST_STORE=postgres"
                }
            );
        }
        self.try_start()
            .await
            .expect("the store is available (checked above)")
    }

    /// Starts the server, or returns `None` (after saying the test is skipped; a failure in CI)
    /// when its store is PostgreSQL and `TEST_DATABASE_URL` is not set.
    pub async fn try_start(self) -> Option<TestServer> {
        drop_abandoned_databases().await;
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("temp dir")));
        let made_here = self.database_url.is_none();
        let database_url = match (self.database_url, recorded_database(&data_dir)) {
            (Some(url), _) => url,
            (None, Some(recorded)) => {
                if let Some(store) = self.store {
                    assert_eq!(
                        Store::of_url(&recorded),
                        store,
                        "the data directory was used with another store before"
                    );
                }
                recorded
            }
            (None, None) => {
                let store = self.store.unwrap_or_else(Store::from_env);
                store.new_database(data_dir.path()).await?
            }
        };
        record_database(&data_dir, &database_url, made_here);
        let mut config = Config::load(ConfigArgs {
            data_dir: Some(data_dir.path().to_path_buf()),
            database_url: Some(database_url.clone()),
            database_max_connections: Some(POSTGRES_CONNECTIONS_PER_SERVER),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            claude_bin: self.claude_bin.clone(),
            // Built beside the tests (`cargo build -p autopilot-fixed-servers --features servers
            // --bins`), where the server would not look: a test binary lives one level down.
            fixed_servers_bin: self.fixed_servers_bin.clone().or_else(|| {
                components::fixed_servers_candidates()
                    .into_iter()
                    .find(|path| path.is_file())
            }),
            // Dynamic servers in local runs need a Python with the MCP SDK: the tests' own.
            python: std::env::var_os("AUTOPILOT_TEST_MCP_PYTHON").map(Into::into),
            worker_concurrency: Some(self.concurrency),
            mcp_allowed_origins: Some(self.mcp_allowed_origins.clone()),
            fleet_monthly_budget_usd: self.fleet_budget.as_ref().map(|(usd, _)| *usd),
            fleet_budget_alert: self
                .fleet_budget
                .as_ref()
                .and_then(|(_, alert)| alert.clone()),
            ..Default::default()
        })
        .expect("test config");
        config.misfire_grace = self.misfire_grace;
        config.kill_grace = self.kill_grace;
        config.heartbeat_interval = Duration::from_millis(500);
        // No API key unless the test gives one: the process environment must not leak in.
        config.run_env = self.run_env.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        config.public_url = base_url.clone();
        config.operator_password = Some(OPERATOR_PASSWORD.to_owned());
        config.oauth_auto_approve = self.auto_approve;
        config.oauth_allow_private_metadata = self.allow_private_metadata;
        if let Some(ttl) = self.access_token_ttl {
            config.access_token_ttl = ttl;
        }
        if let Some(max) = self.max_queued_runs {
            config.max_queued_runs = max;
        }
        if self.docker {
            config.executor = autopilot_control_plane::config::ExecutorKind::Docker;
        }
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(autopilot_control_plane::serve::run(
            config,
            listener,
            cancel.clone(),
        ));
        let server = TestServer {
            api: ApiClient::new(base_url),
            data_dir,
            store: Store::of_url(&database_url),
            database_url,
            cancel,
            handle: Some(handle),
        };
        server.wait_ready().await;
        Some(server)
    }
}

/// Autopilot running in this test process; its API client is what it derefs to.
pub struct TestServer {
    pub api: ApiClient,
    pub data_dir: Arc<TempDir>,
    /// The database it runs on (`sqlite://…` or `postgres://…`).
    pub database_url: String,
    store: Store,
    cancel: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder {
            data_dir: None,
            database_url: None,
            store: None,
            claude_bin: None,
            fixed_servers_bin: None,
            run_env: Vec::new(),
            misfire_grace: Duration::from_secs(60),
            kill_grace: Duration::from_secs(2),
            concurrency: 4,
            auto_approve: false,
            allow_private_metadata: false,
            access_token_ttl: None,
            max_queued_runs: None,
            fleet_budget: None,
            docker: false,
            mcp_allowed_origins: Vec::new(),
        }
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(response) = self
                .client
                .get(format!("{}/readyz", self.base_url))
                .send()
                .await
            {
                if response.status().is_success() {
                    return;
                }
            }
            if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
                panic!("autopilot stopped during start-up");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("autopilot did not become ready");
    }

    /// The store it runs on.
    pub fn store(&self) -> Store {
        self.store
    }

    /// Whether `needle` appears anywhere in what the store keeps: the bytes of the SQLite file
    /// and its WAL, or every row of every PostgreSQL table as text (where a `bytea` shows as
    /// hex, so the hex form of `needle` is looked for too). For checking that secrets are kept
    /// only as digests or sealed.
    pub async fn store_contains(&self, needle: &str) -> bool {
        match self.store {
            Store::Sqlite => {
                let file = self
                    .database_url
                    .strip_prefix("sqlite://")
                    .expect("a sqlite:// URL");
                let mut bytes = std::fs::read(file).expect("read the SQLite file");
                // Recent commits may be only in the WAL until a checkpoint copies them.
                if let Ok(wal) = std::fs::read(format!("{file}-wal")) {
                    bytes.extend_from_slice(&wal);
                }
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            }
            Store::Postgres => {
                use sqlx::Connection;
                let mut db = sqlx::PgConnection::connect(&self.database_url)
                    .await
                    .expect("connect to the test database");
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                )
                .fetch_all(&mut db)
                .await
                .expect("list tables");
                assert!(!tables.is_empty(), "the database has tables");
                let mut text = String::new();
                for table in tables {
                    let rows: Option<String> = sqlx::query_scalar(&format!(
                        "SELECT string_agg(t::text, E'\\n') FROM \"{table}\" AS t"
                    ))
                    .fetch_one(&mut db)
                    .await
                    .expect("read a table");
                    text.push_str(&rows.unwrap_or_default());
                    text.push('\n');
                }
                let _ = db.close().await;
                text.contains(needle) || text.contains(&hex::encode(needle.as_bytes()))
            }
        }
    }

    pub fn workspaces(&self) -> PathBuf {
        self.data_dir.path().join("workspaces")
    }

    pub fn workspace_of(&self, job: &Value) -> PathBuf {
        self.workspaces()
            .join(format!("job-{}", job["id"].as_str().expect("job id")))
    }

    /// Stops the server and waits for it; returns its result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        match self.handle.take() {
            Some(handle) => handle.await.expect("server task"),
            None => Ok(()),
        }
    }
}

/// A client of one Autopilot's HTTP API, with the admin token.
#[derive(Clone)]
pub struct ApiClient {
    pub base_url: String,
    pub client: reqwest::Client,
}

impl ApiClient {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            client: reqwest::Client::new(),
        }
    }

    /// Sends a request with the admin token; returns the status and JSON body (`null` if none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_with_token(method, path, body, Some(ADMIN_TOKEN))
            .await
    }

    pub async fn call_with_token(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        self.send(method, path, body, token)
            .await
            .expect("a request and its answer")
    }

    /// [`Self::call`], or `None` when no answer came (the server is down or went down).
    pub async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<(StatusCode, Value)> {
        self.send(method, path, body, Some(ADMIN_TOKEN)).await.ok()
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> reqwest::Result<(StatusCode, Value)> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, None).await;
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    pub async fn create_job(&self, job: Value) -> Value {
        let (status, body) = self.call(Method::POST, "/api/v1/jobs", Some(job)).await;
        assert_eq!(status, StatusCode::CREATED, "create job: {body}");
        body
    }

    pub async fn patch_job(&self, id: &str, patch: Value) -> Value {
        let (status, body) = self
            .call(Method::PATCH, &format!("/api/v1/jobs/{id}"), Some(patch))
            .await;
        assert_eq!(status, StatusCode::OK, "patch job: {body}");
        body
    }

    /// Creates a webhook; the answer carries its full `url` (shown once).
    pub async fn create_webhook(&self, webhook: Value) -> Value {
        let (status, body) = self
            .call(Method::POST, "/api/v1/webhooks", Some(webhook))
            .await;
        assert_eq!(status, StatusCode::CREATED, "create webhook: {body}");
        body
    }

    /// POSTs `body` to a webhook URL with `headers` (no admin token); the status, headers and
    /// JSON answer.
    pub async fn deliver(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self.client.post(url).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("delivery");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }

    /// POSTs JSON to a webhook URL and expects a new run; returns its id.
    pub async fn deliver_json(&self, url: &str, payload: &Value) -> String {
        let (status, _, body) = self
            .deliver(
                url,
                &[("content-type", "application/json")],
                payload.to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "delivery: {body}");
        body["run_id"].as_str().expect("run_id").to_owned()
    }

    pub async fn trigger(&self, job_id: &str) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/api/v1/jobs/{job_id}/trigger"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "trigger: {body}");
        body
    }

    pub async fn quick_run(&self, body: Value) -> Value {
        let (status, body) = self
            .call(Method::POST, "/api/v1/quick-run", Some(body))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "quick run: {body}");
        body
    }

    pub async fn run(&self, run_id: &str) -> Value {
        self.get(&format!("/api/v1/runs/{run_id}")).await
    }

    /// The job's runs, newest first (up to 1,000).
    pub async fn runs_of(&self, job_id: &str) -> Vec<Value> {
        let body = self
            .get(&format!("/api/v1/runs?job_id={job_id}&limit=1000"))
            .await;
        body["runs"].as_array().cloned().unwrap_or_default()
    }

    pub async fn events(&self, run_id: &str) -> Vec<Value> {
        let body = self
            .get(&format!("/api/v1/runs/{run_id}/events?limit=5000"))
            .await;
        body["events"].as_array().cloned().unwrap_or_default()
    }

    /// Follows a run's events live (`text/event-stream`), from after `last_event_id`, until the
    /// server ends the stream; returns the raw stream.
    pub fn follow_events(
        &self,
        run_id: &str,
        last_event_id: Option<i64>,
    ) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut request = self
            .client
            .get(format!("{}/api/v1/runs/{run_id}/events", self.base_url))
            .bearer_auth(ADMIN_TOKEN)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        async move {
            request
                .send()
                .await
                .expect("follow events")
                .text()
                .await
                .expect("event stream")
        }
    }

    /// Polls the run until `done` holds or `timeout` passes (then panics with the last state).
    pub async fn wait_for_run(
        &self,
        run_id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let run = self.run(run_id).await;
            if done(&run) {
                return run;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("run {run_id} did not reach the expected state in {timeout:?}: {run:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_until_finished(&self, run_id: &str, timeout: Duration) -> Value {
        self.wait_for_run(run_id, timeout, is_terminal).await
    }

    /// Waits until the job has at least `count` runs; returns them, newest first.
    pub async fn wait_for_runs(&self, job_id: &str, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let runs = self.runs_of(job_id).await;
            if runs.len() >= count {
                return runs;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "job {job_id} has {} run(s), expected {count} within {timeout:?}",
                    runs.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl std::ops::Deref for TestServer {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub fn is_terminal(run: &Value) -> bool {
    !matches!(
        run["status"].as_str(),
        Some("queued" | "running" | "waiting_for_approval" | "cancelling")
    )
}

/// Event kinds of a run, in order.
pub fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|event| event["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Lifecycle steps of a run, in order.
pub fn steps(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|event| event["kind"] == "lifecycle")
        .map(|event| {
            event["data"]["step"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// A job body for a shell command with a per-second schedule.
pub fn shell_job(name: &str, command: &str) -> Value {
    json!({ "name": name, "command": command, "schedule": "* * * * * *" })
}

pub fn file_text(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The `id:` fields of a Server-Sent Events stream, in order.
pub fn event_ids(stream: &str) -> Vec<i64> {
    stream
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .map(|id| id.parse().expect("numeric event id"))
        .collect()
}
