//! One typed configuration for the `autopilot` binary: defaults, then an optional TOML file, then
//! `AUTOPILOT_*` environment variables, then command-line flags. Validated once at start.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod args;

pub use args::{ConfigArgs, DEFAULT_REDIRECT_ALLOWLIST, LOOPBACK_ENTRY};

/// How runs execute.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExecutorKind {
    Local,
    Docker,
}

impl ExecutorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Docker => "docker",
        }
    }
}

/// Settings of the Docker executor.
#[derive(Clone, Debug)]
pub struct DockerSettings {
    pub image: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration.
#[derive(Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub admin_token: Option<String>,
    pub claude_bin: PathBuf,
    /// `autopilot-servers`, which runs the fixed MCP servers of local runs.
    pub fixed_servers_bin: PathBuf,
    /// The Python of dynamic servers in local runs.
    pub python: PathBuf,
    pub public_url: String,
    pub worker_concurrency: usize,
    pub kill_grace: Duration,
    pub misfire_grace: Duration,
    /// Most all runs together may cost in a calendar month (UTC).
    pub fleet_monthly_budget_usd: Option<f64>,
    /// Where the alert goes at 80 % and 100 % of it.
    pub fleet_budget_alert: Option<crate::domain::handlers::ResultHandler>,
    pub log_format: LogFormat,
    /// How often a worker reports that a run is alive.
    pub heartbeat_interval: Duration,
    /// A running run without a heartbeat for this long is marked lost.
    pub lost_after: Duration,
    /// Scheduler lease time to live.
    pub lease_ttl: Duration,
    /// Extra environment for runs (`[run_env]` in the config file), replacing variables of the
    /// same name taken from this process's environment.
    pub run_env: Vec<(String, String)>,
    pub operator_password: Option<String>,
    /// Lifetime of OAuth access tokens.
    pub access_token_ttl: Duration,
    /// For automated tests only (`AUTOPILOT_TEST_AUTO_APPROVE=1`): `/authorize` approves every
    /// valid request without the operator. Never set it on a reachable server.
    pub oauth_auto_approve: bool,
    /// For automated tests only (`AUTOPILOT_TEST_ALLOW_PRIVATE_METADATA=1`): client metadata
    /// documents may be fetched over plain HTTP from loopback and private addresses.
    pub oauth_allow_private_metadata: bool,
    /// Redirect URIs OAuth clients may register (see `AUTOPILOT_OAUTH_REDIRECT_URIS`).
    pub oauth_redirect_allowlist: Vec<String>,
    /// Origins allowed to call `/mcp` besides the public URL's and loopback, each with its
    /// port or `*` (see `AUTOPILOT_MCP_ALLOWED_ORIGINS`).
    pub mcp_allowed_origins: Vec<String>,
    /// Seals secrets at rest (see `crate::seal`); `None` uses the data directory's key file.
    pub secret_key: Option<String>,
    /// Bound on queued runs; webhook deliveries beyond it are refused with 503.
    pub max_queued_runs: u64,
    /// The fleet's NATS server; `Some` only together with PostgreSQL (checked at load).
    pub nats_url: Option<String>,
    pub nats_prefix: String,
    pub executor: ExecutorKind,
    pub docker: DockerSettings,
    /// Largest saved workspace, in bytes (compressed).
    pub workspace_max_bytes: u64,
    /// Most PostgreSQL connections of this process.
    pub database_max_connections: u32,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("bind", &self.bind)
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact_url(&self.database_url))
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "operator_password",
                &self.operator_password.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("max_queued_runs", &self.max_queued_runs)
            .field("nats_url", &self.nats_url.as_deref().map(redact_url))
            .field("nats_prefix", &self.nats_prefix)
            .field("executor", &self.executor)
            .field("docker", &self.docker)
            .field("workspace_max_bytes", &self.workspace_max_bytes)
            .field("database_max_connections", &self.database_max_connections)
            .field("lease_ttl", &self.lease_ttl)
            .field("lost_after", &self.lost_after)
            .field("claude_bin", &self.claude_bin)
            .field("fixed_servers_bin", &self.fixed_servers_bin)
            .field("python", &self.python)
            .field("public_url", &self.public_url)
            .field("worker_concurrency", &self.worker_concurrency)
            .field("kill_grace", &self.kill_grace)
            .field("misfire_grace", &self.misfire_grace)
            .field("fleet_monthly_budget_usd", &self.fleet_monthly_budget_usd)
            .field(
                "fleet_budget_alert",
                &self.fleet_budget_alert.as_ref().map(|a| &a.post),
            )
            .field("log_format", &self.log_format)
            .field(
                "run_env",
                &self
                    .run_env
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A database URL without its password.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => {
                    format!("{}{user}:<redacted>{}", &url[..scheme_end + 3], &url[at..])
                }
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Config {
    /// Builds the configuration from the layers. Errors name the key and the variable to fix.
    pub fn load(args: ConfigArgs) -> anyhow::Result<Config> {
        let args = match &args.config {
            Some(path) => {
                let file = read_file(path)?;
                args.over(file)?
            }
            None => args,
        };
        let bind = args
            .bind
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let data_dir = match args.data_dir {
            Some(dir) => dir,
            None => default_data_dir()?,
        };
        let database_url = args
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("autopilot.db").display()));
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres:")
            || database_url.starts_with("postgresql:"))
        {
            anyhow::bail!(
                "database_url must start with `sqlite://` or `postgres://` (set AUTOPILOT_DATABASE_URL or --database-url)"
            );
        }
        let admin_token = args.admin_token.filter(|token| !token.is_empty());
        if let Some(token) = &admin_token {
            if token.len() < 16 {
                anyhow::bail!(
                    "admin_token is too short: use at least 16 characters (AUTOPILOT_ADMIN_TOKEN)"
                );
            }
        }
        let public_url = args.public_url.unwrap_or_else(|| format!("http://{bind}"));
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            anyhow::bail!("public_url must be an http:// or https:// URL (AUTOPILOT_PUBLIC_URL), got `{public_url}`");
        }
        let mcp_allowed_origins = args
            .mcp_allowed_origins
            .unwrap_or_default()
            .iter()
            .map(|origin| origin.trim())
            .filter(|origin| !origin.is_empty())
            .map(allowed_origin)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let worker_concurrency = args.worker_concurrency.unwrap_or(4);
        if worker_concurrency == 0 || worker_concurrency > 1024 {
            anyhow::bail!(
                "worker_concurrency must be between 1 and 1024 (AUTOPILOT_WORKER_CONCURRENCY)"
            );
        }
        let log_format = match args.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => anyhow::bail!(
                "log_format must be `text` or `json`, got `{other}` (AUTOPILOT_LOG_FORMAT)"
            ),
        };
        let max_queued_runs = args.max_queued_runs.unwrap_or(10_000);
        if max_queued_runs == 0 {
            anyhow::bail!("max_queued_runs must be at least 1 (AUTOPILOT_MAX_QUEUED_RUNS)");
        }
        let nats_url = args.nats_url.filter(|url| !url.trim().is_empty());
        let nats_prefix = args.nats_prefix.unwrap_or_else(|| "autopilot".to_owned());
        let lease_ttl_secs = args.lease_ttl_secs.unwrap_or(10);
        if !(1..=3600).contains(&lease_ttl_secs) {
            anyhow::bail!(
                "lease_ttl_secs must be between 1 and 3600 (AUTOPILOT_LEASE_TTL_SECS), got {lease_ttl_secs}"
            );
        }
        let heartbeat_interval = Duration::from_secs(5);
        let lost_after_secs = args.lost_after_secs.unwrap_or(30);
        if lost_after_secs < 3 * heartbeat_interval.as_secs() {
            anyhow::bail!(
                "lost_after_secs must be at least {} (three heartbeats) (AUTOPILOT_LOST_AFTER_SECS), got {lost_after_secs}",
                3 * heartbeat_interval.as_secs()
            );
        }
        let executor = match args.executor.as_deref().map(str::trim) {
            None | Some("local") => ExecutorKind::Local,
            Some("docker") => ExecutorKind::Docker,
            Some(other) => anyhow::bail!(
                "executor must be `local` or `docker`, got `{other}` (AUTOPILOT_EXECUTOR)"
            ),
        };
        let docker = DockerSettings {
            image: args
                .docker_image
                .filter(|image| !image.trim().is_empty())
                .unwrap_or_else(|| autopilot_worker::docker::DEFAULT_IMAGE.to_owned()),
        };
        let workspace_max_mb = args.workspace_max_mb.unwrap_or(256);
        if !(1..=1024 * 1024).contains(&workspace_max_mb) {
            anyhow::bail!(
                "workspace_max_mb must be between 1 and 1048576 (AUTOPILOT_WORKSPACE_MAX_MB), got {workspace_max_mb}"
            );
        }
        // Connections past the cores' count make PostgreSQL's backends and this process's tasks
        // take turns on them: on 2 cores, 4 connections per control plane ran the fleet pipeline
        // with a sixth less CPU per run than 16 (BENCHMARKS.md).
        let database_max_connections = args.database_max_connections.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            u32::try_from(cores * 2).unwrap_or(16).clamp(2, 16)
        });
        if !(1..=1000).contains(&database_max_connections) {
            anyhow::bail!(
                "database_max_connections must be between 1 and 1000 (AUTOPILOT_DATABASE_MAX_CONNECTIONS), got {database_max_connections}"
            );
        }
        if let Some(usd) = args.fleet_monthly_budget_usd {
            if !(usd.is_finite() && usd > 0.0) {
                anyhow::bail!(
                    "fleet_monthly_budget_usd must be a positive number of US dollars \
                     (AUTOPILOT_FLEET_MONTHLY_BUDGET_USD), got {usd}"
                );
            }
        }
        let fleet_budget_alert = match args.fleet_budget_alert.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => {
                let alert: crate::domain::handlers::ResultHandler = serde_json::from_str(text)
                    .map_err(|err| {
                        anyhow::anyhow!(
                            "AUTOPILOT_FLEET_BUDGET_ALERT must be JSON like {{\"post\": \
                             \"https://…\", \"sign_with\": \"CREDENTIAL\"}}: {err}"
                        )
                    })?;
                alert
                    .validate_at("AUTOPILOT_FLEET_BUDGET_ALERT")
                    .map_err(|(field, message)| anyhow::anyhow!("{field}: {message}"))?;
                if args.fleet_monthly_budget_usd.is_none() {
                    anyhow::bail!(
                        "AUTOPILOT_FLEET_BUDGET_ALERT needs AUTOPILOT_FLEET_MONTHLY_BUDGET_USD, \
                         the budget it alerts on"
                    );
                }
                Some(alert)
            }
        };
        Ok(Config {
            fleet_budget_alert,
            executor,
            docker,
            workspace_max_bytes: workspace_max_mb * 1024 * 1024,
            database_max_connections,
            bind,
            data_dir,
            database_url,
            admin_token,
            claude_bin: args.claude_bin.unwrap_or_else(|| PathBuf::from("claude")),
            fixed_servers_bin: args
                .fixed_servers_bin
                .unwrap_or_else(default_fixed_servers_bin),
            python: args.python.unwrap_or_else(|| PathBuf::from("python3")),
            public_url: public_url.trim_end_matches('/').to_owned(),
            worker_concurrency,
            kill_grace: Duration::from_secs(args.kill_grace_secs.unwrap_or(10)),
            misfire_grace: Duration::from_secs(args.misfire_grace_secs.unwrap_or(60)),
            fleet_monthly_budget_usd: args.fleet_monthly_budget_usd,
            log_format,
            heartbeat_interval,
            lost_after: Duration::from_secs(lost_after_secs),
            lease_ttl: Duration::from_secs(lease_ttl_secs),
            run_env: args.run_env.into_iter().collect(),
            operator_password: args.operator_password.filter(|p| !p.is_empty()),
            access_token_ttl: Duration::from_secs(15 * 60),
            oauth_auto_approve: std::env::var("AUTOPILOT_TEST_AUTO_APPROVE")
                .is_ok_and(|v| v == "1"),
            oauth_allow_private_metadata: std::env::var("AUTOPILOT_TEST_ALLOW_PRIVATE_METADATA")
                .is_ok_and(|v| v == "1"),
            mcp_allowed_origins,
            oauth_redirect_allowlist: args
                .oauth_redirect_uris
                .map(|uris| {
                    uris.into_iter()
                        .map(|uri| uri.trim().to_owned())
                        .filter(|uri| !uri.is_empty())
                        .collect()
                })
                .unwrap_or_else(|| {
                    DEFAULT_REDIRECT_ALLOWLIST
                        .iter()
                        .map(|uri| uri.to_string())
                        .collect()
                }),
            secret_key: args.secret_key.filter(|key| !key.is_empty()),
            max_queued_runs,
            nats_url,
            nats_prefix,
        })
    }

    /// `fleet` (PostgreSQL + NATS, workers elsewhere) or `embedded` (everything in this process).
    pub fn mode(&self) -> &'static str {
        if self.nats_url.is_some() {
            "fleet"
        } else {
            "embedded"
        }
    }

    pub fn workspaces_dir(&self) -> PathBuf {
        self.data_dir.join("workspaces")
    }

    /// `HOME` of the CLI processes: their settings and caches stay out of the operator's home.
    pub fn runs_home_dir(&self) -> PathBuf {
        self.data_dir.join("home")
    }

    /// The OAuth issuer: Autopilot's public URL.
    pub fn oauth_issuer(&self) -> String {
        self.public_url.clone()
    }

    /// The one resource OAuth access tokens are for: the MCP endpoint.
    pub fn mcp_resource(&self) -> String {
        format!("{}/mcp", self.public_url)
    }

    /// Where MCP clients learn which authorization server protects `/mcp`.
    pub fn mcp_resource_metadata_url(&self) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            self.public_url
        )
    }
}

