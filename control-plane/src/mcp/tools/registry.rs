//! The registry tools: MCP servers that runs can be granted, the credentials they use (a value
//! goes in once and never comes out, only a fingerprint), dynamic servers (Python written by
//! Claude, kept as versions; approving one is the operator's alone), and tool bundles.

use rmcp::model::JsonObject;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{input, object, parse, success, to_value, NoArgs, Outcome, Spec};
use crate::app::App;
use crate::domain::dynamic::Author;
use crate::services::tools::dynamic::{self, DynamicInput};
use crate::services::tools::{self, AssignInput, BundleInput, ImportInput, ServerInput};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ServerRef {
    /// The server's name.
    server: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ApproveArgs {
    /// The dynamic server's name.
    server: String,
    /// The version to approve, as list_dynamic_versions shows it.
    version: u32,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct InvokeArgs {
    /// The server's name.
    server: String,
    /// The tool's name, as the server lists it.
    tool: String,
    /// Its arguments (a JSON object).
    #[serde(default)]
    arguments: serde_json::Value,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SetCredentialArgs {
    /// `GITHUB_TOKEN`-style: uppercase letters, digits and `_`. Servers write it `${NAME}`.
    name: String,
    /// The secret. Stored sealed; never shown again, not even to you.
    value: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CredentialRef {
    /// The credential's name.
    name: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BundleRef {
    /// The bundle's name.
    bundle: String,
}

fn bundle_schema() -> serde_json::Value {
    json!({ "type": "object", "description": "A tool bundle: name, description, servers (grants), tools (built-in tools)" })
}

fn server_schema() -> serde_json::Value {
    json!({ "type": "object", "description": "An MCP server: name, description, transport (with ${NAME} placeholders, never secrets), tools with access levels, credentials it needs and those missing" })
}

fn version_schema() -> serde_json::Value {
    json!({ "type": "object", "description": "A dynamic server's version: server, version, state (valid, invalid, awaiting_approval), active, author, tools, error, scan (env_vars, imports, dependencies), credentials" })
}

fn credential_schema() -> serde_json::Value {
    json!({ "type": "object", "description": "A credential: name, fingerprint, created_at, updated_at, last_used_at (never its value)" })
}

fn spec(
    name: &'static str,
    title: &'static str,
    description: &'static str,
    input: std::sync::Arc<JsonObject>,
    output: serde_json::Value,
    read_only: bool,
    destructive: bool,
) -> Spec {
    Spec {
        name,
        title,
        description,
        input,
        output,
        read_only,
        destructive,
        idempotent: read_only || destructive,
        open_world: false,
    }
}

pub(super) fn specs() -> Vec<Spec> {
    let servers = || {
        object(
            json!({ "servers": { "type": "array", "items": server_schema() } }),
            &["servers"],
        )
    };
    let credentials = || {
        object(
            json!({ "credentials": { "type": "array", "items": credential_schema() } }),
            &["credentials"],
        )
    };
    vec![
        spec(
            "register_server",
            "Register an MCP server",
            "Adds an MCP server that jobs can then be granted (a job's `servers` setting: \
             [{\"server\": \"crm\", \"access\": \"write\"}]). Secrets never go here: store each \
             with set_credential and write `${NAME}` where it goes. Each tool's access level \
             (read, write, admin, dangerous) is derived from its name unless given; leave \
             `tools` out and Autopilot asks the server for them. Example: \
             {\"name\": \"crm\", \"transport\": {\"type\": \"http\", \"url\": \
             \"https://crm.example/mcp\", \"headers\": {\"Authorization\": \"Bearer \
             ${CRM_TOKEN}\"}}, \"tools\": [{\"name\": \"list_contacts\"}, {\"name\": \
             \"create_contact\", \"access\": \"write\"}]}",
            input::<ServerInput>(),
            object(json!({ "server": server_schema() }), &["server"]),
            false,
            false,
        ),
        spec(
            "update_server",
            "Update an MCP server",
            "Replaces a registered server's definition (same name): its transport, description \
             and tools with their access levels (leave `tools` out and the server is asked for \
             them again). Use it to raise or lower a tool's level. Example: {\"name\": \"crm\", \
             \"transport\": {\"type\": \"http\", \"url\": \"https://crm.example/mcp\"}, \
             \"tools\": [{\"name\": \"list_contacts\", \"access\": \"read\"}]}",
            input::<ServerInput>(),
            object(json!({ "server": server_schema() }), &["server"]),
            false,
            false,
        ),
        spec(
            "list_servers",
            "List MCP servers",
            "Lists the registered MCP servers with their tools, access levels and the \
             credentials each needs (and which of those are not set). Example: {}",
            input::<NoArgs>(),
            servers(),
            true,
            false,
        ),
        spec(
            "get_server",
            "Get an MCP server",
            "Shows one registered MCP server. Example: {\"server\": \"crm\"}",
            input::<ServerRef>(),
            object(json!({ "server": server_schema() }), &["server"]),
            true,
            false,
        ),
        spec(
            "import_mcp_json",
            "Import a .mcp.json",
            "Registers every server of a .mcp.json document (Claude Code's format). \
             Credentials written in it in plain text (a variable or header whose name says \
             token, key, secret, password…) are moved into the vault and replaced by \
             placeholders (or, with store_credentials false, listed as missing). Each server's \
             tools are asked for. Example: {\"document\": {\"mcpServers\": {\"github\": \
             {\"command\": \"github-mcp\", \"env\": {\"GITHUB_TOKEN\": \"…\"}}}}}",
            input::<ImportInput>(),
            object(json!({ "imported": { "type": "array" } }), &["imported"]),
            false,
            false,
        ),
        spec(
            "test_server",
            "Test an MCP server",
            "Asks a registered server for its tools again (a stdio server is started once on a \
             worker, with placeholder credentials; a remote one is called with its credentials) \
             and brings its tool list up to date: new tools are added with access levels derived from their \
             annotations and names, gone ones removed, other levels kept. Example: \
             {\"server\": \"crm\"}",
            input::<ServerRef>(),
            object(
                json!({ "server": server_schema(), "added": { "type": "array" }, "removed": { "type": "array" } }),
                &["server", "added", "removed"],
            ),
            false,
            false,
        ),
        spec(
            "delete_server",
            "Delete an MCP server",
            "Removes an MCP server from the registry. Runs of jobs still granted it fail to \
             start with a message naming it. Example: {\"server\": \"crm\"}",
            input::<ServerRef>(),
            object(json!({ "deleted": { "type": "string" } }), &["deleted"]),
            false,
            true,
        ),
        spec(
            "invoke_server_tool",
            "Call one tool of a server",
            "Calls one tool of a registered stdio or dynamic server directly, to try it: a \
             worker starts the server once (with placeholder credentials and no network) and \
             returns the tool's result as the server gave it. Example: {\"server\": \"dice\", \
             \"tool\": \"roll_die\", \"arguments\": {}}",
            input::<InvokeArgs>(),
            object(json!({ "server": { "type": "string" }, "tool": { "type": "string" }, "result": { "type": "object" } }), &["server", "tool", "result"]),
            false,
            false,
        ),
        spec(
            "save_dynamic_server",
            "Write a dynamic MCP server",
            "Saves Python source of an MCP server on stdio (the `mcp` SDK is installed where runs \
             execute: `from mcp.server.mcpserver import MCPServer`, `@server.tool()`, \
             `server.run()`) as a new version of a dynamic server. A worker starts it at once, \
             without network and with placeholder credentials, and records its tools or why it \
             failed. A valid version runs in jobs granted the server; one that uses credentials \
             (`env` with `${NAME}` placeholders) waits until the operator approves it (HTTP \
             API, or approve_dynamic_version from the operator's own connection). Example: {\"name\": \"dice\", \"code\": \"from \
             mcp.server.mcpserver import MCPServer\\nserver = MCPServer('dice')\\n\
             @server.tool()\\ndef roll() -> int:\\n    return 4\\nserver.run()\\n\"}",
            input::<DynamicInput>(),
            object(json!({ "version": version_schema() }), &["version"]),
            false,
            false,
        ),
        spec(
            "list_dynamic_versions",
            "List a dynamic server's versions",
            "Lists the versions of a dynamic server, oldest first: state (valid, invalid, \
             awaiting_approval), which one runs use, the tools each listed or its error, the \
             environment variables and imports its source uses. Example: {\"server\": \"dice\"}",
            input::<ServerRef>(),
            object(json!({ "versions": { "type": "array", "items": version_schema() } }), &["versions"]),
            true,
            false,
        ),
        spec(
            "validate_dynamic_server",
            "Validate a dynamic server again",
            "Starts the latest version of a dynamic server on a worker again and records what it \
             lists (after a credential or the run image changed, say). Example: {\"server\": \
             \"dice\"}",
            input::<ServerRef>(),
            object(json!({ "version": version_schema() }), &["version"]),
            false,
            false,
        ),
        spec(
            "approve_dynamic_version",
            "Approve a dynamic server's version",
            "The operator approves a version of a dynamic server that Claude wrote and that uses \
             credentials: it gets them and becomes the version runs use. Only the operator's own \
             connection (the admin token) may call it, never one through OAuth. Example: \
             {\"server\": \"crm-lookup\", \"version\": 2}",
            input::<ApproveArgs>(),
            object(json!({ "version": version_schema() }), &["version"]),
            false,
            false,
        ),
        spec(
            "create_bundle",
            "Create a tool bundle",
            "Creates a named set of MCP server grants and built-in tools that jobs, webhooks \
             and quick runs can then name in `bundles` (or get with assign_bundle). Example: \
             {\"name\": \"reporting\", \"servers\": [{\"server\": \"email\", \"access\": \
             \"write\"}], \"tools\": [\"Read\"]}",
            input::<BundleInput>(),
            object(json!({ "bundle": bundle_schema() }), &["bundle"]),
            false,
            false,
        ),
        spec(
            "update_bundle",
            "Update a tool bundle",
            "Replaces a bundle's description, servers and tools (the name stays). Runs \
             claimed afterwards get the new contents. Example: {\"name\": \"reporting\", \
             \"servers\": [{\"server\": \"email\", \"access\": \"read\"}]}",
            input::<BundleInput>(),
            object(json!({ "bundle": bundle_schema() }), &["bundle"]),
            false,
            false,
        ),
        spec(
            "list_bundles",
            "List tool bundles",
            "Lists the tool bundles with their grants and tools. Example: {}",
            input::<NoArgs>(),
            object(
                json!({ "bundles": { "type": "array", "items": bundle_schema() } }),
                &["bundles"],
            ),
            true,
            false,
        ),
        spec(
            "delete_bundle",
            "Delete a tool bundle",
            "Deletes a bundle that no job or webhook names any more. Example: {\"bundle\": \
             \"reporting\"}",
            input::<BundleRef>(),
            object(json!({ "deleted": { "type": "string" } }), &["deleted"]),
            false,
            true,
        ),
        spec(
            "assign_bundle",
            "Give a bundle to a job or webhook",
            "Adds a tool bundle to a job's (or a webhook's own) run settings, or takes it away \
             with remove: true. Example: {\"bundle\": \"reporting\", \"job\": \"sprint \
             summary\"}",
            input::<AssignInput>(),
            object(json!({ "updated": { "type": "object" } }), &["updated"]),
            false,
            false,
        ),
        spec(
            "set_credential",
            "Set a credential",
            "Stores a secret (API token, password) sealed, for MCP servers to use as `${NAME}`. \
             Setting an existing name replaces its value. The value is never shown again: only \
             a fingerprint. Ask the user for the value; never invent one. Example: {\"name\": \
             \"CRM_TOKEN\", \"value\": \"…\"}",
            input::<SetCredentialArgs>(),
            object(
                json!({ "credential": credential_schema() }),
                &["credential"],
            ),
            false,
            false,
        ),
        spec(
            "list_credentials",
            "List credentials",
            "Lists the stored credentials: names, fingerprints and when each was last given \
             to a run; never a value. Example: {}",
            input::<NoArgs>(),
            credentials(),
            true,
            false,
        ),
        spec(
            "delete_credential",
            "Delete a credential",
            "Deletes a stored credential. Runs whose servers use it then fail to start with a \
             message naming it. Example: {\"name\": \"CRM_TOKEN\"}",
            input::<CredentialRef>(),
            object(json!({ "deleted": { "type": "string" } }), &["deleted"]),
            false,
            true,
        ),
    ]
}

pub(super) async fn call(app: &App, name: &str, args: JsonObject) -> Outcome {
    match name {
        "invoke_server_tool" => {
            let InvokeArgs {
                server,
                tool,
                arguments,
            } = parse(args)?;
            let invoked = tools::invoke_tool(app, &server, &tool, arguments).await?;
            let failed = invoked.result.get("isError") == Some(&serde_json::Value::Bool(true));
            let summary = format!(
                "`{server}` answered `{tool}`{}: {}",
                if failed { " with an error" } else { "" },
                invoked.result
            );
            success(
                summary,
                json!({ "server": server, "tool": tool, "result": invoked.result }),
            )
        }
        "save_dynamic_server" => {
            let saved = dynamic::save(app, parse(args)?, Author::Agent).await?;
            let summary = match saved.state {
                "valid" => format!(
                    "Saved version {} of `{}`: valid, with {} tools; runs granted `{}` use it.",
                    saved.version,
                    saved.server,
                    saved.tools.len(),
                    saved.server
                ),
                "awaiting_approval" => format!(
                    "Saved version {} of `{}`: valid, but it uses credentials ({}), so it waits \
                     for an operator to approve it (POST /api/v1/dynamic-servers/{}/versions/{}/approve).",
                    saved.version,
                    saved.server,
                    saved.credentials.join(", "),
                    saved.server,
                    saved.version
                ),
                _ => format!(
                    "Saved version {} of `{}`, but it is not usable: {}",
                    saved.version,
                    saved.server,
                    saved.error.as_deref().unwrap_or("it did not validate")
                ),
            };
            success(summary, json!({ "version": to_value(&saved)? }))
        }
        "list_dynamic_versions" => {
            let ServerRef { server } = parse(args)?;
            let versions = dynamic::versions(app, &server).await?;
            let states: Vec<String> = versions
                .iter()
                .map(|v| {
                    format!(
                        "v{} {}{}",
                        v.version,
                        v.state,
                        if v.active { " (active)" } else { "" }
                    )
                })
                .collect();
            success(
                format!("`{server}`: {}.", states.join(", ")),
                json!({ "versions": to_value(&versions)? }),
            )
        }
        "approve_dynamic_version" => {
            let ApproveArgs { server, version } = parse(args)?;
            let approved = dynamic::approve(app, &server, version).await?;
            let summary = format!(
                "Approved version {version} of `{server}`: {}{}.",
                approved.state,
                if approved.active {
                    ", and runs now use it"
                } else {
                    ""
                }
            );
            success(summary, json!({ "version": to_value(&approved)? }))
        }
        "validate_dynamic_server" => {
            let ServerRef { server } = parse(args)?;
            let checked = dynamic::validate(app, &server, None).await?;
            let summary = format!(
                "Version {} of `{server}` is {}{}.",
                checked.version,
                checked.state,
                checked
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            success(summary, json!({ "version": to_value(&checked)? }))
        }
        "register_server" => {
            let server = tools::register_server(app, parse(args)?).await?;
            let summary = format!(
                "Registered MCP server `{}` with {} tools{}.",
                server.server.name,
                server.server.tools.len(),
                missing_note(&server.missing_credentials)
            );
            success(summary, json!({ "server": to_value(&server)? }))
        }
        "update_server" => {
            let input: ServerInput = parse(args)?;
            let name = input.name.clone();
            let server = tools::replace_server(app, &name, input).await?;
            let summary = format!(
                "Updated MCP server `{}` ({} tools){}.",
                server.server.name,
                server.server.tools.len(),
                missing_note(&server.missing_credentials)
            );
            success(summary, json!({ "server": to_value(&server)? }))
        }
        "list_servers" => {
            let NoArgs {} = parse(args)?;
            let servers = tools::list_servers(app).await?;
            success(
                format!("{} MCP servers registered.", servers.len()),
                json!({ "servers": to_value(&servers)? }),
            )
        }
        "get_server" => {
            let ServerRef { server } = parse(args)?;
            let server = tools::get_server(app, &server).await?;
            let summary = format!(
                "MCP server `{}`{}.",
                server.server.name,
                missing_note(&server.missing_credentials)
            );
            success(summary, json!({ "server": to_value(&server)? }))
        }
        "import_mcp_json" => {
            let imported = tools::import(app, parse(args)?).await?;
            let registered = imported.iter().filter(|i| i.server.is_some()).count();
            let detected: usize = imported.iter().map(|i| i.detected_credentials.len()).sum();
            success(
                format!(
                    "Registered {registered} of {} servers; {detected} credentials found in plain text.",
                    imported.len()
                ),
                json!({ "imported": to_value(&imported)? }),
            )
        }
        "test_server" => {
            let ServerRef { server } = parse(args)?;
            let tested = tools::test_server(app, &server).await?;
            let summary = format!(
                "MCP server `{server}` answered: {} tools ({} new, {} gone).",
                tested.view.server.tools.len(),
                tested.added.len(),
                tested.removed.len()
            );
            success(
                summary,
                json!({ "server": to_value(&tested.view)?, "added": tested.added, "removed": tested.removed }),
            )
        }
        "delete_server" => {
            let ServerRef { server } = parse(args)?;
            tools::delete_server(app, &server).await?;
            success(
                format!("Deleted MCP server `{server}`."),
                json!({ "deleted": server }),
            )
        }
        "set_credential" => {
            let SetCredentialArgs { name, value } = parse(args)?;
            let credential = tools::set_credential(app, &name, &value).await?;
            success(
                format!(
                    "Stored credential `{}` (fingerprint {}); its value will not be shown again.",
                    credential.name, credential.fingerprint
                ),
                json!({ "credential": to_value(&credential)? }),
            )
        }
        "list_credentials" => {
            let NoArgs {} = parse(args)?;
            let credentials = tools::list_credentials(app).await?;
            success(
                format!("{} credentials stored.", credentials.len()),
                json!({ "credentials": to_value(&credentials)? }),
            )
        }
        "delete_credential" => {
            let CredentialRef { name } = parse(args)?;
            tools::delete_credential(app, &name).await?;
            success(
                format!("Deleted credential `{name}`."),
                json!({ "deleted": name }),
            )
        }
        "create_bundle" => {
            let bundle = tools::create_bundle(app, parse(args)?).await?;
            success(
                format!("Created tool bundle `{}`.", bundle.name),
                json!({ "bundle": to_value(&bundle)? }),
            )
        }
        "update_bundle" => {
            let input: BundleInput = parse(args)?;
            let name = input.name.clone();
            let bundle = tools::replace_bundle(app, &name, input).await?;
            success(
                format!("Updated tool bundle `{}`.", bundle.name),
                json!({ "bundle": to_value(&bundle)? }),
            )
        }
        "list_bundles" => {
            let NoArgs {} = parse(args)?;
            let bundles = tools::list_bundles(app).await?;
            success(
                format!("{} tool bundles.", bundles.len()),
                json!({ "bundles": to_value(&bundles)? }),
            )
        }
        "delete_bundle" => {
            let BundleRef { bundle } = parse(args)?;
            tools::delete_bundle(app, &bundle).await?;
            success(
                format!("Deleted tool bundle `{bundle}`."),
                json!({ "deleted": bundle }),
            )
        }
        "assign_bundle" => {
            let input: AssignInput = parse(args)?;
            let summary = format!(
                "{} tool bundle `{}` {} {}.",
                if input.remove { "Took" } else { "Gave" },
                input.bundle,
                if input.remove { "from" } else { "to" },
                input
                    .job
                    .as_deref()
                    .map(|job| format!("job `{job}`"))
                    .or_else(|| input.webhook.as_deref().map(|w| format!("webhook `{w}`")))
                    .unwrap_or_default()
            );
            let updated = tools::assign_bundle(app, input).await?;
            success(summary, json!({ "updated": updated }))
        }
        other => Err(super::Failure::Message(format!(
            "unknown registry tool `{other}`"
        ))),
    }
}

/// Reads the arguments of registry tool `name` as a call would, without the store (fuzzing).
pub(super) fn check_arguments(name: &str, args: JsonObject) -> Result<bool, super::Failure> {
    match name {
        "register_server" | "update_server" => {
            tools::validate_server(parse(args)?, None)?;
        }
        "list_servers" | "list_credentials" => {
            let NoArgs {} = parse(args)?;
        }
        "save_dynamic_server" => {
            let _: DynamicInput = parse(args)?;
        }
        "invoke_server_tool" => {
            let InvokeArgs { .. } = parse(args)?;
        }
        "approve_dynamic_version" => {
            let ApproveArgs { .. } = parse(args)?;
        }
        "get_server"
        | "delete_server"
        | "test_server"
        | "list_dynamic_versions"
        | "validate_dynamic_server" => {
            let ServerRef { .. } = parse(args)?;
        }
        "set_credential" => {
            let SetCredentialArgs { .. } = parse(args)?;
        }
        "import_mcp_json" => {
            let _: ImportInput = parse(args)?;
        }
        "create_bundle" | "update_bundle" => {
            let _: BundleInput = parse(args)?;
        }
        "list_bundles" => {
            let NoArgs {} = parse(args)?;
        }
        "delete_bundle" => {
            let BundleRef { .. } = parse(args)?;
        }
        "assign_bundle" => {
            let _: AssignInput = parse(args)?;
        }
        "delete_credential" => {
            let CredentialRef { .. } = parse(args)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn missing_note(missing: &[String]) -> String {
    if missing.is_empty() {
        String::new()
    } else {
        format!(
            "; it needs credentials that are not set yet: {} (set each with set_credential)",
            missing.join(", ")
        )
    }
}
