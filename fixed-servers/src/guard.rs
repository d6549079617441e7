//! `autopilot-mcp-guard`: stands between the Claude Code CLI and an MCP server that is not one of
//! Autopilot's own. It reads the server's settings once from the file the worker wrote (then
//! deletes it), starts the server with a clean environment holding only those settings (and a
//! few harmless variables such as `PATH`), and relays the newline-delimited JSON-RPC of the
//! stdio transport both ways, with three changes:
//!
//! - a `tools/list` answer lists only the tools granted to the run;
//! - a `tools/call` of any other tool is answered by the guard with an error, and never reaches
//!   the server;
//! - every credential value the server was given (and its base64 and URL-encoded forms) is
//!   removed from what the server answers, so the model never reads one.
//!
//! In front of a remote server ([`remote`]) it relays stdio to HTTP the same way, adding the
//! server's headers (its `env` here) itself.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::process::Stdio;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::redact::Redactor;

pub mod list;
pub mod remote;

/// What the worker gives the guard in its settings file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct GuardSettings {
    /// The server's environment (credentials filled in); for a remote server, its HTTP headers.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The tools granted to the run (the server's own names, not the CLI's); one ending in `*`
    /// grants every tool whose name starts with what comes before it.
    #[serde(default)]
    pub allow: Vec<String>,
    /// The credential values among `env`'s, by name, to remove from answers.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// A remote server's URL (credentials filled in), when the guard stands in front of one.
    #[serde(default)]
    pub url: Option<String>,
    /// The arguments of the one call `--call-tool` makes.
    #[serde(default)]
    pub arguments: Option<serde_json::Value>,
}

/// What becomes of a line the client sent.
#[derive(Debug, PartialEq)]
pub enum FromClient {
    /// Sent on to the server as it is.
    Forward,
    /// Answered by the guard with this line.
    Answer(String),
}

/// The guard's decisions on each line, apart from the I/O.
pub struct Filter {
    allow: Vec<String>,
    redactor: Redactor,
    /// Ids of `tools/list` requests whose answers are still to come.
    listing: HashSet<String>,
}

impl Filter {
    pub fn new(settings: &GuardSettings) -> Self {
        Self {
            allow: settings.allow.clone(),
            redactor: Redactor::new(&settings.secrets),
            listing: HashSet::new(),
        }
    }

    fn granted(&self, tool: &str) -> bool {
        self.allow
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => tool.starts_with(prefix),
                None => pattern == tool,
            })
    }

    pub fn from_client(&mut self, line: &str) -> FromClient {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            return FromClient::Forward;
        };
        let id = message.get("id").map(Value::to_string);
        match (message.get("method").and_then(Value::as_str), id) {
            (Some("tools/list"), Some(id)) => {
                self.listing.insert(id);
                FromClient::Forward
            }
            (Some("tools/call"), Some(_)) => {
                let tool = message
                    .pointer("/params/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if self.granted(tool) {
                    return FromClient::Forward;
                }
                let answer = json!({
                    "jsonrpc": "2.0",
                    "id": message["id"],
                    "result": {
                        "content": [{ "type": "text", "text": format!("the tool `{tool}` is not granted to this run") }],
                        "isError": true,
                    },
                });
                FromClient::Answer(answer.to_string())
            }
            _ => FromClient::Forward,
        }
    }

    /// The line to pass on to the client for a line the server sent.
    pub fn from_server(&mut self, line: &str) -> String {
        if self.listing.is_empty() && self.redactor.is_empty() {
            return line.to_owned();
        }
        let Ok(mut message) = serde_json::from_str::<Value>(line) else {
            return self.redactor.text(line).into_owned();
        };
        let answered = message.get("id").map(Value::to_string);
        if answered.is_some_and(|id| self.listing.remove(&id)) {
            if let Some(tools) = message
                .pointer_mut("/result/tools")
                .and_then(Value::as_array_mut)
            {
                let allow = &*self;
                tools.retain(|tool| {
                    tool.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|name| allow.granted(name))
                });
            }
        }
        self.redactor.value(message).to_string()
    }
}

/// The server of `command` (program and arguments) with a clean environment: only
/// [`crate::catalog::GUARD_PASSES_ON`] and `env`; its standard input and output piped, its standard error `stderr`.
pub(crate) fn server_process(
    command: &[OsString],
    env: &BTreeMap<String, String>,
    stderr: Stdio,
) -> Result<tokio::process::Command, String> {
    let Some((program, args)) = command.split_first() else {
        return Err("no server command after `--`".to_owned());
    };
    let mut process = tokio::process::Command::new(program);
    process
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true);
    for name in crate::catalog::GUARD_PASSES_ON {
        if let Some(value) = std::env::var_os(name) {
            process.env(name, value);
        }
    }
    process.envs(env);
    Ok(process)
}

