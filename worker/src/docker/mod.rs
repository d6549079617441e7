//! The Docker executor: every run in a container of its own, through the Docker Engine API.
//!
//! A run's container is hardened by default: a non-root user, every capability dropped,
//! `no-new-privileges`, a read-only root file system with tmpfs for `/tmp` and the home
//! directory, limits on memory, CPU and processes, the workspace as the only writable mount,
//! and no Docker socket. Its network is the job's choice: `none`; `model-only`, which is no
//! network either, plus the model proxy's Unix socket mounted in and the image's small relay
//! (`worker/relay`) serving it on the container's loopback; or `open`. The real API
//! key never enters a container: a Claude run gets a token the model proxy swaps for the key
//! (see [`crate::model_proxy`]).
//!
//! Every container carries the run, attempt and worker in its labels and is always removed: at
//! the end of the run, when the run's task is dropped, and, for a worker that was killed, by the
//! sweep at the worker's next start.
//!
//! This file holds the executor itself: its setup and a run's container from creation to exit.
//! What the container is (environment, mounts, limits, labels) is decided without any I/O in
//! `spec/`; the container's output becomes lines in `output.rs`; removing containers, after a
//! run and by the sweep, is `cleanup.rs`; what the executor needs from the host (the
//! workspace's owner, the proxy's socket directory, the bridge's address, live processes) is
//! `host.rs`.

/// Where the directory of a run's MCP configuration is mounted in its container.
pub const MCP_CONFIG_MOUNT: &str = "/run/autopilot-mcp";

mod cleanup;
mod host;
mod output;
mod spec;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, InspectContainerOptions, StopContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use self::cleanup::containers_of_run;
use self::cleanup::{remove, Cleanup};
pub use self::host::gateway;
use self::host::{hostname, prepare_workspace, relay_dir};
use self::output::forward_output;
pub use self::output::LineSplitter;
use self::spec::{ContainerSettings, ModelAccess};
use crate::command::CommandSpec;
use crate::executor::{ExecError, Executor, ExitInfo, OutputLine};
use crate::model_proxy::{ModelProxy, RunToken};

/// The model API of [`DockerConfig::new`]: where a Claude run whose environment names none
/// sends its requests.
pub const DEFAULT_MODEL_API: &str = "https://api.anthropic.com";
/// The image runs use unless configured otherwise (built by `docker/build-images.sh`).
pub const DEFAULT_IMAGE: &str = "autopilot-runtime:latest";
/// How long output may keep arriving after the container exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
const API_TIMEOUT: Duration = Duration::from_secs(60);
/// Attach and wait last as long as the run: bounded by the run's own timeout, not here.
const STREAM_TIMEOUT: Duration = Duration::from_secs(8 * 24 * 3600);

/// How the Docker executor makes its containers: the image, the user runs execute as, the
/// worker they are labelled with, and the model API Claude runs reach by default.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    pub image: String,
    /// Labels every container with it; the sweep at start removes this worker's leftovers.
    pub worker_id: String,
    /// `uid:gid` runs execute as; the workspace is handed to it.
    pub uid: u32,
    pub gid: u32,
    /// The model API a Claude run's requests go to when its environment names none
    /// (`ANTHROPIC_BASE_URL`); the credentials always come from that environment. `None`: runs
    /// that name no model API get no model access.
    pub model_api: Option<String>,
}

impl DockerConfig {
    /// The settings of worker `worker_id`: the runtime image, uid and gid 10001 (the image's
    /// user), and [`DEFAULT_MODEL_API`].
    pub fn new(worker_id: impl Into<String>) -> Self {
        DockerConfig {
            image: DEFAULT_IMAGE.to_owned(),
            worker_id: worker_id.into(),
            uid: 10001,
            gid: 10001,
            model_api: Some(DEFAULT_MODEL_API.to_owned()),
        }
    }
}

/// Why the Docker executor cannot start; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DockerSetupError(pub String);

/// Runs each command in a container of its own (see the module documentation), with the
/// model proxy that Claude runs reach the model API through.
pub struct DockerExecutor {
    api: Docker,
    streams: Docker,
    config: DockerConfig,
    engine_version: String,
    /// This host's name, on every container's labels (the sweep compares it).
    host: String,
    proxy: ModelProxy,
    /// The proxy's socket, mounted into `model-only` containers.
    relay_dir: tempfile::TempDir,
    /// The proxy's URL on the Docker bridge, for `open` containers.
    open_url: Option<String>,
    _stop_proxy: DropGuard,
}

impl std::fmt::Debug for DockerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerExecutor")
            .field("image", &self.config.image)
            .field("engine_version", &self.engine_version)
            .finish()
    }
}

fn engine_unreachable(err: impl std::fmt::Display) -> DockerSetupError {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    DockerSetupError(format!(
        "the Docker executor cannot reach a Docker Engine at {host}: {err}. Start the engine (`dockerd`, or \
         `bash docker/start-engine.sh`), point DOCKER_HOST at it, or choose AUTOPILOT_EXECUTOR=local"
    ))
}

