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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerSummary, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, InspectContainerOptions, InspectNetworkOptions,
    ListContainersOptions, RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use autopilot_proto::NetworkMode;

use crate::command::{CommandSpec, CREDENTIAL_VARS};
use crate::executor::{ExecError, Executor, ExitInfo, OutputLine, OutputStream};
use crate::model_proxy::{ModelProxy, RunToken, Upstream};

/// The model API when neither the run's environment nor the configuration names one.
pub const DEFAULT_MODEL_API: &str = "https://api.anthropic.com";
/// The image runs use unless configured otherwise (built by `docker/build-images.sh`).
pub const DEFAULT_IMAGE: &str = "autopilot-runtime:latest";
/// The relay of `model-only` runs in the image (`worker/relay`).
const RELAY_IN_CONTAINER: &str = "/usr/local/bin/autopilot-relay";
/// Where the proxy's socket is mounted (read-only) in a `model-only` container.
const RELAY_MOUNT: &str = "/run/autopilot";
/// Where the relay listens inside a `model-only` container.
const RELAY_ADDRESS: &str = "127.0.0.1:8375";
const HOME_IN_CONTAINER: &str = "/home/autopilot";
const WORKSPACE_IN_CONTAINER: &str = "/workspace";
const PATH_IN_CONTAINER: &str = "/usr/local/bin:/usr/bin:/bin";
/// The CLI inside the runtime image.
const CLAUDE_IN_CONTAINER: &str = "claude";
/// How long output may keep arriving after the container exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
const API_TIMEOUT: Duration = Duration::from_secs(60);
/// Attach and wait last as long as the run: bounded by the run's own timeout, not here.
const STREAM_TIMEOUT: Duration = Duration::from_secs(8 * 24 * 3600);

