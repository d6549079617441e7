//! The container specification checked without a Docker Engine: what the sandbox promises,
//! read off the body and environment [`super`] computes for realistic commands.

use std::path::PathBuf;

use autopilot_proto::{ClaudeSpec, RunKind, RunSpec, Sandbox};

use super::*;
use crate::command::{build_command, CommandEnv};

const REAL_KEY: &str = "sk-ant-the-real-key";
const TOKEN: &str = "autopilot-run-0123456789abcdef";
const WORKSPACE_ON_HOST: &str = "/var/lib/autopilot/workspaces/notes";
const RELAY_DIR_ON_HOST: &str = "/tmp/autopilot-relay-test";

/// The worker's environment for runs: a key for the model API and the worker's own `HOME`
/// and `PATH`, which a container must not inherit.
fn command_env() -> CommandEnv {
    CommandEnv {
        claude_bin: "/opt/claude/bin/claude".into(),
        fixed_servers_bin: "autopilot-servers".into(),
        python: "python3".into(),
        home: "/var/lib/autopilot/home".into(),
        base: vec![
            ("PATH".into(), "/opt/worker/bin:/usr/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ],
        model_api: vec![("ANTHROPIC_API_KEY".into(), REAL_KEY.into())],
    }
}

fn sandbox(network: NetworkMode) -> Sandbox {
    Sandbox {
        network,
        memory_mb: 768,
        cpus: 1.5,
        pids: 128,
    }
}

fn command(kind: RunKind, network: NetworkMode) -> CommandSpec {
    let spec = RunSpec {
        run_id: RunId::new(),
        attempt: 3,
        job_id: None,
        workspace: "notes".into(),
        kind,
        timeout_secs: 60,
        sandbox: sandbox(network),
        image: None,
        outcome_files: Vec::new(),
    };
    build_command(&spec, PathBuf::from(WORKSPACE_ON_HOST), &command_env())
}

fn claude(network: NetworkMode) -> CommandSpec {
    let claude = ClaudeSpec {
        prompt: "Tidy the notes.".into(),
        model: None,
        allowed_tools: vec!["Bash".into()],
        disallowed_tools: vec![],
        max_turns: None,
        max_cost_usd: None,
        trace_content: false,
        mcp_servers: Vec::new(),
        approval: None,
    };
    command(RunKind::Claude(claude), network)
}

fn shell(network: NetworkMode) -> CommandSpec {
    let kind = RunKind::Shell {
        command: "ls -la".into(),
        stdin: None,
    };
    command(kind, network)
}

fn settings() -> ContainerSettings<'static> {
    ContainerSettings {
        image: "autopilot-runtime:test",
        uid: 10001,
        gid: 10002,
        worker_id: "worker-7",
        host: "build-host",
        worker_pid: 4242,
        relay_dir: Path::new(RELAY_DIR_ON_HOST),
    }
}

fn access() -> ModelAccess<'static> {
    ModelAccess {
        endpoint: "http://127.0.0.1:8375",
        token: TOKEN,
    }
}

fn body(command: &CommandSpec) -> ContainerCreateBody {
    container_body(command, Vec::new(), &settings())
}

fn host_config(command: &CommandSpec) -> HostConfig {
    body(command).host_config.expect("a host config")
}

/// The value of `name` in a container environment, if it is set.
fn var<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter()
        .find_map(|entry| entry.strip_prefix(name)?.strip_prefix('='))
}

const ALL_NETWORKS: [NetworkMode; 3] =
    [NetworkMode::None, NetworkMode::ModelOnly, NetworkMode::Open];

#[test]
fn every_container_drops_all_privileges_whatever_its_network() {
    for network in ALL_NETWORKS {
        for command in [claude(network), shell(network)] {
            let body = body(&command);
            assert_eq!(body.user.as_deref(), Some("10001:10002"), "{network:?}");
            let host = body.host_config.expect("a host config");
            assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
            assert_eq!(host.cap_add, None, "no capability comes back");
            assert_eq!(
                host.security_opt,
                Some(vec!["no-new-privileges".to_owned()])
            );
            assert_eq!(host.readonly_rootfs, Some(true));
            assert_ne!(host.privileged, Some(true));
            assert_eq!(host.init, Some(true), "an init reaps and forwards signals");
            assert_eq!(host.devices, None);
            assert_eq!(
                host.pid_mode, None,
                "the host's processes stay out of sight"
            );
            assert_eq!(host.ipc_mode, None);
        }
    }
}

