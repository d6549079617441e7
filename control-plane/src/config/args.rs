//! The settings as a user gives them ([`ConfigArgs`]): each declared once, read by clap from
//! flags and `AUTOPILOT_*` variables and by serde from the TOML file, and layered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

/// Redirect URIs admitted by default: claude.ai's and claude.com's callbacks, and loopback on any
/// port (Claude Code, Claude Desktop, local tools).
pub const DEFAULT_REDIRECT_ALLOWLIST: [&str; 3] = [
    "https://claude.ai/api/mcp/auth_callback",
    "https://claude.com/api/mcp/auth_callback",
    LOOPBACK_ENTRY,
];

/// The redirect allowlist entry that admits loopback over plain HTTP on any port and path.
pub const LOOPBACK_ENTRY: &str = "loopback";

/// Every setting a user can give, declared once: clap reads each from its flag and its
/// `AUTOPILOT_*` variable (flags win), serde from the TOML file (keys in snake_case). Every one
/// is optional here so the layers below and the defaults can fill what is left; [`Config::load`]
/// resolves and checks them.
#[derive(Args, Deserialize, Serialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConfigArgs {
    /// TOML file with any of the settings below (keys in snake_case, e.g. `bind = "0.0.0.0:8080"`).
    #[arg(long, env = "AUTOPILOT_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address the HTTP API listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "AUTOPILOT_BIND", value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Directory for the SQLite database, job workspaces and the CLI's home
    /// [default: $HOME/.local/share/autopilot].
    #[arg(long, env = "AUTOPILOT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB` [default: SQLite in the data directory].
    #[arg(
        long,
        env = "AUTOPILOT_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Bearer token for the HTTP API. Without it, one is generated on first start, printed once
    /// and stored hashed.
    #[arg(
        long,
        env = "AUTOPILOT_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// The Claude Code CLI to run [default: `claude` on PATH].
    #[arg(long, env = "AUTOPILOT_CLAUDE_BIN", value_name = "PATH")]
    pub claude_bin: Option<PathBuf>,
    /// The program of Autopilot's fixed MCP servers, for runs on the local executor [default:
    /// `autopilot-servers` beside this binary, else on PATH].
    #[arg(long, env = "AUTOPILOT_FIXED_SERVERS_BIN", value_name = "PATH")]
    pub fixed_servers_bin: Option<PathBuf>,
    /// The Python that runs dynamic MCP servers in runs on the local executor; it needs the MCP
    /// SDK (`pip install mcp`) [default: `python3` on PATH]. Containers use the run image's.
    #[arg(long, env = "AUTOPILOT_PYTHON", value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// URL users and clients reach Autopilot at [default: http://BIND].
    #[arg(long, env = "AUTOPILOT_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Runs the embedded worker executes at the same time [default: 4].
    #[arg(long, env = "AUTOPILOT_WORKER_CONCURRENCY", value_name = "N")]
    pub worker_concurrency: Option<usize>,
    /// Seconds between SIGTERM and SIGKILL when a run is stopped [default: 10].
    #[arg(long, env = "AUTOPILOT_KILL_GRACE_SECS", value_name = "SECS")]
    pub kill_grace_secs: Option<u64>,
    /// A fire later than this many seconds counts as missed and follows the job's misfire
    /// policy [default: 60].
    #[arg(long, env = "AUTOPILOT_MISFIRE_GRACE_SECS", value_name = "SECS")]
    pub misfire_grace_secs: Option<u64>,
    /// Most all runs together may cost in a calendar month (UTC), in US dollars, by the CLI's
    /// reported cost; past it, new runs of every job are refused [default: no limit].
    #[arg(long, env = "AUTOPILOT_FLEET_MONTHLY_BUDGET_USD", value_name = "USD")]
    pub fleet_monthly_budget_usd: Option<f64>,
    /// Where the fleet's budget alert goes when this month's spend reaches 80 % and 100 % of
    /// AUTOPILOT_FLEET_MONTHLY_BUDGET_USD, as a job's `budget.alert`: JSON `{"post": URL,
    /// "sign_with": CREDENTIAL, "allow_private": false}` [default: none].
    #[arg(long, env = "AUTOPILOT_FLEET_BUDGET_ALERT", value_name = "JSON")]
    pub fleet_budget_alert: Option<String>,
    /// Password of the operator who approves OAuth clients (claude.ai, …) on the consent page.
    /// Without it, one is generated on first start, printed once and stored as an argon2 hash.
    #[arg(
        long,
        env = "AUTOPILOT_OPERATOR_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub operator_password: Option<String>,
    /// Redirect URIs OAuth clients may register, comma-separated; `loopback` admits any
    /// http://127.0.0.1|localhost|[::1] URI [default: claude.ai's and claude.com's callbacks,
    /// loopback].
    #[arg(
        long,
        env = "AUTOPILOT_OAUTH_REDIRECT_URIS",
        value_name = "URIS",
        value_delimiter = ','
    )]
    pub oauth_redirect_uris: Option<Vec<String>>,
    /// Browser origins allowed to call `/mcp` besides the public URL's and loopback,
    /// comma-separated, each `scheme://host`, `scheme://host:port` or `scheme://host:*` (any
    /// port), e.g. a browser-based MCP client's page [default: none].
    #[arg(
        long,
        env = "AUTOPILOT_MCP_ALLOWED_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub mcp_allowed_origins: Option<Vec<String>>,
    /// Key that seals secrets kept in the store (webhook signing secrets), 64 hex digits
    /// [default: a key made on first start in DATA_DIR/secret.key].
    #[arg(
        long,
        env = "AUTOPILOT_SECRET_KEY",
        value_name = "HEX",
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    /// Most runs waiting in the queue; webhook deliveries beyond it get 503 [default: 10000].
    #[arg(long, env = "AUTOPILOT_MAX_QUEUED_RUNS", value_name = "N")]
    pub max_queued_runs: Option<u64>,
    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "AUTOPILOT_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// NATS server of the fleet (`nats://HOST:4222`, with JetStream). Together with a PostgreSQL
    /// database URL it turns `autopilot serve` into a fleet control plane: no embedded worker,
    /// runs go to `autopilot worker` processes.
    #[arg(
        long,
        env = "AUTOPILOT_NATS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub nats_url: Option<String>,
    /// First token of every NATS subject, stream and bucket name, so deployments can share a
    /// server [default: autopilot].
    #[arg(long, env = "AUTOPILOT_NATS_PREFIX", value_name = "PREFIX")]
    pub nats_prefix: Option<String>,
    /// Seconds the scheduler lease lasts without renewal; a new leader takes over this long after
    /// the old one died [default: 10].
    #[arg(long, env = "AUTOPILOT_LEASE_TTL_SECS", value_name = "SECS")]
    pub lease_ttl_secs: Option<u64>,
    /// A running run without a heartbeat for this many seconds is marked lost [default: 30].
    #[arg(long, env = "AUTOPILOT_LOST_AFTER_SECS", value_name = "SECS")]
    pub lost_after_secs: Option<u64>,
    /// How runs execute: `local` (a child process) or `docker` (a hardened container per run,
    /// through the Docker Engine at DOCKER_HOST) [default: local].
    #[arg(long, env = "AUTOPILOT_EXECUTOR", value_name = "EXECUTOR")]
    pub executor: Option<String>,
    /// Image of run containers (the Docker executor) [default: autopilot-runtime:latest, built by
    /// `bash docker/build-images.sh runtime`].
    #[arg(long, env = "AUTOPILOT_DOCKER_IMAGE", value_name = "IMAGE")]
    pub docker_image: Option<String>,
    /// Largest saved workspace in MiB (compressed) when workspaces follow jobs across the fleet;
    /// a run leaving a bigger one fails with that said [default: 256].
    #[arg(long, env = "AUTOPILOT_WORKSPACE_MAX_MB", value_name = "MIB")]
    pub workspace_max_mb: Option<u64>,
    /// Most PostgreSQL connections this process opens [default: twice the cores, 2 to 16].
    #[arg(long, env = "AUTOPILOT_DATABASE_MAX_CONNECTIONS", value_name = "N")]
    pub database_max_connections: Option<u32>,
    /// Extra environment for runs (the file's `[run_env]` table only). `ANTHROPIC_*` and
    /// `CLAUDE_CODE_*` names reach Claude runs only; the rest reach every run.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub run_env: BTreeMap<String, String>,
}

impl ConfigArgs {
    /// These settings over `below`: each one given here wins, the others come from `below`.
    pub(super) fn over(self, below: ConfigArgs) -> anyhow::Result<ConfigArgs> {
        let config = self.config.clone();
        let (mut merged, top) = (layer(&below)?, layer(&self)?);
        for (key, value) in top {
            if !value.is_null() {
                merged.insert(key, value);
            }
        }
        let mut args: ConfigArgs = serde_json::from_value(serde_json::Value::Object(merged))?;
        args.config = config;
        Ok(args)
    }
}

fn layer(args: &ConfigArgs) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::to_value(args)? {
        serde_json::Value::Object(map) => Ok(map),
        _ => anyhow::bail!("settings are a table"),
    }
}