const LABEL_MANAGED: &str = "io.autopilot.managed";
const LABEL_RUN: &str = "io.autopilot.run";
const LABEL_ATTEMPT: &str = "io.autopilot.attempt";
const LABEL_WORKER: &str = "io.autopilot.worker";
const LABEL_HOST: &str = "io.autopilot.worker-host";
const LABEL_PID: &str = "io.autopilot.worker-pid";

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

    pub fn engine_version(&self) -> &str {
        &self.engine_version
    }

    pub fn image(&self) -> &str {
        &self.config.image
    }

    /// How many containers labelled with this worker's id exist (running or not).
    pub async fn containers(&self) -> Result<usize, DockerError> {
        let label = format!("{LABEL_WORKER}={}", self.config.worker_id);
        Ok(labelled(&self.api, &label).await?.len())
    }

    /// Removes containers left behind: those of workers on this host whose process is gone (a
    /// worker killed with a random id never comes back to sweep its own), and this worker's from
    /// another host. Returns how many were removed.
    pub async fn sweep(&self) -> usize {
        let containers = match labelled(&self.api, &format!("{LABEL_MANAGED}=true")).await {
            Ok(containers) => containers,
            Err(err) => {
                tracing::warn!(error = %err, "could not list containers to sweep");
                return 0;
            }
        };
        let mut removed = 0;
        for container in containers {
            let labels = container.labels.unwrap_or_default();
            // On this host, a container is left behind when the worker process that made it is
            // gone (whatever its id: two fleets may both have a `worker0`). From another host
            // (a worker that came back on a new machine or pod), only this worker's id counts.
            let left_behind = if labels.get(LABEL_HOST) == Some(&self.host) {
                labels
                    .get(LABEL_PID)
                    .and_then(|pid| pid.parse::<i32>().ok())
                    .is_some_and(|pid| !process_alive(pid))
            } else {
                labels.get(LABEL_WORKER) == Some(&self.config.worker_id)
            };
            if !left_behind {
                continue;
            }
            if let Some(id) = container.id {
                if remove(&self.api, &id).await {
                    removed += 1;
                }
            }
        }
        removed
    }

    fn container_env(&self, command: &CommandSpec) -> (Vec<String>, Option<RunToken>) {
        let mut env: Vec<(String, String)> = command
            .env
            .iter()
            .filter(|(name, _)| {
                !matches!(name.as_str(), "HOME" | "PATH" | "ANTHROPIC_BASE_URL")
                    && !CREDENTIAL_VARS.contains(&name.as_str())
            })
            .cloned()
            .collect();
        env.push(("HOME".into(), HOME_IN_CONTAINER.into()));
        env.push(("PATH".into(), PATH_IN_CONTAINER.into()));
        let mut token = None;
        if command.claude {
            let endpoint = match command.sandbox.network {
                NetworkMode::ModelOnly => Some(format!("http://{RELAY_ADDRESS}")),
                NetworkMode::Open => self.open_url.clone(),
                NetworkMode::None => None,
            };
            if let (Some(endpoint), Some(upstream)) = (endpoint, self.upstream_for(command)) {
                let run_token = self.proxy.register(upstream);
                // The CLI authenticates the way the worker's credentials do, with the token in
                // their place.
                for (name, value) in &command.env {
                    if CREDENTIAL_VARS.contains(&name.as_str()) && !value.is_empty() {
                        env.push((name.clone(), run_token.as_str().to_owned()));
                    }
                }
                env.push(("ANTHROPIC_BASE_URL".into(), endpoint));
                token = Some(run_token);
            }
        }
        let env = env
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        (env, token)
    }

    /// Where the proxy sends a Claude run's requests, with the credentials the run's command
    /// was given (the worker's model API settings, or the job's `[run_env]`).
    fn upstream_for(&self, command: &CommandSpec) -> Option<Upstream> {
        let var = |name: &str| {
            command
                .env
                .iter()
                .find(|(n, v)| n == name && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        Some(Upstream {
            base_url: var("ANTHROPIC_BASE_URL").or_else(|| self.config.model_api.clone())?,
            api_key: var("ANTHROPIC_API_KEY"),
            bearer: var("ANTHROPIC_AUTH_TOKEN").or_else(|| var("CLAUDE_CODE_OAUTH_TOKEN")),
        })
    }

    fn create_body(&self, command: &CommandSpec, env: Vec<String>) -> ContainerCreateBody {
        let sandbox = &command.sandbox;
        let (run_id, attempt) = command.run;
        let network_mode = match sandbox.network {
            // No network: what a model-only run reaches comes through the mounted socket.
            NetworkMode::None | NetworkMode::ModelOnly => "none",
            NetworkMode::Open => "bridge",
        };
        let mut binds = vec![format!(
            "{}:{WORKSPACE_IN_CONTAINER}:rw",
            command.cwd.display()
        )];
        let mut cmd = Vec::new();
        if sandbox.network == NetworkMode::ModelOnly {
            binds.push(format!(
                "{}:{RELAY_MOUNT}:ro",
                self.relay_dir.path().display()
            ));
            cmd.extend([
                RELAY_IN_CONTAINER.to_owned(),
                RELAY_ADDRESS.to_owned(),
                format!("{RELAY_MOUNT}/model.sock"),
                "--".to_owned(),
            ]);
        }
        cmd.push(program_of(command));
        cmd.extend(command.args.iter().cloned());
        let memory = i64::from(sandbox.memory_mb) * 1024 * 1024;
        let (uid, gid) = (self.config.uid, self.config.gid);
        let tmpfs = HashMap::from([
            ("/tmp".to_owned(), "rw,nosuid,nodev,size=256m".to_owned()),
            (
                HOME_IN_CONTAINER.to_owned(),
                format!("rw,nosuid,nodev,size=256m,uid={uid},gid={gid},mode=0700"),
            ),
        ]);
        let host_config = HostConfig {
            binds: Some(binds),
            tmpfs: Some(tmpfs),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            init: Some(true),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((sandbox.cpus * 1e9) as i64),
            pids_limit: Some(i64::from(sandbox.pids)),
            network_mode: Some(network_mode.to_owned()),
            ..Default::default()
        };
        let labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_RUN.to_owned(), run_id.to_string()),
            (LABEL_ATTEMPT.to_owned(), attempt.to_string()),
            (LABEL_WORKER.to_owned(), self.config.worker_id.clone()),
            (LABEL_HOST.to_owned(), self.host.clone()),
            (LABEL_PID.to_owned(), std::process::id().to_string()),
        ]);
        let stdin = command.stdin.is_some();
        ContainerCreateBody {
            image: Some(self.config.image.clone()),
            user: Some(format!("{uid}:{gid}")),
            cmd: Some(cmd),
            entrypoint: Some(Vec::new()),
            env: Some(env),
            working_dir: Some(WORKSPACE_IN_CONTAINER.to_owned()),
            labels: Some(labels),
            hostname: Some("autopilot-run".to_owned()),
            attach_stdin: Some(stdin),
            open_stdin: Some(stdin),
            stdin_once: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
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
        prepare_workspace(&command.cwd, self.config.uid, self.config.gid).await?;
        // The run's token is valid until this call returns.
        let (env, _token) = self.container_env(&command);
        let body = self.create_body(&command, env);
        let name = format!("autopilot-{}-{}", command.run.0, command.run.1);
        let id = self.create(&name, body).await?;
        // From here on the container goes away however this call ends.
        let mut cleanup = Cleanup {
            docker: Some(self.api.clone()),
            id: id.clone(),
        };

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
        Ok(info)
    }
}

