//! `autopilot worker`: one worker of the fleet. It talks to NATS only (it never holds database
//! credentials): it pulls run requests of its pools, claims each through a control plane before
//! executing it, streams events back, heartbeats, and on shutdown stops pulling, lets its runs
//! finish within the grace period, then stops them and hands them back.

use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::WorkerId;
use autopilot_worker::workspaces::SharedWorkspaces;
use autopilot_worker::Worker;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigArgs};
use crate::domain::settings::{validate_pool, DEFAULT_POOL};
use crate::metrics::Metrics;

/// Settings of `autopilot worker`, beside the shared ones (`AUTOPILOT_NATS_URL`, `_NATS_PREFIX`,
/// `_DATA_DIR` for workspaces, `_CLAUDE_BIN`, `_WORKER_CONCURRENCY`, `_KILL_GRACE_SECS`,
/// `_LOG_FORMAT`, `[run_env]`).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct WorkerArgs {
    /// Worker pools whose runs this worker takes, comma-separated [default: default].
    #[arg(
        long,
        env = "AUTOPILOT_WORKER_POOLS",
        value_name = "POOLS",
        value_delimiter = ','
    )]
    pub pools: Option<Vec<String>>,
    /// Name of this worker in `GET /api/v1/workers` and on its runs [default: worker-<random>].
    #[arg(long, env = "AUTOPILOT_WORKER_ID", value_name = "ID")]
    pub worker_id: Option<String>,
    /// At shutdown (SIGTERM), seconds running runs may go on before they are stopped and handed
    /// back [default: 60].
    #[arg(long, env = "AUTOPILOT_SHUTDOWN_GRACE_SECS", value_name = "SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Address to serve this worker's metrics on (`/metrics`, Prometheus text) and `/healthz`
    /// [default: none; no listener].
    #[arg(long, env = "AUTOPILOT_METRICS_BIND", value_name = "ADDR")]
    pub metrics_bind: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// The validated settings of a worker process.
pub struct WorkerSettings {
    pub config: Config,
    pub nats_url: String,
    pub worker_id: WorkerId,
    pub pools: Vec<String>,
    pub shutdown_grace: Duration,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_bind: Option<std::net::SocketAddr>,
}

impl WorkerSettings {
    pub fn load(args: WorkerArgs) -> anyhow::Result<Self> {
        if args.config.database_url.is_some() {
            anyhow::bail!(
                "autopilot worker does not use a database and must not hold its credentials: unset \
                 AUTOPILOT_DATABASE_URL (and --database-url) for the worker; it reaches the control planes through NATS"
            );
        }
        let config = Config::load(args.config)?;
        let Some(nats_url) = config.nats_url.clone() else {
            anyhow::bail!(
                "autopilot worker needs the fleet's NATS server: set AUTOPILOT_NATS_URL (e.g. nats://127.0.0.1:4222) \
                 to the server the control planes use"
            );
        };
        let mut pools: Vec<String> = Vec::new();
        for pool in args.pools.unwrap_or_else(|| vec![DEFAULT_POOL.to_owned()]) {
            let pool = validate_pool(Some(pool.trim().to_owned()))
                .map_err(|err| anyhow::anyhow!("AUTOPILOT_WORKER_POOLS: {err}"))?;
            if !pools.contains(&pool) {
                pools.push(pool);
            }
        }
        if pools.is_empty() {
            anyhow::bail!(
                "AUTOPILOT_WORKER_POOLS names no pool; give at least one, e.g. `default`"
            );
        }
        let worker_id = match args.worker_id.filter(|id| !id.trim().is_empty()) {
            Some(id) => {
                let valid = id.len() <= 128
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !valid {
                    anyhow::bail!(
                        "AUTOPILOT_WORKER_ID must be 1 to 128 letters, digits, `-`, `_` or `.`, got {id:?}"
                    );
                }
                WorkerId::new(id)
            }
            None => WorkerId::generate("worker"),
        };
        Ok(Self {
            config,
            nats_url,
            worker_id,
            pools,
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs.unwrap_or(60)),
            metrics_bind: args.metrics_bind,
        })
    }
}

