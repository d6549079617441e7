//! What runs can use beside Claude Code's own tools: the MCP servers of the registry (with a
//! test button), dynamic server versions (with approve), tool bundles, and the credentials
//! vault, whose values are write-only: a form sets one, only its fingerprint is ever shown.

use askama::Template;
use autopilot_proto::McpTransport;
use axum::extract::{Path, State};
use axum::response::Response;

use super::{render, see_other, Chrome, PageResult};
use crate::dashboard::auth::{authorize, Action, Operator, Submitted};
use crate::dashboard::format::{utc, wire_name};
use crate::dashboard::Dashboard;
use crate::domain::ServiceError;
use crate::services::tools::{self, dynamic};

struct ServerRow {
    name: String,
    description: String,
    transport: &'static str,
    tools: Vec<(String, String)>,
    listed: String,
    credentials: String,
    missing: String,
    oauth: String,
}

struct VersionRow {
    server: String,
    version: u32,
    state: &'static str,
    active: bool,
    author: String,
    credentials: String,
    missing: String,
    tools: String,
    error: String,
    created: String,
}

struct BundleRow {
    name: String,
    description: String,
    servers: String,
    tools: String,
}

struct CredentialRow {
    name: String,
    fingerprint: String,
    updated: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "tools.html")]
struct ToolsPage {
    chrome: Chrome,
    servers: Vec<ServerRow>,
    versions: Vec<VersionRow>,
    bundles: Vec<BundleRow>,
    credentials: Vec<CredentialRow>,
    notice: Option<String>,
}

fn transport_name(transport: &McpTransport) -> &'static str {
    match transport {
        McpTransport::Stdio { .. } => "stdio",
        McpTransport::Http { .. } => "http",
        McpTransport::Fixed { .. } => "built-in",
        McpTransport::Python { .. } => "dynamic (Python)",
    }
}

async fn page(
    dashboard: &Dashboard,
    operator: &Operator,
    notice: Option<String>,
) -> PageResult<ToolsPage> {
    let app = &dashboard.app;
    let (servers, bundles, credentials) = tokio::try_join!(
        tools::list_servers(app),
        tools::list_bundles(app),
        tools::list_credentials(app)
    )?;
    let mut versions = Vec::new();
    for view in servers
        .iter()
        .filter(|view| matches!(view.server.transport, McpTransport::Python { .. }))
    {
        for version in dynamic::versions(app, &view.server.name).await? {
            versions.push(VersionRow {
                server: version.server.clone(),
                version: version.version,
                state: version.state,
                active: version.active,
                author: wire_name(version.author),
                credentials: version.credentials.join(", "),
                missing: version.missing_credentials.join(", "),
                tools: version
                    .tools
                    .iter()
                    .map(|tool| tool.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                error: version.error.clone().unwrap_or_default(),
                created: utc(version.created_at),
            });
        }
    }
    Ok(ToolsPage {
        chrome: Chrome::new(operator, "tools", "Servers and credentials"),
        servers: servers
            .iter()
            .map(|view| ServerRow {
                name: view.server.name.clone(),
                description: view.server.description.clone().unwrap_or_default(),
                transport: transport_name(&view.server.transport),
                tools: view
                    .server
                    .tools
                    .iter()
                    .map(|tool| {
                        let access = wire_name(tool.access);
                        (tool.name.clone(), access)
                    })
                    .collect(),
                listed: view.server.tools_listed_at.map(utc).unwrap_or_default(),
                credentials: view.credentials.join(", "),
                missing: view.missing_credentials.join(", "),
                oauth: match &view.server.oauth {
                    Some(oauth) => match oauth.connected_at {
                        Some(at) => format!("connected {}", utc(at)),
                        None => "not connected yet".to_owned(),
                    },
                    None => String::new(),
                },
            })
            .collect(),
        versions,
        bundles: bundles
            .iter()
            .map(|bundle| BundleRow {
                name: bundle.name.clone(),
                description: bundle.description.clone().unwrap_or_default(),
                servers: bundle
                    .servers
                    .iter()
                    .map(|grant| grant.server.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                tools: bundle.tools.join(", "),
            })
            .collect(),
        credentials: credentials
            .into_iter()
            .map(|credential| CredentialRow {
                name: credential.name,
                fingerprint: credential.fingerprint,
                updated: utc(credential.updated_at),
                last_used: credential
                    .last_used_at
                    .map(utc)
                    .unwrap_or_else(|| "never".into()),
            })
            .collect(),
        notice,
    })
}

pub async fn show(State(dashboard): State<Dashboard>, operator: Operator) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    Ok(render(&page(&dashboard, &operator, None).await?))
}

/// Sets a credential from the write-only form; the value is never shown again.
pub async fn set_credential(
    State(dashboard): State<Dashboard>,
    Submitted {
        operator,
        form: fields,
    }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::EditTools)?;
    let name = fields.text("name").ok_or_else(|| {
        ServiceError::invalid("name", "give the credential a name, e.g. GITHUB_TOKEN")
    })?;
    let value = fields.get("value").unwrap_or_default();
    if value.is_empty() {
        return Err(ServiceError::invalid("value", "the value is empty: paste the secret").into());
    }
    let set = tools::set_credential(&dashboard.app, name, value).await?;
    Ok(render(
        &page(
            &dashboard,
            &operator,
            Some(format!(
                "Credential {} set (fingerprint {}).",
                set.name, set.fingerprint
            )),
        )
        .await?,
    ))
}

pub async fn delete_credential(
    State(dashboard): State<Dashboard>,
    Path(name): Path<String>,
    Submitted { operator, .. }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::EditTools)?;
    tools::delete_credential(&dashboard.app, &name).await?;
    Ok(see_other("/tools"))
}

/// Starts a server once and brings its tool list up to date.
pub async fn test_server(
    State(dashboard): State<Dashboard>,
    Path(name): Path<String>,
    Submitted { operator, .. }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::EditTools)?;
    let tested = tools::test_server(&dashboard.app, &name).await?;
    let notice = format!(
        "{name} answered with {} tools{}{}.",
        tested.view.server.tools.len(),
        if tested.added.is_empty() {
            String::new()
        } else {
            format!("; new: {}", tested.added.join(", "))
        },
        if tested.removed.is_empty() {
            String::new()
        } else {
            format!("; gone: {}", tested.removed.join(", "))
        },
    );
    Ok(render(&page(&dashboard, &operator, Some(notice)).await?))
}

/// Approves a dynamic server version that names credentials (the dashboard's operator may).
pub async fn approve_dynamic(
    State(dashboard): State<Dashboard>,
    Path((name, version)): Path<(String, u32)>,
    Submitted { operator, .. }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::EditTools)?;
    dynamic::approve(&dashboard.app, &name, version).await?;
    Ok(see_other("/tools"))
}
