//! Turning a [`RunSpec`] into the exact command an executor runs.

use std::fmt;
use std::path::PathBuf;

use autopilot_proto::{ClaudeSpec, RunId, RunKind, RunSpec, Sandbox};

/// A fully prepared command. `Debug` never shows environment values: they may hold the API key.
#[derive(Clone)]
pub struct CommandSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The complete environment of the process (nothing is inherited).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Written to the process's standard input, which is then closed.
    pub stdin: Option<String>,
    /// Whether this runs the Claude Code CLI (`program` is then the worker's CLI, which a
    /// container replaces with its own).
    pub claude: bool,
    /// The run and attempt it belongs to (container names and labels).
    pub run: (RunId, u32),
    pub sandbox: Sandbox,
    /// The run's `--mcp-config` file on the worker, which `args` name by this path. It and the
    /// fixed servers' settings files beside it hold credentials: the Docker executor mounts
    /// their directory into the container (and names the file there), and hands it to the
    /// run's user.
    pub mcp_config: Option<PathBuf>,
    /// The image the job asks for (only the Docker executor can give one).
    pub image: Option<String>,
}

impl fmt::Debug for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("CommandSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &env_names)
            .field("cwd", &self.cwd)
            .field("stdin_bytes", &self.stdin.as_ref().map(String::len))
            .field("claude", &self.claude)
            .field("run", &self.run)
            .field("sandbox", &self.sandbox)
            .field("mcp_config", &self.mcp_config)
            .field("image", &self.image)
            .finish()
    }
}

/// What every run's environment is built from. Runs inherit nothing else from the worker, so the
/// worker's own secrets (admin token, database URL) never reach a prompt's tools.
#[derive(Clone)]
pub struct CommandEnv {
    pub claude_bin: PathBuf,
    /// `autopilot-servers`, which runs the fixed MCP servers (`email`) of local runs.
    pub fixed_servers_bin: PathBuf,
    /// The Python that runs dynamic servers in local runs (with the MCP SDK installed).
    pub python: PathBuf,
    /// `HOME` of the CLI: its settings and session files live there, not in the operator's home.
    pub home: PathBuf,
    /// Variables copied into every run (PATH, LANG, TZ, …).
    pub base: Vec<(String, String)>,
    /// Model API credentials and endpoint, given to Claude runs only (never to shell jobs).
    pub model_api: Vec<(String, String)>,
}

impl fmt::Debug for CommandEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |vars: &[(String, String)]| -> Vec<String> {
            vars.iter().map(|(name, _)| name.clone()).collect()
        };
        f.debug_struct("CommandEnv")
            .field("claude_bin", &self.claude_bin)
            .field("fixed_servers_bin", &self.fixed_servers_bin)
            .field("python", &self.python)
            .field("home", &self.home)
            .field("base", &names(&self.base))
            .field("model_api", &names(&self.model_api))
            .finish()
    }
}

/// Names of the environment variables that authenticate the CLI against the model API.
pub const CREDENTIAL_VARS: [&str; 3] = [
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
];

/// Settings every Claude run gets: no telemetry or update checks, a bounded MCP start-up, MCP
/// tools offered directly instead of behind tool search.
pub const CLAUDE_FIXED_ENV: [(&str, &str); 5] = [
    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    ("DISABLE_TELEMETRY", "1"),
    ("DISABLE_AUTOUPDATER", "1"),
    ("MCP_TIMEOUT", "15000"),
    ("ENABLE_TOOL_SEARCH", "false"),
];

impl CommandEnv {
    /// `autopilot-mcp-guard` for local runs: beside `autopilot-servers`, else on PATH.
    pub fn guard_bin(&self) -> PathBuf {
        let guard = autopilot_fixed_servers::catalog::GUARD_PROGRAM;
        match self.fixed_servers_bin.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(guard),
            _ => guard.into(),
        }
    }

    /// Who pays for the runs' tokens: an API key (or a gateway's bearer token) wins over a
    /// subscription's OAuth token, as in the CLI.
    pub fn billing(&self) -> autopilot_proto::Billing {
        let set = |name: &str| {
            self.model_api
                .iter()
                .any(|(key, value)| key == name && !value.is_empty())
        };
        if !set("ANTHROPIC_API_KEY")
            && !set("ANTHROPIC_AUTH_TOKEN")
            && set("CLAUDE_CODE_OAUTH_TOKEN")
        {
            autopilot_proto::Billing::Subscription
        } else {
            autopilot_proto::Billing::Api
        }
    }

    /// Whether any model API credential is present.
    pub fn has_model_credentials(&self) -> bool {
        self.model_api
            .iter()
            .any(|(name, value)| CREDENTIAL_VARS.contains(&name.as_str()) && !value.is_empty())
    }
}

