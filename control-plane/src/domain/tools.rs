//! What runs can reach beside the CLI's own tools: MCP servers in a registry, each tool with an
//! access level; grants that give a run a server's tools up to a level; and credentials, the
//! secrets servers use, which the store keeps sealed and which reach a run's servers only.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::{ServiceError, ServiceResult};

/// How much a tool can change, lowest first. A grant allows the tools up to its level.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AccessLevel {
    /// Reads only (`get_…`, `list_…`, `search`).
    #[default]
    Read,
    /// Creates or changes things (send, post, create, update).
    Write,
    /// Changes settings, permissions or many things at once.
    Admin,
    /// Deletes or runs arbitrary code; allowed only by naming the tool in a grant's `allow`.
    Dangerous,
}

impl AccessLevel {
    /// The level of a tool from its MCP annotations and its name, when the operator set none:
    /// annotated read-only is `read`; a name that deletes or executes is `dangerous`; annotated
    /// destructive is `admin`; a name that only reads is `read`; anything else `write`.
    pub fn derive(
        name: &str,
        read_only_hint: Option<bool>,
        destructive_hint: Option<bool>,
    ) -> Self {
        let name = name.to_ascii_lowercase();
        let has = |words: &[&str]| {
            name.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|part| words.contains(&part))
        };
        if read_only_hint == Some(true) {
            return AccessLevel::Read;
        }
        if has(&[
            "delete",
            "drop",
            "destroy",
            "remove",
            "purge",
            "exec",
            "execute",
            "eval",
            "shell",
            "truncate",
            "wipe",
            "erase",
            "kill",
            "terminate",
        ]) {
            return AccessLevel::Dangerous;
        }
        if destructive_hint == Some(true) || has(&["admin", "grant", "revoke", "permission"]) {
            return AccessLevel::Admin;
        }
        if has(&[
            "get", "list", "read", "search", "fetch", "query", "describe", "find", "show", "view",
            "lookup",
        ]) {
            return AccessLevel::Read;
        }
        AccessLevel::Write
    }
}

pub use autopilot_proto::McpTransport as Transport;

/// The credentials a transport names in its placeholders, each once, in order.
pub fn credentials_of(transport: &Transport) -> Vec<String> {
    let texts: Vec<&str> = match transport {
        Transport::Stdio { command, args, env } => std::iter::once(command.as_str())
            .chain(args.iter().map(String::as_str))
            .chain(env.values().map(String::as_str))
            .collect(),
        Transport::Http { url, headers } => std::iter::once(url.as_str())
            .chain(headers.values().map(String::as_str))
            .collect(),
        Transport::Fixed { env, .. } | Transport::Python { env, .. } => {
            env.values().map(String::as_str).collect()
        }
    };
    let mut names: Vec<String> = texts.into_iter().flat_map(placeholders).collect();
    names.sort();
    names.dedup();
    names
}

pub use autopilot_proto::placeholders::names as placeholders;

/// One tool of a server.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerTool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Derived from the tool's annotations and name unless given.
    #[serde(default)]
    pub access: AccessLevel,
}

/// An MCP server in the registry.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct McpServer {
    pub name: String,
    pub description: Option<String>,
    pub transport: Transport,
    pub tools: Vec<ServerTool>,
    /// When `tools` was last read from the server itself (`None`: given by the operator).
    pub tools_listed_at: Option<DateTime<Utc>>,
    /// A remote server Autopilot connected to as an OAuth client: its tokens are credentials
    /// of the vault ([`ServerOAuth::access_credential`], [`ServerOAuth::refresh_credential`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<ServerOAuth>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How Autopilot reaches a remote server's authorization server, as its OAuth client.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ServerOAuth {
    pub client_id: String,
    pub token_endpoint: String,
    /// The server's URL as the tokens' audience (RFC 8707 `resource`).
    pub resource: String,
    /// When the access token in the vault expires (`None`: not connected yet, or no expiry).
    pub expires_at: Option<DateTime<Utc>>,
    pub connected_at: Option<DateTime<Utc>>,
}

