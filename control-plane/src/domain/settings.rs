//! Run settings: how a run executes beside what it runs (model, tools, turns, time and cost
//! limits, worker pool, retries, sandbox). Jobs, webhooks and quick runs share them in three
//! shapes: [`RunSettingsInput`] as clients give them (every field optional), [`RunSettingsPatch`]
//! as a partial update (`null` clears an optional field), and [`RunSettings`] as validated, stored
//! and shown. The inputs are flattened into each record's input, so the fields are written once,
//! here, for the HTTP API, the MCP tools (whose schemas derive from these types) and the store.

use autopilot_proto::{NetworkMode, Sandbox};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::{ServiceError, ServiceResult};
use super::input::nullable;
use super::job::JobKind;
use super::tools::ToolGrant;

pub const DEFAULT_TIMEOUT_SECS: u64 = 30 * 60;
pub const DEFAULT_POOL: &str = "default";

/// Settings of a run, validated. Shown flattened into a job's and a webhook's view.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct RunSettings {
    pub model: Option<String>,
    pub allowed_tools: Vec<String>,
    pub disallowed_tools: Vec<String>,
    pub max_turns: Option<u32>,
    pub timeout_secs: u64,
    pub max_cost_usd: Option<f64>,
    pub pool: String,
    pub retry: RetryPolicy,
    /// Webhook settings stored before webhooks had a sandbox hold none: a claude run's default.
    #[serde(default)]
    pub sandbox: Sandbox,
    /// Claude runs put their prompt, the assistant's text and tool inputs and results on their
    /// trace spans (capped, secrets redacted). Off unless asked for.
    #[serde(default)]
    pub trace_content: bool,
    /// MCP servers from the registry whose tools the runs may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ToolGrant>,
    /// Tool bundles whose grants and tools the runs also get.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundles: Vec<String>,
    /// The image of the runs' containers (Docker executor), instead of the worker's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Retries of runs that failed for a transient API reason (overloaded, rate limited, 5xx).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Further attempts after the first.
    pub count: u32,
    /// Delay before the first retry; doubled for each later one.
    pub backoff_secs: u64,
    /// Also run again an attempt that was lost (its worker stopped answering). Off by default:
    /// a lost run may have done part of its work (sent an email) before it was lost.
    #[serde(default)]
    pub lost: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            count: 2,
            backoff_secs: 30,
            lost: false,
        }
    }
}

impl RetryPolicy {
    /// A quick run is tried once.
    pub const NONE: RetryPolicy = RetryPolicy {
        count: 0,
        backoff_secs: 1,
        lost: false,
    };

    pub fn delay_before_attempt(&self, attempt: u32) -> std::time::Duration {
        let doublings = attempt.saturating_sub(2).min(16);
        std::time::Duration::from_secs(self.backoff_secs.saturating_mul(1 << doublings))
    }
}

