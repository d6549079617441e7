//! The MCP servers of a Claude run on the worker: the `--mcp-config` file made from the servers
//! granted to the run with their credentials filled in, and the check that each of them
//! connected. (The redaction of credentials is `autopilot_fixed_servers::redact`'s, shared with
//! the guard.)

use std::io::Write;
use std::path::{Path, PathBuf};

use autopilot_fixed_servers::catalog::SETTINGS_FILE_VAR;
use autopilot_fixed_servers::{approval_wire, memory_wire};
use autopilot_proto::placeholders::fill;
use autopilot_proto::{ApprovalGate, McpServerSpec, McpTransport, Secrets};
use serde_json::{json, Map, Value};

/// A run's MCP configuration: the CLI's `--mcp-config` document and the settings file of each
/// server the run starts (its name in the configuration's directory, and its JSON), which that
/// server (a fixed one) or its guard reads once and deletes. So the settings of the servers a
/// run starts, credentials among them, are never in the document nor in the environment of the
/// CLI or the guard.
#[derive(Debug)]
pub struct McpFiles {
    pub document: Value,
    pub settings: Vec<(String, Vec<u8>)>,
}

/// The tools of `allowed_tools` (the CLI's names) that are `server`'s own, by its own names
/// (`*` for the whole server).
fn own_tools(server: &str, allowed_tools: &[String]) -> Vec<String> {
    let prefix = format!("mcp__{server}__");
    let whole = format!("mcp__{server}");
    allowed_tools
        .iter()
        .filter_map(|tool| match tool.strip_prefix(&prefix) {
            Some(own) => Some(own.to_owned()),
            None => (*tool == whole).then(|| "*".to_owned()),
        })
        .collect()
}

/// Where a run finds what its MCP configuration names, as the run sees it.
#[derive(Clone, Copy, Debug)]
pub struct RunPaths<'a> {
    /// `autopilot-servers`, which runs the fixed servers.
    pub fixed_servers: &'a str,
    /// `autopilot-mcp-guard`, under which every other stdio server runs.
    pub guard: &'a str,
    /// The configuration's directory.
    pub dir: &'a str,
    /// The token the run's `memory` server presents on its socket (in that directory).
    pub memory_token: &'a str,
    /// The Python that runs dynamic servers.
    pub python: &'a str,
}

/// The programs a run's MCP configuration names, and that configuration's directory, as the run
/// sees them: in a container, the run image's copies and the directory's mount; in a local run,
/// those beside the worker and the directory where it is.
pub struct RunPrograms {
    pub fixed_servers: String,
    pub guard: String,
    pub dir: String,
    pub python: String,
}

impl RunPrograms {
    /// For a run on the Docker executor (`in_container`) or a local one, whose configuration
    /// directory is `dir` on the worker.
    pub fn new(in_container: bool, env: &crate::CommandEnv, dir: &Path) -> Self {
        use autopilot_fixed_servers::catalog::{GUARD_PROGRAM, PROGRAM};
        match in_container {
            true => Self {
                fixed_servers: PROGRAM.to_owned(),
                guard: GUARD_PROGRAM.to_owned(),
                dir: crate::docker::MCP_CONFIG_MOUNT.to_owned(),
                python: "python3".to_owned(),
            },
            false => Self {
                fixed_servers: env.fixed_servers_bin.display().to_string(),
                guard: env.guard_bin().display().to_string(),
                dir: dir.display().to_string(),
                python: env.python.display().to_string(),
            },
        }
    }

    pub fn paths<'a>(&'a self, memory_token: &'a str) -> RunPaths<'a> {
        RunPaths {
            fixed_servers: &self.fixed_servers,
            guard: &self.guard,
            dir: &self.dir,
            memory_token,
            python: &self.python,
        }
    }
}

