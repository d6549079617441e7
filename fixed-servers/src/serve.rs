//! What every fixed server shares: an MCP server over stdio whose tools are the catalog's,
//! each call handed to the server's own code.

use std::future::Future;
use std::sync::Arc;

use rmcp::handler::server::common::schema_for_input;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::catalog::FixedServer;

/// A fixed server's own code: the schema of each tool's arguments and what a call does.
pub trait Tools: Send + Sync + 'static {
    fn server(&self) -> &'static FixedServer;
    /// The JSON schema of `tool`'s arguments.
    fn input_schema(&self, tool: &str) -> Arc<JsonObject>;
    /// Runs `tool`; a problem the model can fix is an error result it reads.
    fn call(&self, tool: &str, args: JsonObject) -> impl Future<Output = CallToolResult> + Send;
}

/// The schema of arguments of type `T`.
pub fn schema<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    schema_for_input::<T>().unwrap_or_else(|err| panic!("tool input schema: {err}"))
}

/// Reads a call's arguments into `T`, or the error result that says what is wrong.
pub fn arguments<T: DeserializeOwned>(args: JsonObject) -> Result<T, CallToolResult> {
    serde_json::from_value(serde_json::Value::Object(args))
        .map_err(|err| failure(format!("invalid arguments: {err}")))
}

pub fn failure(text: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text.into())])
}

pub fn success(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text.into())])
}

struct Handler<T>(Arc<T>);

impl<T: Tools> Handler<T> {
    fn tools(&self) -> Vec<Tool> {
        self.0
            .server()
            .tools
            .iter()
            .map(|tool| {
                Tool::new(tool.name, tool.description, self.0.input_schema(tool.name))
                    .with_annotations(
                        ToolAnnotations::new()
                            .read_only(tool.read_only)
                            .destructive(false)
                            .open_world(true),
                    )
            })
            .collect()
    }
}

impl<T: Tools> ServerHandler for Handler<T> {
    fn get_info(&self) -> InitializeResult {
        let mut info = InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions(self.0.server().description);
        info.server_info = Implementation::new(
            format!("autopilot-{}", self.0.server().name),
            env!("CARGO_PKG_VERSION"),
        );
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools().into_iter().find(|tool| tool.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.as_ref();
        if !self.0.server().tools.iter().any(|tool| tool.name == name) {
            return Err(ErrorData::invalid_params(
                format!("unknown tool `{name}`"),
                None,
            ));
        }
        let args = request.arguments.unwrap_or_default();
        Ok(CallToolResponse::from(self.0.call(name, args).await))
    }
}

/// Serves `tools` on standard input and output until the client goes away.
pub async fn run<T: Tools>(tools: T) -> anyhow::Result<()> {
    let service = Handler(Arc::new(tools))
        .serve(rmcp::transport::stdio())
        .await?;
    service.waiting().await?;
    Ok(())
}
