//! The MCP servers of a Claude run on the worker: the `--mcp-config` file made from the servers
//! granted to the run with their credentials filled in, the check that each of them connected,
//! and the redaction of those credentials from everything the run reports.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};

use autopilot_proto::{McpServerSpec, McpTransport, Secrets};
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Map, Value};

/// Values shorter than this are not redacted: they would match ordinary text everywhere, and a
/// credential that short is no secret.
const MIN_REDACTED_BYTES: usize = 6;

/// Fills `${NAME}` placeholders of `text` from `secrets`; the first name missing is the error.
fn fill(text: &str, secrets: &Secrets) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        let value = secrets.get(name).ok_or_else(|| name.to_owned())?;
        out.push_str(&rest[..start]);
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Names the variable through which a fixed server finds its settings file.
pub const SETTINGS_FILE_VAR: &str = "AUTOPILOT_SETTINGS_FILE";

/// A run's MCP configuration: the CLI's `--mcp-config` document and, for each fixed server, a
/// settings file (its name in the configuration's directory, and its JSON), which the server
/// reads once and deletes. A fixed server's settings (and the credentials in them) are so never
/// in the document nor in any process's environment.
#[derive(Debug)]
pub struct McpFiles {
    pub document: Value,
    pub settings: Vec<(String, Vec<u8>)>,
}

/// The MCP configuration of `servers`, credentials filled in, fixed servers run by
/// `fixed_program` and finding their settings files in `dir_in_run` (the configuration's
/// directory as the run sees it). A credential the control plane did not send is an error
/// naming it and its server.
pub fn config(
    servers: &[McpServerSpec],
    secrets: &Secrets,
    fixed_program: &str,
    dir_in_run: &str,
) -> Result<McpFiles, String> {
    let mut entries = Map::new();
    let mut settings = Vec::new();
    for server in servers {
        let fill = |text: &str| {
            fill(text, secrets).map_err(|name| {
                format!(
                    "the credential `{name}` used by MCP server `{}` is not set; set it with \
                     set_credential (or PUT /api/v1/credentials/{name})",
                    server.name
                )
            })
        };
        let entry = match &server.transport {
            McpTransport::Stdio { command, args, env } => {
                let env: Map<String, Value> = env
                    .iter()
                    .map(|(name, value)| Ok((name.clone(), Value::String(fill(value)?))))
                    .collect::<Result<_, String>>()?;
                let args: Vec<String> = args.iter().map(|a| fill(a)).collect::<Result<_, _>>()?;
                json!({ "type": "stdio", "command": fill(command)?, "args": args, "env": env })
            }
            McpTransport::Http { url, headers } => {
                let headers: Map<String, Value> = headers
                    .iter()
                    .map(|(name, value)| Ok((name.clone(), Value::String(fill(value)?))))
                    .collect::<Result<_, String>>()?;
                json!({ "type": "http", "url": fill(url)?, "headers": headers })
            }
            McpTransport::Fixed { server: fixed, env } => {
                let values: Map<String, Value> = env
                    .iter()
                    .map(|(name, value)| Ok((name.clone(), Value::String(fill(value)?))))
                    .collect::<Result<_, String>>()?;
                let file = format!("{}.settings.json", server.name);
                settings.push((file.clone(), Value::Object(values).to_string().into_bytes()));
                let env = json!({ SETTINGS_FILE_VAR: format!("{dir_in_run}/{file}") });
                json!({ "type": "stdio", "command": fixed_program, "args": [fixed], "env": env })
            }
        };
        entries.insert(server.name.clone(), entry);
    }
    Ok(McpFiles {
        document: json!({ "mcpServers": entries }),
        settings,
    })
}

/// The directory of one attempt's MCP configuration (`mcp.json` and the fixed servers' settings
/// files), which only this process's user can read (the Docker executor hands it to the run's
/// user), removed when dropped.
pub struct ConfigFile {
    dir: tempfile::TempDir,
}

