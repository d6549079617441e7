//! Runs: what a worker is asked to execute, the states a run moves through, and what it reports.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, RunId};

/// The life of a run. Every change is a compare-and-set in the store on (run id, expected status,
/// attempt), so two actors can never both move the same run.
///
/// ```text
/// queued ──▶ running ──▶ succeeded | failed | timed_out | cancelled | lost
///   │           │
///   └──▶ cancelling ◀┘ ──▶ cancelled (or any final state the worker reports)
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    /// Running, and paused on a tool call that needs an operator's approval.
    WaitingForApproval,
    Cancelling,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Lost,
}

impl RunStatus {
    pub const ALL: [RunStatus; 9] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::WaitingForApproval,
        RunStatus::Cancelling,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::TimedOut,
        RunStatus::Cancelled,
        RunStatus::Lost,
    ];

    /// The states a run can still leave.
    pub const ACTIVE: [RunStatus; 4] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::WaitingForApproval,
        RunStatus::Cancelling,
    ];

    /// The states of a run whose process is alive on its worker.
    pub const EXECUTING: [RunStatus; 3] = [
        RunStatus::Running,
        RunStatus::WaitingForApproval,
        RunStatus::Cancelling,
    ];

    pub fn is_terminal(self) -> bool {
        !Self::ACTIVE.contains(&self)
    }

    /// Whether the state machine allows `self → next`. A retry of a transient failure goes
    /// `running → queued` with the attempt raised; a tool call waiting for approval goes
    /// `running → waiting_for_approval → running`.
    pub fn can_move_to(self, next: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, next),
            (Queued, Running | Cancelling | Cancelled | Lost | Failed)
                | (Running, Queued | Cancelling | WaitingForApproval)
                | (WaitingForApproval, Running | Cancelling)
                | (
                    Running | WaitingForApproval | Cancelling,
                    Succeeded | Failed | TimedOut | Cancelled | Lost
                )
        )
    }

    /// Whether the run's process is alive on its worker (see [`RunStatus::EXECUTING`]).
    pub fn is_executing(self) -> bool {
        Self::EXECUTING.contains(&self)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::WaitingForApproval => "waiting_for_approval",
            RunStatus::Cancelling => "cancelling",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Lost => "lost",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown run status `{s}`; expected one of {}",
                    known.join(", ")
                )
            })
    }
}

/// What started a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    Manual,
    Quick,
    Webhook,
    /// Another job's run ended (the job follows it).
    Chain,
    /// A Claude Code hook event (`autopilot hook`).
    Hook,
    /// A watched file changed.
    File,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Quick => "quick",
            Trigger::Webhook => "webhook",
            Trigger::Chain => "chain",
            Trigger::Hook => "hook",
            Trigger::File => "file",
        }
    }
}

impl FromStr for Trigger {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "schedule" => Ok(Trigger::Schedule),
            "manual" => Ok(Trigger::Manual),
            "quick" => Ok(Trigger::Quick),
            "webhook" => Ok(Trigger::Webhook),
            "chain" => Ok(Trigger::Chain),
            "hook" => Ok(Trigger::Hook),
            "file" => Ok(Trigger::File),
            other => Err(format!("unknown trigger `{other}`")),
        }
    }
}

/// Settings for a Claude Code run.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ClaudeSpec {
    pub prompt: String,
    pub model: Option<String>,
    /// Tools pre-approved for the run, already normalised to the CLI's names
    /// (`Bash`, `mcp__server__tool`). Empty means the CLI's defaults.
    pub allowed_tools: Vec<String>,
    /// Tools that must not even be offered to the model.
    pub disallowed_tools: Vec<String>,
    pub max_turns: Option<u32>,
    pub max_cost_usd: Option<f64>,
    /// Put the run's content (prompt, assistant text, tool inputs and results) on its spans.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trace_content: bool,
    /// The MCP servers granted to the run (the CLI loads these and no others). Their `${NAME}`
    /// placeholders are filled in on the worker from the secrets sealed to it in the claim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<McpServerSpec>,
    /// Tools the run may call only with an operator's approval, each call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::approval::ApprovalGate>,
}

