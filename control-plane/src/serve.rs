//! `autopilot serve`: wires the store, the bus, the services, the background tasks and the HTTP
//! server together and supervises them. The embedded default runs everything in this process:
//! SQLite (or a given PostgreSQL), the in-process bus and a local-process worker. With
//! PostgreSQL and `AUTOPILOT_NATS_URL` it is one control plane of a fleet: the bus is NATS
//! JetStream, the scheduler lease is in NATS KV, and runs go to `autopilot worker` processes.

use std::fs::File;
use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use autopilot_proto::{
    BlobStore, Bus, InMemoryBus, JetStreamBus, JetStreamConfig, Lease, WorkerId,
};
use autopilot_worker::workspaces::WORKSPACE_BUCKET;
use autopilot_worker::{CommandEnv, Worker, WorkerConfig};
use nix::fcntl::{Flock, FlockArg};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Parts};
use crate::config::Config;
use crate::domain::limits::MAX_REQUEST_BODY_BYTES;
use crate::domain::settings::DEFAULT_POOL;
use crate::hooks::{self, Intake};
use crate::keys::Keys;
use crate::lease::StoreLease;
use crate::scheduler::LEASE_NAME;
use crate::services::dispatch::{
    recover_embedded_runs, run_dispatcher, run_reaper, EMBEDDED_WORKER_PREFIX,
};
use crate::services::worker_requests::serve_worker_requests;
use crate::store;
use crate::{api, dashboard, mcp, oauth};

/// Environment variables every run gets from the worker's own environment, when set.
const PASSTHROUGH_VARS: [&str; 18] = [
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "SHELL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
];

/// How long requests still in progress when the HTTP server stops may take to finish.
pub const HTTP_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs Autopilot until `shutdown` fires or a component fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(config, listener, shutdown, None).await
}

