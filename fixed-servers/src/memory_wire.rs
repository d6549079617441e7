//! What the `memory` server asks for and is answered, wherever the question travels: from the
//! server to the worker over the run's memory socket (one JSON line each way, with the run's
//! token), then from the worker to the control plane, which keeps each job's memory in its
//! store. The worker only checks the token and relays; the control plane reads these types.

use serde::{Deserialize, Serialize};

/// The server's name in the catalog.
pub const SERVER: &str = "memory";
/// The socket's file name, in the run's MCP configuration directory.
pub const SOCKET_FILE: &str = "memory.sock";
/// The settings through which the worker tells the server its socket and token (not the
/// operator's to set: the catalog does not list them).
pub const SOCKET_SETTING: &str = "MEMORY_SOCKET";
pub const TOKEN_SETTING: &str = "MEMORY_TOKEN";

/// Longest key, in characters.
pub const MAX_KEY_CHARS: usize = 200;
/// Largest value, in bytes of UTF-8.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most entries one job (or webhook) keeps.
pub const MAX_ENTRIES: u32 = 1000;
/// Most entries a `list` answers with.
pub const LIST_LIMIT: u32 = 200;
/// Most entries a `search` answers with.
pub const SEARCH_LIMIT: u32 = 20;
/// Longest line read on the socket: a request with the largest value, escaped, fits.
pub const MAX_LINE_BYTES: usize = 8 * MAX_VALUE_BYTES;

/// One operation on the memory of the run's job.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MemoryOp {
    Get {
        key: String,
    },
    /// Creates or replaces.
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Keys (without values), most recently written first.
    List {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
    },
    /// Entries whose key or value contains `query` (case-insensitive for ASCII), most recently
    /// written first.
    Search {
        query: String,
    },
}

impl MemoryOp {
    /// Checks the key and value against the limits; the error says what to change.
    pub fn check(&self) -> Result<(), String> {
        match self {
            MemoryOp::Get { key } | MemoryOp::Delete { key } => check_key(key),
            MemoryOp::Put { key, value } => {
                check_key(key)?;
                if value.len() > MAX_VALUE_BYTES {
                    return Err(format!(
                        "the value is {} bytes; a memory entry holds at most 64 KiB \
                         ({MAX_VALUE_BYTES} bytes): keep a summary, or split it over several \
                         keys",
                        value.len()
                    ));
                }
                Ok(())
            }
            MemoryOp::List { prefix } => match prefix.as_deref() {
                Some(prefix) if prefix.chars().count() > MAX_KEY_CHARS => {
                    Err(format!("a prefix is at most {MAX_KEY_CHARS} characters"))
                }
                _ => Ok(()),
            },
            MemoryOp::Search { query } => {
                if query.trim().is_empty() {
                    return Err("the search query is empty".to_owned());
                }
                if query.chars().count() > MAX_KEY_CHARS {
                    return Err(format!(
                        "a search query is at most {MAX_KEY_CHARS} characters"
                    ));
                }
                Ok(())
            }
        }
    }

    /// Only reads.
    pub fn reads_only(&self) -> bool {
        !matches!(self, MemoryOp::Put { .. } | MemoryOp::Delete { .. })
    }
}

/// A key: 1 to [`MAX_KEY_CHARS`] characters, none of them a control character.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err("the key is empty; name the entry, e.g. `last-report`".to_owned());
    }
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(format!("a key is at most {MAX_KEY_CHARS} characters"));
    }
    if key.chars().any(char::is_control) {
        return Err("a key has no control characters (newlines, tabs)".to_owned());
    }
    Ok(())
}

/// One entry; `value` is left out of a list.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MemoryEntry {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value's size in bytes.
    pub bytes: u64,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

/// The answer to a [`MemoryOp`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum MemoryAnswer {
    /// To `get`: the entry, if there is one.
    Entry { entry: Option<MemoryEntry> },
    /// To `list` and `search`; `more` when there were more than were sent.
    Entries {
        entries: Vec<MemoryEntry>,
        more: bool,
    },
    /// To `put`: whether the key is new, and how many entries the memory now holds.
    Stored { created: bool, entries: u64 },
    /// To `delete`.
    Deleted { existed: bool },
    /// The operation was not done: why, in words for the model.
    Refused { reason: String },
}

/// What the server writes on the socket: the run's token and the operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketRequest {
    pub token: String,
    pub op: MemoryOp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_read_as_tagged_json_and_unknown_fields_are_refused() {
        let op: MemoryOp =
            serde_json::from_str(r#"{"op": "put", "key": "k", "value": "v"}"#).unwrap();
        assert_eq!(
            op,
            MemoryOp::Put {
                key: "k".into(),
                value: "v".into()
            }
        );
        assert!(!op.reads_only());
        assert!(serde_json::from_str::<MemoryOp>(r#"{"op": "get", "key": "k", "x": 1}"#).is_err());
        let list: MemoryOp = serde_json::from_str(r#"{"op": "list"}"#).unwrap();
        assert_eq!(list, MemoryOp::List { prefix: None });
        assert!(list.reads_only());
    }

    #[test]
    fn keys_values_and_queries_are_checked_against_the_limits() {
        assert!(check_key("reports/2026-12").is_ok());
        assert!(check_key(" ").unwrap_err().contains("empty"));
        assert!(check_key("a\nb").unwrap_err().contains("control"));
        assert!(check_key(&"k".repeat(MAX_KEY_CHARS + 1))
            .unwrap_err()
            .contains("at most"));
        let big = MemoryOp::Put {
            key: "k".into(),
            value: "v".repeat(MAX_VALUE_BYTES + 1),
        };
        assert!(big.check().unwrap_err().contains("split it"));
        let empty = MemoryOp::Search { query: "  ".into() };
        assert!(empty.check().unwrap_err().contains("empty"));
    }
}