/// Runs the worker until `shutdown` fires and its runs are done or handed back.
pub async fn run(settings: WorkerSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = &settings.config;
    std::fs::create_dir_all(config.workspaces_dir()).map_err(|err| {
        anyhow::anyhow!(
            "cannot create the workspaces directory {} (AUTOPILOT_DATA_DIR): {err}",
            config.workspaces_dir().display()
        )
    })?;
    let bus = crate::serve::connect_nats(&settings.nats_url, &config.nats_prefix).await?;
    let mut worker_config = crate::serve::embedded_worker_config(config);
    worker_config.worker_id = settings.worker_id.clone();
    worker_config.pools = settings.pools.clone();
    worker_config.shutdown_grace = settings.shutdown_grace;
    tracing::info!(
        mode = "worker",
        worker.id = %settings.worker_id,
        pools = ?settings.pools,
        concurrency = config.worker_concurrency,
        executor = config.executor.as_str(),
        bus = "nats-jetstream",
        nats = %crate::config::redact_url(&settings.nats_url),
        data_dir = %config.data_dir.display(),
        workspaces = "shared (NATS object store)",
        "autopilot worker is running"
    );
    let executor = crate::executors::build(config, &worker_config.worker_id).await?;
    // The next run of a job may land on any worker: its workspace travels through NATS.
    let blobs = bus
        .blobs(autopilot_worker::workspaces::WORKSPACE_BUCKET, None)
        .await
        .map_err(|err| anyhow::anyhow!("opening the workspace store on NATS: {err}"))?;
    let blobs = Arc::new(blobs);
    // What a worker that died in the middle of a save left in the store goes, in the background.
    let sweeping = Arc::clone(&blobs);
    tokio::spawn(async move {
        match sweeping
            .sweep_orphaned_chunks(autopilot_worker::workspaces::ORPHANED_CHUNKS_AGE)
            .await
        {
            Ok(0) => {}
            Ok(swept) => tracing::info!(
                saves = swept,
                "purged the chunks of workspace saves that never finished"
            ),
            Err(err) => tracing::warn!(error = %err, "sweeping unfinished workspace saves failed"),
        }
    });
    let workspaces =
        SharedWorkspaces::new(config.workspaces_dir(), blobs, config.workspace_max_bytes);
    let worker =
        Worker::new(worker_config, Arc::new(bus), executor).with_workspaces(Arc::new(workspaces));
    // The worker's slots, read out at its metrics address and pushed over OTLP when the
    // OTEL_* variables ask for it.
    let metrics = Arc::new(Metrics::from_env("autopilot-worker")?);
    metrics.observe_worker_slots(worker.slots());
    let metrics_server = match settings.metrics_bind {
        Some(address) => Some(serve_metrics(address, Arc::clone(&metrics)).await?),
        None => None,
    };
    let ran = worker.run(shutdown).await;
    if let Some((stop, server)) = metrics_server {
        stop.cancel();
        let _ = server.await;
    }
    ran?;
    tracing::info!("autopilot worker stopped");
    Ok(())
}

/// Serves `/metrics` (`metrics`: the worker's slots) and `/healthz` on `address` until the returned token
/// is cancelled.
async fn serve_metrics(
    address: std::net::SocketAddr,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
    use axum::response::IntoResponse;

    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|err| {
            anyhow::anyhow!("cannot listen on {address} (AUTOPILOT_METRICS_BIND): {err}")
        })?;
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        );
    tracing::info!(%address, "worker metrics served at /metrics");
    let stop = CancellationToken::new();
    let until = stop.clone();
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(until.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "the metrics listener stopped");
        }
    });
    Ok((stop, server))
}