#[test]
fn limits_are_the_sandboxs_with_swap_no_larger_than_memory() {
    let host = host_config(&shell(NetworkMode::None));
    let memory = 768 * 1024 * 1024;
    assert_eq!(host.memory, Some(memory));
    assert_eq!(
        host.memory_swap,
        Some(memory),
        "no swap beyond the memory limit"
    );
    assert_eq!(host.nano_cpus, Some(1_500_000_000));
    assert_eq!(host.pids_limit, Some(128));
}

#[test]
fn the_network_mode_follows_the_sandbox() {
    for (network, mode) in [
        (NetworkMode::None, "none"),
        // No network either: the model is reached through the mounted socket.
        (NetworkMode::ModelOnly, "none"),
        (NetworkMode::Open, "bridge"),
    ] {
        for command in [claude(network), shell(network)] {
            let host = host_config(&command);
            assert_eq!(host.network_mode.as_deref(), Some(mode), "{network:?}");
        }
    }
}

#[test]
fn the_workspace_is_the_only_writable_mount() {
    let workspace = format!("{WORKSPACE_ON_HOST}:/workspace:rw");
    for network in ALL_NETWORKS {
        let host = host_config(&claude(network));
        let binds = host.binds.expect("binds");
        assert_eq!(binds[0], workspace, "{network:?}");
        assert!(
            binds[1..].iter().all(|bind| bind.ends_with(":ro")),
            "{network:?}: {binds:?}"
        );
        assert!(
            binds.iter().all(|bind| !bind.contains("docker.sock")),
            "{binds:?}"
        );
        assert_eq!(host.mounts, None, "every mount is in the binds");
        assert_eq!(host.volumes_from, None);
    }
    assert_eq!(
        host_config(&shell(NetworkMode::Open)).binds,
        Some(vec![workspace])
    );
    assert_eq!(
        body(&shell(NetworkMode::None)).working_dir.as_deref(),
        Some("/workspace")
    );
}

#[test]
fn only_model_only_containers_get_the_proxys_socket() {
    let relay = format!("{RELAY_DIR_ON_HOST}:/run/autopilot:ro");
    for network in ALL_NETWORKS {
        let binds = host_config(&claude(network)).binds.expect("binds");
        assert_eq!(
            binds.contains(&relay),
            network == NetworkMode::ModelOnly,
            "{network:?}: {binds:?}"
        );
    }
}

#[test]
fn tmp_and_home_are_private_tmpfs_of_the_runs_user() {
    let tmpfs = host_config(&shell(NetworkMode::None)).tmpfs.expect("tmpfs");
    assert_eq!(tmpfs.len(), 2, "{tmpfs:?}");
    assert_eq!(tmpfs["/tmp"], "rw,nosuid,nodev,size=256m");
    assert_eq!(
        tmpfs["/home/autopilot"],
        "rw,nosuid,nodev,size=256m,uid=10001,gid=10002,mode=0700"
    );
}

#[test]
fn shm_is_bounded_and_the_cgroup_namespace_is_private() {
    let host = host_config(&shell(NetworkMode::None));
    assert_eq!(host.shm_size, Some(64 * 1024 * 1024));
    assert_eq!(
        host.cgroupns_mode,
        Some(bollard::models::HostConfigCgroupnsModeEnum::PRIVATE)
    );
}

#[test]
fn a_model_only_run_starts_behind_the_relay() {
    let command = claude(NetworkMode::ModelOnly);
    let cmd = body(&command).cmd.expect("a command");
    assert_eq!(
        cmd[..5],
        [
            "/usr/local/bin/autopilot-relay",
            "127.0.0.1:8375",
            "/run/autopilot/model.sock",
            "--",
            "claude",
        ]
    );
    assert_eq!(cmd[5..], command.args[..]);
}

#[test]
fn a_claude_run_executes_the_images_cli_and_a_shell_run_its_own_program() {
    let command = claude(NetworkMode::Open);
    let body = body(&command);
    let cmd = body.cmd.expect("a command");
    assert_eq!(cmd[0], "claude", "not the worker's {:?}", command.program);
    assert_eq!(cmd[1..], command.args[..]);
    assert_eq!(
        body.entrypoint,
        Some(Vec::new()),
        "the image's entrypoint is not run"
    );
    assert_eq!(body.image.as_deref(), Some("autopilot-runtime:test"));
    assert_eq!(body.hostname.as_deref(), Some("autopilot-run"));

    let cmd = self::body(&shell(NetworkMode::None))
        .cmd
        .expect("a command");
    assert_eq!(cmd, ["/bin/sh", "-c", "ls -la"]);
}

