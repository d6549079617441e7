//! The `memory` server: a small document store per job, kept by the control plane, so that a run
//! can read what an earlier run of the same job wrote ("what did I send last week?") on
//! whichever worker it lands.
//!
//! The server never reaches the store itself. The worker gives it a Unix socket in the run's
//! MCP configuration directory and a token (both in its settings file, deleted once read); each
//! call is one JSON line there ([`crate::memory_wire::SocketRequest`]) and one line back. The
//! worker checks the token and relays the operation to the control plane with the run's
//! identity, so which job's memory a run reaches is decided there, not here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolResult, JsonObject};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::catalog::{FixedServer, MEMORY};
use crate::memory_wire::{
    MemoryAnswer, MemoryEntry, MemoryOp, SocketRequest, SOCKET_SETTING, TOKEN_SETTING,
};
use crate::serve::{arguments, failure, schema, success, whole_number, Quota, Tools};

const DEFAULT_MAX_WRITES_PER_RUN: u64 = 50;
/// For one operation: the worker relays it to the control plane and back.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Of each value a search shows, at most this many characters.
const SEARCH_VALUE_CHARS: usize = 2_000;

#[derive(Debug)]
pub struct Settings {
    pub socket: PathBuf,
    pub token: String,
    pub max_writes: u32,
}

impl Settings {
    /// Reads the settings through `var`; an error names the setting, never the token.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let given = |name: &str| {
            var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                format!(
                    "{name} is not set: the memory server runs inside a run, which its worker \
                     gives a memory socket"
                )
            })
        };
        let max_writes = whole_number(
            &var,
            "MEMORY_MAX_WRITES_PER_RUN",
            DEFAULT_MAX_WRITES_PER_RUN,
            0,
        )?;
        Ok(Self {
            socket: PathBuf::from(given(SOCKET_SETTING)?),
            token: given(TOKEN_SETTING)?,
            max_writes: u32::try_from(max_writes).unwrap_or(u32::MAX),
        })
    }
}

pub struct Memory {
    settings: Settings,
    writes: Quota,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Key {
    /// The entry's key, e.g. `reports/last-sent`.
    key: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Put {
    /// The entry's key (at most 200 characters), e.g. `reports/last-sent`.
    key: String,
    /// What to keep: text, at most 64 KiB (JSON is fine).
    value: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct List {
    /// Only the keys that start with this.
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Search {
    /// Text to look for in keys and values (case is ignored).
    query: String,
}

impl Memory {
    pub fn new(settings: Settings) -> Self {
        Self {
            writes: Quota::new(settings.max_writes),
            settings,
        }
    }

    /// The server as its settings (see [`crate::serve::settings`]) describe it.
    pub fn from_settings() -> Result<Self, String> {
        Ok(Self::new(Settings::read(crate::serve::settings()?)?))
    }

    /// Sends `op` to the worker and reads its answer.
    async fn ask(&self, op: MemoryOp) -> Result<MemoryAnswer, String> {
        op.check()?;
        let writes = !op.reads_only();
        if writes && self.writes.take().is_none() {
            return Err(format!(
                "this run has made its {} writes to memory (MEMORY_MAX_WRITES_PER_RUN); nothing \
                 was changed",
                self.writes.max
            ));
        }
        let request = SocketRequest {
            token: self.settings.token.clone(),
            op,
        };
        let answer = tokio::time::timeout(CALL_TIMEOUT, self.exchange(&request))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the memory store did not answer within {} s",
                    CALL_TIMEOUT.as_secs()
                ))
            });
        match answer {
            Ok(MemoryAnswer::Refused { reason }) => {
                if writes {
                    self.writes.give_back();
                }
                Err(reason)
            }
            Ok(answer) => Ok(answer),
            Err(err) => {
                if writes {
                    self.writes.give_back();
                }
                Err(err)
            }
        }
    }

    async fn exchange(&self, request: &SocketRequest) -> Result<MemoryAnswer, String> {
        crate::serve::ask_run_socket(
            &self.settings.socket,
            request,
            "the memory store (through the worker)",
        )
        .await
    }

    async fn call_op(&self, op: MemoryOp) -> CallToolResult {
        match self.ask(op).await {
            Ok(answer) => success(self.describe(answer)),
            Err(reason) => failure(reason),
        }
    }

    fn describe(&self, answer: MemoryAnswer) -> String {
        match answer {
            MemoryAnswer::Entry { entry: None } => "No entry under that key.".to_owned(),
            MemoryAnswer::Entry { entry: Some(entry) } => format!(
                "{} (written {}, {} bytes):\n{}",
                entry.key,
                entry.updated_at,
                entry.bytes,
                entry.value.unwrap_or_default()
            ),
            MemoryAnswer::Entries { entries, more } => entries_text(&entries, more),
            MemoryAnswer::Stored { created, entries } => format!(
                "{} The memory holds {entries} entries. Writes this run may still make: {}.",
                match created {
                    true => "Stored a new entry.",
                    false => "Replaced the entry.",
                },
                self.writes.left()
            ),
            MemoryAnswer::Deleted { existed: true } => "Deleted the entry.".to_owned(),
            MemoryAnswer::Deleted { existed: false } => {
                "There was no entry under that key; nothing changed.".to_owned()
            }
            MemoryAnswer::Refused { reason } => reason,
        }
    }
}

fn entries_text(entries: &[MemoryEntry], more: bool) -> String {
    if entries.is_empty() {
        return "No entries.".to_owned();
    }
    let mut text = String::new();
    for entry in entries {
        text.push_str(&format!(
            "- {} ({} bytes, written {})",
            entry.key, entry.bytes, entry.updated_at
        ));
        if let Some(value) = &entry.value {
            let shown: String = value.chars().take(SEARCH_VALUE_CHARS).collect();
            let cut = match shown.len() < value.len() {
                true => " […]",
                false => "",
            };
            text.push_str(&format!(":\n  {}{cut}", shown.replace('\n', "\n  ")));
        }
        text.push('\n');
    }
    if more {
        text.push_str("(more entries match: narrow the prefix or the query)\n");
    }
    text
}