/// [`run`], handing the running [`App`] to `ready` once it is up (for `autopilot mcp`, which
/// serves the tools over stdio from the same process).
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Arc<App>>>,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let fleet = config.nats_url.is_some();
    if fleet {
        check_fleet_config(&config)?;
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {} (AUTOPILOT_DATA_DIR)",
            config.data_dir.display()
        )
    })?;
    // Fleet replicas share nothing on disk; an embedded process owns its data directory.
    let _data_dir_lock = if fleet {
        None
    } else {
        Some(lock_data_dir(&config.data_dir)?)
    };
    let store = store::connect_with(&config.database_url, config.database_max_connections)
        .await
        .with_context(|| {
            format!(
                "cannot open the store at {} (AUTOPILOT_DATABASE_URL)",
                crate::config::redact_url(&config.database_url)
            )
        })?;
    let sealer = crate::seal::Sealer::load(config.secret_key.as_deref(), &config.data_dir)?;
    let keys = Keys::load(&config, &store, &sealer).await?;
    type Saved = Option<Arc<dyn BlobStore>>;
    let (bus, lease, saved_workspaces): (Arc<dyn Bus>, Arc<dyn Lease>, Saved) =
        match &config.nats_url {
            Some(url) => {
                let bus = connect_nats(url, &config.nats_prefix).await?;
                let lease = bus
                    .lease(LEASE_NAME, config.lease_ttl)
                    .await
                    .context("setting up the scheduler lease in NATS KV (AUTOPILOT_NATS_URL)")?;
                let saved = bus
                    .blobs(WORKSPACE_BUCKET, None)
                    .await
                    .map_err(|err| anyhow::anyhow!("opening the workspace store on NATS: {err}"))?;
                (Arc::new(bus), Arc::new(lease), Some(Arc::new(saved)))
            }
            None => (
                Arc::new(InMemoryBus::default()),
                Arc::new(StoreLease::new(
                    Arc::clone(&store),
                    LEASE_NAME,
                    config.lease_ttl,
                )),
                None,
            ),
        };
    // In the fleet, changes made here are told to the other replicas by the notice relay.
    let (changes, notices) = if fleet {
        let (changes, notices) = crate::app::changes_channel();
        (Some(changes), Some(notices))
    } else {
        (None, None)
    };
    let app = App::new(Parts {
        config: Arc::clone(&config),
        store: Arc::clone(&store),
        bus: Arc::clone(&bus),
        lease,
        keys,
        sealer,
        saved_workspaces,
        changes,
        shutdown: shutdown.clone(),
        metrics: crate::metrics::Metrics::from_env("autopilot")?,
    });
    if config.oauth_auto_approve {
        tracing::warn!("AUTOPILOT_TEST_AUTO_APPROVE is set: every OAuth authorization is approved without the operator (tests only)");
    }
    if !fleet {
        recover_embedded_runs(&app)
            .await
            .context("recovering runs left by the previous process")?;
    }

    if let Some(ready) = ready {
        // Nobody waiting any more is fine.
        let _ = ready.send(Arc::clone(&app));
    }

    let worker = if fleet {
        None
    } else {
        let worker_config = embedded_worker_config(&config);
        let executor = crate::executors::build(&config, &worker_config.worker_id).await?;
        let worker = Worker::new(worker_config, Arc::clone(&bus), executor);
        app.metrics.observe_worker_slots(worker.slots());
        Some(worker)
    };
    let address = listener.local_addr()?;
    tracing::info!(
        mode = config.mode(),
        store = store.backend(),
        bus = if fleet { "nats-jetstream" } else { "in-process" },
        nats = config.nats_url.as_deref().map(crate::config::redact_url),
        executor = if fleet { "none (runs go to `autopilot worker` processes)" } else { config.executor.as_str() },
        replica = %app.replica_id,
        %address,
        public_url = %config.public_url,
        data_dir = %config.data_dir.display(),
        "autopilot is running"
    );

    // Shutdown runs in two steps: `shutdown` stops new work (the scheduler stops firing, the
    // dispatcher stops sending, the worker stops pulling and lets its runs finish); `control`
    // stops what those runs still need (API, worker requests, event ingestion) once the worker
    // is done. A fleet control plane has no worker of its own to wait for.
    let control = CancellationToken::new();
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let (intake, deliveries) = Intake::new(config.max_queued_runs);
    let router = router(&app, Arc::clone(&intake));
    let http_shutdown = control.clone();
    tasks.spawn(async move {
        let server = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
            .with_graceful_shutdown(http_shutdown.clone().cancelled_owned())
            .into_future();
        tokio::pin!(server);
        // Live streams (run events, MCP sessions) end at the first step of the shutdown; what
        // is still open when the HTTP server stops (a stalled upload, a slow client) gets
        // `HTTP_DRAIN` to finish, then its connection is closed.
        let served = tokio::select! {
            served = &mut server => served,
            () = async {
                http_shutdown.cancelled().await;
                tokio::time::sleep(HTTP_DRAIN).await;
            } => {
                tracing::warn!(drain_secs = HTTP_DRAIN.as_secs(), "connections still open after the drain; closing them");
                Ok(())
            }
        };
        ("http server", served.map_err(anyhow::Error::from))
    });
    macro_rules! spawn_task {
        ($name:literal, $token:expr, $task:expr) => {{
            let cancel = $token.clone();
            let app = Arc::clone(&app);
            tasks.spawn(async move { ($name, $task(app, cancel).await) });
        }};
    }
    spawn_task!("worker requests", control, serve_worker_requests);
    spawn_task!("event ingester", control, crate::ingest::run_ingester);
    let writer =
        hooks::writer::run_delivery_writer(Arc::clone(&app), intake, deliveries, control.clone());
    tasks.spawn(async move { ("webhook delivery writer", writer.await) });
    spawn_task!("reaper", control, run_reaper);
    spawn_task!("scheduler", shutdown, crate::scheduler::run_on_own_thread);
    spawn_task!("dispatcher", shutdown, run_dispatcher);
    spawn_task!("chainer", shutdown, crate::services::chains::run_chainer);
    spawn_task!(
        "approval sweeper",
        shutdown,
        crate::services::approvals::run_sweeper
    );
    if let Some(notices) = notices {
        let relay_app = Arc::clone(&app);
        let relay_cancel = control.clone();
        tasks.spawn(async move {
            let relayed = crate::notices::run_relay(relay_app, notices, relay_cancel).await;
            ("notice relay", relayed)
        });
    }
    let stop_control = shutdown.clone();
    tasks.spawn(async move {
        let result = match worker {
            Some(worker) => worker.run(stop_control).await,
            None => {
                stop_control.cancelled().await;
                Ok(())
            }
        };
        control.cancel();
        ("embedded worker", result)
    });
    supervise(tasks, shutdown).await
}