impl DockerExecutor {
    fn missing_program(&self, command: &CommandSpec) -> ExecError {
        ExecError::ProgramNotFound(format!(
            "`{}` was not found or is not executable in the image `{}`",
            program_of(command),
            self.config.image
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

/// What the container runs: the image's own CLI for a Claude run, else the command's program.
fn program_of(command: &CommandSpec) -> String {
    if command.claude {
        CLAUDE_IN_CONTAINER.to_owned()
    } else {
        command.program.display().to_string()
    }
}

/// Removes a container when dropped (in the background), unless [`Cleanup::now`] did already.
struct Cleanup {
    docker: Option<Docker>,
    id: String,
}

impl Cleanup {
    async fn now(&mut self) {
        if let Some(docker) = self.docker.take() {
            remove(&docker, &self.id).await;
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(docker) = self.docker.take() {
            let id = std::mem::take(&mut self.id);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    remove(&docker, &id).await;
                });
            }
        }
    }
}

/// The containers, running or not, carrying `label` (`name=value`).
async fn labelled(docker: &Docker, label: &str) -> Result<Vec<ContainerSummary>, DockerError> {
    let filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
}

/// How many containers of run `run_id` exist, running or not.
pub async fn containers_of_run(docker: &Docker, run_id: &str) -> Result<usize, DockerError> {
    Ok(labelled(docker, &format!("{LABEL_RUN}={run_id}"))
        .await?
        .len())
}

/// Force-removes a container and its anonymous volumes; true when it was removed.
async fn remove(docker: &Docker, id: &str) -> bool {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => true,
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => false,
        Err(err) => {
            tracing::warn!(container = id, error = %err, "could not remove a run's container");
            false
        }
    }
}

/// Splits the attached output, which arrives in chunks of any size, into lines per stream.
/// Returns whether the container's init reported that it could not start the program (that
/// line is not passed on: the executor reports it as a missing program).
async fn forward_output(
    mut chunks: std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<bollard::container::LogOutput, DockerError>> + Send>,
    >,
    output: mpsc::Sender<OutputLine>,
) -> bool {
    use bollard::container::LogOutput;
    let mut exec_failed = false;
    let mut stdout = LineSplitter::new(OutputStream::Stdout);
    let mut stderr = LineSplitter::new(OutputStream::Stderr);
    while let Some(chunk) = chunks.next().await {
        let lines = match chunk {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                stdout.push(&message)
            }
            Ok(LogOutput::StdErr { message }) => stderr.push(&message),
            Ok(LogOutput::StdIn { .. }) => Vec::new(),
            Err(err) => {
                tracing::debug!(error = %err, "the container's output stream ended");
                break;
            }
        };
        for line in lines {
            if line.stream == OutputStream::Stderr && is_exec_failure(&line.text) {
                exec_failed = true;
                continue;
            }
            if output.send(line).await.is_err() {
                return exec_failed;
            }
        }
    }
    for line in [stdout.finish(), stderr.finish()].into_iter().flatten() {
        let _ = output.send(line).await;
    }
    exec_failed
}

/// The line the container's init (tini), or the model relay, prints when it cannot execute the
/// program.
fn is_exec_failure(line: &str) -> bool {
    (line.starts_with("[FATAL tini") || line.starts_with("[FATAL autopilot-relay]"))
        && line.contains("exec ")
        && line.contains(" failed")
}