/// One entry of `AUTOPILOT_MCP_ALLOWED_ORIGINS`, checked and with its port made explicit (the
/// scheme's default when none is given; `*` stays any port).
fn allowed_origin(origin: &str) -> anyhow::Result<String> {
    let refuse = |why: &str| {
        anyhow::anyhow!(
            "mcp_allowed_origins: `{origin}` {why}; give an origin such as https://app.example.com, \
             https://app.example.com:8443 or http://localhost:* (AUTOPILOT_MCP_ALLOWED_ORIGINS)"
        )
    };
    let (scheme, rest) = origin
        .split_once("://")
        .ok_or_else(|| refuse("has no scheme"))?;
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return Err(refuse("is not an http:// or https:// origin")),
    };
    if rest.contains(['/', '?', '#', '@']) {
        return Err(refuse("is more than an origin (no path, query or user)"));
    }
    // `[v6]:port` keeps its brackets; otherwise the port follows the last colon.
    let (host, port) = match rest.strip_prefix('[').and_then(|v6| v6.split_once(']')) {
        Some((v6, after)) => (
            &rest[..v6.len() + 2],
            match after {
                "" => None,
                after => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| refuse("has text after its host"))?,
                ),
            },
        ),
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(refuse("has no host"));
    }
    let port = match port {
        None => default_port.to_string(),
        Some("*") => "*".to_owned(),
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| refuse("has a port that is not a number from 1 to 65535"))?
            .to_string(),
    };
    Ok(format!("{scheme}://{}:{port}", host.to_ascii_lowercase()))
}

fn read_file(path: &Path) -> anyhow::Result<ConfigArgs> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        anyhow::anyhow!(
            "cannot read config file {} (AUTOPILOT_CONFIG): {err}",
            path.display()
        )
    })?;
    toml::from_str(&text).map_err(|err| anyhow::anyhow!("config file {}: {err}", path.display()))
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("autopilot"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/autopilot")),
        None => anyhow::bail!("no data directory: set AUTOPILOT_DATA_DIR (or --data-dir)"),
    }
}

#[cfg(test)]
mod tests;

/// `autopilot-servers` beside the running binary (how releases and the worker image install
/// it), else the bare name, looked up on PATH when a run starts it.
fn default_fixed_servers_bin() -> PathBuf {
    let program = autopilot_fixed_servers::catalog::PROGRAM;
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(program)))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(program))
}