impl ServerOAuth {
    fn credential(server: &str, what: &str) -> String {
        format!(
            "OAUTH_{}_{what}",
            server.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// The vault's name for the server's access token: the only token a run is given.
    pub fn access_credential(server: &str) -> String {
        Self::credential(server, "ACCESS_TOKEN")
    }

    /// The vault's name for its refresh token, which never leaves the control plane.
    pub fn refresh_credential(server: &str) -> String {
        Self::credential(server, "REFRESH_TOKEN")
    }

    /// The vault's name for the secret of a client the operator gave.
    pub fn client_secret_credential(server: &str) -> String {
        Self::credential(server, "CLIENT_SECRET")
    }
}

/// Checks a server name: `^[a-z][a-z0-9-]{0,30}[a-z0-9]$` (it becomes part of the CLI's tool
/// names, `mcp__<server>__<tool>`).
pub fn validate_server_name(field: &str, name: &str) -> ServiceResult<()> {
    let bytes = name.as_bytes();
    let ok = (2..=32).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-';
    if ok {
        return Ok(());
    }
    Err(ServiceError::invalid(
        field,
        format!(
            "`{name}` is not a server name: 2 to 32 lowercase letters, digits and `-`, starting \
             with a letter and not ending with `-` (e.g. `github`, `team-wiki`)"
        ),
    ))
}

/// Checks a credential name: `^[A-Z][A-Z0-9_]{0,63}$`, as written in `${NAME}` placeholders.
pub fn validate_credential_name(field: &str, name: &str) -> ServiceResult<()> {
    let bytes = name.as_bytes();
    let ok = (1..=64).contains(&bytes.len())
        && bytes[0].is_ascii_uppercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
    if ok {
        return Ok(());
    }
    Err(ServiceError::invalid(
        field,
        format!(
            "`{name}` is not a credential name: 1 to 64 uppercase letters, digits and `_`, \
             starting with a letter (e.g. `GITHUB_TOKEN`)"
        ),
    ))
}

/// A server's tools given to a run: those up to `access`, narrowed by `allow` and `deny`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolGrant {
    /// The server's name in the registry.
    pub server: String,
    /// The highest access level granted. Default `read`.
    #[serde(default)]
    pub access: AccessLevel,
    /// Only these tools (by name, `*` at the end matches a prefix); a `dangerous` tool must be
    /// named here to be granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Never these tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// What a grant gives of a server: the CLI names of the tools granted and of the others.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ResolvedGrant {
    pub allowed: Vec<String>,
    pub disallowed: Vec<String>,
}

impl ToolGrant {
    /// Checks the grant's own fields (not whether the server exists).
    pub fn validate(&self, field: &str) -> ServiceResult<()> {
        validate_server_name(&format!("{field}.server"), &self.server)
    }

    /// Whether `deny` names `tool`.
    pub fn denies(&self, tool: &str) -> bool {
        self.deny.iter().any(|pattern| matches(pattern, tool))
    }