/// Turns chunks of bytes into lines, without their line endings (lossy UTF-8, any length).
pub struct LineSplitter {
    stream: OutputStream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: OutputStream) -> Self {
        LineSplitter {
            stream,
            pending: Vec::new(),
        }
    }

    /// The lines `chunk` completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<OutputLine> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..end]);
            lines.push(self.take());
            rest = &rest[end + 1..];
        }
        self.pending.extend_from_slice(rest);
        lines
    }

    /// The last line, when the output did not end with a line ending.
    pub fn finish(&mut self) -> Option<OutputLine> {
        (!self.pending.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> OutputLine {
        if self.pending.last() == Some(&b'\r') {
            self.pending.pop();
        }
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        OutputLine {
            stream: self.stream,
            text,
        }
    }
}

/// Creates the workspace and hands it (and everything in it) to the run's user, so a
/// workspace written by the local executor or restored by the worker stays writable.
async fn prepare_workspace(dir: &Path, uid: u32, gid: u32) -> Result<(), ExecError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|err| {
            ExecError::Setup(format!("cannot create workspace {}: {err}", dir.display()))
        })?;
        if nix::unistd::geteuid().is_root() {
            chown_tree(&dir, uid, gid).map_err(|err| {
                ExecError::Setup(format!(
                    "cannot hand workspace {} to uid {uid}: {err}",
                    dir.display()
                ))
            })?;
        }
        Ok(())
    })
    .await
    .map_err(|err| ExecError::Setup(format!("preparing the workspace: {err}")))?
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.uid() != uid || meta.gid() != gid {
        // Never follows a symlink: a link planted in the workspace must not hand over its target.
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_default()
}

fn process_alive(pid: i32) -> bool {
    // Signal 0 checks for existence; EPERM means it exists under another user.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// The host's address on Docker network `network`.
pub async fn gateway(docker: &Docker, network: &str) -> Option<IpAddr> {
    let inspect = docker
        .inspect_network(network, None::<InspectNetworkOptions>)
        .await
        .ok()?;
    inspect.ipam?.config?.into_iter().find_map(|config| {
        match config.gateway {
            Some(gateway) => gateway.parse().ok(),
            // The default bridge does not list its gateway: by convention it is the subnet's
            // first address.
            None => first_host(config.subnet.as_deref()?),
        }
    })
}

fn first_host(subnet: &str) -> Option<IpAddr> {
    let (network, _) = subnet.split_once('/')?;
    let network: std::net::Ipv4Addr = network.parse().ok()?;
    Some(IpAddr::V4(std::net::Ipv4Addr::from(
        u32::from(network).checked_add(1)?,
    )))
}

/// A directory holding the proxy's Unix socket, which any user may connect to (a container's
/// user is not the worker's; the token is what admits a run).
async fn relay_dir(
    proxy: &ModelProxy,
    stop: &CancellationToken,
) -> Result<tempfile::TempDir, DockerSetupError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |err: std::io::Error| {
        DockerSetupError(format!("cannot set up the model proxy's socket: {err}"))
    };
    let dir = tempfile::Builder::new()
        .prefix("autopilot-relay-")
        .tempdir()
        .map_err(failed)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).map_err(failed)?;
    let socket = dir.path().join("model.sock");
    proxy
        .listen_unix(&socket, stop.clone())
        .await
        .map_err(failed)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).map_err(failed)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_become_lines_whatever_their_boundaries() {
        let mut splitter = LineSplitter::new(OutputStream::Stdout);
        let mut lines = splitter.push(b"one\ntw");
        lines.extend(splitter.push(b"o\r\n"));
        lines.extend(splitter.push(b""));
        lines.extend(splitter.push("thr\u{e9}e\n\nfour".as_bytes()));
        lines.extend(splitter.finish());
        let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "thr\u{e9}e", "", "four"]);
        assert!(splitter.finish().is_none());
    }

    #[test]
    fn a_multibyte_character_split_across_chunks_survives() {
        let mut splitter = LineSplitter::new(OutputStream::Stderr);
        let bytes = "é\n".as_bytes();
        assert!(splitter.push(&bytes[..1]).is_empty());
        let lines = splitter.push(&bytes[1..]);
        assert_eq!(lines[0].text, "é");
        assert_eq!(lines[0].stream, OutputStream::Stderr);
    }
}
