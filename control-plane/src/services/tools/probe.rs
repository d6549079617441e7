//! Listing a server's tools by asking it, `initialize` then `tools/list` (every page), within a
//! time limit. Each tool's access level is derived from its MCP annotations and its name.
//!
//! A stdio server is code an operator registered, which never starts in the control plane: a
//! worker of the default pool starts it once as a task, through its executor (in a container on
//! the Docker executor), without network and with placeholders in place of its credentials. A
//! remote (HTTP) server is called from here, with its credentials, since nothing of it runs here.

use std::collections::BTreeMap;
use std::time::Duration;

use autopilot_proto::task::PLACEHOLDER_VALUE;
use autopilot_proto::{Secrets, TaskReply, TaskServer, WorkerTask};
use serde_json::{json, Value};

use crate::app::App;
use crate::domain::settings::DEFAULT_POOL;
use crate::domain::tools::{AccessLevel, ServerTool, Transport};

/// How long listing a server's tools may take, start included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// Most pages of `tools/list` followed.
const MAX_PAGES: usize = 20;
const PROTOCOL_VERSION: &str = "2025-06-18";

/// Fills `${NAME}` placeholders from `secrets`; a name missing is the error.
fn fill(text: &str, secrets: &Secrets) -> Result<String, String> {
    autopilot_proto::placeholders::fill(text, secrets, &mut Secrets::new())
        .map_err(|name| format!("the credential `{name}` is not set; set it with set_credential"))
}

fn initialize() -> Value {
    json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
        "clientInfo": { "name": "autopilot-probe", "version": env!("CARGO_PKG_VERSION") } } })
}

fn list_request(id: u64, cursor: Option<&str>) -> Value {
    let params = match cursor {
        Some(cursor) => json!({ "cursor": cursor }),
        None => json!({}),
    };
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params })
}

/// Every credential named in `texts`, valued [`PLACEHOLDER_VALUE`].
fn placeholders_for<'a>(texts: impl Iterator<Item = &'a str>) -> Secrets {
    texts
        .flat_map(autopilot_proto::placeholders::names)
        .map(|name| (name, PLACEHOLDER_VALUE.to_owned()))
        .collect()
}

/// What a worker starts for a server reached by `transport` (a program or a dynamic server's
/// source), and its environment with a placeholder in place of each credential.
pub(super) fn task_server(
    transport: &Transport,
) -> Result<(TaskServer, BTreeMap<String, String>), String> {
    let (server, env) = match transport {
        Transport::Stdio { command, args, env } => (
            TaskServer::Command {
                command: command.clone(),
                args: args.clone(),
            },
            env,
        ),
        Transport::Python { code, env, .. } => (TaskServer::Python { code: code.clone() }, env),
        Transport::Http { .. } => return Err("a remote server is not started by a worker".into()),
        Transport::Fixed { .. } => return Err("a fixed server is not started by itself".into()),
    };
    let placeholders = placeholders_for(env.values().map(String::as_str));
    let env = env
        .iter()
        .map(|(name, value)| Ok((name.clone(), fill(value, &placeholders)?)))
        .collect::<Result<_, String>>()?;
    Ok((server, env))
}

/// Hands `task` to a worker of the default pool: the tools it listed (an array) or the result
/// of the call it made.
pub(super) async fn on_a_worker(app: &App, task: WorkerTask) -> Result<Value, String> {
    match app
        .bus
        .request_task(DEFAULT_POOL, task, PROBE_TIMEOUT)
        .await
    {
        Ok(TaskReply::Tools { tools, .. }) => Ok(Value::Array(tools)),
        Ok(TaskReply::Called { result, .. }) => Ok(result),
        Ok(TaskReply::Failed { worker_id, reason }) => Err(format!(
            "{reason} (on worker `{worker_id}`, with placeholder credentials and no network)"
        )),
        Err(err) => Err(format!(
            "no worker could start the server: {err}; servers are started only where runs \
             execute"
        )),
    }
}

/// The tools of one `tools/list` answer, and the cursor of the next page.
fn tools_of(answer: &Value) -> Result<(Vec<ServerTool>, Option<String>), String> {
    let (listed, next) = autopilot_fixed_servers::listing::page_of(answer)?;
    Ok((described(&listed), next))
}

/// Our record of each listed tool, its access level derived.
fn described(listed: &[Value]) -> Vec<ServerTool> {
    listed
        .iter()
        .filter_map(|tool| {
            let name = tool.get("name")?.as_str()?.to_owned();
            let hint = |key: &str| {
                tool.pointer(&format!("/annotations/{key}"))
                    .and_then(Value::as_bool)
            };
            Some(ServerTool {
                access: AccessLevel::derive(&name, hint("readOnlyHint"), hint("destructiveHint")),
                description: tool
                    .get("description")
                    .and_then(Value::as_str)
                    .map(|d| d.chars().take(500).collect()),
                name,
            })
        })
        .collect()
}

