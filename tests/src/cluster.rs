//! A fleet on loopback, every part a separate process: a nats-server with JetStream, a fresh
//! PostgreSQL database, N control planes (`autopilot serve` in fleet mode) and M workers
//! (`autopilot worker`). Nodes can be killed (SIGKILL), stopped (SIGTERM) and started again on
//! the same address; their logs are kept in files for the assertions and for failure messages.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::components;
use crate::harness::{ApiClient, ADMIN_TOKEN};
use crate::nats::NatsServer;

/// The key every control plane of a test fleet seals secrets with.
const SECRET_KEY: &str = "5c1d0f3e9a7b2c4d6e8f0a1b3c5d7e9f1a2b3c4d5e6f708192a3b4c5d6e7f809";

/// What a worker needs to run Claude runs with the CLI at `claude` against the fake model API at
/// `model_api` (no retries, so a failure shows at once).
pub fn claude_worker_env(claude: &Path, model_api: &str) -> Vec<(String, String)> {
    vec![
        ("AUTOPILOT_CLAUDE_BIN".into(), claude.display().to_string()),
        ("ANTHROPIC_BASE_URL".into(), model_api.to_owned()),
        (
            "ANTHROPIC_API_KEY".into(),
            "sk-ant-test-not-a-real-key".into(),
        ),
        ("CLAUDE_CODE_MAX_RETRIES".into(), "0".into()),
    ]
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub control_planes: usize,
    pub workers: usize,
    /// Runs each worker executes at the same time.
    pub worker_concurrency: usize,
    pub lease_ttl_secs: u64,
    pub lost_after_secs: u64,
    /// Environment given to every worker (the fake model API's URL and key, for instance).
    pub worker_env: Vec<(String, String)>,
    /// Environment given to every control plane.
    pub control_plane_env: Vec<(String, String)>,
    /// The database of the fleet; a fresh one on `TEST_DATABASE_URL`'s server when `None`.
    pub database_url: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            control_planes: 3,
            workers: 3,
            worker_concurrency: 4,
            lease_ttl_secs: 10,
            lost_after_secs: 30,
            worker_env: Vec::new(),
            control_plane_env: Vec::new(),
            database_url: None,
        }
    }
}

/// One process of the fleet.
pub struct Node {
    pub name: String,
    /// The HTTP API of a control plane; `None` for a worker.
    pub api: Option<ApiClient>,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
    /// Environment of this node alone, set after everything else at its next start (another
    /// NATS address, say).
    pub env: Vec<(String, String)>,
}

impl Node {
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the process to end (SIGKILL after that). Returns
    /// whether it ended by itself.
    pub async fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the process wrote to stderr, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn api(&self) -> &ApiClient {
        self.api.as_ref().expect("a control plane")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub nats: NatsServer,
    pub database_url: String,
    pub options: ClusterOptions,
    pub control_planes: Vec<Node>,
    pub workers: Vec<Node>,
    bin: PathBuf,
    dir: TempDir,
}

impl Cluster {
    /// Starts the whole fleet and waits until every control plane answers and one leads; `None`
    /// (a failure in CI) when a component is missing.
    pub async fn start(options: ClusterOptions) -> Option<Cluster> {
        let bin = components::autopilot_bin()?;
        let nats = NatsServer::start().await?;
        let database_url = match options.database_url.clone() {
            Some(url) => url,
            None => components::fresh_postgres_database().await?,
        };
        let dir = tempfile::tempdir().expect("cluster dir");
        let mut cluster = Cluster {
            nats,
            database_url,
            options,
            control_planes: Vec::new(),
            workers: Vec::new(),
            bin,
            dir,
        };
        for index in 0..cluster.options.control_planes {
            let node = cluster.new_node(format!("cp{index}"), true);
            cluster.control_planes.push(node);
            cluster.start_control_plane(index).await;
        }
        for index in 0..cluster.options.workers {
            let node = cluster.new_node(format!("worker{index}"), false);
            cluster.workers.push(node);
            cluster.start_worker(index);
        }
        cluster
            .wait_for_workers(cluster.options.workers, Duration::from_secs(30))
            .await;
        Some(cluster)
    }

    fn new_node(&self, name: String, control_plane: bool) -> Node {
        let port = if control_plane { free_port() } else { 0 };
        Node {
            api: control_plane.then(|| ApiClient::new(format!("http://127.0.0.1:{port}"))),
            log: self.dir.path().join(format!("{name}.log")),
            name,
            port,
            child: None,
            env: Vec::new(),
        }
    }