impl ConfigFile {
    pub fn create() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("autopilot-mcp-")
            .tempdir()?;
        Ok(Self { dir })
    }

    pub fn write(&self, files: &McpFiles) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let write = |name: &str, bytes: &[u8]| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.dir.path().join(name))?
                .write_all(bytes)
        };
        for (name, bytes) in &files.settings {
            write(name, bytes)?;
        }
        write("mcp.json", files.document.to_string().as_bytes())
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mcp.json")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The servers of `servers` that the CLI's `system/init` line does not list as `connected`,
/// each with its status (`failed`, `pending`, or missing).
pub fn not_connected(init: &Value, servers: &[McpServerSpec]) -> Vec<String> {
    let listed = init
        .get("mcp_servers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    servers
        .iter()
        .filter_map(|server| {
            let status = listed
                .iter()
                .find(|entry| entry.get("name").and_then(Value::as_str) == Some(&server.name))
                .and_then(|entry| entry.get("status").and_then(Value::as_str))
                .unwrap_or("missing");
            (status != "connected").then(|| format!("`{}` ({status})", server.name))
        })
        .collect()
}

/// Replaces a run's credential values, and their base64 and URL-encoded forms, with
/// `[redacted NAME]` in the text of events and results.
#[derive(Default)]
pub struct Redactor {
    /// (form of a value, what replaces it), longest first so that no form is cut by a shorter.
    needles: Vec<(String, String)>,
}

impl Redactor {
    pub fn new(secrets: &Secrets) -> Self {
        let mut needles = Vec::new();
        for (name, value) in secrets {
            if value.len() < MIN_REDACTED_BYTES {
                continue;
            }
            let label = format!("[redacted {name}]");
            let url_encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
            let forms = [
                value.clone(),
                STANDARD.encode(value),
                URL_SAFE.encode(value),
                URL_SAFE_NO_PAD.encode(value),
                // Padding may be cut off where the encoded value is embedded in longer text.
                STANDARD.encode(value).trim_end_matches('=').to_owned(),
                url_encoded,
            ];
            for form in forms {
                if !needles.iter().any(|(known, _)| known == &form) {
                    needles.push((form, label.clone()));
                }
            }
        }
        needles.sort_by_key(|(form, _)| std::cmp::Reverse(form.len()));
        Self { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for (form, label) in &self.needles {
            if text.contains(form.as_str()) {
                text = Cow::Owned(text.replace(form.as_str(), label));
            }
        }
        text
    }

    /// Redacts every string in `value`, keys included.
    pub fn value(&self, value: Value) -> Value {
        if self.is_empty() {
            return value;
        }
        match value {
            Value::String(text) => match self.text(&text) {
                Cow::Borrowed(_) => Value::String(text),
                Cow::Owned(redacted) => Value::String(redacted),
            },
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.value(v)).collect()),
            Value::Object(object) => Value::Object(
                object
                    .into_iter()
                    .map(|(key, v)| (self.text(&key).into_owned(), self.value(v)))
                    .collect(),
            ),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::from([("CRM_TOKEN".to_owned(), "tok/en+secret?1".to_owned())])
    }

    fn servers() -> Vec<McpServerSpec> {
        vec![
            McpServerSpec {
                name: "crm".into(),
                transport: McpTransport::Http {
                    url: "https://crm.example/mcp".into(),
                    headers: [("Authorization".into(), "Bearer ${CRM_TOKEN}".into())].into(),
                },
            },
            McpServerSpec {
                name: "notes".into(),
                transport: McpTransport::Stdio {
                    command: "python3".into(),
                    args: vec!["server.py".into()],
                    env: [("TOKEN".into(), "${CRM_TOKEN}".into())].into(),
                },
            },
        ]
    }

    #[test]
    fn the_config_has_the_credentials_filled_in_and_names_a_missing_one() {
        let document = config(&servers(), &secrets(), "autopilot-servers", "/run/x")
            .unwrap()
            .document;
        assert_eq!(
            document["mcpServers"]["crm"]["headers"]["Authorization"],
            "Bearer tok/en+secret?1"
        );
        assert_eq!(
            document["mcpServers"]["notes"]["env"]["TOKEN"],
            "tok/en+secret?1"
        );
        assert_eq!(document["mcpServers"]["notes"]["type"], "stdio");
        let error = config(&servers(), &Secrets::new(), "autopilot-servers", "/run/x").unwrap_err();
        assert!(
            error.contains("`CRM_TOKEN`") && error.contains("`crm`"),
            "{error}"
        );
    }

    #[test]
    fn a_fixed_servers_settings_go_in_a_file_of_their_own_not_the_document() {
        let mut servers = servers();
        servers.push(McpServerSpec {
            name: "mail".into(),
            transport: McpTransport::Fixed {
                server: "email".into(),
                env: [(
                    "EMAIL_SMTP_URL".into(),
                    "smtp://bot:${CRM_TOKEN}@mail.example".into(),
                )]
                .into(),
            },
        });
        let files = config(&servers, &secrets(), "/opt/autopilot-servers", "/run/x").unwrap();
        let mail = &files.document["mcpServers"]["mail"];
        assert_eq!(mail["command"], "/opt/autopilot-servers");
        assert_eq!(mail["args"], json!(["email"]));
        assert_eq!(
            mail["env"],
            json!({ SETTINGS_FILE_VAR: "/run/x/mail.settings.json" })
        );
        assert!(!mail.to_string().contains("tok/en"), "{mail}");
        assert_eq!(files.settings.len(), 1);
        let (name, bytes) = &files.settings[0];
        assert_eq!(name, "mail.settings.json");
        let settings: Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(
            settings["EMAIL_SMTP_URL"],
            "smtp://bot:tok/en+secret?1@mail.example"
        );
    }

    #[test]
    fn servers_not_connected_are_named_with_their_status() {
        let init = json!({ "mcp_servers": [
            { "name": "crm", "status": "connected" },
            { "name": "notes", "status": "failed" },
        ]});
        assert_eq!(not_connected(&init, &servers()), ["`notes` (failed)"]);
        assert_eq!(
            not_connected(&json!({}), &servers()),
            ["`crm` (missing)", "`notes` (missing)"]
        );
    }

    #[test]
    fn every_form_of_a_credential_is_redacted() {
        let redactor = Redactor::new(&secrets());
        let value = "tok/en+secret?1";
        let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let event = json!({
            "plain": format!("the token is {value}."),
            "nested": [{ "b64": STANDARD.encode(value), "url": format!("?t={encoded}") }],
            value: URL_SAFE_NO_PAD.encode(value),
        });
        let redacted = redactor.value(event).to_string();
        assert!(!redacted.contains("secret"), "{redacted}");
        assert!(!redacted.contains(&STANDARD.encode(value)), "{redacted}");
        assert!(!redacted.contains(&encoded), "{redacted}");
        assert_eq!(
            redacted.matches("[redacted CRM_TOKEN]").count(),
            5,
            "{redacted}"
        );
        // Short values are left alone.
        let short = Redactor::new(&Secrets::from([("PIN".to_owned(), "1234".to_owned())]));
        assert!(short.is_empty());
    }
}
