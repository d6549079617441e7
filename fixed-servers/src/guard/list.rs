//! `autopilot-mcp-guard --list-tools -- <command> [args…]`: starts a stdio server the way the
//! guard does (its settings from the file, a clean environment), asks it for its tools
//! (`initialize`, then every page of `tools/list`) and prints them as one JSON line,
//! `{"tools": [...]}`, on standard output. `--call-tool <tool> -- <command> [args…]` calls one
//! tool instead, with the `arguments` of the settings file, and prints `{"result": …}` (the
//! credentials the file lists removed). A worker runs it through its executor (in a container
//! on the Docker executor), so a server an operator registers never starts in the control plane.
//! A failure is a message on standard error, with the end of what the server said there.

use std::ffi::OsString;
use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::GuardSettings;

/// Most pages of `tools/list` followed.
const MAX_PAGES: u64 = 20;
const PROTOCOL_VERSION: &str = "2025-06-18";
/// Of what the server wrote on standard error, the last this many characters are told.
const STDERR_TAIL_CHARS: usize = 300;

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

async fn write_line(input: &mut tokio::process::ChildStdin, message: &Value) -> Result<(), String> {
    let line = format!("{message}\n");
    input
        .write_all(line.as_bytes())
        .await
        .map_err(|err| format!("the server exited or stopped reading its input ({err})"))
}

/// The message answering `id`, skipping notifications and anything that is not JSON.
async fn read_answer(output: &mut Lines, id: u64) -> Result<Value, String> {
    loop {
        let Some(line) = output.next_line().await.map_err(|e| e.to_string())? else {
            return Err("the server exited before answering".to_owned());
        };
        if let Ok(message) = serde_json::from_str::<Value>(&line) {
            if message.get("id") == Some(&json!(id)) {
                return Ok(message);
            }
        }
    }
}

/// What a one-shot session asks the server once it is initialized.
pub enum Ask {
    /// Every page of `tools/list`: the tools.
    Tools,
    /// `tools/call` of one tool: its result, as the server gave it (errors included).
    Call { tool: String, arguments: Value },
}

/// Starts `command` and lists its tools.
pub async fn list(settings: GuardSettings, command: Vec<OsString>) -> Result<Vec<Value>, String> {
    let answer = once(settings, command, Ask::Tools).await?;
    Ok(answer.as_array().cloned().unwrap_or_default())
}

/// Starts `command`, initializes it and asks it `ask`: the tools (an array), or the call's
/// result.
pub async fn once(
    settings: GuardSettings,
    command: Vec<OsString>,
    ask: Ask,
) -> Result<Value, String> {
    let mut child = super::server_process(&command, &settings.env, Stdio::piped())?
        .spawn()
        .map_err(|err| {
            format!(
                "cannot start `{}` where runs execute: {err}",
                command[0].to_string_lossy()
            )
        })?;
    let mut input = child.stdin.take().ok_or("no stdin")?;
    let mut output: Lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let answered = async {
        let initialize = json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": { "name": "autopilot-guard", "version": env!("CARGO_PKG_VERSION") } } });
        write_line(&mut input, &initialize).await?;
        read_answer(&mut output, 0).await?;
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        write_line(&mut input, &initialized).await?;
        match ask {
            Ask::Tools => {
                let mut tools = Vec::new();
                let mut cursor: Option<String> = None;
                for page in 1..=MAX_PAGES {
                    let params = match &cursor {
                        Some(cursor) => json!({ "cursor": cursor }),
                        None => json!({}),
                    };
                    let request = json!({ "jsonrpc": "2.0", "id": page, "method": "tools/list", "params": params });
                    write_line(&mut input, &request).await?;
                    let (more, next) = crate::listing::page_of(&read_answer(&mut output, page).await?)?;
                    tools.extend(more);
                    match next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                Ok::<_, String>(Value::Array(tools))
            }
            Ask::Call { tool, arguments } => {
                let request = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                      "params": { "name": tool, "arguments": arguments } });
                write_line(&mut input, &request).await?;
                let answer = read_answer(&mut output, 1).await?;
                if let Some(error) = answer.get("error") {
                    return Err(format!("the server refused the call: {error}"));
                }
                answer
                    .get("result")
                    .cloned()
                    .ok_or_else(|| "the server's answer to tools/call holds no result".to_owned())
            }
        }
    }
    .await;
    drop(input);
    let _ = child.kill().await;
    answered.map_err(|err| {
        let mut said = Vec::new();
        let _ = futures_now(stderr.read_to_end(&mut said));
        let said = String::from_utf8_lossy(&said);
        let said = said.trim();
        if said.is_empty() {
            return err;
        }
        let skip = said.chars().count().saturating_sub(STDERR_TAIL_CHARS);
        format!(
            "{err}; it said: {}",
            said.chars().skip(skip).collect::<String>()
        )
    })
}

/// Runs `future` if it is ready now (what a killed server left on its standard error).
fn futures_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_program_that_does_not_exist_is_named() {
        let error = list(
            GuardSettings::default(),
            vec!["/nonexistent/mcp-server".into()],
        )
        .await
        .unwrap_err();
        assert!(error.contains("/nonexistent/mcp-server"), "{error}");
    }

    #[tokio::test]
    async fn a_server_that_exits_at_once_is_told_with_what_it_said() {
        let error = list(
            GuardSettings::default(),
            vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo 'missing API_KEY' >&2; exit 3".into(),
            ],
        )
        .await
        .unwrap_err();
        assert!(
            error.contains("exited") || error.contains("stopped reading"),
            "{error}"
        );
    }
}
