//! What a run's container is, computed from plain inputs with no engine, file or network access:
//! the environment it gets, the Engine API body that creates it, and its name and labels.
//!
//! Everything the sandbox guarantees is decided here: a non-root user, every capability
//! dropped, `no-new-privileges`, a read-only root file system with tmpfs for `/tmp` and the
//! home directory, a bounded `/dev/shm`, a cgroup namespace of its own, memory (swap
//! included), CPU and process limits from the run's [`Sandbox`],
//! the workspace as the only writable mount, the network the sandbox names, and the run's
//! token, never a real credential, in the environment of a Claude run. The executor in
//! [`super`] only gathers the inputs (its settings, the model proxy's addresses, the token it
//! registers with the proxy) and hands the result to the engine.
//!
//! [`Sandbox`]: autopilot_proto::Sandbox

use std::collections::HashMap;
use std::path::Path;

use autopilot_proto::{NetworkMode, RunId};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigCgroupnsModeEnum};

use crate::command::{CommandSpec, CREDENTIAL_VARS};
use crate::model_proxy::Upstream;

/// The relay of `model-only` runs in the image (`worker/relay`).
const RELAY_IN_CONTAINER: &str = "/usr/local/bin/autopilot-relay";
/// Where the proxy's socket directory is mounted (read-only) in a `model-only` container.
const RELAY_MOUNT: &str = "/run/autopilot";
/// The proxy's socket in that directory, on the host and in the container alike.
pub(super) const RELAY_SOCKET: &str = "model.sock";
/// Where the relay listens inside a `model-only` container.
const RELAY_ADDRESS: &str = "127.0.0.1:8375";
const HOME_IN_CONTAINER: &str = "/home/autopilot";
const WORKSPACE_IN_CONTAINER: &str = "/workspace";
const PATH_IN_CONTAINER: &str = "/usr/local/bin:/usr/bin:/bin";
/// The CLI inside the runtime image.
const CLAUDE_IN_CONTAINER: &str = "claude";
/// The host name every run's container has.
const HOSTNAME_IN_CONTAINER: &str = "autopilot-run";
/// Size and options of the `/tmp` tmpfs; the home tmpfs adds its owner and mode.
use super::MCP_CONFIG_MOUNT;
const TMPFS_OPTIONS: &str = "rw,nosuid,nodev,size=256m";
/// Size of `/dev/shm`, which counts against the run's memory only when written: bounded so
/// that it cannot hold more than a run's scratch needs.
const SHM_BYTES: i64 = 64 * 1024 * 1024;

/// `true` on every container this executor makes: what the sweep lists.
pub(super) const LABEL_MANAGED: &str = "io.autopilot.managed";
/// The run and attempt the container executes.
pub(super) const LABEL_RUN: &str = "io.autopilot.run";
const LABEL_ATTEMPT: &str = "io.autopilot.attempt";
/// The worker, host and worker process that made the container: how the sweep tells whether
/// it was left behind.
pub(super) const LABEL_WORKER: &str = "io.autopilot.worker";
pub(super) const LABEL_HOST: &str = "io.autopilot.worker-host";
pub(super) const LABEL_PID: &str = "io.autopilot.worker-pid";

/// What every container of one executor has in common, whatever the run.
#[derive(Clone, Copy, Debug)]
pub(super) struct ContainerSettings<'a> {
    pub(super) image: &'a str,
    /// The user and group the run executes as; the home tmpfs belongs to them.
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// The worker, host and process the container is labelled with, for the sweep.
    pub(super) worker_id: &'a str,
    pub(super) host: &'a str,
    pub(super) worker_pid: u32,
    /// The host directory holding the model proxy's socket, mounted into `model-only`
    /// containers.
    pub(super) relay_dir: &'a Path,
}

/// How a Claude run reaches the model: where its container finds the proxy, and where the proxy
/// sends the run's requests on.
#[derive(Debug)]
pub(super) struct ModelRoute {
    /// `ANTHROPIC_BASE_URL` inside the container.
    pub(super) endpoint: String,
    /// What the proxy registers the run's token for.
    pub(super) upstream: Upstream,
}

/// The model access a container is given: the proxy's address as the container sees it, and
/// the run's token, which stands in for every credential.
#[derive(Clone, Copy, Debug)]
pub(super) struct ModelAccess<'a> {
    pub(super) endpoint: &'a str,
    pub(super) token: &'a str,
}

/// The name of the container of attempt `attempt` of run `run_id`. One name per attempt: the
/// container of a worker that died during this same attempt clashes with the new one, which
/// then replaces it.
pub(super) fn container_name((run_id, attempt): (RunId, u32)) -> String {
    format!("autopilot-{run_id}-{attempt}")
}

/// What the container runs: the image's own CLI for a Claude run, else the command's program.
pub(super) fn program_of(command: &CommandSpec) -> String {
    if command.claude {
        return CLAUDE_IN_CONTAINER.to_owned();
    }
    command.program.display().to_string()
}

/// How a run reaches the model, or `None` when it does not: a shell run, a `none` network, an
/// `open` network with no proxy on the Docker bridge (`proxy_on_bridge`), or no model API named
/// by the run's environment or by `default_model_api`.
pub(super) fn model_route(
    command: &CommandSpec,
    proxy_on_bridge: Option<&str>,
    default_model_api: Option<&str>,
) -> Option<ModelRoute> {
    if !command.claude {
        return None;
    }
    let endpoint = match command.sandbox.network {
        // The relay in the container forwards its loopback to the mounted socket.
        NetworkMode::ModelOnly => format!("http://{RELAY_ADDRESS}"),
        NetworkMode::Open => proxy_on_bridge?.to_owned(),
        NetworkMode::None => return None,
    };
    let upstream = upstream_for(command, default_model_api)?;
    Some(ModelRoute { endpoint, upstream })
}

