//! The tools, in groups ([`jobs`], [`runs`], [`webhooks`], [`registry`], [`server`]); each group owns its
//! tools' descriptions, argument types and functions. Arguments are read into the services' own
//! input types, and the input schemas the model sees derive from those same types, so the two
//! cannot drift. Tools only call the services, never the store.
//!
//! This module holds what the groups share: the definitions, the dispatch, scope checks, and
//! how results and failures are written for the model.

mod approvals;
#[doc(hidden)]
pub mod fuzzing;
mod jobs;
mod registry;
mod runs;
mod server;
mod webhooks;

use std::sync::{Arc, LazyLock};

use autopilot_proto::RunId;
use rmcp::handler::server::common::schema_for_input;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::App;
use crate::domain::auth::{Caller, SCOPE_READ, SCOPE_WRITE};
use crate::domain::input::{self, InputError};
use crate::domain::ServiceError;

/// One tool: what the model is told about it, and which group runs it.
struct Spec {
    name: &'static str,
    title: &'static str,
    description: &'static str,
    input: Arc<JsonObject>,
    output: Value,
    read_only: bool,
    destructive: bool,
    idempotent: bool,
    open_world: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Group {
    Approvals,
    Jobs,
    Runs,
    Webhooks,
    Registry,
    Server,
}

static DEFINITIONS: LazyLock<Vec<(Tool, Group)>> = LazyLock::new(|| {
    let groups = [
        (Group::Jobs, jobs::specs()),
        (Group::Runs, runs::specs()),
        (Group::Webhooks, webhooks::specs()),
        (Group::Registry, registry::specs()),
        (Group::Server, server::specs()),
        (Group::Approvals, approvals::specs()),
    ];
    groups
        .into_iter()
        .flat_map(|(group, specs)| specs.into_iter().map(move |spec| (tool(spec), group)))
        .collect()
});

fn tool(spec: Spec) -> Tool {
    let output = match spec.output {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    };
    Tool::new(spec.name, spec.description, spec.input)
        .with_title(spec.title)
        .with_raw_output_schema(output)
        .with_annotations(
            ToolAnnotations::with_title(spec.title)
                .read_only(spec.read_only)
                .destructive(spec.destructive)
                .idempotent(spec.idempotent)
                .open_world(spec.open_world),
        )
}

/// Every tool, in a stable order.
pub fn definitions() -> impl Iterator<Item = &'static Tool> {
    DEFINITIONS.iter().map(|(tool, _)| tool)
}

fn find(name: &str) -> Option<&'static (Tool, Group)> {
    DEFINITIONS.iter().find(|(tool, _)| tool.name == name)
}

fn is_read_only(tool: &Tool) -> bool {
    tool.annotations
        .as_ref()
        .and_then(|annotations| annotations.read_only_hint)
        .unwrap_or(false)
}

/// Whether `name` is a tool that changes state (needs `autopilot:write`).
pub fn changes_state(name: &str) -> bool {
    find(name).is_some_and(|(tool, _)| !is_read_only(tool))
}