/// Starts `command` under the guard and relays until either side closes; the server's exit
/// code is the guard's.
pub async fn run(settings: GuardSettings, command: Vec<OsString>) -> anyhow::Result<i32> {
    let mut child =
        server_process(&command, &settings.env, Stdio::inherit()).map_err(anyhow::Error::msg)?;
    let mut child = child.spawn().map_err(|err| {
        anyhow::anyhow!(
            "cannot start the server `{}`: {err}",
            command[0].to_string_lossy()
        )
    })?;
    let mut filter = Filter::new(&settings);
    drop(settings);
    let mut server_in = child.stdin.take().expect("piped");
    let mut server_out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut client_in = BufReader::new(tokio::io::stdin()).lines();
    let mut client_out = tokio::io::stdout();
    let mut client_open = true;
    loop {
        tokio::select! {
            line = client_in.next_line(), if client_open => match line? {
                Some(line) => match filter.from_client(&line) {
                    FromClient::Forward => {
                        server_in.write_all(line.as_bytes()).await?;
                        server_in.write_all(b"\n").await?;
                        server_in.flush().await?;
                    }
                    FromClient::Answer(answer) => {
                        client_out.write_all(answer.as_bytes()).await?;
                        client_out.write_all(b"\n").await?;
                        client_out.flush().await?;
                    }
                },
                // The client went away: the server's input closes, and it ends.
                None => {
                    client_open = false;
                    server_in.shutdown().await.ok();
                }
            },
            line = server_out.next_line() => match line? {
                Some(line) => {
                    let line = filter.from_server(&line);
                    client_out.write_all(line.as_bytes()).await?;
                    client_out.write_all(b"\n").await?;
                    client_out.flush().await?;
                }
                None => break,
            },
        }
    }
    let status = child.wait().await?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> Filter {
        Filter::new(&GuardSettings {
            env: BTreeMap::new(),
            allow: vec!["lookup_note".into()],
            secrets: BTreeMap::from([("NOTES_TOKEN".into(), "s3cret-notes".into())]),
            url: None,
            arguments: None,
        })
    }

    #[test]
    fn only_granted_tools_are_listed_and_called() {
        let mut filter = filter();
        let list = r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#;
        assert_eq!(filter.from_client(list), FromClient::Forward);
        let answer = filter.from_server(
            r#"{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"lookup_note"},{"name":"erase_notes"}]}}"#,
        );
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            answer["result"]["tools"],
            json!([{ "name": "lookup_note" }])
        );
        // Another answer with a tools array is left alone: only the listing's is filtered.
        let other =
            filter.from_server(r#"{"jsonrpc":"2.0","id":8,"result":{"tools":[{"name":"x"}]}}"#);
        assert!(other.contains("\"x\""), "{other}");

        let call = r#"{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"erase_notes","arguments":{}}}"#;
        let FromClient::Answer(answer) = filter.from_client(call) else {
            panic!("a call outside the grant must not reach the server");
        };
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["id"], "c1");
        assert_eq!(answer["result"]["isError"], true);
        let granted =
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"lookup_note"}}"#;
        assert_eq!(filter.from_client(granted), FromClient::Forward);
        assert_eq!(
            filter.from_client(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            FromClient::Forward
        );
        let mut prefixed = Filter::new(&GuardSettings {
            allow: vec!["lookup_*".into()],
            ..GuardSettings::default()
        });
        assert!(prefixed.granted("lookup_note") && !prefixed.granted("erase_notes"));
        assert_eq!(prefixed.from_client(granted), FromClient::Forward);
    }

    #[test]
    fn credentials_are_removed_from_what_the_server_answers() {
        let mut filter = filter();
        let answer = filter.from_server(
            r#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"token s3cret-notes"}]}}"#,
        );
        assert!(!answer.contains("s3cret-notes"), "{answer}");
        assert!(answer.contains("[redacted NOTES_TOKEN]"), "{answer}");
        assert_eq!(
            filter.from_server("not json s3cret-notes"),
            "not json [redacted NOTES_TOKEN]"
        );
        // Without credentials and listings, lines pass untouched (not even re-serialized).
        let mut plain = Filter::new(&GuardSettings::default());
        assert_eq!(plain.from_server("{ \"a\":1 }"), "{ \"a\":1 }");
    }
}
