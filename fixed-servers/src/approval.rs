//! The `approval` server of a run whose job gates tools: the CLI's `--permission-prompt-tool`.
//! The CLI calls its one tool for every call it would otherwise have to ask a person about
//! (anything not pre-approved). A call of a gated tool is relayed over the run's socket to the
//! worker, which asks the control plane and answers once an operator decides or the wait times
//! out; any other call is denied at once, so the job's tools stay exactly what it was given.
//!
//! The answer is what the CLI expects of a permission prompt tool: one text block holding
//! `{"behavior": "allow", "updatedInput": …}` or `{"behavior": "deny", "message": …}`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolResult, JsonObject};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::approval_wire::{gated, Ask, Decision, SocketRequest, TIMEOUT_SETTING, TOOLS_SETTING};
use crate::catalog::{FixedServer, APPROVAL};
use crate::memory_wire::{SOCKET_SETTING, TOKEN_SETTING};
use crate::serve::{schema, success, whole_number, Tools};

/// Beyond the job's timeout, for the worker and the control plane to answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Settings {
    pub socket: PathBuf,
    pub token: String,
    pub tools: Vec<String>,
    pub timeout: Duration,
}

impl Settings {
    /// Reads the settings through `var`; an error names the setting, never the token.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let given = |name: &str| {
            var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                format!(
                    "{name} is not set: the approval server runs inside a run, which its worker \
                     configures"
                )
            })
        };
        let tools = serde_json::from_str(&given(TOOLS_SETTING)?)
            .map_err(|err| format!("{TOOLS_SETTING} is not a JSON array of names: {err}"))?;
        let timeout = whole_number(&var, TIMEOUT_SETTING, 900, 1)?;
        Ok(Self {
            socket: PathBuf::from(given(SOCKET_SETTING)?),
            token: given(TOKEN_SETTING)?,
            tools,
            timeout: Duration::from_secs(timeout),
        })
    }
}

pub struct Approval {
    settings: Settings,
}

/// The CLI's question.
#[derive(Deserialize, JsonSchema)]
struct Question {
    /// The tool the model wants to call.
    tool_name: String,
    /// Its input.
    #[serde(default)]
    input: Value,
    #[serde(default)]
    tool_use_id: Option<String>,
}

impl Approval {
    pub fn new(settings: Settings) -> Self {
        Self { settings }
    }

    pub fn from_settings() -> Result<Self, String> {
        Ok(Self::new(Settings::read(crate::serve::settings()?)?))
    }

    /// The decision on `question`: asked over the socket when the tool is gated, else a denial.
    async fn decide(&self, question: Question) -> Decision {
        if !gated(&self.settings.tools, &question.tool_name) {
            return Decision {
                allow: false,
                message: format!(
                    "`{}` is not among the tools this job may use; it was not run",
                    question.tool_name
                ),
            };
        }
        let request = SocketRequest {
            token: self.settings.token.clone(),
            approval: Ask {
                tool: question.tool_name,
                input: question.input,
                tool_use_id: question.tool_use_id,
            },
        };
        let wait = self.settings.timeout + ANSWER_MARGIN;
        let answer = tokio::time::timeout(wait, self.exchange(&request))
            .await
            .unwrap_or_else(|_| Err(format!("no decision came within {} s", wait.as_secs())));
        answer.unwrap_or_else(|reason| Decision {
            allow: false,
            message: format!("the call was not approved: {reason}"),
        })
    }

    async fn exchange(&self, request: &SocketRequest) -> Result<Decision, String> {
        crate::serve::ask_run_socket(&self.settings.socket, request, "the worker").await
    }
}

/// The CLI's form of `decision` on a call with `input`.
fn prompt_answer(decision: &Decision, input: Value) -> String {
    match decision.allow {
        true => json!({ "behavior": "allow", "updatedInput": input }),
        false => json!({ "behavior": "deny", "message": decision.message }),
    }
    .to_string()
}