/// Where the proxy sends a Claude run's requests, with the credentials the run's command was
/// given (the worker's model API settings, or the job's `[run_env]`): the command's
/// `ANTHROPIC_BASE_URL`, else `default_model_api`; `None` when neither names one. Empty
/// variables count as absent.
pub(super) fn upstream_for(
    command: &CommandSpec,
    default_model_api: Option<&str>,
) -> Option<Upstream> {
    let var = |name: &str| {
        command
            .env
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    Some(Upstream {
        base_url: var("ANTHROPIC_BASE_URL").or_else(|| default_model_api.map(str::to_owned))?,
        api_key: var("ANTHROPIC_API_KEY"),
        bearer: var("ANTHROPIC_AUTH_TOKEN").or_else(|| var("CLAUDE_CODE_OAUTH_TOKEN")),
    })
}

/// The container's environment, as `NAME=value`: the command's variables without its
/// credentials, model endpoint, `HOME` and `PATH`, then the container's own `HOME` and `PATH`.
/// With `access`, a Claude run gets the token in place of each credential its command had
/// (so the CLI authenticates the same way) and the endpoint as `ANTHROPIC_BASE_URL`. A shell
/// run never gets model access, whatever `access` says.
pub(super) fn container_env(command: &CommandSpec, access: Option<ModelAccess<'_>>) -> Vec<String> {
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
    if let Some(access) = access.filter(|_| command.claude) {
        for (name, value) in &command.env {
            if CREDENTIAL_VARS.contains(&name.as_str()) && !value.is_empty() {
                env.push((name.clone(), access.token.to_owned()));
            }
        }
        env.push(("ANTHROPIC_BASE_URL".into(), access.endpoint.to_owned()));
    }
    env.into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect()
}

/// The Engine API body that creates the run's container, with environment `env` (see
/// [`container_env`]).
pub(super) fn container_body(
    command: &CommandSpec,
    env: Vec<String>,
    settings: &ContainerSettings<'_>,
) -> ContainerCreateBody {
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
        binds.push(format!("{}:{RELAY_MOUNT}:ro", settings.relay_dir.display()));
        // The relay serves the socket on the container's loopback, then runs the program.
        cmd.extend([
            RELAY_IN_CONTAINER.to_owned(),
            RELAY_ADDRESS.to_owned(),
            format!("{RELAY_MOUNT}/{RELAY_SOCKET}"),
            "--".to_owned(),
        ]);
    }
    cmd.push(program_of(command));
    match &command.mcp_config {
        // Its directory is mounted (writable: each fixed server deletes its settings file once
        // read), and the arguments name the file as the container sees it.
        Some(file) => {
            if let Some(dir) = file.parent() {
                binds.push(format!("{}:{MCP_CONFIG_MOUNT}:rw", dir.display()));
            }
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            let inside = format!("{MCP_CONFIG_MOUNT}/{}", name.unwrap_or_default());
            cmd.extend(command.args.iter().map(|arg| {
                if Path::new(arg) == file.as_path() {
                    inside.clone()
                } else {
                    arg.clone()
                }
            }));
        }
        None => cmd.extend(command.args.iter().cloned()),
    }
    // Swap is set to the same figure: the memory limit is all the run gets.
    let memory = i64::from(sandbox.memory_mb) * 1024 * 1024;
    let (uid, gid) = (settings.uid, settings.gid);
    let tmpfs = HashMap::from([
        ("/tmp".to_owned(), TMPFS_OPTIONS.to_owned()),
        (
            HOME_IN_CONTAINER.to_owned(),
            format!("{TMPFS_OPTIONS},uid={uid},gid={gid},mode=0700"),
        ),
    ]);
    let host_config = HostConfig {
        binds: Some(binds),
        tmpfs: Some(tmpfs),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        // An init reaps the run's orphans and passes the stop signal on.
        init: Some(true),
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some((sandbox.cpus * 1e9) as i64),
        pids_limit: Some(i64::from(sandbox.pids)),
        network_mode: Some(network_mode.to_owned()),
        shm_size: Some(SHM_BYTES),
        // Its own cgroup namespace: the run sees its cgroup as the root, not the host's tree
        // (the default on cgroup v2 hosts; asked for so that v1 hosts do the same).
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        ..Default::default()
    };
    let labels = HashMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_RUN.to_owned(), run_id.to_string()),
        (LABEL_ATTEMPT.to_owned(), attempt.to_string()),
        (LABEL_WORKER.to_owned(), settings.worker_id.to_owned()),
        (LABEL_HOST.to_owned(), settings.host.to_owned()),
        (LABEL_PID.to_owned(), settings.worker_pid.to_string()),
    ]);
    let stdin = command.stdin.is_some();
    ContainerCreateBody {
        image: Some(settings.image.to_owned()),
        user: Some(format!("{uid}:{gid}")),
        cmd: Some(cmd),
        // The image's entrypoint, if any, is not run: the command is the whole of it.
        entrypoint: Some(Vec::new()),
        env: Some(env),
        working_dir: Some(WORKSPACE_IN_CONTAINER.to_owned()),
        labels: Some(labels),
        hostname: Some(HOSTNAME_IN_CONTAINER.to_owned()),
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

#[cfg(test)]
mod tests;