/// The MCP configuration of `servers`, credentials filled in, each stdio server granted the
/// tools of `allowed_tools` (the CLI's names) that are its own. A credential the control plane
/// did not send is an error naming it and its server.
pub fn config(
    servers: &[McpServerSpec],
    secrets: &Secrets,
    allowed_tools: &[String],
    paths: RunPaths<'_>,
) -> Result<McpFiles, String> {
    let mut entries = Map::new();
    let mut settings = Vec::new();
    // Dynamic servers' source files, written beside the settings.
    let mut sources = Vec::new();
    for server in servers {
        let mut used = Secrets::new();
        let mut fill = |text: &str| {
            fill(text, secrets, &mut used).map_err(|name| {
                format!(
                    "the credential `{name}` used by MCP server `{}` is not set; set it with \
                     set_credential (or PUT /api/v1/credentials/{name})",
                    server.name
                )
            })
        };
        let mut fill_map = |map: &std::collections::BTreeMap<String, String>| {
            map.iter()
                .map(|(name, value)| Ok((name.clone(), Value::String(fill(value)?))))
                .collect::<Result<Map<String, Value>, String>>()
        };
        let mut settings_file = |kind: &str, content: Value| {
            let file = format!("{}.{kind}.json", server.name);
            settings.push((file.clone(), content.to_string().into_bytes()));
            json!({ SETTINGS_FILE_VAR: format!("{}/{file}", paths.dir) })
        };
        let entry = match &server.transport {
            McpTransport::Stdio { command, args, env } => {
                let env = fill_map(env)?;
                let allow = own_tools(&server.name, allowed_tools);
                let guard_env = settings_file(
                    "guard",
                    json!({ "env": env, "allow": allow, "secrets": used }),
                );
                let mut guard_args = vec!["--".to_owned(), command.clone()];
                guard_args.extend(args.iter().cloned());
                json!({ "type": "stdio", "command": paths.guard, "args": guard_args, "env": guard_env })
            }
            McpTransport::Http { url, headers } => {
                // Through the guard too: the URL and headers (credentials filled in) stay in a
                // file it deletes, and answers are filtered and redacted before the model.
                let headers = fill_map(headers)?;
                let url = fill(url)?;
                let allow = own_tools(&server.name, allowed_tools);
                let guard_env = settings_file(
                    "guard",
                    json!({ "url": url, "env": headers, "allow": allow, "secrets": used }),
                );
                json!({ "type": "stdio", "command": paths.guard, "args": ["--remote"], "env": guard_env })
            }
            McpTransport::Python { code, env, .. } => {
                // The source beside the settings, started by the run's Python under the guard.
                let source = format!("{}.py", server.name);
                sources.push((source.clone(), code.clone().into_bytes()));
                let env = fill_map(env)?;
                let allow = own_tools(&server.name, allowed_tools);
                let guard_env = settings_file(
                    "guard",
                    json!({ "env": env, "allow": allow, "secrets": used }),
                );
                let file = format!("{}/{source}", paths.dir);
                let guard_args = ["--", paths.python, file.as_str()];
                json!({ "type": "stdio", "command": paths.guard, "args": guard_args, "env": guard_env })
            }
            McpTransport::Fixed { server: fixed, env } => {
                let mut values = fill_map(env)?;
                if fixed == memory_wire::SERVER {
                    let socket = format!("{}/{}", paths.dir, memory_wire::SOCKET_FILE);
                    values.insert(memory_wire::SOCKET_SETTING.to_owned(), socket.into());
                    values.insert(
                        memory_wire::TOKEN_SETTING.to_owned(),
                        paths.memory_token.into(),
                    );
                }
                let env = settings_file("settings", Value::Object(values));
                json!({ "type": "stdio", "command": paths.fixed_servers, "args": [fixed], "env": env })
            }
        };
        entries.insert(server.name.clone(), entry);
    }
    settings.extend(sources);
    Ok(McpFiles {
        document: json!({ "mcpServers": entries }),
        settings,
    })
}

/// The directory of one attempt's MCP configuration (`mcp.json` and the fixed servers' settings
/// files), which only this process's user can read (the Docker executor hands it to the run's
/// user), removed when dropped.
pub struct ConfigFile {
    /// Declared first, so dropped first: the socket stops before its directory goes.
    relay: Option<crate::memory_relay::MemoryRelay>,
    dir: tempfile::TempDir,
}