/// The whole HTTP server: the API and health checks, `/mcp`, the OAuth authorization server and
/// the webhook intake, each an edge of its own, with a JSON 404 for anything else.
pub fn router(app: &Arc<App>, intake: Arc<Intake>) -> axum::Router {
    let router = axum::Router::new()
        .merge(api::router(Arc::clone(app)))
        .merge(dashboard::router(Arc::clone(app)))
        .merge(hooks::router(Arc::clone(app), intake))
        .merge(oauth::router(Arc::clone(app)))
        .nest_service("/mcp", mcp::router(Arc::clone(app)));
    // Only when spans are exported: otherwise a request costs no span.
    let router = match crate::http::trace::RequestRecorder::installed() {
        Some(recorder) => router.layer(crate::http::trace::RequestSpans::new(recorder)),
        None => router,
    };
    router
        .fallback(api::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// What the fleet needs that the embedded mode makes up by itself.
fn check_fleet_config(config: &Config) -> anyhow::Result<()> {
    if !config.database_url.starts_with("postgres") {
        anyhow::bail!(
            "AUTOPILOT_NATS_URL is set, but a fleet keeps its state in PostgreSQL: set AUTOPILOT_DATABASE_URL to a \
             postgres:// URL, or unset AUTOPILOT_NATS_URL for the embedded mode"
        );
    }
    if config.secret_key.is_none() {
        anyhow::bail!(
            "AUTOPILOT_SECRET_KEY is not set: in a fleet every control plane must seal and open secrets with the same \
             key; generate one with `openssl rand -hex 32` and give it to every replica"
        );
    }
    Ok(())
}

/// Connects to the fleet's NATS server, with a message saying what to start when it is not there.
pub async fn connect_nats(url: &str, prefix: &str) -> anyhow::Result<JetStreamBus> {
    let config = JetStreamConfig {
        prefix: prefix.to_owned(),
        // Bounds how long an API call waits on a NATS that stopped answering.
        request_timeout: std::time::Duration::from_secs(10),
        ..JetStreamConfig::default()
    };
    JetStreamBus::connect(url, config).await.map_err(|err| {
        anyhow::anyhow!(
            "cannot use NATS at {} (AUTOPILOT_NATS_URL / AUTOPILOT_NATS_PREFIX): {err}",
            crate::config::redact_url(url)
        )
    })
}

/// Waits for every task. The first one to stop on its own (failed or not) stops the rest, and
/// its error becomes the process's.
async fn supervise(
    mut tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut failure: Option<anyhow::Error> = None;
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = match joined {
            Ok(done) => done,
            Err(join_error) => (
                "task",
                Err(anyhow::anyhow!("a task panicked: {join_error}")),
            ),
        };
        if shutdown.is_cancelled() {
            if let Err(err) = result {
                tracing::warn!(task = name, error = ?err, "task failed while shutting down");
            }
            continue;
        }
        let err = result
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("stopped unexpectedly"));
        tracing::error!(task = name, error = ?err, "component failed; shutting down");
        failure.get_or_insert(err.context(format!("{name} failed")));
        shutdown.cancel();
    }
    tracing::info!("autopilot stopped");
    failure.map_or(Ok(()), Err)
}

/// One embedded process per data directory: the lock is what lets a restart mark the previous
/// process's runs lost at once.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<Flock<File>> {
    let path = data_dir.join("autopilot.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        anyhow::anyhow!(
            "another autopilot process is using the data directory {} ({errno}); stop it, or give this one its own \
             AUTOPILOT_DATA_DIR",
            data_dir.display()
        )
    })
}

pub(crate) fn embedded_worker_config(config: &Config) -> WorkerConfig {
    let command_env = command_env(config);
    if !command_env.has_model_credentials() {
        tracing::warn!("ANTHROPIC_API_KEY is not set: claude jobs will fail until it is set in this process's environment");
    }
    WorkerConfig {
        worker_id: WorkerId::generate(EMBEDDED_WORKER_PREFIX),
        pools: vec![DEFAULT_POOL.to_owned()],
        concurrency: config.worker_concurrency,
        workspaces_root: config.workspaces_dir(),
        command_env,
        kill_grace: config.kill_grace,
        shutdown_grace: config.kill_grace,
        heartbeat_interval: config.heartbeat_interval,
        event_batch_max: 256,
        // Well under what a person following a run notices; enough for a short run's events
        // to be published and stored as one batch.
        event_linger: std::time::Duration::from_millis(20),
    }
}

/// The environment runs are built from: a few safe variables, and the model API's settings
/// (`ANTHROPIC_*`, `CLAUDE_CODE_*`) for Claude runs only.
fn command_env(config: &Config) -> CommandEnv {
    let mut base: Vec<(String, String)> = PASSTHROUGH_VARS
        .iter()
        .filter_map(|name| {
            std::env::var(name)
                .ok()
                .map(|value| (name.to_string(), value))
        })
        .collect();
    if !base.iter().any(|(name, _)| name == "PATH") {
        base.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    let is_model_var =
        |name: &str| name.starts_with("ANTHROPIC_") || name.starts_with("CLAUDE_CODE_");
    let mut model_api: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| is_model_var(name))
        .collect();
    for (name, value) in &config.run_env {
        let target = if is_model_var(name) {
            &mut model_api
        } else {
            &mut base
        };
        target.retain(|(existing, _)| existing != name);
        target.push((name.clone(), value.clone()));
    }
    CommandEnv {
        claude_bin: resolve_claude_bin(&config.claude_bin),
        fixed_servers_bin: config.fixed_servers_bin.clone(),
        python: config.python.clone(),
        home: config.runs_home_dir(),
        base,
        model_api,
    }
}

/// Resolves a bare program name on PATH, warning when it is not there.
fn resolve_claude_bin(configured: &Path) -> PathBuf {
    if configured.components().count() > 1 {
        if !configured.exists() {
            tracing::warn!(path = %configured.display(), "AUTOPILOT_CLAUDE_BIN does not exist: claude jobs will fail");
        }
        return configured.to_path_buf();
    }
    let found = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(configured))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    match found {
        Some(path) => path,
        None => {
            tracing::warn!(
                program = %configured.display(),
                "the Claude Code CLI is not on PATH: claude jobs will fail until it is installed (pip install claude-agent-sdk \
                 ships it) or AUTOPILOT_CLAUDE_BIN points at it"
            );
            configured.to_path_buf()
        }
    }
}