/// Run settings as clients give them; what is left out takes its default (or, in a patch applied
/// to a record, keeps its value).
#[derive(Deserialize, Serialize, Debug, Default, Clone, JsonSchema)]
pub struct RunSettingsInput {
    /// Claude model, e.g. `claude-sonnet-4-5`; the CLI's default when left out.
    #[serde(default)]
    pub model: Option<String>,
    /// Tools a run may use, e.g. `["Read", "Write", "Bash(git log:*)"]`; anything else is denied.
    /// `server:tool` and `server.tool` name MCP tools (`mcp__server__tool`).
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// Tools a run is not even offered (they win over `allowed_tools`).
    #[serde(default)]
    pub disallowed_tools: Option<Vec<String>>,
    /// Most model turns of a run (1 to 1000).
    #[serde(default)]
    pub max_turns: Option<u32>,
    /// A run is stopped after this many seconds (1 to 604800). Default 1800.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// A run is stopped when its cost passes this many US dollars.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// Worker pool that executes the runs (letters, digits, `-`, `_`). Default `default`.
    #[serde(default)]
    pub pool: Option<String>,
    /// Retries of runs that fail for a transient API reason (429, 5xx, overloaded).
    #[serde(default)]
    pub retry: Option<RetryInput>,
    /// The run's container: `network` (`none`, `model-only`, `open`), `memory_mb`, `cpus`, `pids`.
    #[serde(default)]
    pub sandbox: Option<SandboxInput>,
    /// Put the prompt, the assistant's text and each tool's input and result on the run's trace
    /// spans (each capped at 4 KiB; values of secret-named environment variables redacted).
    /// Default false: spans carry no run content. Claude runs only.
    #[serde(default)]
    pub trace_content: Option<bool>,
    /// MCP servers from the registry the runs may use, each up to an access level (`read`,
    /// `write`, `admin`; a `dangerous` tool only when `allow` names it), e.g.
    /// `[{"server": "email", "access": "write"}]`. Their tools are added to `allowed_tools`
    /// and the server's other tools to `disallowed_tools`. Claude runs only.
    #[serde(default)]
    pub servers: Option<Vec<ToolGrant>>,
    /// Tool bundles (named sets of server grants and tools, see `create_bundle`) the runs also
    /// get, e.g. `["reporting"]`. Claude runs only.
    #[serde(default)]
    pub bundles: Option<Vec<String>>,
    /// The image the runs' containers start from (Docker executor), e.g. a team's own built
    /// `FROM autopilot-runtime`; it must be on the pool's workers. Default: the worker's image.
    #[serde(default)]
    pub image: Option<String>,
}

/// Changes to run settings: a field left out keeps its value, `null` clears an optional one.
#[derive(Deserialize, Debug, Default, JsonSchema)]
pub struct RunSettingsPatch {
    /// `null` goes back to the CLI's default model.
    #[serde(default, deserialize_with = "nullable")]
    pub model: Option<Option<String>>,
    /// Replaces the tools a run may use.
    pub allowed_tools: Option<Vec<String>>,
    /// Replaces the tools a run is not even offered.
    pub disallowed_tools: Option<Vec<String>>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "nullable")]
    pub max_turns: Option<Option<u32>>,
    /// A run is stopped after this many seconds (1 to 604800).
    pub timeout_secs: Option<u64>,
    /// `null` removes the cost limit.
    #[serde(default, deserialize_with = "nullable")]
    pub max_cost_usd: Option<Option<f64>>,
    /// Worker pool that executes the runs.
    pub pool: Option<String>,
    /// Replaces the retry policy (a `backoff_secs` left out is the default, 30).
    pub retry: Option<RetryInput>,
    /// Fields given replace those of the current sandbox; the others keep their values.
    pub sandbox: Option<SandboxInput>,
    /// Whether runs put their content on their trace spans.
    pub trace_content: Option<bool>,
    /// Replaces the MCP servers the runs may use.
    pub servers: Option<Vec<ToolGrant>>,
    /// Replaces the tool bundles the runs get.
    pub bundles: Option<Vec<String>>,
    /// `null` goes back to the worker's image.
    #[serde(default, deserialize_with = "nullable")]
    pub image: Option<Option<String>>,
}

#[derive(Deserialize, Serialize, Debug, Clone, Copy, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryInput {
    /// Further attempts after the first, for transient API failures (429, 5xx, overloaded).
    pub count: u32,
    /// Delay before the first retry, doubled for each later one (default 30).
    #[serde(default)]
    pub backoff_secs: Option<u64>,
    /// Also run again an attempt that was lost because its worker died (default false: a lost
    /// run may already have done part of its work).
    #[serde(default)]
    pub lost: Option<bool>,
}

/// Limits and network of a run's container; what is left out keeps its value (the default of
/// the run's kind for a new record).
#[derive(Deserialize, Serialize, Debug, Default, Clone, Copy, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxInput {
    /// `none` (no network), `model-only` (only the model API, through the worker's proxy; the
    /// default of claude runs) or `open`. Shell jobs default to `none`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub network: Option<NetworkMode>,
    /// Memory limit in MiB, swap included (64 to 65536; default 2048). Past it the run is
    /// killed and reported out of memory.
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// CPU cores the run may use (0.1 to 64; default 2).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Most processes and threads at once (16 to 65536; default 512).
    #[serde(default)]
    pub pids: Option<u32>,
}