/// One MCP server a run may use.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct McpServerSpec {
    pub name: String,
    pub transport: McpTransport,
}

/// How the CLI reaches an MCP server. Values may hold `${NAME}` placeholders for credentials.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum McpTransport {
    /// A program the run starts (it must exist where runs execute: the worker's machine or the
    /// run image), speaking MCP on its standard input and output.
    Stdio {
        command: String,
        #[serde(default)]
        args: Vec<String>,
        /// The server's whole environment (it inherits nothing from the run), e.g.
        /// `{"API_TOKEN": "${GITHUB_TOKEN}"}`.
        #[serde(default)]
        env: std::collections::BTreeMap<String, String>,
    },
    /// A remote server over streamable HTTP.
    Http {
        url: String,
        /// e.g. `{"Authorization": "Bearer ${LINEAR_TOKEN}"}`.
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
    },
    /// A dynamic server: Python source (one version, validated on a worker), run by the run
    /// image's Python (or the worker's, for local runs) under the guard. Registered only
    /// through the dynamic servers' own calls, which keep its versions.
    Python {
        code: String,
        /// The version of the dynamic server this code is.
        version: u32,
        #[serde(default)]
        env: std::collections::BTreeMap<String, String>,
    },
    /// One of Autopilot's own servers (`email`), run by the `autopilot-servers` program in the
    /// run image or beside the worker, with its settings in its environment.
    Fixed {
        server: String,
        /// Its settings, e.g. `{"EMAIL_SMTP_URL": "smtps://bot:${SMTP_PASSWORD}@smtp.example.com",
        /// "EMAIL_FROM": "bot@example.com", "EMAIL_ALLOWED_RECIPIENTS": "*@example.com"}`.
        #[serde(default)]
        env: std::collections::BTreeMap<String, String>,
    },
}

/// What a run executes.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunKind {
    Claude(ClaudeSpec),
    /// A command run with `sh -c` in the workspace.
    Shell {
        command: String,
        /// Written to the command's standard input (a webhook delivery's body).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdin: Option<String>,
    },
    /// One HTTP request, made by the worker itself (no process, no workspace).
    Http(HttpSpec),
}

/// An HTTP job's request.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// `GET` (default), `POST`, `PUT`, `PATCH`, `DELETE` or `HEAD`.
    #[serde(default = "default_method")]
    pub method: String,
    /// An https URL (http too with `allow_private`).
    pub url: String,
    /// Request headers; a value may name vault credentials as `${NAME}`, filled in on the worker
    /// only (e.g. `"Authorization": "Bearer ${GITHUB_TOKEN}"`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The request body, sent as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The statuses that count as success (default any 2xx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success_status: Vec<u16>,
    /// Let the URL reach private, loopback and link-local addresses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_private: bool,
}

fn default_method() -> String {
    "GET".to_owned()
}

impl HttpSpec {
    /// The methods a request may use.
    pub const METHODS: [&'static str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

    /// Whether an answer with `status` is the request's success.
    pub fn succeeded(&self, status: u16) -> bool {
        if self.success_status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.success_status.contains(&status)
        }
    }

    /// The vault credentials its headers name.
    pub fn credentials(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .headers
            .values()
            .flat_map(|value| crate::placeholders::names(value))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Everything a worker needs to execute one claimed attempt of a run. Handed out by the control
/// plane only in reply to a successful claim; never published on a stream.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct RunSpec {
    pub run_id: RunId,
    pub attempt: u32,
    pub job_id: Option<JobId>,
    /// Name of the workspace directory (a job's own, or one per quick run).
    pub workspace: String,
    pub kind: RunKind,
    pub timeout_secs: u64,
    /// Isolation of the run when the worker executes it in a container.
    #[serde(default)]
    pub sandbox: Sandbox,
    /// The image of the run's container, when the job names one (else the worker's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Files the worker writes in the workspace once the run's process has ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcome_files: Vec<OutcomeFile>,
}

/// A file a run's worker writes in the workspace once the run's process has ended, before the
/// workspace is saved: the attempt's outcome as JSON.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct OutcomeFile {
    /// Relative to the workspace, checked when the job was saved and again by the worker.
    pub path: String,
    #[serde(default)]
    pub on: EndsOn,
}