/// Builds the command for one run in `workspace`.
pub fn build_command(spec: &RunSpec, workspace: PathBuf, env: &CommandEnv) -> CommandSpec {
    let mut vars = env.base.clone();
    vars.push(("HOME".into(), env.home.display().to_string()));
    match &spec.kind {
        RunKind::Shell { command, stdin } => CommandSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), command.clone()],
            env: vars,
            cwd: workspace,
            stdin: stdin.clone(),
            claude: false,
            run: (spec.run_id, spec.attempt),
            sandbox: spec.sandbox,
            mcp_config: None,
            image: spec.image.clone(),
        },
        // Made by the worker itself (`worker::http`): never a process. Should one be asked for,
        // it fails at once and says why.
        RunKind::Http(http) => CommandSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec![
                "-c".into(),
                format!(
                    "echo 'an HTTP job ({} {}) is not run as a process' >&2; exit 2",
                    http.method,
                    http.url.replace('\'', "")
                ),
            ],
            env: vars,
            cwd: workspace,
            stdin: None,
            claude: false,
            run: (spec.run_id, spec.attempt),
            sandbox: spec.sandbox,
            mcp_config: None,
            image: spec.image.clone(),
        },
        RunKind::Claude(claude) => {
            vars.extend(env.model_api.iter().cloned());
            vars.extend(
                CLAUDE_FIXED_ENV
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            if let Some(gate) = &claude.approval {
                // A call waiting for approval is a call of the approval server's tool: the CLI
                // must not give up on it before the control plane does.
                let wait_ms = gate.timeout_secs.saturating_add(60).saturating_mul(1000);
                vars.push(("MCP_TOOL_TIMEOUT".into(), wait_ms.to_string()));
            }
            CommandSpec {
                program: env.claude_bin.clone(),
                args: claude_args(claude),
                env: vars,
                cwd: workspace,
                // The prompt goes through stdin: no argument-length limit, and not visible in `ps`.
                stdin: Some(claude.prompt.clone()),
                claude: true,
                run: (spec.run_id, spec.attempt),
                sandbox: spec.sandbox,
                mcp_config: None,
                image: spec.image.clone(),
            }
        }
    }
}