impl From<&RunSettings> for RunSettingsInput {
    /// The input that describes `settings`, so a patch can be applied and checked as a whole.
    fn from(settings: &RunSettings) -> Self {
        RunSettingsInput {
            model: settings.model.clone(),
            allowed_tools: Some(settings.allowed_tools.clone()),
            disallowed_tools: Some(settings.disallowed_tools.clone()),
            max_turns: settings.max_turns,
            timeout_secs: Some(settings.timeout_secs),
            max_cost_usd: settings.max_cost_usd,
            pool: Some(settings.pool.clone()),
            retry: Some(RetryInput {
                count: settings.retry.count,
                backoff_secs: Some(settings.retry.backoff_secs),
                lost: Some(settings.retry.lost),
            }),
            sandbox: Some(settings.sandbox.into()),
            trace_content: Some(settings.trace_content),
            servers: Some(settings.servers.clone()),
            bundles: Some(settings.bundles.clone()),
            image: settings.image.clone(),
        }
    }
}

impl From<Sandbox> for SandboxInput {
    fn from(sandbox: Sandbox) -> Self {
        SandboxInput {
            network: Some(sandbox.network),
            memory_mb: Some(sandbox.memory_mb),
            cpus: Some(sandbox.cpus),
            pids: Some(sandbox.pids),
        }
    }
}

impl RunSettingsInput {
    /// Applies a patch: what it names replaces the current value (a sandbox field by field).
    pub fn apply(&mut self, patch: RunSettingsPatch) {
        macro_rules! replace {
            ($($field:ident),+) => { $(if let Some(value) = patch.$field { self.$field = value.into(); })+ };
        }
        replace!(
            model,
            allowed_tools,
            disallowed_tools,
            max_turns,
            timeout_secs,
            max_cost_usd,
            pool,
            retry,
            trace_content,
            servers,
            bundles,
            image
        );
        if let Some(patch) = patch.sandbox {
            let current = self.sandbox.unwrap_or_default();
            self.sandbox = Some(SandboxInput {
                network: patch.network.or(current.network),
                memory_mb: patch.memory_mb.or(current.memory_mb),
                cpus: patch.cpus.or(current.cpus),
                pids: patch.pids.or(current.pids),
            });
        }
    }