#[test]
fn stdin_is_opened_only_for_a_run_that_has_input() {
    // A Claude run's prompt goes in on stdin; this shell run has none.
    for (command, stdin) in [
        (claude(NetworkMode::ModelOnly), true),
        (shell(NetworkMode::None), false),
    ] {
        let body = body(&command);
        assert_eq!(body.attach_stdin, Some(stdin));
        assert_eq!(body.open_stdin, Some(stdin));
        assert_eq!(body.stdin_once, Some(stdin));
        assert_eq!(body.attach_stdout, Some(true));
        assert_eq!(body.attach_stderr, Some(true));
        assert_eq!(body.tty, Some(false), "stdout and stderr stay apart");
    }
}

#[test]
fn labels_tie_the_container_to_its_run_and_worker_process() {
    let command = shell(NetworkMode::None);
    let labels = body(&command).labels.expect("labels");
    let (run_id, attempt) = command.run;
    // Spelled out: the sweep, the end-to-end tests and operators all go by these names.
    let expected: HashMap<String, String> = [
        ("io.autopilot.managed", "true".to_owned()),
        ("io.autopilot.run", run_id.to_string()),
        ("io.autopilot.attempt", attempt.to_string()),
        ("io.autopilot.worker", "worker-7".to_owned()),
        ("io.autopilot.worker-host", "build-host".to_owned()),
        ("io.autopilot.worker-pid", "4242".to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    assert_eq!(labels, expected);
    assert_eq!(container_name(command.run), format!("autopilot-{run_id}-3"));
}

#[test]
fn a_claude_run_gets_its_token_and_never_the_real_key() {
    let command = claude(NetworkMode::ModelOnly);
    assert!(command.env.iter().any(|(_, value)| value == REAL_KEY));
    let env = container_env(&command, Some(access()));
    assert!(
        env.iter().all(|entry| !entry.contains(REAL_KEY)),
        "the key reached the container: {env:?}"
    );
    assert_eq!(var(&env, "ANTHROPIC_API_KEY"), Some(TOKEN));
    assert_eq!(
        var(&env, "ANTHROPIC_BASE_URL"),
        Some("http://127.0.0.1:8375")
    );
    // The run's own settings still go in.
    assert_eq!(var(&env, "LANG"), Some("C.UTF-8"));
    assert_eq!(var(&env, "DISABLE_TELEMETRY"), Some("1"));
}

#[test]
fn the_token_stands_in_for_each_credential_the_command_had() {
    let mut command = claude(NetworkMode::Open);
    command.env.extend([
        (
            "ANTHROPIC_AUTH_TOKEN".to_owned(),
            "bearer-secret".to_owned(),
        ),
        ("CLAUDE_CODE_OAUTH_TOKEN".to_owned(), String::new()),
        (
            "ANTHROPIC_BASE_URL".to_owned(),
            "https://models.internal".to_owned(),
        ),
    ]);
    let env = container_env(&command, Some(access()));
    assert_eq!(var(&env, "ANTHROPIC_API_KEY"), Some(TOKEN));
    assert_eq!(var(&env, "ANTHROPIC_AUTH_TOKEN"), Some(TOKEN));
    assert_eq!(var(&env, "CLAUDE_CODE_OAUTH_TOKEN"), None, "it was empty");
    // The model API the run named is the proxy's business, not the container's.
    assert_eq!(
        var(&env, "ANTHROPIC_BASE_URL"),
        Some("http://127.0.0.1:8375")
    );
    assert!(env
        .iter()
        .all(|entry| !entry.contains("bearer-secret") && !entry.contains("models.internal")));
}

#[test]
fn without_model_access_a_claude_run_gets_no_credentials_at_all() {
    let env = container_env(&claude(NetworkMode::None), None);
    for name in CREDENTIAL_VARS.into_iter().chain(["ANTHROPIC_BASE_URL"]) {
        assert_eq!(var(&env, name), None, "{name} in {env:?}");
    }
}

#[test]
fn shell_runs_get_no_model_api_variables_even_when_offered() {
    // Credentials set for the job's runs reach a shell command's environment too.
    let mut command = shell(NetworkMode::Open);
    command.env.extend([
        ("ANTHROPIC_API_KEY".to_owned(), REAL_KEY.to_owned()),
        (
            "ANTHROPIC_BASE_URL".to_owned(),
            "https://api.anthropic.com".to_owned(),
        ),
    ]);
    let env = container_env(&command, Some(access()));
    assert!(
        env.iter().all(|entry| !entry.starts_with("ANTHROPIC_")
            && !entry.starts_with("CLAUDE_CODE_OAUTH_TOKEN")),
        "{env:?}"
    );
    assert!(env.iter().all(|entry| !entry.contains(REAL_KEY)));
}

#[test]
fn home_and_path_are_the_containers_own() {
    for env in [
        container_env(&claude(NetworkMode::ModelOnly), Some(access())),
        container_env(&shell(NetworkMode::None), None),
    ] {
        let homes: Vec<_> = env.iter().filter(|e| e.starts_with("HOME=")).collect();
        let paths: Vec<_> = env.iter().filter(|e| e.starts_with("PATH=")).collect();
        assert_eq!(homes, ["HOME=/home/autopilot"]);
        assert_eq!(paths, ["PATH=/usr/local/bin:/usr/bin:/bin"]);
    }
}

#[test]
fn the_model_route_depends_on_the_run_and_its_network() {
    let bridge = Some("http://172.17.0.1:40123");
    let default_api = Some("https://api.anthropic.com");
    let endpoint = |command: &CommandSpec, bridge: Option<&str>| {
        model_route(command, bridge, default_api).map(|route| route.endpoint)
    };
    assert_eq!(
        endpoint(&claude(NetworkMode::ModelOnly), bridge).as_deref(),
        Some("http://127.0.0.1:8375")
    );
    assert_eq!(
        endpoint(&claude(NetworkMode::Open), bridge).as_deref(),
        bridge
    );
    assert_eq!(
        endpoint(&claude(NetworkMode::Open), None),
        None,
        "no proxy on the bridge"
    );
    assert_eq!(endpoint(&claude(NetworkMode::None), bridge), None);
    for network in ALL_NETWORKS {
        assert!(endpoint(&shell(network), bridge).is_none(), "{network:?}");
    }
    // Nothing names a model API: there is nowhere to send the run's requests.
    assert!(model_route(&claude(NetworkMode::ModelOnly), bridge, None).is_none());
}

#[test]
fn the_upstream_carries_the_commands_own_api_and_credentials() {
    let mut command = claude(NetworkMode::ModelOnly);
    let upstream = upstream_for(&command, Some("https://api.anthropic.com")).expect("upstream");
    assert_eq!(upstream.base_url, "https://api.anthropic.com");
    assert_eq!(upstream.api_key.as_deref(), Some(REAL_KEY));
    assert_eq!(upstream.bearer, None);

    command.env.extend([
        (
            "ANTHROPIC_BASE_URL".to_owned(),
            "https://models.internal/v1".to_owned(),
        ),
        ("ANTHROPIC_AUTH_TOKEN".to_owned(), String::new()),
        (
            "CLAUDE_CODE_OAUTH_TOKEN".to_owned(),
            "oauth-secret".to_owned(),
        ),
    ]);
    let upstream = upstream_for(&command, None).expect("upstream");
    assert_eq!(
        upstream.base_url, "https://models.internal/v1",
        "the run's own API wins"
    );
    assert_eq!(
        upstream.bearer.as_deref(),
        Some("oauth-secret"),
        "an empty token counts as none"
    );
}

#[test]
fn the_mcp_configuration_is_mounted_and_named_as_the_container_sees_it() {
    let mut command = claude(NetworkMode::ModelOnly);
    let file = PathBuf::from("/tmp/autopilot-mcp-x1/mcp.json");
    command
        .args
        .extend(["--mcp-config".into(), file.display().to_string()]);
    command.mcp_config = Some(file);
    let body = body(&command);
    let binds = body.host_config.unwrap().binds.unwrap();
    assert!(
        binds.contains(&"/tmp/autopilot-mcp-x1:/run/autopilot-mcp:rw".to_owned()),
        "{binds:?}"
    );
    let cmd = body.cmd.unwrap();
    let at = cmd.iter().position(|arg| arg == "--mcp-config").unwrap();
    assert_eq!(cmd[at + 1], "/run/autopilot-mcp/mcp.json");
    assert!(
        !cmd.iter().any(|arg| arg.contains("autopilot-mcp-x1")),
        "{cmd:?}"
    );
}