impl ConfigFile {
    pub fn create() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("autopilot-mcp-")
            .tempdir()?;
        Ok(Self { relay: None, dir })
    }

    /// Serves the run's memory socket in this directory for as long as the file is kept.
    pub fn serve_memory(
        &mut self,
        token: String,
        run: crate::memory_relay::RunIdentity,
        bus: std::sync::Arc<dyn autopilot_proto::Bus>,
    ) -> Result<(), String> {
        let socket = self.dir.path().join(memory_wire::SOCKET_FILE);
        self.relay = Some(crate::memory_relay::MemoryRelay::start(
            &socket, token, run, bus,
        )?);
        Ok(())
    }

    pub fn write(&self, files: &McpFiles) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let write = |name: &str, bytes: &[u8]| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.dir.path().join(name))?
                .write_all(bytes)
        };
        for (name, bytes) in &files.settings {
            write(name, bytes)?;
        }
        write("mcp.json", files.document.to_string().as_bytes())
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mcp.json")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Adds the run's `approval` server, the CLI's permission prompt tool for `gate`'s tools, which
/// asks on the run's socket with the same token as the `memory` server.
pub fn add_approval(files: &mut McpFiles, gate: &ApprovalGate, paths: RunPaths<'_>) {
    let tools = serde_json::to_string(&gate.tools).unwrap_or_else(|_| "[]".to_owned());
    let settings = json!({
        memory_wire::SOCKET_SETTING: format!("{}/{}", paths.dir, memory_wire::SOCKET_FILE),
        memory_wire::TOKEN_SETTING: paths.memory_token,
        approval_wire::TOOLS_SETTING: tools,
        approval_wire::TIMEOUT_SETTING: gate.timeout_secs.to_string(),
    });
    let file = format!("{}.settings.json", approval_wire::SERVER);
    files
        .settings
        .push((file.clone(), settings.to_string().into_bytes()));
    let entry = json!({
        "type": "stdio",
        "command": paths.fixed_servers,
        "args": [approval_wire::SERVER],
        "env": { SETTINGS_FILE_VAR: format!("{}/{file}", paths.dir) },
    });
    if let Some(servers) = files.document["mcpServers"].as_object_mut() {
        servers.insert(approval_wire::SERVER.to_owned(), entry);
    }
}

/// Whether one of `servers` is the `memory` server, which needs the run's memory socket.
pub fn uses_memory(servers: &[McpServerSpec]) -> bool {
    servers.iter().any(|server| {
        matches!(&server.transport, McpTransport::Fixed { server, .. } if server == memory_wire::SERVER)
    })
}