    /// Splits `server`'s tools into granted and not: a tool is granted when its level is at most
    /// the grant's (a `dangerous` one only when `allow` names it exactly), `allow` (when given)
    /// matches it, and `deny` does not.
    pub fn resolve(&self, server: &McpServer) -> ResolvedGrant {
        let cli_name = |tool: &str| format!("mcp__{}__{}", server.name, tool);
        let (mut allowed, mut disallowed) = (Vec::new(), Vec::new());
        for tool in &server.tools {
            let named = self.allow.iter().any(|pattern| pattern == &tool.name);
            let level_ok = match tool.access {
                AccessLevel::Dangerous => named,
                level => level <= self.access,
            };
            let allowed_by_list =
                self.allow.is_empty() || self.allow.iter().any(|p| matches(p, &tool.name));
            let denied = self.deny.iter().any(|p| matches(p, &tool.name));
            if level_ok && allowed_by_list && !denied {
                allowed.push(cli_name(&tool.name));
            } else {
                disallowed.push(cli_name(&tool.name));
            }
        }
        ResolvedGrant {
            allowed,
            disallowed,
        }
    }
}

/// A named set of grants and built-in tools (the first seed called them workspaces), which jobs,
/// webhooks and quick runs name in `bundles` instead of repeating the grants.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ToolBundle {
    pub name: String,
    pub description: Option<String>,
    pub servers: Vec<ToolGrant>,
    /// Built-in tools it allows (`Read`, `Bash(git log:*)`), in the CLI's names.
    pub tools: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Splits `server`'s tools between those any of `grants` gives and the rest.
pub fn resolve_all(grants: &[&ToolGrant], server: &McpServer) -> ResolvedGrant {
    let mut allowed: Vec<String> = Vec::new();
    for grant in grants {
        for tool in grant.resolve(server).allowed {
            if !allowed.contains(&tool) {
                allowed.push(tool);
            }
        }
    }
    let disallowed = server
        .tools
        .iter()
        .map(|tool| format!("mcp__{}__{}", server.name, tool.name))
        .filter(|name| !allowed.contains(name))
        .collect();
    ResolvedGrant {
        allowed,
        disallowed,
    }
}

/// A secret in the vault, sealed under its own key, which is itself sealed under the master
/// key (`AUTOPILOT_SECRET_KEY`): rotating the master key rewraps the keys, not the values.
#[derive(Clone, PartialEq, Debug)]
pub struct Credential {
    pub name: String,
    /// The value's own key, sealed by the master key for this credential.
    pub wrapped_key: String,
    /// The value, sealed by its own key for this credential.
    pub sealed_value: String,
    /// A keyed digest of the value (never the value or part of it), to tell values apart.
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When a run was last given it.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl Credential {
    /// What the value and its key are sealed for: a sealed value moved to another row fails to
    /// open.
    pub fn context(name: &str) -> String {
        format!("credential:{name}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn server(tools: &[(&str, AccessLevel)]) -> McpServer {
        let now = Utc::now();
        McpServer {
            name: "crm".into(),
            description: None,
            transport: Transport::Http {
                url: "https://crm.example/mcp".into(),
                headers: BTreeMap::from([("Authorization".into(), "Bearer ${CRM_TOKEN}".into())]),
            },
            tools: tools
                .iter()
                .map(|(name, access)| ServerTool {
                    name: (*name).into(),
                    description: None,
                    access: *access,
                })
                .collect(),
            tools_listed_at: None,
            oauth: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn levels_come_from_annotations_then_names() {
        assert_eq!(
            AccessLevel::derive("delete_contact", Some(true), None),
            AccessLevel::Read
        );
        assert_eq!(
            AccessLevel::derive("delete_contact", None, None),
            AccessLevel::Dangerous
        );
        assert_eq!(
            AccessLevel::derive("runShell", None, None),
            AccessLevel::Write
        );
        assert_eq!(
            AccessLevel::derive("run-shell", None, None),
            AccessLevel::Dangerous
        );
        assert_eq!(
            AccessLevel::derive("erase_notes", None, None),
            AccessLevel::Dangerous
        );
        assert_eq!(
            AccessLevel::derive("update_team", None, Some(true)),
            AccessLevel::Admin
        );
        assert_eq!(
            AccessLevel::derive("list_contacts", None, None),
            AccessLevel::Read
        );
        assert_eq!(
            AccessLevel::derive("send_email", None, None),
            AccessLevel::Write
        );
    }

    #[test]
    fn a_grant_gives_tools_up_to_its_level_and_dangerous_ones_only_by_name() {
        use AccessLevel::*;
        let crm = server(&[
            ("list_contacts", Read),
            ("create_contact", Write),
            ("set_roles", Admin),
            ("delete_contact", Dangerous),
        ]);
        let grant = |access, allow: &[&str], deny: &[&str]| ToolGrant {
            server: "crm".into(),
            access,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        };
        let names = |resolved: ResolvedGrant| {
            resolved
                .allowed
                .iter()
                .map(|n| n.trim_start_matches("mcp__crm__").to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(grant(Read, &[], &[]).resolve(&crm)),
            ["list_contacts"]
        );
        assert_eq!(
            names(grant(Dangerous, &[], &[]).resolve(&crm)),
            ["list_contacts", "create_contact", "set_roles"],
            "dangerous tools need their name in `allow`"
        );
        assert_eq!(
            names(grant(Write, &["delete_contact", "list_*"], &[]).resolve(&crm)),
            ["list_contacts", "delete_contact"]
        );
        let resolved = grant(Admin, &[], &["set_*"]).resolve(&crm);
        assert_eq!(
            resolved.disallowed,
            ["mcp__crm__set_roles", "mcp__crm__delete_contact"]
        );
    }

    #[test]
    fn two_grants_of_one_server_give_what_either_gives() {
        use AccessLevel::*;
        let crm = server(&[
            ("list_contacts", Read),
            ("create_contact", Write),
            ("drop_all", Dangerous),
        ]);
        let read = ToolGrant {
            server: "crm".into(),
            access: Read,
            allow: vec![],
            deny: vec![],
        };
        let drop = ToolGrant {
            server: "crm".into(),
            access: Read,
            allow: vec!["drop_all".into()],
            deny: vec![],
        };
        let resolved = resolve_all(&[&read, &drop], &crm);
        assert_eq!(
            resolved.allowed,
            ["mcp__crm__list_contacts", "mcp__crm__drop_all"]
        );
        assert_eq!(resolved.disallowed, ["mcp__crm__create_contact"]);
    }

    #[test]
    fn placeholders_name_the_credentials_a_server_needs() {
        assert_eq!(
            placeholders("Bearer ${A_1} and ${B}${A_1}"),
            ["A_1", "B", "A_1"]
        );
        assert!(placeholders("${unclosed").is_empty());
        assert_eq!(credentials_of(&server(&[]).transport), ["CRM_TOKEN"]);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_server_name("server", "team-wiki").is_ok());
        for bad in ["a", "Wiki", "wiki-", "1wiki", "wi_ki", &"a".repeat(33)] {
            assert!(validate_server_name("server", bad).is_err(), "{bad}");
        }
        assert!(validate_credential_name("name", "GITHUB_TOKEN").is_ok());
        for bad in ["", "github", "_X", "A-B", &"A".repeat(65)] {
            assert!(validate_credential_name("name", bad).is_err(), "{bad}");
        }
    }
}