impl DockerExecutor {
    /// Connects to the engine (negotiating its API version), checks the image, starts the model
    /// proxy (on the Docker bridge and on a Unix socket for `model-only` runs), and removes
    /// containers left behind.
    pub async fn connect(config: DockerConfig) -> Result<Self, DockerSetupError> {
        let docker = Docker::connect_with_defaults().map_err(engine_unreachable)?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(engine_unreachable)?;
        let version = docker.version().await.map_err(engine_unreachable)?;
        let engine_version = format!(
            "{} (API {})",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        );
        let api = docker.clone().with_timeout(API_TIMEOUT);
        let streams = docker.with_timeout(STREAM_TIMEOUT);
        match api.inspect_image(&config.image).await {
            Ok(_) => {}
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(DockerSetupError(format!(
                    "the run image `{}` is not in the Docker Engine: build it with `bash docker/build-images.sh runtime` \
                     (it needs no registry), or set AUTOPILOT_DOCKER_IMAGE to an image that has the Claude Code CLI",
                    config.image
                )))
            }
            Err(err) => return Err(engine_unreachable(err)),
        }
        let proxy = ModelProxy::new();
        let stop_proxy = CancellationToken::new();
        let open_url = match gateway(&api, "bridge").await {
            Some(ip) => {
                let addr = proxy
                    .listen(SocketAddr::new(ip, 0), stop_proxy.clone())
                    .await
                    .map_err(|err| {
                        DockerSetupError(format!(
                            "the model proxy cannot listen on the Docker bridge {ip}: {err}"
                        ))
                    })?;
                Some(format!("http://{addr}"))
            }
            None => None,
        };
        let relay_dir = relay_dir(&proxy, &stop_proxy).await?;
        let executor = DockerExecutor {
            api,
            streams,
            config,
            engine_version,
            host: hostname(),
            proxy,
            relay_dir,
            open_url,
            _stop_proxy: stop_proxy.drop_guard(),
        };
        let swept = executor.sweep().await;
        if swept > 0 {
            tracing::warn!(
                containers = swept,
                "removed containers left behind by an earlier run of this worker"
            );
        }
        Ok(executor)
    }

    /// The engine's version and API version, as connected to.
    pub fn engine_version(&self) -> &str {
        &self.engine_version
    }

    /// The image every run's container is made from.
    pub fn image(&self) -> &str {
        &self.config.image
    }

    /// What every container of this executor shares.
    /// Whether the image a job names is in this worker's engine; the error says what to do.
    async fn check_job_image(&self, image: &str) -> Result<(), ExecError> {
        match self.api.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(ExecError::Setup(format!(
                "the image `{image}` this job asks for is not on worker {}: build it on every \
                 worker of the job's pool (FROM autopilot-runtime, see docker/README.md), or \
                 remove the job's `image` to use the worker's own ({})",
                self.config.worker_id, self.config.image
            ))),
            Err(err) => Err(ExecError::Setup(format!(
                "cannot check the image `{image}`: {err}"
            ))),
        }
    }

    fn container_settings<'a>(&'a self, command: &'a CommandSpec) -> ContainerSettings<'a> {
        ContainerSettings {
            image: self.image_of(command),
            uid: self.config.uid,
            gid: self.config.gid,
            worker_id: &self.config.worker_id,
            host: &self.host,
            worker_pid: std::process::id(),
            relay_dir: self.relay_dir.path(),
        }
    }

    /// Registers a Claude run with the model proxy when the run reaches the model at all (see
    /// [`spec::model_route`]): the endpoint its container uses, and its token, valid until it is
    /// dropped.
    fn register_model_access(&self, command: &CommandSpec) -> Option<(String, RunToken)> {
        let route = spec::model_route(
            command,
            self.open_url.as_deref(),
            self.config.model_api.as_deref(),
        )?;
        // The run's requests are spans under its `invoke_agent` span, given as TRACEPARENT.
        let trace_parent = command
            .env
            .iter()
            .find(|(name, _)| name == "TRACEPARENT")
            .map(|(_, value)| value.clone());
        Some((
            route.endpoint,
            self.proxy.register(route.upstream, trace_parent),
        ))
    }
}