/// Lists the tools of a server reached by `transport`: a stdio server on a worker, with
/// placeholder credentials; a remote one from here, its placeholders filled from `secrets`.
pub async fn list_tools(
    app: &App,
    transport: &Transport,
    secrets: &Secrets,
) -> Result<Vec<ServerTool>, String> {
    let listing = async {
        match transport {
            Transport::Http { url, headers } => {
                let mut filled = Vec::with_capacity(headers.len());
                for (name, value) in headers {
                    filled.push((name.clone(), fill(value, secrets)?));
                }
                http(&fill(url, secrets)?, &filled).await
            }
            Transport::Stdio { .. } | Transport::Python { .. } => {
                let (server, env) = task_server(transport)?;
                match on_a_worker(app, WorkerTask::ListTools { server, env }).await? {
                    Value::Array(tools) => Ok(described(&tools)),
                    _ => Err("the worker's answer holds no tool list".to_owned()),
                }
            }
            Transport::Fixed { .. } => Err("a fixed server lists its own tools".to_owned()),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, listing)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the server did not list its tools within {} s",
                PROBE_TIMEOUT.as_secs()
            ))
        })
}

/// The JSON-RPC message answering `id` in a response body, plain JSON or server-sent events.
fn answer_in(body: &str, id: u64) -> Option<Value> {
    let candidates: Vec<&str> = if body.trim_start().starts_with('{') {
        vec![body]
    } else {
        body.lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(str::trim)
            .collect()
    };
    candidates
        .into_iter()
        .filter_map(|text| serde_json::from_str::<Value>(text).ok())
        .find(|message| message.get("id") == Some(&json!(id)))
}

async fn http(url: &str, headers: &[(String, String)]) -> Result<Vec<ServerTool>, String> {
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(|err| err.to_string())?;
    let mut session: Option<String> = None;
    let post = |body: Value, session: Option<String>| {
        let mut request = client
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", PROTOCOL_VERSION)
            .json(&body);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let call = |response: reqwest::Response, id: u64| async move {
        let status = response.status();
        let session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            let start: String = body.chars().take(200).collect();
            return Err(format!("the server answered HTTP {status}: {start}"));
        }
        let answer = answer_in(&body, id).ok_or("the server's answer holds no JSON-RPC reply")?;
        Ok::<_, String>((answer, session))
    };
    let response = post(initialize(), None)
        .await
        .map_err(|err| format!("cannot reach {url}: {err}"))?;
    let (_, started) = call(response, 0).await?;
    session = started.or(session);
    let _ = post(
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        session.clone(),
    )
    .await;
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 1..=MAX_PAGES as u64 {
        let response = post(list_request(page, cursor.as_deref()), session.clone())
            .await
            .map_err(|err| err.to_string())?;
        let (answer, _) = call(response, page).await?;
        let (more, next) = tools_of(&answer)?;
        tools.extend(more);
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(tools)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_and_their_levels_come_from_the_listing() {
        let answer = json!({ "jsonrpc": "2.0", "id": 1, "result": { "tools": [
            { "name": "list_issues", "description": "Lists issues" },
            { "name": "close_issue", "annotations": { "destructiveHint": true } },
            { "name": "delete_repo" },
            { "name": "search", "annotations": { "readOnlyHint": true } },
        ], "nextCursor": "p2" } });
        let (tools, next) = tools_of(&answer).unwrap();
        let levels: Vec<(&str, AccessLevel)> =
            tools.iter().map(|t| (t.name.as_str(), t.access)).collect();
        assert_eq!(
            levels,
            [
                ("list_issues", AccessLevel::Read),
                ("close_issue", AccessLevel::Admin),
                ("delete_repo", AccessLevel::Dangerous),
                ("search", AccessLevel::Read),
            ]
        );
        assert_eq!(next.as_deref(), Some("p2"));
        assert!(tools_of(&json!({ "id": 1, "error": { "code": -1 } })).is_err());
    }

    #[test]
    fn answers_are_found_in_json_and_in_event_streams() {
        let sse = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n\n";
        assert_eq!(answer_in(sse, 3).unwrap()["id"], 3);
        assert!(answer_in(sse, 4).is_none());
        assert_eq!(answer_in("{\"id\":2,\"result\":{}}", 2).unwrap()["id"], 2);
        assert_eq!(
            fill("Bearer ${T}", &Secrets::from([("T".into(), "x".into())])).unwrap(),
            "Bearer x"
        );
        assert!(fill("${MISSING}", &Secrets::new())
            .unwrap_err()
            .contains("`MISSING`"));
    }
}
