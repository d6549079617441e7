//! Dynamic servers (see [`crate::domain::dynamic`]): saving a version, having a worker validate
//! it, approving an agent's, and making a usable version the one the registry hands to runs.

use std::collections::BTreeMap;

use autopilot_proto::Secrets;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::servers::check_secret_values;
use crate::app::App;
use crate::domain::dynamic::{scan, Author, DynamicVersion, Scan, Validation, MAX_CODE_BYTES};
use crate::domain::tools::{validate_server_name, McpServer, ServerTool, Transport};
use crate::domain::{ServiceError, ServiceResult};
use autopilot_fixed_servers::catalog::GUARD_PASSES_ON;

/// A new version of a dynamic server.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamicInput {
    /// The server's name (`^[a-z][a-z0-9-]{0,30}[a-z0-9]$`); saving under an existing dynamic
    /// server's name adds a version.
    pub name: String,
    /// Python source of an MCP server on stdio, e.g. with the `mcp` SDK's `MCPServer` (or
    /// FastMCP) and `server.run()`. It starts with no network while it is validated.
    pub code: String,
    /// What the server is for, shown in the registry.
    #[serde(default)]
    pub description: Option<String>,
    /// Its environment; credentials as `${NAME}` placeholders, e.g.
    /// `{"CRM_TOKEN": "${CRM_TOKEN}"}`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A version as shown: its code is left out (it may be long), its state spelled out.
#[derive(Serialize, Debug)]
pub struct VersionView {
    pub server: String,
    pub version: u32,
    /// `valid`, `invalid`, `awaiting_approval` or `not_validated`.
    pub state: &'static str,
    /// Whether runs granted the server get this version.
    pub active: bool,
    pub author: Author,
    pub description: Option<String>,
    pub env: BTreeMap<String, String>,
    pub credentials: Vec<String>,
    /// Credentials its environment names that the vault does not hold: a run granted it would
    /// fail to start until they are set.
    pub missing_credentials: Vec<String>,
    /// Variables the source reads that its environment does not give (nor the guard passes
    /// on): it may fail, or fall back to a default, where it runs.
    pub env_vars_not_given: Vec<String>,
    pub scan: Scan,
    pub tools: Vec<ServerTool>,
    pub error: Option<String>,
    pub approved_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub bytes: usize,
}

fn view(version: &DynamicVersion, active: Option<u32>, vault: &[String]) -> VersionView {
    let validation = version.validation.as_ref();
    let credentials = version.credentials();
    VersionView {
        missing_credentials: credentials
            .iter()
            .filter(|name| !vault.contains(name))
            .cloned()
            .collect(),
        env_vars_not_given: version
            .scan
            .env_vars
            .iter()
            .filter(|name| {
                !version.env.contains_key(*name) && !GUARD_PASSES_ON.contains(&name.as_str())
            })
            .cloned()
            .collect(),
        server: version.server.clone(),
        version: version.version,
        state: version.state(),
        active: active == Some(version.version),
        author: version.author,
        description: version.description.clone(),
        env: version.env.clone(),
        credentials,
        scan: version.scan.clone(),
        tools: validation.map(|v| v.tools.clone()).unwrap_or_default(),
        error: validation.and_then(|v| v.error.clone()),
        approved_at: version.approved_at,
        created_at: version.created_at,
        bytes: version.code.len(),
    }
}

/// The names of the credentials the vault holds.
async fn vault(app: &App) -> ServiceResult<Vec<String>> {
    let stored = app.store.list_credentials().await?;
    Ok(stored.into_iter().map(|c| c.name).collect())
}

/// The registry's server of that name, and the dynamic version it runs (if it is dynamic).
async fn registered(app: &App, name: &str) -> ServiceResult<Option<(McpServer, Option<u32>)>> {
    let servers = app.store.list_servers().await?;
    Ok(servers.into_iter().find(|s| s.name == name).map(|server| {
        let version = match &server.transport {
            Transport::Python { version, .. } => Some(*version),
            _ => None,
        };
        (server, version)
    }))
}

fn not_found(name: &str) -> ServiceError {
    ServiceError::NotFound {
        what: "dynamic server",
        id: name.to_owned(),
    }
}

/// Saves `input` as the server's next version, has a worker validate it, and makes it the
/// usable one when it may be.
pub async fn save(app: &App, input: DynamicInput, author: Author) -> ServiceResult<VersionView> {
    validate_server_name("name", &input.name)?;
    if input.code.trim().is_empty() {
        return Err(ServiceError::invalid(
            "code",
            "is empty: give the server's Python source",
        ));
    }
    if input.code.len() > MAX_CODE_BYTES {
        return Err(ServiceError::invalid(
            "code",
            format!(
                "is {} bytes; a dynamic server's source is at most {MAX_CODE_BYTES}",
                input.code.len()
            ),
        ));
    }
    check_secret_values("env", input.env.iter())?;
    if let Some((_, None)) = registered(app, &input.name).await? {
        return Err(ServiceError::Conflict(format!(
            "a server named `{}` exists and is not a dynamic server; pick another name",
            input.name
        )));
    }
    let versions = app.store.list_dynamic_versions(&input.name).await?;
    let number = versions.last().map_or(1, |v| v.version + 1);
    let mut version = DynamicVersion {
        server: input.name,
        version: number,
        description: input.description.filter(|d| !d.trim().is_empty()),
        scan: scan(&input.code),
        code: input.code,
        env: input.env,
        author,
        validation: None,
        approved_at: None,
        created_at: Utc::now(),
    };
    app.store.insert_dynamic_version(&version).await?;
    tracing::info!(server.name = %version.server, version = number, ?author, "dynamic server version saved");
    validate_version(app, &mut version).await?;
    finish(app, &version).await
}

