//! Grants: checked when a job, webhook or quick run is saved (every server and bundle named
//! exists), and resolved when a worker claims a run: the servers, the tools allowed and denied,
//! and the credentials sealed to the claiming worker.

use std::collections::BTreeSet;

use autopilot_proto::{McpServerSpec, RunKind, RunSpec, SealedSecrets};

use crate::app::App;
use crate::domain::tools::{
    credentials_of, resolve_all, Credential, McpServer, ToolBundle, ToolGrant,
};
use crate::domain::{Run, RunSettings, ServiceError, ServiceResult};

/// "registered: a, b" or "none registered", for messages about a missing name.
fn known<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none is registered".to_owned()
    } else {
        format!("registered: {}", names.join(", "))
    }
}

/// Checks that every server and bundle `settings` name exists (for a job, webhook or quick run
/// being saved), naming the first that does not.
pub async fn check_tools(app: &App, settings: &RunSettings) -> ServiceResult<()> {
    check_servers(app, &settings.servers).await?;
    if settings.bundles.is_empty() {
        return Ok(());
    }
    let bundles = app.store.list_bundles().await?;
    for (index, name) in settings.bundles.iter().enumerate() {
        if !bundles.iter().any(|bundle| &bundle.name == name) {
            return Err(ServiceError::invalid(
                format!("bundles[{index}]"),
                format!(
                    "no tool bundle `{name}` ({}); create it with create_bundle first",
                    known(bundles.iter().map(|b| b.name.as_str()))
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that every server `grants` name is registered.
pub(super) async fn check_servers(app: &App, grants: &[ToolGrant]) -> ServiceResult<()> {
    if grants.is_empty() {
        return Ok(());
    }
    let servers = app.store.list_servers().await?;
    for (index, grant) in grants.iter().enumerate() {
        if !servers.iter().any(|server| server.name == grant.server) {
            return Err(ServiceError::invalid(
                format!("servers[{index}].server"),
                format!(
                    "no MCP server `{}` ({}); register it first",
                    grant.server,
                    known(servers.iter().map(|s| s.name.as_str()))
                ),
            ));
        }
    }
    Ok(())
}

/// The registry, bundles and vault as one claim request reads them (once, however many runs it
/// claims).
pub struct Registry {
    servers: Vec<McpServer>,
    bundles: Vec<ToolBundle>,
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
        let servers = app.store.list_servers().await?;
        // Servers connected with OAuth carry their (fresh) access token in a header.
        let servers = super::oauth_client::with_access_tokens(app, servers).await;
        Ok(Self {
            servers,
            credentials: app.store.list_credentials().await?,
            bundles: app.store.list_bundles().await?,
        })
    }

    /// Resolves `run`'s grants and bundles into `spec` (its MCP servers and the tools allowed
    /// and denied) and seals the credentials they use to the claiming worker's `sealing_key`.
    /// Also returns the names of the credentials handed out.
    pub fn hand_out(
        &self,
        app: &App,
        run: &Run,
        spec: &mut RunSpec,
        sealing_key: Option<&str>,
    ) -> (Handed, Vec<String>) {
        match self.resolve(app, run, spec, sealing_key) {
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

    /// The run's own grants and its bundles' (bundle tools go to `allowed`).
    fn grants<'a>(
        &'a self,
        run: &'a Run,
        allowed: &mut Vec<String>,
    ) -> Result<Vec<&'a ToolGrant>, String> {
        let mut grants: Vec<&ToolGrant> = run.settings.grants.iter().collect();
        for name in &run.settings.bundles {
            let bundle = self
                .bundles
                .iter()
                .find(|bundle| &bundle.name == name)
                .ok_or_else(|| {
                    format!(
                        "the tool bundle `{name}` given to this run no longer exists; create it \
                         again or remove it from the run's settings"
                    )
                })?;
            grants.extend(&bundle.servers);
            for tool in &bundle.tools {
                if !allowed.contains(tool) {
                    allowed.push(tool.clone());
                }
            }
        }
        Ok(grants)
    }

    fn resolve(
        &self,
        app: &App,
        run: &Run,
        spec: &mut RunSpec,
        sealing_key: Option<&str>,
    ) -> Result<(Handed, Vec<String>), String> {
        let RunKind::Claude(claude) = &mut spec.kind else {
            return Err("MCP servers are granted to Claude runs only".to_owned());
        };
        let grants = self.grants(run, &mut claude.allowed_tools)?;
        let names: Vec<&str> = grants.iter().map(|g| g.server.as_str()).collect();
        let mut seen = BTreeSet::new();
        let mut needed = BTreeSet::new();
        for name in names {
            if !seen.insert(name) {
                continue;
            }
            let server = self
                .servers
                .iter()
                .find(|server| server.name == name)
                .ok_or_else(|| {
                    format!(
                        "the MCP server `{name}` granted to this run is no longer registered; \
                         register it again or remove it from the run's settings"
                    )
                })?;
            let of_server: Vec<&ToolGrant> = grants
                .iter()
                .copied()
                .filter(|g| g.server == name)
                .collect();
            let mut resolved = resolve_all(&of_server, server);
            if let Some(gate) = claude.approval.as_mut() {
                gate_levels(gate, &of_server, server, &mut resolved);
            }
            claude.allowed_tools.extend(resolved.allowed);
            claude.disallowed_tools.extend(resolved.disallowed);
            needed.extend(credentials_of(&server.transport));
            claude.mcp_servers.push(McpServerSpec {
                name: server.name.clone(),
                transport: server.transport.clone(),
            });
        }
        self.seal(app, spec, needed.into_iter().collect(), sealing_key)
    }

    /// Hands an http run the credentials its request's headers name (`${NAME}`), sealed to the
    /// claiming worker process.
    pub fn hand_out_named(
        &self,
        app: &App,
        spec: &RunSpec,
        names: Vec<String>,
        sealing_key: Option<&str>,
    ) -> (Handed, Vec<String>) {
        self.seal(app, spec, names, sealing_key)
            .unwrap_or_else(|reason| {
                (
                    Handed {
                        secrets: None,
                        cannot_start: Some(reason),
                    },
                    Vec::new(),
                )
            })
    }

    /// The credentials `needed`, opened and sealed to the worker process for this attempt.
    fn seal(
        &self,
        app: &App,
        spec: &RunSpec,
        needed: Vec<String>,
        sealing_key: Option<&str>,
    ) -> Result<(Handed, Vec<String>), String> {
        if needed.is_empty() {
            return Ok((Handed::default(), Vec::new()));
        }
        let secrets = super::credentials::open_credentials(app, &self.credentials, &needed)?;
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
            needed,
        ))
    }
}

/// Moves the tools of `server` at the gate's access levels (unless a grant denies them by name)
/// out of the allowed and withheld lists and into the gate: offered, and asked about each call.
fn gate_levels(
    gate: &mut autopilot_proto::ApprovalGate,
    grants: &[&ToolGrant],
    server: &crate::domain::tools::McpServer,
    resolved: &mut crate::domain::tools::ResolvedGrant,
) {
    use crate::domain::approval::level_name;
    for tool in &server.tools {
        let at_level = gate
            .levels
            .iter()
            .any(|level| level == level_name(tool.access));
        let denied = grants.iter().any(|grant| grant.denies(&tool.name));
        if !at_level || denied {
            continue;
        }
        let name = format!("mcp__{}__{}", server.name, tool.name);
        resolved.allowed.retain(|allowed| allowed != &name);
        resolved.disallowed.retain(|withheld| withheld != &name);
        if !autopilot_fixed_servers::approval_wire::gated(&gate.tools, &name) {
            gate.tools.push(name);
        }
    }
}
