//! `TestServer`: Autopilot started in-process on port 0 with its own data directory, and
//! `ApiClient`, a small client for the HTTP API of any Autopilot (in-process or not).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use autopilot_control_plane::config::{Config, ConfigArgs};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const OPERATOR_PASSWORD: &str = "operator-test-password";

/// Builds a [`TestServer`].
pub struct TestServerBuilder {
    data_dir: Option<Arc<TempDir>>,
    database_url: Option<String>,
    claude_bin: Option<PathBuf>,
    run_env: Vec<(String, String)>,
    misfire_grace: Duration,
    kill_grace: Duration,
    concurrency: usize,
    auto_approve: bool,
    allow_private_metadata: bool,
    access_token_ttl: Option<Duration>,
    max_queued_runs: Option<u64>,
    docker: bool,
}

impl TestServerBuilder {
    /// Runs execute in Docker containers (the runtime image) instead of local processes.
    pub fn docker(mut self) -> Self {
        self.docker = true;
        self
    }

    /// Bound the queued runs (webhook deliveries past it get 503).
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

    /// Reuse a data directory (to restart "the same" installation).
    pub fn data_dir(mut self, dir: Arc<TempDir>) -> Self {
        self.data_dir = Some(dir);
        self
    }

    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
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

    pub async fn start(self) -> TestServer {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("temp dir")));
        let mut config = Config::load(ConfigArgs {
            data_dir: Some(data_dir.path().to_path_buf()),
            database_url: self.database_url.clone(),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            claude_bin: self.claude_bin.clone(),
            worker_concurrency: Some(self.concurrency),
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
            database_url: self.database_url,
            cancel,
            handle: Some(handle),
        };
        server.wait_ready().await;
        server
    }
}

/// Autopilot running in this test process; its API client is what it derefs to.
pub struct TestServer {
    pub api: ApiClient,
    pub data_dir: Arc<TempDir>,
    pub database_url: Option<String>,
    cancel: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder {
            data_dir: None,
            database_url: None,
            claude_bin: None,
            run_env: Vec::new(),
            misfire_grace: Duration::from_secs(60),
            kill_grace: Duration::from_secs(2),
            concurrency: 4,
            auto_approve: false,
            allow_private_metadata: false,
            access_token_ttl: None,
            max_queued_runs: None,
            docker: false,
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
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
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

    pub async fn runs_of(&self, job_id: &str) -> Vec<Value> {
        let body = self
            .get(&format!("/api/v1/runs?job_id={job_id}&limit=500"))
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
        Some("queued" | "running" | "cancelling")
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
