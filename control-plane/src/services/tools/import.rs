//! Importing a `.mcp.json` document (the format Claude Code and other clients read): each server
//! is registered, and the credentials written into it in plain text are detected (a header or
//! variable whose name says it holds a secret), moved into the vault (or, if the caller says
//! not to, replaced by a placeholder and listed as missing), and never stored in the server.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::servers::{names_a_secret, register_server, ServerInput, ServerView};
use crate::app::App;
use crate::domain::tools::{placeholders, validate_credential_name, Transport};
use crate::domain::{ServiceError, ServiceResult};

/// A `.mcp.json` document to import.
#[derive(Deserialize, Serialize, Debug, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportInput {
    /// The document: `{"mcpServers": {"name": {"command": …, "args": […], "env": {…}} |
    /// {"type": "http", "url": …, "headers": {…}}}}`.
    pub document: Value,
    /// Store the credentials found written in plain text in the vault (default true); false
    /// replaces them with placeholders, listed as missing, and stores nothing.
    #[serde(default)]
    pub store_credentials: Option<bool>,
}

/// What became of one server of the document.
#[derive(Serialize, Debug)]
pub struct Imported {
    pub name: String,
    /// The registered server, or why it was not registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Credentials found in plain text, by the name they now have (values never shown).
    pub detected_credentials: Vec<String>,
}

/// Turns `${VAR}` and `${VAR:-default}` (the clients' expansion) into Autopilot's `${VAR}`.
fn normalise(text: &str) -> String {
    let mut out = text.to_owned();
    for name in placeholders(text) {
        if let Some((base, _default)) = name.split_once(":-") {
            out = out.replace(&format!("${{{name}}}"), &format!("${{{base}}}"));
        }
    }
    out
}

/// A credential's name for `key` of `server`: the key itself when it is a valid name (an
/// environment variable usually is), else `SERVER_KEY` in upper case.
fn credential_name(server: &str, key: &str) -> String {
    if validate_credential_name("", key).is_ok() {
        return key.to_owned();
    }
    let mut name: String = format!("{server}_{key}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_uppercase()) {
        name.insert_str(0, "MCP_");
    }
    name.truncate(64);
    name
}

/// The entries of a map, each secret-looking plain value replaced by a placeholder; returns the
/// (credential name, value) pairs taken out.
fn take_secrets(server: &str, map: &mut BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut taken = Vec::new();
    for (key, value) in map.iter_mut() {
        *value = normalise(value);
        if names_a_secret(key) && placeholders(value).is_empty() && !value.is_empty() {
            let name = credential_name(server, key);
            // A header such as `Authorization: Bearer abc` keeps its scheme in the server.
            let (prefix, secret) = match value.split_once(' ') {
                Some((scheme, rest)) if matches!(scheme, "Bearer" | "Basic" | "Token") => {
                    (format!("{scheme} "), rest.to_owned())
                }
                _ => (String::new(), value.clone()),
            };
            taken.push((name.clone(), secret));
            *value = format!("{prefix}${{{name}}}");
        }
    }
    taken
}

fn string_map(value: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    match value {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Ok((k.clone(), other.to_string())),
            })
            .collect(),
        Some(_) => Err("`env` and `headers` must be objects".to_owned()),
    }
}

/// One entry of `mcpServers` as a transport, with the secrets taken out of it.
fn transport_of(name: &str, entry: &Value) -> Result<(Transport, Vec<(String, String)>), String> {
    let kind = entry.get("type").and_then(Value::as_str);
    match (kind, entry.get("command"), entry.get("url")) {
        (None | Some("stdio"), Some(Value::String(command)), _) => {
            let args = match entry.get("args") {
                None => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| item.as_str().map(normalise).ok_or("`args` must be strings"))
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err("`args` must be an array".to_owned()),
            };
            let mut env = string_map(entry.get("env"))?;
            let taken = take_secrets(name, &mut env);
            let transport = Transport::Stdio {
                command: normalise(command),
                args,
                env,
            };
            Ok((transport, taken))
        }
        (Some("http" | "sse") | None, _, Some(Value::String(url))) => {
            let mut headers = string_map(entry.get("headers"))?;
            let taken = take_secrets(name, &mut headers);
            let transport = Transport::Http {
                url: normalise(url),
                headers,
            };
            Ok((transport, taken))
        }
        _ => Err("neither a `command` (stdio) nor a `url` (http) server".to_owned()),
    }
}

pub async fn import(app: &App, input: ImportInput) -> ServiceResult<Vec<Imported>> {
    let store = input.store_credentials.unwrap_or(true);
    let Some(servers) = input.document.get("mcpServers").and_then(Value::as_object) else {
        return Err(ServiceError::invalid(
            "document",
            "a .mcp.json document has an `mcpServers` object",
        ));
    };
    let mut results = Vec::with_capacity(servers.len());
    for (name, entry) in servers {
        let mut result = Imported {
            name: name.clone(),
            server: None,
            error: None,
            detected_credentials: Vec::new(),
        };
        let (transport, taken) = match transport_of(name, entry) {
            Ok(parts) => parts,
            Err(error) => {
                result.error = Some(error);
                results.push(result);
                continue;
            }
        };
        result.detected_credentials = taken.iter().map(|(n, _)| n.clone()).collect();
        if store {
            for (credential, value) in &taken {
                super::set_credential(app, credential, value).await?;
            }
        }
        let input = ServerInput {
            name: name.clone(),
            description: None,
            transport,
            tools: Vec::new(),
        };
        match register_server(app, input).await {
            Ok(view) => result.server = Some(view),
            Err(ServiceError::Invalid { field, message }) => {
                result.error = Some(format!("{field}: {message}"))
            }
            Err(ServiceError::Conflict(message)) => result.error = Some(message),
            Err(other) => return Err(other),
        }
        results.push(result);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_credentials_are_taken_out_and_placeholders_kept() {
        let (transport, taken) = transport_of(
            "github",
            &json!({ "command": "npx", "args": ["-y", "server-github"],
                     "env": { "GITHUB_TOKEN": "ghp_abc123", "LOG_LEVEL": "info", "API_KEY": "${KEY:-dev}" } }),
        )
        .unwrap();
        assert_eq!(
            taken,
            [("GITHUB_TOKEN".to_owned(), "ghp_abc123".to_owned())]
        );
        let Transport::Stdio { env, .. } = transport else {
            panic!()
        };
        assert_eq!(env["GITHUB_TOKEN"], "${GITHUB_TOKEN}");
        assert_eq!(env["LOG_LEVEL"], "info");
        assert_eq!(env["API_KEY"], "${KEY}");

        let (transport, taken) = transport_of(
            "linear",
            &json!({ "type": "http", "url": "https://mcp.linear.app/mcp",
                     "headers": { "Authorization": "Bearer lin_api_x" } }),
        )
        .unwrap();
        assert_eq!(
            taken,
            [("LINEAR_AUTHORIZATION".to_owned(), "lin_api_x".to_owned())]
        );
        let Transport::Http { headers, .. } = transport else {
            panic!()
        };
        assert_eq!(headers["Authorization"], "Bearer ${LINEAR_AUTHORIZATION}");
        assert!(transport_of("x", &json!({ "args": [] })).is_err());
    }
}