/// Runs one tool call. Problems the model can fix come back as tool errors (`isError`), which
/// the model reads; only an unknown tool is a protocol error.
pub async fn call(
    app: &Arc<App>,
    caller: Option<Caller>,
    request: CallToolRequestParams,
    context: RequestContext<RoleServer>,
) -> Result<CallToolResponse, ErrorData> {
    let name = request.name.as_ref();
    let Some((tool, group)) = find(name) else {
        return Err(ErrorData::invalid_params(
            format!(
                "unknown tool `{name}`; the tools are: {}",
                definitions()
                    .map(|tool| tool.name.as_ref())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None,
        ));
    };
    if let Err(denied) = check_scope(caller.as_ref(), name, is_read_only(tool)) {
        return Ok(denied.into());
    }
    if let Err(denied) = check_operator(caller.as_ref(), name) {
        return Ok(denied.into());
    }
    let args = request.arguments.unwrap_or_default();
    if name == "decide_approval" {
        // Its answer may be a form for a person (an input request) rather than a result.
        let Some(caller) = caller else {
            return Ok(error_result("not authenticated".to_owned()).into());
        };
        let decided = approvals::decide(
            app,
            &caller,
            args,
            request.input_responses,
            request.request_state,
            &context,
        )
        .await;
        return Ok(decided.unwrap_or_else(|failure| failure.into_result(name).into()));
    }
    let outcome = match group {
        Group::Approvals => approvals::list(app, args).await,
        Group::Jobs => jobs::call(app, name, args, &context).await,
        Group::Runs => runs::call(app, name, args, &context).await,
        Group::Webhooks => webhooks::call(app, name, args, &context).await,
        Group::Registry => registry::call(app, name, args).await,
        Group::Server => server::call(app, name, args).await,
    };
    Ok(match outcome {
        Ok(result) => result,
        Err(failure) => failure.into_result(name),
    }
    .into())
}

/// Tools only the operator may call over MCP: approving a dynamic server's version gives it its
/// credentials, which Claude (connected through OAuth) must not do for a server it wrote.
const OPERATOR_ONLY: [&str; 1] = ["approve_dynamic_version"];

fn check_operator(caller: Option<&Caller>, tool: &str) -> Result<(), CallToolResult> {
    if !OPERATOR_ONLY.contains(&tool) || caller.is_some_and(Caller::is_operator) {
        return Ok(());
    }
    Err(error_result(format!(
        "`{tool}` is the operator's: this connection acts for Claude (OAuth), which may not \
         approve what it wrote. Ask the user to approve it with POST \
         /api/v1/dynamic-servers/{{name}}/versions/{{n}}/approve, or from an MCP client connected \
         with the admin token."
    )))
}

fn check_scope(caller: Option<&Caller>, tool: &str, read_only: bool) -> Result<(), CallToolResult> {
    let Some(caller) = caller else {
        return Err(error_result(
            "not authenticated: this request carries no Autopilot credentials; connect with the \
             admin token (Authorization: Bearer …) or through OAuth"
                .to_owned(),
        ));
    };
    let (held, needed) = if read_only {
        (caller.scopes.read, SCOPE_READ)
    } else {
        (caller.scopes.write, SCOPE_WRITE)
    };
    if held {
        return Ok(());
    }
    let granted = caller.scopes.to_string();
    Err(error_result(format!(
        "`{tool}` needs the `{needed}` scope, but this connection was granted {}. Ask the user to \
         reconnect Autopilot and grant `{needed}`.",
        if granted.is_empty() {
            "no Autopilot scope".to_owned()
        } else {
            format!("only `{granted}`")
        }
    )))
}

// --- Shared by the groups ------------------------------------------------------------------------

/// Why a call failed, before it is turned into a tool error.
enum Failure {
    Service(ServiceError),
    /// A message already written for the model.
    Message(String),
}

impl From<ServiceError> for Failure {
    fn from(err: ServiceError) -> Self {
        Failure::Service(err)
    }
}

impl Failure {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Failure::Service(ServiceError::invalid(field, message))
    }

    fn into_result(self, tool: &str) -> CallToolResult {
        let text = match self {
            Failure::Message(message) => message,
            Failure::Service(ServiceError::Invalid { field, message }) => {
                // The service's message usually starts with the field already.
                let message = message
                    .strip_prefix(&format!("{field}: "))
                    .unwrap_or(&message)
                    .to_owned();
                format!(
                    "invalid argument `{field}`: {message}\nFix `{field}` and call {tool} again."
                )
            }
            Failure::Service(err @ ServiceError::NotFound { .. }) => {
                format!("{err}. list_jobs / list_runs / list_webhooks show what exists.")
            }
            Failure::Service(
                ServiceError::Conflict(message) | ServiceError::Forbidden(message),
            ) => message,
            Failure::Service(ServiceError::Unavailable(message)) => {
                format!("Autopilot is temporarily unavailable ({message}); try again shortly.")
            }
            Failure::Service(err @ ServiceError::StorageFull) => {
                format!("{err}: nothing was stored. Try again once the operator has freed space.")
            }
            Failure::Service(ServiceError::Internal(err)) => {
                tracing::error!(tool, error = ?err, "MCP tool failed");
                "Autopilot hit an internal error (it is in the server's log); try again, and \
                 report it if it persists."
                    .to_owned()
            }
        };
        error_result(text)
    }
}

type Outcome = Result<CallToolResult, Failure>;

fn error_result(text: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// A success: `value` as structured content, and a text rendering (a one-line summary, then the
/// same JSON) for clients that only read text.
fn success(summary: String, value: Value) -> Outcome {
    let pretty = serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string());
    let mut result = CallToolResult::structured(value);
    result.content = vec![ContentBlock::text(format!("{summary}\n\n{pretty}"))];
    Ok(result)
}

/// The input schema of a tool whose arguments are `T`.
fn input<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    // Every argument type derives an object schema.
    schema_for_input::<T>().unwrap_or_else(|err| panic!("tool input schema: {err}"))
}

/// Reads the arguments into `T` (a service's input), naming the argument that is wrong.
fn parse<T: DeserializeOwned + JsonSchema>(args: JsonObject) -> Result<T, Failure> {
    input::from_value(Value::Object(args)).map_err(|err| match err {
        InputError::Invalid { field, message } if field != "." => Failure::invalid(&field, message),
        InputError::Invalid { message, .. } | InputError::Syntax(message) => Failure::Message(
            format!("invalid arguments: {message}. The tool's input schema lists the arguments."),
        ),
    })
}