    fn base_command(&self, node: &Node, subcommand: &str) -> Command {
        let data_dir = self.dir.path().join(&node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log");
        let mut command = Command::new(&self.bin);
        command
            .arg(subcommand)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AUTOPILOT_DATA_DIR", &data_dir)
            .env("AUTOPILOT_NATS_URL", self.nats.url())
            .env(
                "AUTOPILOT_LOG",
                "info,sqlx=warn,tower_http=warn,async_nats=warn",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        command
    }

    /// Applies `node`'s own environment, last.
    fn node_env(command: &mut Command, node: &Node) {
        for (name, value) in &node.env {
            command.env(name, value);
        }
    }

    /// Starts (or starts again, on the same port) control plane `index` and waits until it is
    /// ready.
    pub async fn start_control_plane(&mut self, index: usize) {
        let node = &self.control_planes[index];
        let mut command = self.base_command(node, "serve");
        command
            .env("AUTOPILOT_BIND", format!("127.0.0.1:{}", node.port))
            .env(
                "AUTOPILOT_PUBLIC_URL",
                format!("http://127.0.0.1:{}", node.port),
            )
            .env("AUTOPILOT_DATABASE_URL", &self.database_url)
            .env("AUTOPILOT_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("AUTOPILOT_SECRET_KEY", SECRET_KEY)
            .env(
                "AUTOPILOT_LEASE_TTL_SECS",
                self.options.lease_ttl_secs.to_string(),
            )
            .env(
                "AUTOPILOT_LOST_AFTER_SECS",
                self.options.lost_after_secs.to_string(),
            );
        for (name, value) in &self.options.control_plane_env {
            command.env(name, value);
        }
        Self::node_env(&mut command, node);
        let child = command.spawn().expect("spawn autopilot serve");
        let node = &mut self.control_planes[index];
        node.child = Some(child);
        let api = node.api.clone().expect("control plane");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if api
                .client
                .get(format!("{}/readyz", api.base_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            if !node.is_running() || Instant::now() > deadline {
                panic!(
                    "control plane {} did not start; its log:\n{}",
                    node.name,
                    node.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts (or starts again) worker `index`; it announces itself within a heartbeat.
    pub fn start_worker(&mut self, index: usize) {
        let node = &self.workers[index];
        let mut command = self.base_command(node, "worker");
        command
            .env("AUTOPILOT_WORKER_ID", &node.name)
            .env(
                "AUTOPILOT_WORKER_CONCURRENCY",
                self.options.worker_concurrency.to_string(),
            )
            .env("AUTOPILOT_KILL_GRACE_SECS", "2")
            .env("AUTOPILOT_SHUTDOWN_GRACE_SECS", "5");
        for (name, value) in &self.options.worker_env {
            command.env(name, value);
        }
        Self::node_env(&mut command, node);
        let child = command.spawn().expect("spawn autopilot worker");
        self.workers[index].child = Some(child);
    }

    /// The API of control plane `index`.
    pub fn api(&self, index: usize) -> &ApiClient {
        self.control_planes[index].api()
    }

    /// The API of the first control plane still running.
    pub fn any_api(&mut self) -> ApiClient {
        self.control_planes
            .iter_mut()
            .find_map(|node| node.is_running().then(|| node.api().clone()))
            .expect("a running control plane")
    }

    /// The running control plane that says it holds the scheduler lease.
    pub async fn leader(&mut self) -> Option<usize> {
        for index in 0..self.control_planes.len() {
            if !self.control_planes[index].is_running() {
                continue;
            }
            let api = self.api(index);
            let Ok(response) = api
                .client
                .get(format!("{}/readyz", api.base_url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            else {
                continue;
            };
            let Ok(body) = response.json::<Value>().await else {
                continue;
            };
            if body["scheduler_leader"] == true {
                return Some(index);
            }
        }
        None
    }

    pub async fn wait_for_leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(index) = self.leader().await {
                return index;
            }
            if Instant::now() > deadline {
                panic!("no control plane leads after {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `count` workers are live in `GET /api/v1/workers`.
    pub async fn wait_for_workers(&mut self, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let api = self.any_api();
            let (_, body) = api
                .call(reqwest::Method::GET, "/api/v1/workers", None)
                .await;
            let workers = body["workers"].as_array().cloned().unwrap_or_default();
            if workers.len() >= count {
                return workers;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} of {count} workers live after {timeout:?}: {body}\n{}",
                    workers.len(),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for node in self.control_planes.iter().chain(&self.workers) {
            let log = node.log();
            // The end is what explains a failure.
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            text.push_str(&format!("--- {} (last {} lines)\n", node.name, tail.len()));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// The warnings and errors every node logged, the last `limit` of each node's, for the
    /// message of a broken promise (where the end of a log may not hold the cause).
    pub fn warnings(&self, limit: usize) -> String {
        let mut text = String::new();
        for node in self.control_planes.iter().chain(&self.workers) {
            let log = node.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
                .collect();
            text.push_str(&format!(
                "--- {}: {} warnings and errors\n",
                node.name,
                lines.len()
            ));
            for line in &lines[lines.len().saturating_sub(limit)..] {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
