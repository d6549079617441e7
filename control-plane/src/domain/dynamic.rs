//! Dynamic servers: MCP servers written in Python (often by Claude itself), kept as immutable
//! versions. A version is usable only once a worker validated it (it starts, with placeholder
//! credentials and no network, and lists its tools), and one written by an agent gets
//! credentials only once an operator approved it. The usable version is what the registry holds
//! as the server's `python` transport; the versions are kept beside it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::tools::ServerTool;

/// Largest source accepted, in bytes.
pub const MAX_CODE_BYTES: usize = 256 * 1024;

/// Who wrote a version.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Author {
    /// Through the HTTP API, with the admin token.
    Operator,
    /// Through MCP (Claude, on claude.ai or elsewhere): its credentials wait for an operator.
    Agent,
}

/// What a worker found when it started a version.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Validation {
    pub ok: bool,
    /// The tools it listed (empty when it failed).
    pub tools: Vec<ServerTool>,
    /// Why it failed: what the server (or Python) said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// One saved version of a dynamic server.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct DynamicVersion {
    pub server: String,
    pub version: u32,
    pub description: Option<String>,
    pub code: String,
    /// The server's environment, credentials as `${NAME}` placeholders.
    pub env: BTreeMap<String, String>,
    pub author: Author,
    /// What the source reads and needs, found without running it.
    pub scan: Scan,
    pub validation: Option<Validation>,
    pub approved_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl DynamicVersion {
    /// The credentials its environment names.
    pub fn credentials(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .env
            .values()
            .flat_map(|value| autopilot_proto::placeholders::names(value))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether it may become the server's usable version: it validated, and it uses no
    /// credential unless an operator wrote or approved it.
    pub fn usable(&self) -> bool {
        self.validation.as_ref().is_some_and(|v| v.ok)
            && (self.author == Author::Operator
                || self.approved_at.is_some()
                || self.credentials().is_empty())
    }

    /// `valid`, `invalid`, `awaiting_approval` or `not_validated`.
    pub fn state(&self) -> &'static str {
        match &self.validation {
            None => "not_validated",
            Some(v) if !v.ok => "invalid",
            Some(_) if self.usable() => "valid",
            Some(_) => "awaiting_approval",
        }
    }
}

/// What a source reads and needs, found by reading it.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Scan {
    /// Environment variables it reads (`os.environ[…]`, `os.environ.get(…)`, `os.getenv(…)`).
    pub env_vars: Vec<String>,
    /// Top-level modules it imports.
    pub imports: Vec<String>,
    /// Its PEP 723 `dependencies`, if it declares any.
    pub dependencies: Vec<String>,
}

/// Reads `code` for the environment variables, imports and declared dependencies it has.
pub fn scan(code: &str) -> Scan {
    let mut env_vars = BTreeSet::new();
    let mut imports = BTreeSet::new();
    for line in code.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("import ") {
            for module in rest.split(',') {
                if let Some(name) = module.split_whitespace().next() {
                    imports.insert(top_module(name));
                }
            }
        } else if let Some(rest) = trimmed.strip_prefix("from ") {
            if let Some(name) = rest.split_whitespace().next() {
                if !name.starts_with('.') {
                    imports.insert(top_module(name));
                }
            }
        }
        for call in [
            "os.environ[",
            "os.environ.get(",
            "os.getenv(",
            "environ.get(",
        ] {
            let mut rest = line;
            while let Some(at) = rest.find(call) {
                rest = &rest[at + call.len()..];
                if let Some(name) = quoted(rest.trim_start()) {
                    env_vars.insert(name);
                }
            }
        }
    }
    Scan {
        env_vars: env_vars.into_iter().collect(),
        imports: imports.into_iter().collect(),
        dependencies: pep723_dependencies(code),
    }
}

fn top_module(name: &str) -> String {
    name.split('.')
        .next()
        .unwrap_or(name)
        .trim_end_matches(',')
        .to_owned()
}

/// The string literal `text` starts with.
fn quoted(text: &str) -> Option<String> {
    let quote = text.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let rest = &text[1..];
    let end = rest.find(quote)?;
    Some(rest[..end].to_owned())
}

/// The `dependencies` of a `# /// script` block (PEP 723), one per quoted entry.
fn pep723_dependencies(code: &str) -> Vec<String> {
    let mut inside = false;
    let mut block = String::new();
    for line in code.lines() {
        match (inside, line.trim_end()) {
            (false, "# /// script") => inside = true,
            (true, "# ///") => break,
            (true, line) => {
                block.push_str(line.strip_prefix('#').unwrap_or(line).trim_start());
                block.push('\n');
            }
            _ => {}
        }
    }
    let Some(start) = block.find("dependencies") else {
        return Vec::new();
    };
    let list = &block[start..];
    let (Some(open), Some(close)) = (list.find('['), list.find(']')) else {
        return Vec::new();
    };
    list[open + 1..close.max(open + 1)]
        .split(',')
        .filter_map(|entry| quoted(entry.trim()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = r#"# /// script
# dependencies = [
#   "httpx>=0.27",
#   'rich',
# ]
# ///
import os, sys
import json as j
from mcp.server.mcpserver import MCPServer
from .local import thing

TOKEN = os.environ["CRM_TOKEN"]
REGION = os.environ.get('CRM_REGION', "eu")
DEBUG = os.getenv("DEBUG")
"#;

    #[test]
    fn a_source_is_read_for_what_it_reads_imports_and_declares() {
        let found = scan(SOURCE);
        assert_eq!(found.env_vars, ["CRM_REGION", "CRM_TOKEN", "DEBUG"]);
        assert_eq!(found.imports, ["json", "mcp", "os", "sys"]);
        assert_eq!(found.dependencies, ["httpx>=0.27", "rich"]);
        assert_eq!(scan("print(1)"), Scan::default());
    }

    fn version(author: Author, env: &[(&str, &str)], ok: bool) -> DynamicVersion {
        DynamicVersion {
            server: "crm".into(),
            version: 1,
            description: None,
            code: String::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            author,
            scan: Scan::default(),
            validation: Some(Validation {
                ok,
                tools: vec![],
                error: None,
                at: Utc::now(),
            }),
            approved_at: None,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn an_agents_version_with_credentials_waits_for_approval() {
        let with_secret = [("CRM_TOKEN", "${CRM_TOKEN}")];
        let agent = version(Author::Agent, &with_secret, true);
        assert_eq!(agent.credentials(), ["CRM_TOKEN"]);
        assert_eq!(agent.state(), "awaiting_approval");
        let mut approved = agent.clone();
        approved.approved_at = Some(Utc::now());
        assert_eq!(approved.state(), "valid");
        assert_eq!(
            version(Author::Agent, &[("MODE", "fast")], true).state(),
            "valid"
        );
        assert_eq!(
            version(Author::Operator, &with_secret, true).state(),
            "valid"
        );
        assert_eq!(version(Author::Operator, &[], false).state(), "invalid");
    }
}
