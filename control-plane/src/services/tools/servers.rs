//! The registry of MCP servers: register, replace, look up, delete; a server's view names the
//! credentials it needs and those not set yet.

use std::collections::BTreeSet;

use autopilot_fixed_servers::catalog::{self, FixedServer};
use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::domain::tools::{
    credentials_of, placeholders, validate_credential_name, validate_server_name, AccessLevel,
    McpServer, ServerTool, Transport,
};
use crate::domain::{ServiceError, ServiceResult};

/// Most tools a server may list.
const MAX_TOOLS: usize = 500;

/// A server as clients register it.
#[derive(Deserialize, Serialize, Debug, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerInput {
    /// 2 to 32 lowercase letters, digits and `-` (the CLI names its tools
    /// `mcp__<server>__<tool>`).
    pub name: String,
    /// What the server is for, in a sentence.
    #[serde(default)]
    pub description: Option<String>,
    /// `{"type": "stdio", "command": …, "args": […], "env": {…}}` or `{"type": "http", "url": …,
    /// "headers": {…}}`. Secrets go in credentials and are written `${NAME}` here.
    pub transport: Transport,
    /// The server's tools; each one's `access` is derived from its name when left out. A
    /// fixed server lists its own (given here, they only set access levels).
    #[serde(default)]
    pub tools: Vec<ToolInput>,
}

#[derive(Deserialize, Serialize, Debug, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolInput {
    /// The tool's name as the server lists it.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: Option<String>,
    /// `read`, `write`, `admin` or `dangerous`.
    #[serde(default)]
    pub access: Option<AccessLevel>,
}

/// A registered server as shown, with the credentials it needs and which of them are missing.
#[derive(Serialize, Debug)]
pub struct ServerView {
    #[serde(flatten)]
    pub server: McpServer,
    pub credentials: Vec<String>,
    pub missing_credentials: Vec<String>,
}

/// Words in a header or variable name that say its value is a secret: such a value must come
/// from a credential, never be written into the server's definition.
const SECRET_WORDS: [&str; 7] = [
    "AUTHORIZATION",
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "KEY",
    "CREDENTIAL",
    "COOKIE",
];

/// Whether a header or variable of this name holds a secret.
pub(super) fn names_a_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|word| upper.contains(word))
}