/// The servers of `servers` that the CLI's `system/init` line does not list as `connected`,
/// each with its status (`failed`, `pending`, or missing).
pub fn not_connected(init: &Value, servers: &[McpServerSpec]) -> Vec<String> {
    let listed = init
        .get("mcp_servers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    servers
        .iter()
        .filter_map(|server| {
            let status = listed
                .iter()
                .find(|entry| entry.get("name").and_then(Value::as_str) == Some(&server.name))
                .and_then(|entry| entry.get("status").and_then(Value::as_str))
                .unwrap_or("missing");
            (status != "connected").then(|| format!("`{}` ({status})", server.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::from([("CRM_TOKEN".to_owned(), "tok/en+secret?1".to_owned())])
    }

    fn servers() -> Vec<McpServerSpec> {
        vec![
            McpServerSpec {
                name: "crm".into(),
                transport: McpTransport::Http {
                    url: "https://crm.example/mcp".into(),
                    headers: [("Authorization".into(), "Bearer ${CRM_TOKEN}".into())].into(),
                },
            },
            McpServerSpec {
                name: "notes".into(),
                transport: McpTransport::Stdio {
                    command: "python3".into(),
                    args: vec!["server.py".into()],
                    env: [("TOKEN".into(), "${CRM_TOKEN}".into())].into(),
                },
            },
        ]
    }

    const PATHS: RunPaths<'static> = RunPaths {
        fixed_servers: "/opt/autopilot-servers",
        guard: "/opt/autopilot-mcp-guard",
        dir: "/run/x",
        memory_token: "memory-token",
        python: "python3",
    };

    fn allowed() -> Vec<String> {
        vec![
            "Bash".into(),
            "mcp__notes__lookup".into(),
            "mcp__crm__list".into(),
        ]
    }

    /// The settings file of `name`, read back.
    fn settings_of(files: &McpFiles, name: &str) -> Value {
        let (_, bytes) = files
            .settings
            .iter()
            .find(|(file, _)| file == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", files.settings));
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn a_remote_server_runs_behind_the_guard_with_its_headers_in_a_file() {
        let files = config(&servers(), &secrets(), &allowed(), PATHS).unwrap();
        let crm = &files.document["mcpServers"]["crm"];
        assert_eq!(crm["command"], "/opt/autopilot-mcp-guard");
        assert_eq!(crm["args"], json!(["--remote"]));
        assert!(!crm.to_string().contains("tok/en"), "{crm}");
        let guard = settings_of(&files, "crm.guard.json");
        assert_eq!(guard["url"], "https://crm.example/mcp");
        assert_eq!(guard["env"]["Authorization"], "Bearer tok/en+secret?1");
        assert_eq!(guard["allow"], json!(["list"]));
        let error = config(&servers(), &Secrets::new(), &allowed(), PATHS).unwrap_err();
        assert!(
            error.contains("`CRM_TOKEN`") && error.contains("`crm`"),
            "{error}"
        );
    }

    #[test]
    fn a_stdio_server_runs_under_the_guard_with_its_settings_in_a_file() {
        let files = config(&servers(), &secrets(), &allowed(), PATHS).unwrap();
        let notes = &files.document["mcpServers"]["notes"];
        assert_eq!(notes["command"], "/opt/autopilot-mcp-guard");
        assert_eq!(notes["args"], json!(["--", "python3", "server.py"]));
        assert_eq!(
            notes["env"],
            json!({ SETTINGS_FILE_VAR: "/run/x/notes.guard.json" })
        );
        assert!(!notes.to_string().contains("tok/en"), "{notes}");
        let guard = settings_of(&files, "notes.guard.json");
        assert_eq!(guard["env"]["TOKEN"], "tok/en+secret?1");
        assert_eq!(
            guard["allow"],
            json!(["lookup"]),
            "only its own granted tools"
        );
        assert_eq!(guard["secrets"], json!({ "CRM_TOKEN": "tok/en+secret?1" }));
    }

    #[test]
    fn a_fixed_servers_settings_go_in_a_file_of_their_own_not_the_document() {
        let mut servers = servers();
        servers.push(McpServerSpec {
            name: "mail".into(),
            transport: McpTransport::Fixed {
                server: "email".into(),
                env: [(
                    "EMAIL_SMTP_URL".into(),
                    "smtp://bot:${CRM_TOKEN}@mail.example".into(),
                )]
                .into(),
            },
        });
        let files = config(&servers, &secrets(), &allowed(), PATHS).unwrap();
        let mail = &files.document["mcpServers"]["mail"];
        assert_eq!(mail["command"], "/opt/autopilot-servers");
        assert_eq!(mail["args"], json!(["email"]));
        assert_eq!(
            mail["env"],
            json!({ SETTINGS_FILE_VAR: "/run/x/mail.settings.json" })
        );
        assert!(!mail.to_string().contains("tok/en"), "{mail}");
        assert_eq!(
            settings_of(&files, "mail.settings.json")["EMAIL_SMTP_URL"],
            "smtp://bot:tok/en+secret?1@mail.example"
        );
    }

    #[test]
    fn a_dynamic_server_runs_its_source_file_under_the_guard() {
        let dice = McpServerSpec {
            name: "dice".into(),
            transport: McpTransport::Python {
                code: "print('dice')".into(),
                version: 3,
                env: [("TOKEN".into(), "${CRM_TOKEN}".into())].into(),
            },
        };
        let allowed = vec!["mcp__dice__roll".to_owned()];
        let files = config(&[dice], &secrets(), &allowed, PATHS).unwrap();
        let entry = &files.document["mcpServers"]["dice"];
        assert_eq!(entry["command"], "/opt/autopilot-mcp-guard");
        assert_eq!(entry["args"], json!(["--", "python3", "/run/x/dice.py"]));
        let source = files.settings.iter().find(|(name, _)| name == "dice.py");
        assert_eq!(
            source.map(|(_, code)| code.as_slice()),
            Some(&b"print('dice')"[..])
        );
        let guard = settings_of(&files, "dice.guard.json");
        assert_eq!(guard["env"]["TOKEN"], "tok/en+secret?1");
        assert_eq!(guard["allow"], json!(["roll"]));
        assert!(!entry.to_string().contains("tok/en"), "{entry}");
    }

    #[test]
    fn servers_not_connected_are_named_with_their_status() {
        let init = json!({ "mcp_servers": [
            { "name": "crm", "status": "connected" },
            { "name": "notes", "status": "failed" },
        ]});
        assert_eq!(not_connected(&init, &servers()), ["`notes` (failed)"]);
        assert_eq!(
            not_connected(&json!({}), &servers()),
            ["`crm` (missing)", "`notes` (missing)"]
        );
    }
}