/// The CLI arguments of a Claude run. `dontAsk` makes the allowed-tools list binding (anything
/// not allowed is denied, never prompted for), and `--strict-mcp-config` keeps MCP servers from
/// the workspace or the user's settings out of the run. A run with gated tools is asked about
/// instead (`manual`), by the approval server as its permission prompt tool, which denies at
/// once whatever is not gated: the list stays as binding.
pub fn claude_args(spec: &ClaudeSpec) -> Vec<String> {
    let permission_mode = match spec.approval {
        Some(_) => "manual",
        None => "dontAsk",
    };
    let mut args: Vec<String> = [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        permission_mode,
        "--strict-mcp-config",
        "--no-session-persistence",
        // Raw stream events carry each model message's final usage and stop reason
        // (`message_delta`), which the message's own lines only have in part.
        "--include-partial-messages",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    if let Some(gate) = &spec.approval {
        args.push("--permission-prompt-tool".into());
        args.push(autopilot_fixed_servers::approval_wire::PROMPT_TOOL.into());
        // `ask` rules: a gated call is asked about even when the CLI would let it through
        // unasked (a read-only shell command, say).
        args.push("--settings".into());
        args.push(serde_json::json!({ "permissions": { "ask": gate.tools } }).to_string());
    }
    if !spec.allowed_tools.is_empty() {
        args.push("--allowedTools".into());
        args.push(spec.allowed_tools.join(","));
    }
    if !spec.disallowed_tools.is_empty() {
        args.push("--disallowedTools".into());
        args.push(spec.disallowed_tools.join(","));
    }
    if let Some(model) = &spec.model {
        args.push("--model".into());
        args.push(model.clone());
    }
    if let Some(max_turns) = spec.max_turns {
        args.push("--max-turns".into());
        args.push(max_turns.to_string());
    }
    if let Some(max_cost) = spec.max_cost_usd {
        args.push("--max-budget-usd".into());
        args.push(format!("{max_cost}"));
    }
    args
}

/// Normalises a tool name as users write it to the CLI's form: `server:tool` and `server.tool`
/// become `mcp__server__tool`; built-in names and rule patterns such as `Bash(git *)` are kept.
pub fn normalise_tool_name(name: &str) -> String {
    let name = name.trim();
    let is_plain = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*'))
    };
    if name.starts_with("mcp__") || name.contains('(') {
        return name.to_owned();
    }
    for separator in [':', '.'] {
        if let Some((server, tool)) = name.split_once(separator) {
            if is_plain(server) && is_plain(tool) {
                return format!("mcp__{server}__{tool}");
            }
        }
    }
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use autopilot_proto::RunId;

    #[test]
    fn tool_names_are_normalised_like_the_cli_expects() {
        assert_eq!(normalise_tool_name("Bash"), "Bash");
        assert_eq!(
            normalise_tool_name("github:create_issue"),
            "mcp__github__create_issue"
        );
        assert_eq!(normalise_tool_name("email.send"), "mcp__email__send");
        assert_eq!(normalise_tool_name("mcp__srv__*"), "mcp__srv__*");
        assert_eq!(normalise_tool_name("Bash(git log:*)"), "Bash(git log:*)");
        assert_eq!(normalise_tool_name(" Write "), "Write");
    }

    fn claude_spec() -> ClaudeSpec {
        ClaudeSpec {
            prompt: "summarise".into(),
            model: Some("claude-sonnet-4-5".into()),
            allowed_tools: vec!["Bash".into(), "Write".into()],
            disallowed_tools: vec![],
            max_turns: Some(3),
            max_cost_usd: Some(0.5),
            trace_content: false,
            mcp_servers: Vec::new(),
            approval: None,
        }
    }

    #[test]
    fn a_run_with_gated_tools_is_asked_by_the_approval_server() {
        let mut spec = claude_spec();
        spec.approval = Some(autopilot_proto::ApprovalGate {
            tools: vec!["Bash".into()],
            levels: Vec::new(),
            timeout_secs: 600,
        });
        let args = claude_args(&spec).join(" ");
        assert!(args.contains("--permission-mode manual"), "{args}");
        assert!(
            args.contains("--permission-prompt-tool mcp__autopilot_approval__decide"),
            "{args}"
        );
        assert!(!args.contains("dontAsk"), "{args}");
        assert!(
            args.contains(r#"--settings {"permissions":{"ask":["Bash"]}}"#),
            "{args}"
        );
    }

    #[test]
    fn claude_command_carries_the_job_settings_and_no_inherited_environment() {
        let spec = RunSpec {
            run_id: RunId::new(),
            attempt: 1,
            job_id: None,
            workspace: "w".into(),
            kind: RunKind::Claude(claude_spec()),
            timeout_secs: 60,
            sandbox: Default::default(),
            image: None,
            outcome_files: Vec::new(),
        };
        let env = CommandEnv {
            claude_bin: "/opt/claude".into(),
            fixed_servers_bin: "autopilot-servers".into(),
            python: "python3".into(),
            home: "/data/home".into(),
            base: vec![("PATH".into(), "/usr/bin".into())],
            model_api: vec![("ANTHROPIC_API_KEY".into(), "sk-test".into())],
        };
        let command = build_command(&spec, "/data/ws".into(), &env);
        assert_eq!(command.program, PathBuf::from("/opt/claude"));
        let args = command.args.join(" ");
        assert!(args.contains("--permission-mode dontAsk"), "{args}");
        assert!(args.contains("--allowedTools Bash,Write"), "{args}");
        assert!(args.contains("--max-turns 3"), "{args}");
        assert!(args.contains("--model claude-sonnet-4-5"), "{args}");
        assert!(!args.contains("summarise"), "the prompt goes through stdin");
        assert_eq!(command.stdin.as_deref(), Some("summarise"));
        assert!(command
            .env
            .iter()
            .any(|(k, v)| k == "HOME" && v == "/data/home"));
        assert!(
            !format!("{command:?}").contains("sk-test"),
            "Debug must not show secrets"
        );
    }

    #[test]
    fn shell_jobs_never_get_model_credentials() {
        let spec = RunSpec {
            run_id: RunId::new(),
            attempt: 1,
            job_id: None,
            workspace: "w".into(),
            kind: RunKind::Shell {
                command: "echo hi".into(),
                stdin: None,
            },
            timeout_secs: 60,
            sandbox: Default::default(),
            image: None,
            outcome_files: Vec::new(),
        };
        let env = CommandEnv {
            claude_bin: "claude".into(),
            fixed_servers_bin: "autopilot-servers".into(),
            python: "python3".into(),
            home: "/h".into(),
            base: vec![],
            model_api: vec![("ANTHROPIC_API_KEY".into(), "sk-test".into())],
        };
        let command = build_command(&spec, "/ws".into(), &env);
        assert_eq!(command.args, vec!["-c", "echo hi"]);
        assert!(command.env.iter().all(|(k, _)| k != "ANTHROPIC_API_KEY"));
    }
}