/// Starts the version on a worker (placeholders, no network) and records what it found.
async fn validate_version(app: &App, version: &mut DynamicVersion) -> ServiceResult<()> {
    let transport = Transport::Python {
        code: version.code.clone(),
        version: version.version,
        env: version.env.clone(),
    };
    let listed = super::probe::list_tools(app, &transport, &Secrets::new()).await;
    version.validation = Some(match listed {
        Ok(tools) if tools.is_empty() => Validation {
            ok: false,
            tools,
            error: Some("the server started but lists no tools".to_owned()),
            at: Utc::now(),
        },
        Ok(tools) => Validation {
            ok: true,
            tools,
            error: None,
            at: Utc::now(),
        },
        Err(error) => Validation {
            ok: false,
            tools: Vec::new(),
            error: Some(error),
            at: Utc::now(),
        },
    });
    app.store.update_dynamic_version(version).await?;
    Ok(())
}

/// Activates the version when it is usable, and shows it.
async fn finish(app: &App, version: &DynamicVersion) -> ServiceResult<VersionView> {
    let active = match version.usable() {
        true => {
            activate(app, version).await?;
            Some(version.version)
        }
        false => registered(app, &version.server).await?.and_then(|(_, v)| v),
    };
    Ok(view(version, active, &vault(app).await?))
}

/// Makes `version` what the registry hands to runs, keeping the access levels an operator set
/// on tools of the same name.
async fn activate(app: &App, version: &DynamicVersion) -> ServiceResult<()> {
    let existing = registered(app, &version.server)
        .await?
        .map(|(server, _)| server);
    let listed = version
        .validation
        .as_ref()
        .map(|v| v.tools.clone())
        .unwrap_or_default();
    let tools = listed
        .into_iter()
        .map(|mut tool| {
            if let Some(known) = existing
                .as_ref()
                .and_then(|s| s.tools.iter().find(|t| t.name == tool.name))
            {
                tool.access = known.access;
            }
            tool
        })
        .collect();
    let now = Utc::now();
    let server = McpServer {
        name: version.server.clone(),
        description: version.description.clone(),
        transport: Transport::Python {
            code: version.code.clone(),
            version: version.version,
            env: version.env.clone(),
        },
        tools,
        tools_listed_at: version.validation.as_ref().map(|v| v.at),
        oauth: existing.as_ref().and_then(|s| s.oauth.clone()),
        created_at: existing.as_ref().map_or(now, |s| s.created_at),
        updated_at: now,
    };
    match existing {
        Some(_) => app.store.update_server(&server).await?,
        None => app.store.insert_server(&server).await?,
    }
    tracing::info!(server.name = %server.name, version = version.version, "dynamic server version active");
    Ok(())
}

async fn find_version(app: &App, name: &str, number: Option<u32>) -> ServiceResult<DynamicVersion> {
    let versions = app.store.list_dynamic_versions(name).await?;
    let found = match number {
        Some(number) => versions.into_iter().find(|v| v.version == number),
        None => versions.into_iter().last(),
    };
    found.ok_or_else(|| match number {
        Some(number) => ServiceError::NotFound {
            what: "dynamic server version",
            id: format!("{name} v{number}"),
        },
        None => not_found(name),
    })
}

/// A dynamic server's versions, oldest first.
pub async fn versions(app: &App, name: &str) -> ServiceResult<Vec<VersionView>> {
    let versions = app.store.list_dynamic_versions(name).await?;
    if versions.is_empty() {
        return Err(not_found(name));
    }
    let active = registered(app, name).await?.and_then(|(_, v)| v);
    let vault = vault(app).await?;
    Ok(versions.iter().map(|v| view(v, active, &vault)).collect())
}

/// Validates a version again (the latest when `number` is `None`).
pub async fn validate(app: &App, name: &str, number: Option<u32>) -> ServiceResult<VersionView> {
    let mut version = find_version(app, name, number).await?;
    validate_version(app, &mut version).await?;
    finish(app, &version).await
}

/// An operator approves a version written by an agent: it gets its credentials, and becomes
/// the usable one.
pub async fn approve(app: &App, name: &str, number: u32) -> ServiceResult<VersionView> {
    let mut version = find_version(app, name, Some(number)).await?;
    if !version.validation.as_ref().is_some_and(|v| v.ok) {
        return Err(ServiceError::Conflict(format!(
            "version {number} of `{name}` did not validate ({}); only a valid version can be \
             approved",
            version.state()
        )));
    }
    if version.approved_at.is_none() {
        version.approved_at = Some(Utc::now());
        app.store.update_dynamic_version(&version).await?;
        tracing::info!(server.name = %name, version = number, "dynamic server version approved");
    }
    finish(app, &version).await
}