    /// The first field given, in declaration order (for inputs where none may be given).
    pub fn first_given(&self) -> Option<&'static str> {
        self.given()
            .into_iter()
            .find_map(|(field, given)| given.then_some(field))
    }

    /// The first field given that only a claude run can use.
    fn first_claude_only(&self) -> Option<&'static str> {
        const CLAUDE_ONLY: [&str; 8] = [
            "model",
            "allowed_tools",
            "disallowed_tools",
            "max_turns",
            "max_cost_usd",
            "trace_content",
            "servers",
            "bundles",
        ];
        self.given()
            .into_iter()
            .find_map(|(field, given)| (given && CLAUDE_ONLY.contains(&field)).then_some(field))
    }

    /// Each field, and whether it was given (an empty tool list counts as not given).
    fn given(&self) -> [(&'static str, bool); 13] {
        let listed = |tools: &Option<Vec<String>>| tools.as_ref().is_some_and(|t| !t.is_empty());
        [
            ("model", self.model.is_some()),
            ("allowed_tools", listed(&self.allowed_tools)),
            ("disallowed_tools", listed(&self.disallowed_tools)),
            ("max_turns", self.max_turns.is_some()),
            ("timeout_secs", self.timeout_secs.is_some()),
            ("max_cost_usd", self.max_cost_usd.is_some()),
            ("pool", self.pool.is_some()),
            ("retry", self.retry.is_some()),
            ("sandbox", self.sandbox.is_some()),
            // `false` asks for nothing a shell job lacks.
            ("trace_content", self.trace_content == Some(true)),
            (
                "servers",
                self.servers.as_ref().is_some_and(|s| !s.is_empty()),
            ),
            ("bundles", listed(&self.bundles)),
            ("image", self.image.is_some()),
        ]
    }

    /// Checks every field for a run of `kind`, naming the first wrong one, normalises tool names
    /// and fills in the defaults (`retry` for a record that gives none).
    pub fn resolve(self, kind: JobKind, retry: RetryPolicy) -> ServiceResult<RunSettings> {
        if kind != JobKind::Claude {
            if let Some(field) = self.first_claude_only() {
                return Err(ServiceError::invalid(
                    field,
                    format!("applies to claude jobs only; remove it for a {kind} job"),
                ));
            }
        }
        let model = match self.model.map(|m| m.trim().to_owned()) {
            Some(m) if m.is_empty() || m.len() > 100 => {
                return Err(ServiceError::invalid(
                    "model",
                    "must be 1 to 100 characters",
                ))
            }
            other => other,
        };
        if self
            .max_turns
            .is_some_and(|turns| !(1..=1000).contains(&turns))
        {
            return Err(ServiceError::invalid(
                "max_turns",
                "must be between 1 and 1000",
            ));
        }
        let timeout_secs = self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(1..=7 * 24 * 3600).contains(&timeout_secs) {
            return Err(ServiceError::invalid(
                "timeout_secs",
                "must be between 1 and 604800 (a week)",
            ));
        }
        if self
            .max_cost_usd
            .is_some_and(|cost| !cost.is_finite() || cost <= 0.0)
        {
            return Err(ServiceError::invalid(
                "max_cost_usd",
                "must be a positive number of US dollars, e.g. 0.5",
            ));
        }
        Ok(RunSettings {
            model,
            allowed_tools: tools("allowed_tools", self.allowed_tools.unwrap_or_default())?,
            disallowed_tools: tools(
                "disallowed_tools",
                self.disallowed_tools.unwrap_or_default(),
            )?,
            max_turns: self.max_turns,
            timeout_secs,
            max_cost_usd: self.max_cost_usd,
            pool: validate_pool(self.pool)?,
            retry: self.retry.map_or(Ok(retry), RetryInput::resolve)?,
            sandbox: self
                .sandbox
                .unwrap_or_default()
                .resolve(kind.default_sandbox(), kind)?,
            trace_content: self.trace_content.unwrap_or(false),
            servers: grants(self.servers.unwrap_or_default())?,
            bundles: bundles(self.bundles.unwrap_or_default())?,
            image: self.image.map(image).transpose()?,
        })
    }
}

impl RetryInput {
    fn resolve(self) -> ServiceResult<RetryPolicy> {
        if self.count > 10 {
            return Err(ServiceError::invalid(
                "retry.count",
                "must be between 0 and 10",
            ));
        }
        let backoff_secs = self
            .backoff_secs
            .unwrap_or(RetryPolicy::default().backoff_secs);
        if !(1..=86_400).contains(&backoff_secs) {
            return Err(ServiceError::invalid(
                "retry.backoff_secs",
                "must be between 1 and 86400",
            ));
        }
        Ok(RetryPolicy {
            count: self.count,
            backoff_secs,
            lost: self.lost.unwrap_or(false),
        })
    }
}

impl SandboxInput {
    /// Applies the fields given over `base` and checks the result for a run of `kind`.
    fn resolve(self, base: Sandbox, kind: JobKind) -> ServiceResult<Sandbox> {
        let sandbox = Sandbox {
            network: self.network.unwrap_or(base.network),
            memory_mb: self.memory_mb.unwrap_or(base.memory_mb),
            cpus: self.cpus.unwrap_or(base.cpus),
            pids: self.pids.unwrap_or(base.pids),
        };
        if kind == JobKind::Claude && sandbox.network == NetworkMode::None {
            return Err(ServiceError::invalid(
                "sandbox.network",
                "a claude job needs the model API, which network `none` cuts off; use `model-only` (the default) or `open`",
            ));
        }
        if !(64..=65_536).contains(&sandbox.memory_mb) {
            return Err(ServiceError::invalid(
                "sandbox.memory_mb",
                "must be between 64 and 65536 (MiB)",
            ));
        }
        if !(sandbox.cpus.is_finite() && (0.1..=64.0).contains(&sandbox.cpus)) {
            return Err(ServiceError::invalid(
                "sandbox.cpus",
                "must be between 0.1 and 64 (cores)",
            ));
        }
        if !(16..=65_536).contains(&sandbox.pids) {
            return Err(ServiceError::invalid(
                "sandbox.pids",
                "must be between 16 and 65536",
            ));
        }
        Ok(sandbox)
    }
}