/// Which ends of a run something follows.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndsOn {
    Success,
    /// Failed, timed out or lost.
    Failure,
    #[default]
    Any,
}

impl EndsOn {
    pub fn matches(self, status: RunStatus) -> bool {
        match self {
            EndsOn::Success => status == RunStatus::Succeeded,
            EndsOn::Failure => matches!(
                status,
                RunStatus::Failed | RunStatus::TimedOut | RunStatus::Lost
            ),
            EndsOn::Any => true,
        }
    }
}

/// What a run's container may reach.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// No network at all (only loopback inside the container).
    None,
    /// Only the worker's model proxy, through which the run reaches the model API.
    ModelOnly,
    /// Any address, like a process on the host.
    Open,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::ModelOnly => "model-only",
            NetworkMode::Open => "open",
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits and network of a run's container. The local executor has no way to apply them and
/// says so at start; the Docker executor enforces every one.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct Sandbox {
    pub network: NetworkMode,
    /// Memory limit (swap included); past it the kernel kills the run: out of memory.
    pub memory_mb: u32,
    /// CPU share, in cores (0.5 is half a core).
    pub cpus: f64,
    /// Most processes and threads at once (a fork bomb stops here).
    pub pids: u32,
}

impl Sandbox {
    pub const DEFAULT_MEMORY_MB: u32 = 2048;
    pub const DEFAULT_CPUS: f64 = 2.0;
    pub const DEFAULT_PIDS: u32 = 512;

    /// The defaults for a run of this kind.
    pub fn default_for(kind: &RunKind) -> Self {
        Self::defaults(matches!(kind, RunKind::Claude(_)))
    }

    /// The defaults: a Claude run reaches the model API and nothing else, a shell run reaches
    /// nothing.
    pub fn defaults(claude: bool) -> Self {
        Sandbox {
            network: if claude {
                NetworkMode::ModelOnly
            } else {
                NetworkMode::None
            },
            ..Sandbox::default()
        }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            network: NetworkMode::ModelOnly,
            memory_mb: Self::DEFAULT_MEMORY_MB,
            cpus: Self::DEFAULT_CPUS,
            pids: Self::DEFAULT_PIDS,
        }
    }
}

/// Token counts as the model API reports them.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

impl TokenUsage {
    /// Adds `other`'s counts, saturating: the counts come from outside (the CLI's output, the
    /// model API's stream, a worker's report), and absurd ones must not overflow.
    pub fn add(&mut self, other: &TokenUsage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(other.cache_read_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
    }
}

/// Why a worker stopped a run before it finished on its own.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Timeout,
    Cancelled,
    BudgetExceeded,
    WorkerShutdown,
    /// An MCP server granted to the run did not connect.
    McpServerFailed,
}

/// Who pays for a Claude run's tokens: an API key (the CLI's cost is what is billed) or a
/// subscription's OAuth token (the CLI's cost is only an estimate; nothing is billed per
/// token).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Billing {
    #[default]
    Api,
    Subscription,
}

impl Billing {
    pub fn as_str(self) -> &'static str {
        match self {
            Billing::Api => "api",
            Billing::Subscription => "subscription",
        }
    }
}

impl FromStr for Billing {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "api" => Ok(Billing::Api),
            "subscription" => Ok(Billing::Subscription),
            other => Err(format!("unknown billing `{other}`")),
        }
    }
}

/// The model API's failures told apart.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiError {
    /// 429: too many requests or tokens for now.
    RateLimited,
    /// 529: the API is overloaded.
    Overloaded,
    /// A subscription's usage limit (until its reset time).
    UsageLimit,
    /// 5xx, a dropped connection, a timeout.
    Server,
}

impl ApiError {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiError::RateLimited => "rate_limited",
            ApiError::Overloaded => "overloaded",
            ApiError::UsageLimit => "usage_limit",
            ApiError::Server => "server",
        }
    }
}

