//! What every fixed server shares: an MCP server over stdio whose tools are the catalog's,
//! each call handed to the server's own code.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
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

pub use crate::catalog::SETTINGS_FILE_VAR;

/// The server's settings: from the file `AUTOPILOT_SETTINGS_FILE` names (a JSON object of
/// strings, deleted once read, so that nothing else the run starts can read it afterwards), else
/// from the environment. The settings (credentials among them) never enter this process's
/// environment, which other processes of the same user could read.
pub fn settings() -> Result<impl Fn(&str) -> Option<String>, String> {
    let from_file = match take_settings_file()? {
        None => None,
        Some((path, text)) => Some(
            serde_json::from_slice::<std::collections::BTreeMap<String, String>>(&text).map_err(
                |err| {
                    format!(
                        "the settings file {} is not a JSON object of strings: {err}",
                        path.display()
                    )
                },
            )?,
        ),
    };
    Ok(move |name: &str| match &from_file {
        Some(map) => map.get(name).cloned(),
        None => std::env::var(name).ok(),
    })
}

/// The contents of the file `AUTOPILOT_SETTINGS_FILE` names, which is deleted once read (and its
/// path); `None` without the variable.
pub fn take_settings_file() -> Result<Option<(std::path::PathBuf, Vec<u8>)>, String> {
    let Some(path) = std::env::var_os(SETTINGS_FILE_VAR) else {
        return Ok(None);
    };
    let path = std::path::PathBuf::from(path);
    let text = std::fs::read(&path).map_err(|err| {
        format!(
            "cannot read the settings file {} ({SETTINGS_FILE_VAR}): {err}; a server restarted \
             within one run finds it gone",
            path.display()
        )
    })?;
    std::fs::remove_file(&path).map_err(|err| {
        format!(
            "cannot delete the settings file {} once read: {err}",
            path.display()
        )
    })?;
    Ok(Some((path, text)))
}

/// A `true` / `false` setting, `false` when unset; the error names it.
pub fn flag(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<bool, String> {
    match var(name).as_deref().map(str::trim) {
        None | Some("") => Ok(false),
        Some(text) => match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(format!("{name} must be `true` or `false`, not `{text}`")),
        },
    }
}

/// A whole-number setting of at least `min`, `default` when unset; the error names it.
pub fn whole_number(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
    min: u64,
) -> Result<u64, String> {
    let Some(text) = var(name).filter(|text| !text.trim().is_empty()) else {
        return Ok(default);
    };
    match text.trim().parse::<u64>() {
        Ok(number) if number >= min => Ok(number),
        _ => Err(format!(
            "{name} must be a whole number of at least {min}, not `{}`",
            text.trim()
        )),
    }
}

/// How many of something (messages, calls) one run may use: a server process lives for one run.
pub struct Quota {
    used: AtomicU32,
    pub max: u32,
}

impl Quota {
    pub fn new(max: u32) -> Self {
        Self {
            used: AtomicU32::new(0),
            max,
        }
    }

    /// Takes one, and tells its number (from 1); `None` when all are used. Taken before the
    /// work, so that two calls at once cannot both have the last one.
    pub fn take(&self) -> Option<u32> {
        let number = self.used.fetch_add(1, Ordering::SeqCst).saturating_add(1);
        if number > self.max {
            self.used.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(number)
    }

    /// Gives back one taken for work that was not done.
    pub fn give_back(&self) {
        self.used.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn left(&self) -> u32 {
        self.max.saturating_sub(self.used.load(Ordering::SeqCst))
    }
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

/// Settings given as pairs, read as a server reads its settings (for tests).
#[cfg(test)]
pub(crate) fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: std::collections::BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

/// One question on the run's socket (`socket`, which the worker serves): `request` as a JSON
/// line, and the one-line answer read back. `who` names the other end in errors (`the memory
/// store`, `the worker`).
pub async fn ask_run_socket<T: serde::de::DeserializeOwned>(
    socket: &std::path::Path,
    request: &impl serde::Serialize,
    who: &str,
) -> Result<T, String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let unreachable = |err: std::io::Error| format!("{who} cannot be reached: {err}");
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(request).map_err(|err| err.to_string())?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(unreachable)?;
    let limit = crate::memory_wire::MAX_LINE_BYTES as u64;
    let mut reader = BufReader::new(stream.take(limit));
    let mut answer = Vec::new();
    reader
        .read_until(b'\n', &mut answer)
        .await
        .map_err(unreachable)?;
    if answer.is_empty() {
        return Err(format!("{who} closed the connection without answering"));
    }
    serde_json::from_slice(&answer)
        .map_err(|err| format!("{who}'s answer is not understood: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_file_which_is_deleted_once_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("email.settings.json");
        std::fs::write(&file, r#"{"EMAIL_FROM": "bot@example.com"}"#).unwrap();
        // The only test that sets this variable.
        std::env::set_var(SETTINGS_FILE_VAR, &file);
        let read = settings().unwrap();
        std::env::remove_var(SETTINGS_FILE_VAR);
        assert_eq!(read("EMAIL_FROM").as_deref(), Some("bot@example.com"));
        assert_eq!(read("PATH"), None, "the file replaces the environment");
        assert!(!file.exists(), "the file is deleted once read");
        std::env::set_var(SETTINGS_FILE_VAR, &file);
        let error = settings().err().unwrap();
        std::env::remove_var(SETTINGS_FILE_VAR);
        assert!(error.contains("restarted"), "{error}");
    }

    #[test]
    fn flags_and_numbers_name_their_setting() {
        assert_eq!(flag(&vars(&[]), "A"), Ok(false));
        assert_eq!(flag(&vars(&[("A", " TRUE ")]), "A"), Ok(true));
        assert!(flag(&vars(&[("A", "maybe")]), "A")
            .unwrap_err()
            .contains("A must"));
        assert_eq!(whole_number(&vars(&[]), "N", 7, 0), Ok(7));
        assert_eq!(whole_number(&vars(&[("N", "0")]), "N", 7, 0), Ok(0));
        assert!(whole_number(&vars(&[("N", "0")]), "N", 7, 1)
            .unwrap_err()
            .contains("N must be a whole number of at least 1"));
        assert!(whole_number(&vars(&[("N", "-1")]), "N", 7, 0).is_err());
    }

    #[test]
    fn the_quota_is_taken_and_given_back() {
        let quota = Quota::new(2);
        assert_eq!(quota.take(), Some(1));
        assert_eq!(quota.take(), Some(2));
        assert_eq!(quota.take(), None);
        assert_eq!(quota.left(), 0);
        quota.give_back();
        assert_eq!(quota.left(), 1);
        assert_eq!(quota.take(), Some(2));
        assert_eq!(Quota::new(0).take(), None);
    }
}