impl Tools for Arc<Approval> {
    fn server(&self) -> &'static FixedServer {
        &APPROVAL
    }

    fn input_schema(&self, _tool: &str) -> Arc<JsonObject> {
        schema::<Question>()
    }

    async fn call(&self, _tool: &str, args: JsonObject) -> CallToolResult {
        // Whatever the CLI sends, the answer is a decision: a question not understood is denied.
        let question = match serde_json::from_value::<Question>(Value::Object(args)) {
            Ok(question) => question,
            Err(err) => {
                let decision = Decision {
                    allow: false,
                    message: format!("the permission question is not understood: {err}"),
                };
                return success(prompt_answer(&decision, Value::Null));
            }
        };
        let input = question.input.clone();
        let decision = self.decide(question).await;
        success(prompt_answer(&decision, input))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::vars;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    fn settings(socket: PathBuf) -> Settings {
        Settings::read(vars(&[
            (SOCKET_SETTING, socket.to_str().unwrap()),
            (TOKEN_SETTING, "tok"),
            (TOOLS_SETTING, r#"["Bash", "mcp__gh__merge*"]"#),
            (TIMEOUT_SETTING, "5"),
        ]))
        .unwrap()
    }

    fn question(tool: &str) -> JsonObject {
        json!({"tool_name": tool, "input": {"command": "ls"}, "tool_use_id": "t1"})
            .as_object()
            .cloned()
            .unwrap()
    }

    fn text(result: &CallToolResult) -> Value {
        let text = result.content[0].as_text().unwrap().text.clone();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn the_tools_setting_is_required_and_read_as_json() {
        let error = Settings::read(vars(&[(SOCKET_SETTING, "/x"), (TOKEN_SETTING, "t")]));
        assert!(error.unwrap_err().contains(TOOLS_SETTING));
        let error = Settings::read(vars(&[
            (SOCKET_SETTING, "/x"),
            (TOKEN_SETTING, "t"),
            (TOOLS_SETTING, "Bash"),
        ]));
        assert!(error.unwrap_err().contains("JSON array"));
    }

    #[tokio::test]
    async fn a_gated_call_is_asked_on_the_socket_and_others_are_denied_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                BufReader::new(read).read_line(&mut line).await.unwrap();
                let request: SocketRequest = serde_json::from_str(&line).unwrap();
                let allow = request.approval.tool == "Bash";
                record.lock().unwrap().push(request);
                let decision = Decision {
                    allow,
                    message: "operator said no".into(),
                };
                let mut reply = serde_json::to_vec(&decision).unwrap();
                reply.push(b'\n');
                write.write_all(&reply).await.unwrap();
            }
        });
        let server = Arc::new(Approval::new(settings(path)));
        let allowed = server
            .call(crate::approval_wire::TOOL, question("Bash"))
            .await;
        assert_eq!(
            text(&allowed),
            json!({"behavior": "allow", "updatedInput": {"command": "ls"}})
        );
        let denied = server.call("decide", question("mcp__gh__merge_pr")).await;
        assert_eq!(
            text(&denied),
            json!({"behavior": "deny", "message": "operator said no"})
        );
        let not_gated = server.call("decide", question("Write")).await;
        assert_eq!(text(&not_gated)["behavior"], "deny");
        assert!(text(&not_gated)["message"]
            .as_str()
            .unwrap()
            .contains("not among the tools"));
        let asked = seen.lock().unwrap();
        assert_eq!(asked.len(), 2, "only the gated calls reach the socket");
        assert_eq!(asked[0].token, "tok");
        assert_eq!(asked[0].approval.tool_use_id.as_deref(), Some("t1"));
    }

    #[tokio::test]
    async fn an_unreachable_worker_is_a_denial() {
        let dir = tempfile::tempdir().unwrap();
        let server = Arc::new(Approval::new(settings(dir.path().join("none.sock"))));
        let result = server.call("decide", question("Bash")).await;
        assert_eq!(text(&result)["behavior"], "deny");
        assert!(text(&result)["message"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"));
    }
}