pub(crate) fn tools(field: &str, names: Vec<String>) -> ServiceResult<Vec<String>> {
    let mut normalised = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(ServiceError::invalid(
                format!("{field}.{index}"),
                "a tool name must be 1 to 200 characters",
            ));
        }
        if name.trim() == "mcp__*" {
            return Err(ServiceError::invalid(
                format!("{field}.{index}"),
                "`mcp__*` matches nothing in Claude Code; name the server (`mcp__github`) or its tools (`mcp__github__*`)",
            ));
        }
        let tool = autopilot_worker::command::normalise_tool_name(name);
        // The stored name is checked again whenever the record is updated: it must pass too
        // (`server:tool` grows by 6 bytes as `mcp__server__tool`).
        if tool.len() > 200 {
            return Err(ServiceError::invalid(
                format!("{field}.{index}"),
                "a tool name must be 1 to 200 characters, as Claude Code names it \
                 (`server:tool` counts as `mcp__server__tool`)",
            ));
        }
        if !normalised.contains(&tool) {
            normalised.push(tool);
        }
    }
    Ok(normalised)
}

/// A worker pool name as given, or the default pool.
/// Checks the grants' own fields: each server named once, with a valid name.
pub(crate) fn grants(grants: Vec<ToolGrant>) -> ServiceResult<Vec<ToolGrant>> {
    if grants.len() > 32 {
        return Err(ServiceError::invalid("servers", "at most 32 servers"));
    }
    for (index, grant) in grants.iter().enumerate() {
        let field = format!("servers[{index}]");
        grant.validate(&field)?;
        if grants[..index].iter().any(|g| g.server == grant.server) {
            return Err(ServiceError::invalid(
                format!("{field}.server"),
                format!("`{}` is granted twice; merge the two grants", grant.server),
            ));
        }
    }
    Ok(grants)
}

/// Checks an image reference (`name[:tag][@digest]`, with a registry host if any).
fn image(reference: String) -> ServiceResult<String> {
    let reference = reference.trim().to_owned();
    let valid = (1..=255).contains(&reference.len())
        && reference.as_bytes()[0].is_ascii_alphanumeric()
        && reference
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'));
    if !valid {
        return Err(ServiceError::invalid(
            "image",
            format!(
                "`{reference}` is not an image reference, e.g. `autopilot-runtime-team:latest`"
            ),
        ));
    }
    Ok(reference)
}

/// Checks bundle names: each a valid name, named once.
fn bundles(names: Vec<String>) -> ServiceResult<Vec<String>> {
    if names.len() > 16 {
        return Err(ServiceError::invalid("bundles", "at most 16 bundles"));
    }
    for (index, name) in names.iter().enumerate() {
        let field = format!("bundles[{index}]");
        super::tools::validate_server_name(&field, name)?;
        if names[..index].contains(name) {
            return Err(ServiceError::invalid(
                field,
                format!("`{name}` is named twice"),
            ));
        }
    }
    Ok(names)
}

pub fn validate_pool(input: Option<String>) -> ServiceResult<String> {
    let pool = input.unwrap_or_else(|| DEFAULT_POOL.to_owned());
    if pool.is_empty()
        || pool.len() > 64
        || !pool
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ServiceError::invalid(
            "pool",
            "must be 1 to 64 letters, digits, `-` or `_`",
        ));
    }
    Ok(pool)
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
