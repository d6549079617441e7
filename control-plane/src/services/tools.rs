//! What runs can reach beside the CLI's own tools: the registry of MCP servers, the credentials
//! vault (write-only: a value is never shown again once set), and, when a worker claims a run,
//! the resolution of the run's grants into the servers, tool lists and sealed credentials it
//! hands that worker.

use std::collections::BTreeSet;

use autopilot_fixed_servers::catalog::{self, FixedServer};
use autopilot_proto::{McpServerSpec, RunKind, RunSpec, SealedSecrets, Secrets};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::domain::tools::{
    credentials_of, placeholders, validate_credential_name, validate_server_name, AccessLevel,
    Credential, McpServer, ServerTool, ToolGrant, Transport,
};
use crate::domain::{Run, ServiceError, ServiceResult};

/// Longest credential value accepted (a private key in PEM fits).
const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;
/// Most tools a server may list.
const MAX_TOOLS: usize = 500;

// --- Servers ---------------------------------------------------------------------------------

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

fn check_secret_values<'a>(
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
        Transport::Fixed { server, env } => {
            let fixed = check_fixed(server, env)?;
            if input.tools.is_empty() {
                input.tools = fixed
                    .tools
                    .iter()
                    .map(|tool| ToolInput {
                        name: tool.name.to_owned(),
                        description: Some(tool.description.to_owned()),
                        access: tool.read_only.then_some(AccessLevel::Read),
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
                "list the server's tools (1 to {MAX_TOOLS}), e.g. [{{\"name\": \"send_email\"}}]"
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

pub async fn register_server(app: &App, input: ServerInput) -> ServiceResult<ServerView> {
    let server = validate_server(input, None)?;
    app.store.insert_server(&server).await?;
    tracing::info!(server.name = %server.name, tools = server.tools.len(), "MCP server registered");
    view(app, server).await
}

/// Replaces the server of `name` with `input` (which must keep the name).
pub async fn replace_server(
    app: &App,
    name: &str,
    input: ServerInput,
) -> ServiceResult<ServerView> {
    let existing = find_server(app, name).await?;
    if input.name != existing.name {
        return Err(ServiceError::invalid(
            "name",
            "a server cannot be renamed (grants name it); register a new one instead",
        ));
    }
    let server = validate_server(input, Some(&existing))?;
    app.store.update_server(&server).await?;
    tracing::info!(server.name = %server.name, "MCP server updated");
    view(app, server).await
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
    if !app.store.delete_server(name).await? {
        return Err(ServiceError::NotFound {
            what: "MCP server",
            id: name.to_owned(),
        });
    }
    tracing::info!(server.name = %name, "MCP server deleted");
    Ok(())
}

/// Checks that every server `grants` name is registered (for a job, webhook or quick run being
/// saved), naming the first that is not.
pub async fn check_grants(app: &App, grants: &[ToolGrant]) -> ServiceResult<()> {
    if grants.is_empty() {
        return Ok(());
    }
    let servers = app.store.list_servers().await?;
    for (index, grant) in grants.iter().enumerate() {
        if !servers.iter().any(|server| server.name == grant.server) {
            let known: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
            return Err(ServiceError::invalid(
                format!("servers[{index}].server"),
                format!(
                    "no MCP server `{}` is registered (registered: {}); register it first",
                    grant.server,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}

// --- Credentials -----------------------------------------------------------------------------

/// A credential as shown: never its value.
#[derive(Serialize, Debug)]
pub struct CredentialView {
    pub name: String,
    /// A keyed digest: equal for equal values, revealing nothing of the value.
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<Credential> for CredentialView {
    fn from(c: Credential) -> Self {
        Self {
            name: c.name,
            fingerprint: c.fingerprint,
            created_at: c.created_at,
            updated_at: c.updated_at,
            last_used_at: c.last_used_at,
        }
    }
}

pub async fn set_credential(app: &App, name: &str, value: &str) -> ServiceResult<CredentialView> {
    validate_credential_name("name", name)?;
    if value.is_empty() || value.len() > MAX_CREDENTIAL_BYTES {
        return Err(ServiceError::invalid(
            "value",
            format!("must be 1 to {MAX_CREDENTIAL_BYTES} bytes"),
        ));
    }
    let existing = app
        .store
        .list_credentials()
        .await?
        .into_iter()
        .find(|c| c.name == name);
    let now = Utc::now();
    let (wrapped_key, sealed_value) = app
        .sealer
        .seal_enveloped(&Credential::context(name), value.as_bytes());
    let credential = Credential {
        name: name.to_owned(),
        wrapped_key,
        sealed_value,
        fingerprint: app.sealer.fingerprint(value.as_bytes()),
        created_at: existing.as_ref().map_or(now, |c| c.created_at),
        updated_at: now,
        last_used_at: existing.and_then(|c| c.last_used_at),
    };
    app.store.put_credential(&credential).await?;
    tracing::info!(credential.name = %name, "credential set");
    Ok(credential.into())
}

pub async fn list_credentials(app: &App) -> ServiceResult<Vec<CredentialView>> {
    Ok(app
        .store
        .list_credentials()
        .await?
        .into_iter()
        .map(CredentialView::from)
        .collect())
}

pub async fn delete_credential(app: &App, name: &str) -> ServiceResult<()> {
    if !app.store.delete_credential(name).await? {
        return Err(ServiceError::NotFound {
            what: "credential",
            id: name.to_owned(),
        });
    }
    tracing::info!(credential.name = %name, "credential deleted");
    Ok(())
}

// --- Grants at claim -------------------------------------------------------------------------

/// The registry and vault as one claim request reads them (once, however many runs it claims).
pub struct Registry {
    servers: Vec<McpServer>,
    credentials: Vec<Credential>,
}

/// What a claimed run is handed beside its spec.
#[derive(Default)]
pub struct Handed {
    pub secrets: Option<SealedSecrets>,
    pub cannot_start: Option<String>,
}

impl Registry {
    pub async fn load(app: &App) -> ServiceResult<Self> {
        Ok(Self {
            servers: app.store.list_servers().await?,
            credentials: app.store.list_credentials().await?,
        })
    }

    /// Resolves `run`'s grants into `spec` (its MCP servers and the tools allowed and denied)
    /// and seals the credentials they use to the claiming worker's `sealing_key`. Also returns
    /// the names of the credentials handed out.
    pub fn hand_out(
        &self,
        app: &App,
        run: &Run,
        spec: &mut RunSpec,
        sealing_key: Option<&str>,
    ) -> (Handed, Vec<String>) {
        match self.resolve(app, &run.settings.grants, spec, sealing_key) {
            Ok(handed) => handed,
            Err(reason) => (
                Handed {
                    secrets: None,
                    cannot_start: Some(reason),
                },
                Vec::new(),
            ),
        }
    }

    fn resolve(
        &self,
        app: &App,
        grants: &[ToolGrant],
        spec: &mut RunSpec,
        sealing_key: Option<&str>,
    ) -> Result<(Handed, Vec<String>), String> {
        let RunKind::Claude(claude) = &mut spec.kind else {
            return Err("MCP servers are granted to Claude runs only".to_owned());
        };
        let mut needed = BTreeSet::new();
        for grant in grants {
            let server = self
                .servers
                .iter()
                .find(|server| server.name == grant.server)
                .ok_or_else(|| {
                    format!(
                        "the MCP server `{}` granted to this run is no longer registered; \
                         register it again or remove it from the run's settings",
                        grant.server
                    )
                })?;
            let resolved = grant.resolve(server);
            claude.allowed_tools.extend(resolved.allowed);
            claude.disallowed_tools.extend(resolved.disallowed);
            needed.extend(credentials_of(&server.transport));
            claude.mcp_servers.push(McpServerSpec {
                name: server.name.clone(),
                transport: server.transport.clone(),
            });
        }
        if needed.is_empty() {
            return Ok((Handed::default(), Vec::new()));
        }
        let mut secrets = Secrets::new();
        for name in &needed {
            let credential = self
                .credentials
                .iter()
                .find(|c| &c.name == name)
                .ok_or_else(|| {
                    format!(
                        "the credential `{name}` that a granted MCP server uses is not set; set \
                         it with set_credential"
                    )
                })?;
            let value = app
                .sealer
                .open_enveloped(
                    &Credential::context(name),
                    &credential.wrapped_key,
                    &credential.sealed_value,
                )
                .map_err(|err| format!("the credential `{name}` could not be opened: {err}"))?;
            let value = String::from_utf8(value)
                .map_err(|_| format!("the credential `{name}` is not text"))?;
            secrets.insert(name.clone(), value);
        }
        let key = sealing_key.ok_or_else(|| {
            "the worker that claimed this run cannot receive credentials (it sent no sealing \
             key); upgrade it"
                .to_owned()
        })?;
        let sealed = SealedSecrets::seal(key, spec.run_id, spec.attempt, &secrets)
            .map_err(|err| format!("could not seal the run's credentials: {err}"))?;
        Ok((
            Handed {
                secrets: Some(sealed),
                cannot_start: None,
            },
            needed.into_iter().collect(),
        ))
    }
}
