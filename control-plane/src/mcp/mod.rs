//! The MCP server: the same services as the HTTP API, as tools for Claude. Streamable HTTP at
//! `/mcp` (behind the API's authentication) and stdio through `autopilot mcp`.
//!
//! The HTTP endpoint is stateless (no `Mcp-Session-Id`): every POST is answered on its own, as
//! plain JSON when the tool sends nothing before its result, as an event stream when it sends
//! progress notifications first.

mod auth;
pub mod stdio;
mod tools;

/// For the fuzz targets (`fuzz/`): a tool call's arguments read and checked like the tools do.
#[doc(hidden)]
pub use tools::fuzzing;

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::Uri;
use axum::Router;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, InitializeResult, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ServerCapabilities, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};

use crate::app::App;
use crate::domain::auth::Caller;
use crate::domain::limits::MAX_REQUEST_BODY_BYTES;

/// The protocol revision an `initialize` handshake settles on; older ones (2025-06-18,
/// 2025-03-26, 2024-11-05) are accepted too.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion::V_2025_11_25;
/// The newest revision served: 2026-07-28 clients (`server/discover`, no session) are served
/// too, which lets a tool answer with a form for a person (an input request) without a
/// session, as `decide_approval` does.
pub const NEWEST_PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion::V_2026_07_28;

const INSTRUCTIONS: &str = "Autopilot runs Claude Code on schedules. Jobs hold a prompt (or a \
shell command), a cron schedule and the tools a run may use; every run is recorded with its \
events, tokens and cost. Use list_jobs / get_job to look, create_job / update_job to change, \
trigger_job or quick_run to run now (pass wait: true to get the result), list_runs / get_run to \
read what happened, preview_schedule to check a cron expression before saving it. Webhooks \
(create_webhook, list_webhooks, get_webhook, update_webhook, delete_webhook, \
rotate_webhook_secret, replay_delivery) turn HTTP requests from other services into runs, with \
values from the request in the prompt. What a run can reach beside Claude Code's own tools comes \
from MCP servers in the registry (list_servers; register_server, import_mcp_json; the built-in \
email, web, notify, http and memory servers), granted to a job in its `servers` setting up to an access \
level, or through tool bundles (create_bundle, assign_bundle). A job granted the memory server \
keeps notes across its runs; get_job_memory and set_job_memory read and change them. A server \
that does not exist yet can be written in Python (save_dynamic_server): a worker validates each \
version, and one that uses credentials waits for the user's approval. Secrets go in credentials \
(set_credential) and are written ${NAME} in a server's settings; a value given to set_credential \
passes through this conversation, so prefer asking the user to set it with the HTTP API.";

/// One MCP server instance; cheap to make (one per HTTP request in stateless mode).
#[derive(Clone)]
pub struct AutopilotMcp {
    app: Arc<App>,
    /// Who calls when the transport has no HTTP request to carry a [`Caller`] (stdio).
    fixed_caller: Option<Caller>,
}

impl AutopilotMcp {
    /// A server for HTTP requests: the caller comes from each request's extensions.
    pub fn for_http(app: Arc<App>) -> Self {
        AutopilotMcp {
            app,
            fixed_caller: None,
        }
    }

    /// A server for one local client over stdio, acting as `caller`.
    pub fn for_stdio(app: Arc<App>, caller: Caller) -> Self {
        AutopilotMcp {
            app,
            fixed_caller: Some(caller),
        }
    }

    /// The caller of a request: the transport's fixed one, else the authenticated caller the
    /// HTTP middleware put into the request's extensions.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Option<Caller> {
        if let Some(caller) = &self.fixed_caller {
            return Some(caller.clone());
        }
        context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
    }
}

impl ServerHandler for AutopilotMcp {
    fn get_info(&self) -> InitializeResult {
        let mut info = InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions(INSTRUCTIONS);
        info.protocol_version = PROTOCOL_VERSION;
        info.server_info = Implementation::new("autopilot", env!("CARGO_PKG_VERSION"));
        info
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&NEWEST_PROTOCOL_VERSION))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            tools::definitions().cloned().collect(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools::definitions().find(|tool| tool.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = self.caller(&context);
        tools::call(&self.app, caller, request, context).await
    }
}

/// The `/mcp` endpoint, to be nested at `/mcp`: authenticated callers only (see [`auth`]), with
/// the API's body limit enforced at the transport.
pub fn router(app: Arc<App>) -> Router {
    let config = http_config(&app);
    let factory_app = Arc::clone(&app);
    let service = StreamableHttpService::new(
        move || Ok(AutopilotMcp::for_http(Arc::clone(&factory_app))),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    // `layer`, not `route_layer`: the service answers everything from the fallback.
    Router::new()
        .fallback_service(service)
        .layer(axum::middleware::from_fn_with_state(
            app,
            auth::require_caller,
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_REQUEST_BODY_BYTES,
        ))
}

/// Stateless, JSON where possible, and Host / Origin checks that accept the public URL as well
/// as loopback (rmcp accepts loopback only by default).
fn http_config(app: &App) -> StreamableHttpServerConfig {
    let (hosts, mut origins) = allowed_hosts_and_origins(&app.config.public_url);
    origins.extend(app.config.mcp_allowed_origins.iter().cloned());
    StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .with_cancellation_token(app.shutdown.child_token())
}

/// Hosts (any port) and origins allowed to reach `/mcp`: loopback and the public URL's.
fn allowed_hosts_and_origins(public_url: &str) -> (Vec<String>, Vec<String>) {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(String::from)
        .collect();
    let mut origins: Vec<String> = [
        "http://localhost:*",
        "http://127.0.0.1:*",
        "http://[::1]:*",
        "https://localhost:*",
        "https://127.0.0.1:*",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    match public_url.parse::<Uri>() {
        Ok(uri) => {
            if let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if !hosts.iter().any(|known| known == host) {
                    hosts.push(host.to_owned());
                }
                let port = uri
                    .port_u16()
                    .unwrap_or(if scheme == "https" { 443 } else { 80 });
                let origin_host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.to_owned()
                };
                origins.push(format!("{scheme}://{origin_host}:{port}"));
            }
        }
        Err(err) => {
            tracing::warn!(public_url, error = %err, "public URL is not a valid URI; /mcp accepts loopback hosts only");
        }
    }
    (hosts, origins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_is_allowed_beside_loopback() {
        let (hosts, origins) = allowed_hosts_and_origins("https://autopilot.example.com");
        assert!(hosts.contains(&"autopilot.example.com".to_owned()));
        assert!(hosts.contains(&"127.0.0.1".to_owned()));
        assert!(origins.contains(&"https://autopilot.example.com:443".to_owned()));

        let (hosts, origins) = allowed_hosts_and_origins("http://0.0.0.0:9000");
        assert!(hosts.contains(&"0.0.0.0".to_owned()));
        assert!(origins.contains(&"http://0.0.0.0:9000".to_owned()));
    }
}