/// What a worker reports when an attempt ends.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct RunOutcome {
    pub exit_code: Option<i32>,
    pub is_error: bool,
    pub error: Option<String>,
    pub result: Option<String>,
    pub usage: TokenUsage,
    pub cost_usd: Option<f64>,
    pub num_turns: Option<u32>,
    pub models: Vec<String>,
    pub permission_denials: u32,
    pub stopped: Option<StopReason>,
    /// The failure looks transient (API overloaded, rate limited, 5xx): the job's retry policy
    /// may run it again.
    pub transient: bool,
    /// Which limit or failure of the model API ended it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_error: Option<ApiError>,
    /// When the limit that ended it resets, as the API (a rate limit's reset headers, seen by the
    /// model proxy) or the CLI (a usage limit's reset time) said: a retry waits until then
    /// instead of its fixed backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// Who pays for a Claude run's tokens, as the worker's model credentials say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<Billing>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl RunOutcome {
    /// The final status this outcome puts the run in.
    pub fn final_status(&self) -> RunStatus {
        match self.stopped {
            Some(StopReason::Timeout) => RunStatus::TimedOut,
            Some(StopReason::Cancelled) => RunStatus::Cancelled,
            Some(StopReason::WorkerShutdown) => RunStatus::Lost,
            Some(StopReason::BudgetExceeded | StopReason::McpServerFailed) => RunStatus::Failed,
            None if self.is_error || self.exit_code != Some(0) => RunStatus::Failed,
            None => RunStatus::Succeeded,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_in_json_read_back_as_they_were_written() {
        // Found by fuzzing the worker protocol: without serde_json's `float_roundtrip`, this
        // number read back one unit off in its last digit, so an event's data changed on the
        // bus.
        for number in [3.5000000000000004e-28, 0.1 + 0.2, f64::MAX, 5e-324] {
            let written = serde_json::json!({ "n": number }).to_string();
            let read: serde_json::Value = serde_json::from_str(&written).unwrap();
            assert_eq!(read["n"].as_f64(), Some(number), "{written}");
        }
    }

    use super::*;

    /// Found with the fuzz target `stream_json` (`fuzz/`): two messages of the CLI's output
    /// reporting `u64::MAX` and 1 input tokens overflowed the run's total (a panic with overflow
    /// checks, a wrapped count without).
    #[test]
    fn usage_totals_saturate() {
        let mut total = TokenUsage {
            input_tokens: u64::MAX,
            ..TokenUsage::default()
        };
        let one = TokenUsage {
            input_tokens: 1,
            output_tokens: 1,
            cache_read_tokens: 1,
            cache_write_tokens: 1,
        };
        total.add(&one);
        assert_eq!(total.input_tokens, u64::MAX);
        assert_eq!(total.output_tokens, 1);
    }

    #[test]
    fn terminal_states_cannot_move() {
        for from in RunStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in RunStatus::ALL {
                assert!(!from.can_move_to(to), "{from} -> {to} must be refused");
            }
        }
        assert!(RunStatus::Queued.can_move_to(RunStatus::Running));
        assert!(RunStatus::Running.can_move_to(RunStatus::Cancelling));
        assert!(RunStatus::Cancelling.can_move_to(RunStatus::Cancelled));
        assert!(!RunStatus::Cancelling.can_move_to(RunStatus::Running));
    }

    #[test]
    fn status_parses_its_own_names_and_names_the_choices_on_error() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>().unwrap(), status);
        }
        let err = "done".parse::<RunStatus>().unwrap_err();
        assert!(err.contains("succeeded"), "{err}");
    }

    #[test]
    fn outcome_maps_to_final_status() {
        let ok = RunOutcome {
            exit_code: Some(0),
            ..Default::default()
        };
        assert_eq!(ok.final_status(), RunStatus::Succeeded);
        let error = RunOutcome {
            exit_code: Some(0),
            is_error: true,
            ..Default::default()
        };
        assert_eq!(error.final_status(), RunStatus::Failed);
        let timeout = RunOutcome {
            stopped: Some(StopReason::Timeout),
            ..Default::default()
        };
        assert_eq!(timeout.final_status(), RunStatus::TimedOut);
    }
}