impl Tools for Arc<Memory> {
    fn server(&self) -> &'static FixedServer {
        &MEMORY
    }

    fn input_schema(&self, tool: &str) -> Arc<JsonObject> {
        match tool {
            "memory_put" => schema::<Put>(),
            "memory_list" => schema::<List>(),
            "memory_search" => schema::<Search>(),
            _ => schema::<Key>(),
        }
    }

    async fn call(&self, tool: &str, args: JsonObject) -> CallToolResult {
        let op = match tool {
            "memory_put" => arguments::<Put>(args).map(|a| MemoryOp::Put {
                key: a.key,
                value: a.value,
            }),
            "memory_list" => arguments::<List>(args).map(|a| MemoryOp::List { prefix: a.prefix }),
            "memory_search" => {
                arguments::<Search>(args).map(|a| MemoryOp::Search { query: a.query })
            }
            "memory_delete" => arguments::<Key>(args).map(|a| MemoryOp::Delete { key: a.key }),
            _ => arguments::<Key>(args).map(|a| MemoryOp::Get { key: a.key }),
        };
        match op {
            Ok(op) => self.call_op(op).await,
            Err(result) => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::vars;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    #[test]
    fn the_socket_and_token_are_required_and_the_token_is_never_shown() {
        let error = Settings::read(vars(&[(SOCKET_SETTING, "/x.sock")])).unwrap_err();
        assert!(error.contains(TOKEN_SETTING), "{error}");
        let settings = Settings::read(vars(&[
            (SOCKET_SETTING, "/x.sock"),
            (TOKEN_SETTING, "tok"),
            ("MEMORY_MAX_WRITES_PER_RUN", "2"),
        ]))
        .unwrap();
        assert_eq!(settings.max_writes, 2);
    }

    /// A socket answering each request line with what `answer` makes of it, recording them.
    async fn socket(
        dir: &std::path::Path,
        answer: fn(&SocketRequest) -> MemoryAnswer,
    ) -> (PathBuf, Arc<std::sync::Mutex<Vec<SocketRequest>>>) {
        let path = dir.join("memory.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                BufReader::new(read).read_line(&mut line).await.unwrap();
                let request: SocketRequest = serde_json::from_str(&line).unwrap();
                let mut reply = serde_json::to_vec(&answer(&request)).unwrap();
                record.lock().unwrap().push(request);
                reply.push(b'\n');
                write.write_all(&reply).await.unwrap();
            }
        });
        (path, seen)
    }

    fn memory(socket: PathBuf, max_writes: u32) -> Arc<Memory> {
        Arc::new(Memory::new(Settings {
            socket,
            token: "run-token".into(),
            max_writes,
        }))
    }

    fn text(result: &CallToolResult) -> String {
        serde_json::to_value(result).unwrap()["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn args(value: serde_json::Value) -> JsonObject {
        value.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn calls_go_over_the_socket_with_the_token_and_writes_count_against_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let (path, seen) = socket(dir.path(), |request| match &request.op {
            MemoryOp::Put { .. } => MemoryAnswer::Stored {
                created: true,
                entries: 1,
            },
            MemoryOp::Get { key } => MemoryAnswer::Entry {
                entry: Some(MemoryEntry {
                    key: key.clone(),
                    value: Some("sent to ada".into()),
                    bytes: 11,
                    updated_at: "2026-12-06T09:00:00Z".into(),
                }),
            },
            _ => MemoryAnswer::Refused {
                reason: "no job".into(),
            },
        })
        .await;
        let memory = memory(path, 1);
        let put = memory
            .call(
                "memory_put",
                args(serde_json::json!({"key": "k", "value": "v"})),
            )
            .await;
        assert_eq!(put.is_error, Some(false), "{}", text(&put));
        assert!(text(&put).contains("Stored a new entry"), "{}", text(&put));
        let again = memory
            .call(
                "memory_put",
                args(serde_json::json!({"key": "k", "value": "v"})),
            )
            .await;
        assert_eq!(again.is_error, Some(true));
        assert!(text(&again).contains("MEMORY_MAX_WRITES_PER_RUN"));
        let got = memory
            .call("memory_get", args(serde_json::json!({"key": "k"})))
            .await;
        assert!(text(&got).contains("sent to ada"), "{}", text(&got));
        let refused = memory
            .call("memory_list", args(serde_json::json!({})))
            .await;
        assert_eq!(refused.is_error, Some(true));
        assert_eq!(text(&refused), "no job");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "the refused write never reached the socket");
        assert!(seen.iter().all(|request| request.token == "run-token"));
    }

    #[tokio::test]
    async fn bad_input_is_answered_before_the_socket_and_a_missing_socket_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let memory = memory(dir.path().join("absent.sock"), 5);
        let empty = memory
            .call("memory_get", args(serde_json::json!({"key": ""})))
            .await;
        assert!(text(&empty).contains("key is empty"), "{}", text(&empty));
        let unknown = memory
            .call("memory_get", args(serde_json::json!({"key": "k", "x": 1})))
            .await;
        assert!(text(&unknown).contains("invalid arguments"));
        let absent = memory
            .call(
                "memory_put",
                args(serde_json::json!({"key": "k", "value": "v"})),
            )
            .await;
        assert!(
            text(&absent).contains("cannot be reached"),
            "{}",
            text(&absent)
        );
        assert_eq!(memory.writes.left(), 5, "a failed write is given back");
    }
}