/// Takes a string argument out of the arguments of a tool that also has other fields (the rest
/// is then read into a service's input).
fn take_string(args: &mut JsonObject, name: &str, what: &str) -> Result<String, Failure> {
    match args.remove(name) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(Failure::invalid(name, format!("must be {what}"))),
        None => Err(Failure::invalid(name, format!("missing: give {what}"))),
    }
}

/// Takes the optional `wait` flag out of the arguments.
fn take_wait(args: &mut JsonObject) -> Result<bool, Failure> {
    match args.remove("wait") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(wait)) => Ok(wait),
        Some(_) => Err(Failure::invalid("wait", "must be true or false")),
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, Failure> {
    serde_json::to_value(value)
        .map_err(|err| Failure::Service(ServiceError::Internal(anyhow::Error::new(err))))
}

fn parse_run_id(field: &str, text: &str) -> Result<RunId, Failure> {
    text.trim().parse().map_err(|_| {
        Failure::invalid(
            field,
            format!("`{text}` is not a run id (run ids are UUIDs; list_runs shows them)"),
        )
    })
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({ "type": "object", "properties": properties, "required": required })
}

fn run_schema() -> Value {
    json!({ "type": "object", "description": "A run: id, job_id, status, result, error, tokens, cost_usd, times" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::auth::Scopes;

    fn text(result: &CallToolResult) -> String {
        serde_json::to_string(&result.content).unwrap_or_default()
    }

    #[test]
    fn approving_a_dynamic_version_is_the_operators() {
        let connector = Caller {
            subject: "claude-ai-client".into(),
            scopes: Scopes::ALL,
        };
        let denied = check_operator(Some(&connector), "approve_dynamic_version").unwrap_err();
        let text = serde_json::to_string(&denied.content).unwrap();
        assert!(text.contains("the operator's"), "{text}");
        assert!(check_operator(Some(&connector), "list_jobs").is_ok());
        assert!(check_operator(Some(&Caller::admin()), "approve_dynamic_version").is_ok());
        assert!(check_operator(Some(&Caller::stdio()), "approve_dynamic_version").is_ok());
        assert!(check_operator(None, "approve_dynamic_version").is_err());
    }

    #[test]
    fn scopes_are_enforced_and_named() {
        let reader = Caller {
            subject: "client".into(),
            scopes: Scopes::parse(SCOPE_READ),
        };
        assert!(check_scope(Some(&reader), "list_jobs", true).is_ok());
        let denied = check_scope(Some(&reader), "create_job", false).unwrap_err();
        assert_eq!(denied.is_error, Some(true));
        assert!(text(&denied).contains(SCOPE_WRITE), "{}", text(&denied));

        let nobody = Caller {
            subject: "client".into(),
            scopes: Scopes::default(),
        };
        let denied = check_scope(Some(&nobody), "get_run", true).unwrap_err();
        assert!(text(&denied).contains(SCOPE_READ));
        assert!(check_scope(None, "get_run", true).is_err());
        assert!(check_scope(Some(&Caller::admin()), "delete_job", false).is_ok());
    }

    #[test]
    fn invalid_input_names_the_field() {
        let failure = Failure::Service(ServiceError::invalid(
            "schedule",
            "schedule: invalid cron expression\n  0 61 * * *\n    ^",
        ));
        let result = failure.into_result("create_job");
        let text = text(&result);
        assert!(text.contains("invalid argument `schedule`"), "{text}");
        assert!(text.contains('^'), "{text}");

        let Err(Failure::Service(ServiceError::Invalid { field, .. })) =
            parse::<crate::services::jobs::JobInput>(
                serde_json::from_value(json!({ "name": "a", "max_turns": "many" })).unwrap(),
            )
        else {
            panic!("a wrong type is an invalid field");
        };
        assert_eq!(field, "max_turns");
    }

    #[test]
    fn every_tool_is_defined_once_with_a_title_and_annotations() {
        let names: Vec<&str> = definitions().map(|tool| tool.name.as_ref()).collect();
        assert_eq!(names.len(), 43);
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        for tool in definitions() {
            assert!(
                tool.annotations.is_some(),
                "{} has no annotations",
                tool.name
            );
            assert!(tool.title.is_some(), "{} has no title", tool.name);
        }
    }

    /// The model only knows what an argument means from its description.
    #[test]
    fn every_argument_of_every_tool_is_described() {
        let mut undescribed = Vec::new();
        for tool in definitions() {
            let properties = tool
                .input_schema
                .get("properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            for (argument, schema) in properties {
                if schema.get("description").is_none() {
                    undescribed.push(format!("{}.{argument}", tool.name));
                }
            }
        }
        assert!(
            undescribed.is_empty(),
            "arguments without a description: {undescribed:?}"
        );
    }
}
