//! `autopilot`: the one command users run.

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use autopilot_control_plane::config::{Config, ConfigArgs, LogFormat};
use autopilot_control_plane::fleet_worker::{self, WorkerArgs, WorkerSettings};
use autopilot_control_plane::telemetry::{self, Telemetry};
use autopilot_control_plane::{keys, mcp, serve};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Autopilot runs Claude Code on a schedule and on events.
#[derive(Parser)]
#[command(name = "autopilot", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Autopilot: HTTP API, scheduler and (embedded) worker.
    Serve(ConfigArgs),
    /// Run a worker of a fleet: takes runs from NATS (AUTOPILOT_NATS_URL) and executes them.
    Worker(WorkerArgs),
    /// Serve Autopilot's MCP tools over stdin/stdout (for Claude Desktop and other local
    /// clients). Starts an embedded Autopilot, or forwards to a running one given
    /// AUTOPILOT_API_URL.
    Mcp(McpArgs),
    /// Forward a Claude Code hook event (its JSON on standard input) to Autopilot, where the jobs
    /// answering it (`on_hook`) start. Use it as the command of Claude Code's `hooks` settings;
    /// it prints nothing and always exits 0 within its timeout.
    Hook(autopilot_control_plane::hook_command::HookArgs),
    /// Manage the admin token of the HTTP API.
    AdminToken {
        #[command(subcommand)]
        action: AdminTokenAction,
    },
    /// Manage the keys that sign OAuth access tokens.
    SigningKey {
        #[command(subcommand)]
        action: SigningKeyAction,
    },
    /// Manage the secret key that seals secrets in the store.
    SecretKey {
        #[command(subcommand)]
        action: SecretKeyAction,
    },
}

#[derive(Subcommand)]
enum SecretKeyAction {
    /// Seal every secret in the store (OAuth signing keys, webhook signing secrets, the keys of
    /// credentials) again under a new secret key. Stop Autopilot first, or restart every
    /// control plane right after: until then they hold the old key.
    Rotate(RotateSecretKeyArgs),
}

#[derive(clap::Args)]
struct RotateSecretKeyArgs {
    /// The new key, 64 hex digits [default: one made now].
    #[arg(
        long,
        env = "AUTOPILOT_NEW_SECRET_KEY",
        value_name = "HEX",
        hide_env_values = true
    )]
    new_key: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(clap::Args)]
struct McpArgs {
    /// URL of a running Autopilot (e.g. http://127.0.0.1:8080) to forward to instead of starting
    /// one here; its admin token comes from AUTOPILOT_ADMIN_TOKEN.
    #[arg(long, env = "AUTOPILOT_API_URL", value_name = "URL")]
    api_url: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Subcommand)]
enum AdminTokenAction {
    /// Replace the stored admin token with a new one and print it once.
    Rotate(ConfigArgs),
}

#[derive(Subcommand)]
enum SigningKeyAction {
    /// Sign access tokens with a new key from now on. The replaced key keeps verifying the
    /// tokens it signed for their lifetime (plus a minute), so no client is logged out; every
    /// replica sharing the database picks the new key up by itself.
    Rotate(RotateSigningKeyArgs),
}

#[derive(clap::Args)]
struct RotateSigningKeyArgs {
    /// Drop every earlier key at once, for a key that may have leaked: access tokens signed
    /// before are refused and clients must refresh them (refresh tokens stay valid).
    #[arg(long)]
    revoke_previous: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Sets up logs and, when configured, traces; a broken trace setting stops the start.
fn init_telemetry(format: LogFormat, service: &'static str) -> anyhow::Result<Telemetry> {
    telemetry::init(format, service)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => run_serve(args).await,
        Command::Worker(args) => run_worker(args).await,
        Command::Mcp(args) => run_mcp(args).await,
        Command::Hook(args) => autopilot_control_plane::hook_command::run(args).await,
        Command::AdminToken {
            action: AdminTokenAction::Rotate(args),
        } => match Config::load(args) {
            Ok(config) => keys::rotate_admin_token(&config).await,
            Err(err) => Err(err),
        },
        Command::SigningKey {
            action: SigningKeyAction::Rotate(args),
        } => match Config::load(args.config) {
            Ok(config) => keys::rotate_signing_key(&config, args.revoke_previous).await,
            Err(err) => Err(err),
        },
        Command::SecretKey {
            action: SecretKeyAction::Rotate(args),
        } => match Config::load(args.config) {
            Ok(config) => keys::rotate_secret_key(&config, args.new_key.as_deref()).await,
            Err(err) => Err(err),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_serve(args: ConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(args)?;
    let telemetry = init_telemetry(config.log_format, "autopilot")?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|err| {
            anyhow::anyhow!("cannot listen on {} (AUTOPILOT_BIND): {err}", config.bind)
        })?;
    let served = serve::run(config, listener, shutdown_on_signal()).await;
    telemetry.shutdown();
    served
}

async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let settings = WorkerSettings::load(args)?;
    let telemetry = init_telemetry(settings.config.log_format, "autopilot-worker")?;
    let ran = fleet_worker::run(settings, shutdown_on_signal()).await;
    telemetry.shutdown();
    ran
}

/// A token cancelled at the first SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signals.cancel();
    });
    shutdown
}

/// `autopilot mcp`: stdout is the protocol channel, so nothing else may write to it.
async fn run_mcp(args: McpArgs) -> anyhow::Result<()> {
    if let Some(api_url) = args.api_url.as_deref().filter(|url| !url.trim().is_empty()) {
        let _telemetry = init_telemetry(LogFormat::Text, "autopilot")?;
        if args.config.admin_token.is_none() {
            tracing::warn!("AUTOPILOT_API_URL is set without AUTOPILOT_ADMIN_TOKEN: the running Autopilot will refuse the requests");
        }
        return mcp::stdio::forward(api_url, args.config.admin_token.as_deref()).await;
    }
    let config = Config::load(args.config)?;
    let _telemetry = init_telemetry(config.log_format, "autopilot")?;
    // The embedded HTTP server only listens on loopback, on a free port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on 127.0.0.1: {err}"))?;
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut server = tokio::spawn(serve::run_with(
        config,
        listener,
        shutdown.clone(),
        Some(ready_tx),
    ));
    let app = tokio::select! {
        ready = ready_rx => match ready {
            Ok(app) => app,
            // The server stopped before it was up: its error says why.
            Err(_) => return match server.await {
                Ok(Ok(())) => Err(anyhow::anyhow!("autopilot stopped during start-up")),
                Ok(Err(err)) => Err(err),
                Err(err) => Err(anyhow::anyhow!("autopilot panicked during start-up: {err}")),
            },
        },
        _ = wait_for_signal() => {
            shutdown.cancel();
            return Ok(());
        }
    };
    let served = tokio::select! {
        served = mcp::stdio::serve_embedded(app) => served,
        _ = wait_for_signal() => Ok(()),
        stopped = &mut server => {
            return match stopped {
                Ok(Ok(())) => Err(anyhow::anyhow!("autopilot stopped")),
                Ok(Err(err)) => Err(err),
                Err(err) => Err(anyhow::anyhow!("autopilot panicked: {err}")),
            };
        }
    };
    tracing::info!("MCP client disconnected; shutting down");
    shutdown.cancel();
    match server.await {
        Ok(result) => result?,
        Err(err) => anyhow::bail!("autopilot panicked: {err}"),
    }
    served
}

async fn wait_for_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(terminate) => { terminate.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