#[async_trait]
impl Executor for DockerExecutor {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn execute(
        &self,
        mut command: CommandSpec,
        output: mpsc::Sender<OutputLine>,
        stop: CancellationToken,
        grace: Duration,
    ) -> Result<ExitInfo, ExecError> {
        if command.cwd.to_string_lossy().contains(':') {
            return Err(ExecError::Setup(format!(
                "the workspace path {} contains `:`, which a Docker bind mount cannot take",
                command.cwd.display()
            )));
        }
        if let Some(image) = command.image.as_deref().filter(|i| *i != self.config.image) {
            self.check_job_image(image).await?;
        }
        prepare_workspace(&command.cwd, self.config.uid, self.config.gid).await?;
        if let Some(dir) = command.mcp_config.as_deref().and_then(Path::parent) {
            host::hand_to_run_user(dir, self.config.uid, self.config.gid).await?;
        }
        // The run's token is valid until this call returns.
        let model_access = self.register_model_access(&command);
        let access = model_access.as_ref().map(|(endpoint, token)| ModelAccess {
            endpoint,
            token: token.as_str(),
        });
        let env = spec::container_env(&command, access);
        let body = spec::container_body(&command, env, &self.container_settings(&command));
        let name = spec::container_name(command.run);
        let starting = std::time::SystemTime::now();
        let id = self.create(&name, body).await?;
        // From here on the container goes away however this call ends.
        let mut cleanup = Cleanup::new(self.api.clone(), id.clone());

        let attach = self
            .streams
            .attach_container(
                &id,
                Some(AttachContainerOptions {
                    stream: true,
                    stdin: command.stdin.is_some(),
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(|err| ExecError::Setup(format!("attaching to the run's container: {err}")))?;
        if let Err(err) = self.api.start_container(&id, None).await {
            let message = err.to_string();
            return Err(
                if message.contains("no such file or directory")
                    || message.contains("executable file not found")
                    || message.contains("permission denied")
                {
                    self.missing_program(&command)
                } else {
                    ExecError::Setup(format!("starting the run's container: {message}"))
                },
            );
        }
        crate::trace::PastSpan::new("container.start", starting, std::time::SystemTime::now())
            .attribute(opentelemetry::KeyValue::new("container.name", name.clone()))
            .attribute(opentelemetry::KeyValue::new(
                "container.image.name",
                self.image_of(&command).to_owned(),
            ))
            .record_in_current();
        // Asked after the start: `not-running` answers at once for a container that already
        // exited.
        let mut wait = Box::pin(self.streams.wait_container(
            &id,
            Some(WaitContainerOptions {
                condition: "not-running".to_owned(),
            }),
        ));

        let mut input = attach.input;
        if let Some(stdin) = command.stdin.take() {
            tokio::spawn(async move {
                // A program that exits without reading its input is not our error to report.
                let _ = input.write_all(stdin.as_bytes()).await;
                let _ = input.shutdown().await;
            });
        } else {
            drop(input);
        }
        let reader = tokio::spawn(forward_output(attach.output, output));

        let mut info = ExitInfo::default();
        let waited = loop {
            tokio::select! {
                waited = wait.next() => break waited,
                _ = stop.cancelled(), if !info.stopped => {
                    info.stopped = true;
                    let api = self.api.clone();
                    let id = id.clone();
                    let seconds = i32::try_from(grace.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX).max(1);
                    // `docker stop`: SIGTERM to the container's init, SIGKILL after the grace.
                    tokio::spawn(async move {
                        let options = StopContainerOptions { t: Some(seconds), signal: None };
                        if let Err(err) = api.stop_container(&id, Some(options)).await {
                            tracing::warn!(error = %err, "stopping the run's container failed");
                        }
                    });
                }
            }
        };
        let code = match waited {
            Some(Ok(done)) => Some(done.status_code),
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Some(code),
            Some(Err(err)) => {
                tracing::warn!(error = %err, "waiting for the run's container failed");
                None
            }
            None => None,
        };
        let exec_failed = match tokio::time::timeout(DRAIN_AFTER_EXIT, reader).await {
            Ok(Ok(exec_failed)) => exec_failed,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::debug!("container output still open after it exited; stopped reading it");
                false
            }
        };
        let state = self
            .api
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|inspect| inspect.state);
        let code = state
            .as_ref()
            .and_then(|s| s.exit_code)
            .or(code)
            .and_then(|c| i32::try_from(c).ok());
        info.out_of_memory = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
        match code {
            // Killed by a signal: the init reports 128 + the signal.
            Some(code) if code > 128 && (info.stopped || info.out_of_memory) => {
                info.signal = Some(code - 128);
                info.killed = info.stopped && code == 137;
            }
            other => info.code = other,
        }
        cleanup.now().await;
        if exec_failed && info.code == Some(127) {
            return Err(self.missing_program(&command));
        }
        info.metered = model_access.as_ref().map(|(_, token)| token.metered());
        Ok(info)
    }
}

impl DockerExecutor {
    /// The image of `command`'s container: the job's, else the worker's.
    fn image_of<'a>(&'a self, command: &'a CommandSpec) -> &'a str {
        command.image.as_deref().unwrap_or(&self.config.image)
    }

    fn missing_program(&self, command: &CommandSpec) -> ExecError {
        ExecError::ProgramNotFound(format!(
            "`{}` was not found or is not executable in the image `{}`",
            spec::program_of(command),
            self.image_of(command)
        ))
    }

    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, ExecError> {
        let options = || {
            Some(CreateContainerOptions {
                name: Some(name.to_owned()),
                ..Default::default()
            })
        };
        let created = match self.api.create_container(options(), body.clone()).await {
            // A container of this very attempt is left from a worker that died: replace it.
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                remove(&self.api, name).await;
                self.api.create_container(options(), body).await
            }
            other => other,
        };
        match created {
            Ok(created) => Ok(created.id),
            Err(DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            }) => Err(ExecError::ProgramNotFound(format!(
                "the run image `{}` is missing ({message}); build it with `bash docker/build-images.sh runtime`",
                self.config.image
            ))),
            Err(err) => Err(ExecError::Setup(format!(
                "creating the run's container: {err}"
            ))),
        }
    }
}
