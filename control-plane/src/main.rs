//! `autopilot`: the one command users run.

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use autopilot_control_plane::config::{Config, ConfigArgs, LogFormat};
use autopilot_control_plane::serve;

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
    /// Manage the admin token of the HTTP API.
    AdminToken {
        #[command(subcommand)]
        action: AdminTokenAction,
    },
}

#[derive(Subcommand)]
enum AdminTokenAction {
    /// Replace the stored admin token with a new one and print it once.
    Rotate(ConfigArgs),
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("AUTOPILOT_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => run_serve(args).await,
        Command::AdminToken {
            action: AdminTokenAction::Rotate(args),
        } => match Config::load(args) {
            Ok(config) => serve::rotate_admin_token(&config).await,
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
    init_logging(config.log_format);
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|err| {
            anyhow::anyhow!("cannot listen on {} (AUTOPILOT_BIND): {err}", config.bind)
        })?;
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signals.cancel();
    });
    serve::run(config, listener, shutdown).await
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