pub(super) fn check_secret_values<'a>(
    field: &str,
    entries: impl Iterator<Item = (&'a String, &'a String)>,
) -> ServiceResult<()> {
    for (name, value) in entries {
        let upper = name.to_ascii_uppercase();
        if SECRET_WORDS.iter().any(|word| upper.contains(word)) && placeholders(value).is_empty() {
            return Err(ServiceError::invalid(
                format!("{field}.{name}"),
                format!(
                    "looks like a secret written in plain text; store it with set_credential \
                     and write `${{NAME}}` here (e.g. `Bearer ${{{}}}`)",
                    upper.replace(['-', ' '], "_")
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a server as given, without looking at the store.
pub fn validate_server(
    mut input: ServerInput,
    existing: Option<&McpServer>,
) -> ServiceResult<McpServer> {
    validate_server_name("name", &input.name)?;
    match &input.transport {
        Transport::Stdio { command, args, env } => {
            if command.trim().is_empty() {
                return Err(ServiceError::invalid(
                    "transport.command",
                    "must name the program to start, e.g. `python3`",
                ));
            }
            // A command line is visible to every process of the run.
            if std::iter::once(command)
                .chain(args)
                .any(|text| !placeholders(text).is_empty())
            {
                return Err(ServiceError::invalid(
                    "transport.args",
                    "credentials go in `env`, never on the command line (every process of the \
                     run can read it)",
                ));
            }
            check_secret_values("transport.env", env.iter())?;
        }
        Transport::Http { url, headers } => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ServiceError::invalid(
                    "transport.url",
                    "must be an http:// or https:// URL",
                ));
            }
            check_secret_values("transport.headers", headers.iter())?;
        }
        Transport::Python { .. } => {
            return Err(ServiceError::invalid(
                "transport.type",
                "a dynamic (python) server is saved with save_dynamic_server (POST \
                 /api/v1/dynamic-servers), which keeps its versions and validates each on a \
                 worker",
            ))
        }
        Transport::Fixed { server, env } => {
            let fixed = check_fixed(server, env)?;
            if input.tools.is_empty() {
                input.tools = fixed
                    .tools
                    .iter()
                    .map(|tool| ToolInput {
                        name: tool.name.to_owned(),
                        description: Some(tool.description.to_owned()),
                        // Ours are at most `write`: none is an admin's or dangerous, whatever
                        // its name (`memory_delete` removes only what runs wrote).
                        access: Some(match tool.read_only {
                            true => AccessLevel::Read,
                            false => AccessLevel::Write,
                        }),
                    })
                    .collect();
            }
            for (index, tool) in input.tools.iter().enumerate() {
                if !fixed.tools.iter().any(|known| known.name == tool.name) {
                    return Err(ServiceError::invalid(
                        format!("tools[{index}].name"),
                        format!(
                            "the `{}` server has no tool `{}`; leave `tools` out to take its own \
                             list",
                            fixed.name, tool.name
                        ),
                    ));
                }
            }
        }
    }
    for name in credentials_of(&input.transport) {
        validate_credential_name("transport", &name)?;
    }
    if input.tools.is_empty() || input.tools.len() > MAX_TOOLS {
        return Err(ServiceError::invalid(
            "tools",
            format!(
                "list the server's tools (1 to {MAX_TOOLS}), e.g. [{{\"name\": \"send_email\"}}], or leave \
                 `tools` out for Autopilot to ask the server"
            ),
        ));
    }
    let mut tools = Vec::with_capacity(input.tools.len());
    for (index, tool) in input.tools.into_iter().enumerate() {
        let valid = !tool.name.is_empty()
            && tool.name.len() <= 64
            && tool
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !valid {
            return Err(ServiceError::invalid(
                format!("tools[{index}].name"),
                "1 to 64 letters, digits, `_` and `-`",
            ));
        }
        if tools.iter().any(|t: &ServerTool| t.name == tool.name) {
            return Err(ServiceError::invalid(
                format!("tools[{index}].name"),
                format!("`{}` is listed twice", tool.name),
            ));
        }
        tools.push(ServerTool {
            access: tool
                .access
                .unwrap_or_else(|| AccessLevel::derive(&tool.name, None, None)),
            name: tool.name,
            description: tool.description,
        });
    }
    let now = Utc::now();
    Ok(McpServer {
        name: input.name,
        description: input.description.filter(|d| !d.trim().is_empty()),
        transport: input.transport,
        tools,
        tools_listed_at: None,
        oauth: existing.and_then(|s| s.oauth.clone()),
        created_at: existing.map_or(now, |s| s.created_at),
        updated_at: now,
    })
}

/// Checks a fixed server's name and settings against the catalog.
fn check_fixed(
    server: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> ServiceResult<&'static FixedServer> {
    let Some(fixed) = catalog::find(server) else {
        let known: Vec<&str> = catalog::SERVERS.iter().map(|s| s.name).collect();
        return Err(ServiceError::invalid(
            "transport.server",
            format!(
                "no fixed server `{server}`; the fixed servers are: {}",
                known.join(", ")
            ),
        ));
    };
    let settings: Vec<&str> = fixed.settings.iter().map(|s| s.name).collect();
    if let Some(unknown) = env.keys().find(|name| !settings.contains(&name.as_str())) {
        return Err(ServiceError::invalid(
            format!("transport.env.{unknown}"),
            format!(
                "the `{server}` server has no setting `{unknown}`; its settings are: {}",
                settings.join(", ")
            ),
        ));
    }
    if let Some(missing) = fixed
        .settings
        .iter()
        .find(|setting| setting.required && !env.contains_key(setting.name))
    {
        return Err(ServiceError::invalid(
            format!("transport.env.{}", missing.name),
            format!("is required: {}", missing.description),
        ));
    }
    check_secret_values("transport.env", env.iter())?;
    Ok(fixed)
}

async fn view(app: &App, server: McpServer) -> ServiceResult<ServerView> {
    let stored: BTreeSet<String> = app
        .store
        .list_credentials()
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    Ok(view_with(server, &stored))
}

fn view_with(server: McpServer, stored: &BTreeSet<String>) -> ServerView {
    let credentials = credentials_of(&server.transport);
    let missing_credentials = credentials
        .iter()
        .filter(|name| !stored.contains(*name))
        .cloned()
        .collect();
    ServerView {
        server,
        credentials,
        missing_credentials,
    }
}

/// Fills in `input.tools` by asking the server when they were left out (stdio and HTTP servers;
/// a fixed server's come from its catalog). Returns whether it did.
async fn list_when_left_out(app: &App, input: &mut ServerInput) -> ServiceResult<bool> {
    if !input.tools.is_empty() || matches!(input.transport, Transport::Fixed { .. }) {
        return Ok(false);
    }
    let tools = ask_for_tools(app, &input.transport)
        .await
        .map_err(|reason| {
            ServiceError::invalid(
                "tools",
                format!(
                    "could not list the server's tools ({reason}); fix that, or give `tools` \
                     explicitly"
                ),
            )
        })?;
    input.tools = tools
        .into_iter()
        .map(|tool| ToolInput {
            name: tool.name,
            description: tool.description,
            access: Some(tool.access),
        })
        .collect();
    Ok(true)
}

/// The tools the server at `transport` lists (a remote one asked with its credentials).
async fn ask_for_tools(app: &App, transport: &Transport) -> Result<Vec<ServerTool>, String> {
    // A stdio server is listed with placeholders: its credentials stay in the vault.
    let secrets = match transport {
        Transport::Http { .. } => {
            let stored = app
                .store
                .list_credentials()
                .await
                .map_err(|err| err.to_string())?;
            super::credentials::open_credentials(app, &stored, &credentials_of(transport))?
        }
        _ => autopilot_proto::Secrets::new(),
    };
    super::probe::list_tools(app, transport, &secrets).await
}

pub async fn register_server(app: &App, mut input: ServerInput) -> ServiceResult<ServerView> {
    let listed = list_when_left_out(app, &mut input).await?;
    let mut server = validate_server(input, None)?;
    if listed {
        server.tools_listed_at = Some(server.updated_at);
    }
    app.store.insert_server(&server).await?;
    tracing::info!(server.name = %server.name, tools = server.tools.len(), "MCP server registered");
    view(app, server).await
}

/// Replaces the server of `name` with `input` (which must keep the name).
pub async fn replace_server(
    app: &App,
    name: &str,
    mut input: ServerInput,
) -> ServiceResult<ServerView> {
    let existing = find_server(app, name).await?;
    if input.name != existing.name {
        return Err(ServiceError::invalid(
            "name",
            "a server cannot be renamed (grants name it); register a new one instead",
        ));
    }
    let listed = list_when_left_out(app, &mut input).await?;
    let mut server = validate_server(input, Some(&existing))?;
    if listed {
        server.tools_listed_at = Some(server.updated_at);
    }
    app.store.update_server(&server).await?;
    tracing::info!(server.name = %server.name, "MCP server updated");
    view(app, server).await
}

/// What asking a registered server for its tools found.
#[derive(Serialize, Debug)]
pub struct TestedServer {
    #[serde(flatten)]
    pub view: ServerView,
    /// Tools it lists that the registry did not have (added, with derived access levels).
    pub added: Vec<String>,
    /// Tools the registry had that it no longer lists (removed).
    pub removed: Vec<String>,
}

/// Starts (or calls) a registered server once and brings its tool list up to date: new tools are
/// added with derived access levels, gone ones removed, and the levels of the others kept (the
/// operator may have set them).
pub async fn test_server(app: &App, name: &str) -> ServiceResult<TestedServer> {
    let mut server = find_server(app, name).await?;
    if matches!(server.transport, Transport::Fixed { .. }) {
        return Err(ServiceError::invalid(
            "server",
            "a fixed server's tools come from Autopilot itself; there is nothing to test",
        ));
    }
    let listed = ask_for_tools(app, &server.transport)
        .await
        .map_err(|reason| {
            ServiceError::invalid(
                "server",
                format!("the server `{name}` could not be asked for its tools: {reason}"),
            )
        })?;
    let added: Vec<String> = listed
        .iter()
        .filter(|tool| !server.tools.iter().any(|known| known.name == tool.name))
        .map(|tool| tool.name.clone())
        .collect();
    let removed: Vec<String> = server
        .tools
        .iter()
        .filter(|known| !listed.iter().any(|tool| tool.name == known.name))
        .map(|tool| tool.name.clone())
        .collect();
    server.tools = listed
        .into_iter()
        .map(
            |tool| match server.tools.iter().find(|known| known.name == tool.name) {
                Some(known) => ServerTool {
                    access: known.access,
                    ..tool
                },
                None => tool,
            },
        )
        .take(MAX_TOOLS)
        .collect();
    let now = Utc::now();
    server.tools_listed_at = Some(now);
    server.updated_at = now;
    app.store.update_server(&server).await?;
    tracing::info!(server.name = %name, added = added.len(), removed = removed.len(), "MCP server tested");
    Ok(TestedServer {
        view: view(app, server).await?,
        added,
        removed,
    })
}

pub async fn find_server(app: &App, name: &str) -> ServiceResult<McpServer> {
    app.store
        .list_servers()
        .await?
        .into_iter()
        .find(|server| server.name == name)
        .ok_or_else(|| ServiceError::NotFound {
            what: "MCP server",
            id: name.to_owned(),
        })
}

pub async fn get_server(app: &App, name: &str) -> ServiceResult<ServerView> {
    let server = find_server(app, name).await?;
    view(app, server).await
}

pub async fn list_servers(app: &App) -> ServiceResult<Vec<ServerView>> {
    let stored: BTreeSet<String> = app
        .store
        .list_credentials()
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    Ok(app
        .store
        .list_servers()
        .await?
        .into_iter()
        .map(|server| view_with(server, &stored))
        .collect())
}

/// Deletes a server. Runs already granted it fail to start with a message naming it.
pub async fn delete_server(app: &App, name: &str) -> ServiceResult<()> {
    // A dynamic server's versions go with it, also when none was ever usable.
    let versions = app.store.delete_dynamic_versions(name).await?;
    if !app.store.delete_server(name).await? && versions == 0 {
        return Err(ServiceError::NotFound {
            what: "MCP server",
            id: name.to_owned(),
        });
    }
    tracing::info!(server.name = %name, "MCP server deleted");
    Ok(())
}

/// What `invoke_server_tool` answers: the tool's result as the server gave it.
#[derive(Serialize, Debug)]
pub struct Invoked {
    pub server: String,
    pub tool: String,
    /// `content` (and `isError` when the tool failed), as MCP's `tools/call` answers.
    pub result: serde_json::Value,
}

/// Calls one tool of a registered stdio or dynamic server directly, for testing: a worker
/// starts the server once as a task (placeholders in place of credentials, no network) and
/// makes the call. Nothing of it runs in the control plane.
pub async fn invoke_tool(
    app: &App,
    name: &str,
    tool: &str,
    arguments: serde_json::Value,
) -> ServiceResult<Invoked> {
    let server = find_server(app, name).await?;
    if !server.tools.iter().any(|known| known.name == tool) {
        let known: Vec<&str> = server.tools.iter().map(|t| t.name.as_str()).collect();
        return Err(ServiceError::invalid(
            "tool",
            format!(
                "`{name}` has no tool `{tool}`; its tools are: {}",
                known.join(", ")
            ),
        ));
    }
    if !arguments.is_object() && !arguments.is_null() {
        return Err(ServiceError::invalid("arguments", "must be a JSON object"));
    }
    let (task_server, env) = super::probe::task_server(&server.transport).map_err(|reason| {
        ServiceError::invalid(
            "server",
            format!(
                "{reason}: invoke_server_tool calls stdio and dynamic servers; grant a remote or \
                 fixed server to a quick run to try it"
            ),
        )
    })?;
    let task = autopilot_proto::WorkerTask::CallTool {
        server: task_server,
        env,
        tool: tool.to_owned(),
        arguments: match arguments {
            serde_json::Value::Null => serde_json::json!({}),
            other => other,
        },
    };
    let result = super::probe::on_a_worker(app, task)
        .await
        .map_err(|reason| {
            ServiceError::invalid("server", format!("the call could not be made: {reason}"))
        })?;
    Ok(Invoked {
        server: name.to_owned(),
        tool: tool.to_owned(),
        result,
    })
}
