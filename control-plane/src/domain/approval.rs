//! Approval gates: the tools of a job whose every call waits for a person's decision, the
//! record of each such call (who may decide, who did, when), and the rules of deciding.

use autopilot_proto::{ApprovalGate, JobId, RunId};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::Caller;
use super::tools::AccessLevel;

/// Who may decide when a job names nobody: the operator.
pub const OPERATOR: &str = "operator";
/// How long a call waits for a decision when the job does not say.
pub const DEFAULT_TIMEOUT_SECS: u64 = 900;
pub const MIN_TIMEOUT_SECS: u64 = 5;
pub const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
/// The most of a call's input an approval keeps (and shows the approver).
pub const MAX_INPUT_BYTES: usize = 32 * 1024;
/// Longest reason given with a decision.
pub const MAX_REASON_CHARS: usize = 1000;

/// A job's approval gate, as saved with the job (`approval` in its rules).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    /// Tools whose every call waits for approval, in the CLI's names (`Bash`, `Write`,
    /// `mcp__github__merge_pull_request`, or `github:merge_pull_request`), `*` at the end for a
    /// prefix. They are offered to the run even when its allowed tools leave them out.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Access levels (`write`, `admin`, `dangerous`) of the granted servers' tools that wait too;
    /// a `dangerous` tool is offered this way without naming it in the grant's `allow`.
    #[serde(default)]
    pub levels: Vec<AccessLevel>,
    /// Who may decide beside the operator (the admin token, `autopilot mcp`, the dashboard, who
    /// always may): OAuth client ids, whose decisions a person confirms through MCP
    /// elicitation. Default `["operator"]`.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Seconds a call waits before it is denied as timed out (5 to 86400; default 900).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// A channel of a registered `notify` server told when a call waits: the tool, the start
    /// of its input, the deadline and the run's page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<super::handlers::NotifyTarget>,
}

impl ApprovalRule {
    /// Checks the rule and puts tool names in the CLI's form; the error names the field.
    pub fn normalised(mut self) -> Result<Self, (&'static str, String)> {
        if self.tools.is_empty() && self.levels.is_empty() {
            return Err((
                "approval",
                "name the `tools` or the access `levels` whose calls wait for approval".to_owned(),
            ));
        }
        if self.tools.len() > 100 {
            return Err(("approval.tools", "at most 100 tools".to_owned()));
        }
        for tool in &mut self.tools {
            let name = autopilot_worker::command::normalise_tool_name(tool);
            if name.is_empty() || name == "*" || name.contains(char::is_whitespace) {
                return Err((
                    "approval.tools",
                    format!("`{tool}` is not a tool name (e.g. `Bash`, `github:create_issue`)"),
                ));
            }
            *tool = name;
        }
        if self.levels.contains(&AccessLevel::Read) {
            return Err((
                "approval.levels",
                "`read` tools never wait for approval; name `write`, `admin` or `dangerous`"
                    .to_owned(),
            ));
        }
        if self.approvers.is_empty() {
            self.approvers.push(OPERATOR.to_owned());
        }
        for approver in &self.approvers {
            let ok = !approver.trim().is_empty()
                && approver.len() <= 200
                && !approver.chars().any(char::is_control);
            if !ok {
                return Err((
                    "approval.approvers",
                    format!("`{approver}` is not `operator` nor an OAuth client id"),
                ));
            }
        }
        let timeout = self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(MIN_TIMEOUT_SECS..=MAX_TIMEOUT_SECS).contains(&timeout) {
            return Err((
                "approval.timeout_secs",
                format!("must be between {MIN_TIMEOUT_SECS} and {MAX_TIMEOUT_SECS} seconds"),
            ));
        }
        self.timeout_secs = Some(timeout);
        Ok(self)
    }

    pub fn timeout_secs(&self) -> u64 {
        self.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS)
    }

    /// What a run of the job carries: the named tools now, the levels resolved at claim.
    pub fn gate(&self) -> ApprovalGate {
        ApprovalGate {
            tools: self.tools.clone(),
            levels: self
                .levels
                .iter()
                .map(|level| level_name(*level).to_owned())
                .collect(),
            timeout_secs: self.timeout_secs(),
        }
    }

    /// Whether `caller` may decide, and whether a person must confirm it through elicitation
    /// (an OAuth client, where the model acts). `None`: not an approver.
    pub fn may_decide(&self, caller: &Caller) -> Option<Confirmation> {
        may_decide(&self.approvers, caller)
    }
}

/// How a decision by an approver stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Confirmation {
    /// The operator: the decision stands as made.
    Direct,
    /// An OAuth client: a person confirms it through an elicitation form.
    ByPerson,
}

/// Whether `caller` is one of `approvers` (see [`ApprovalRule::may_decide`]). The operator
/// always is: they could change the job's approvers anyway.
pub fn may_decide(approvers: &[String], caller: &Caller) -> Option<Confirmation> {
    if caller.is_operator() {
        return Some(Confirmation::Direct);
    }
    approvers
        .iter()
        .any(|a| a == &caller.subject)
        .then_some(Confirmation::ByPerson)
}

pub fn level_name(level: AccessLevel) -> &'static str {
    match level {
        AccessLevel::Read => "read",
        AccessLevel::Write => "write",
        AccessLevel::Admin => "admin",
        AccessLevel::Dangerous => "dangerous",
    }
}

/// Where an approval stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    /// Nobody decided in time: the call was denied.
    TimedOut,
    /// The run ended (killed, lost, timed out) while the call waited.
    Closed,
}

impl ApprovalStatus {
    pub const ALL: [ApprovalStatus; 5] = [
        ApprovalStatus::Pending,
        ApprovalStatus::Approved,
        ApprovalStatus::Denied,
        ApprovalStatus::TimedOut,
        ApprovalStatus::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::TimedOut => "timed_out",
            ApprovalStatus::Closed => "closed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// The error for a state that is none of [`ApprovalStatus::ALL`], for the field `status`.
pub fn unknown_status(text: &str) -> super::ServiceError {
    let known: Vec<&str> = ApprovalStatus::ALL.iter().map(|s| s.as_str()).collect();
    super::ServiceError::invalid(
        "status",
        format!(
            "`{text}` is not an approval status; use {}",
            known.join(", ")
        ),
    )
}

/// One tool call that waited (or waits) for approval.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct Approval {
    pub id: String,
    pub run_id: RunId,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The CLI's name of the tool.
    pub tool: String,
    /// The call's input (cut to [`MAX_INPUT_BYTES`] when larger).
    pub input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    /// Who may decide.
    pub approvers: Vec<String>,
    pub status: ApprovalStatus,
    pub requested_at: DateTime<Utc>,
    /// When it is denied if nobody decides.
    pub expires_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    /// Who decided (`operator`, an OAuth client id with `(confirmed by a person)`, or
    /// `autopilot` for a timeout or a run's end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Approval {
    /// The input as kept: whole when small, else its JSON cut, as a string.
    pub fn kept_input(input: Value) -> Value {
        let text = input.to_string();
        if text.len() <= MAX_INPUT_BYTES {
            return input;
        }
        let mut end = MAX_INPUT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Value::String(format!(
            "{}… (cut at {MAX_INPUT_BYTES} bytes)",
            &text[..end]
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::auth::Scopes;

    fn rule(json: serde_json::Value) -> Result<ApprovalRule, (&'static str, String)> {
        serde_json::from_value::<ApprovalRule>(json)
            .unwrap()
            .normalised()
    }

    #[test]
    fn a_rule_is_checked_and_its_names_put_in_the_cli_form() {
        let ok = rule(serde_json::json!({"tools": ["Bash", "github:merge*"]})).unwrap();
        assert_eq!(ok.tools, ["Bash", "mcp__github__merge*"]);
        assert_eq!(ok.approvers, [OPERATOR]);
        assert_eq!(ok.timeout_secs(), DEFAULT_TIMEOUT_SECS);
        assert_eq!(rule(serde_json::json!({})).unwrap_err().0, "approval");
        assert_eq!(
            rule(serde_json::json!({"levels": ["read"]})).unwrap_err().0,
            "approval.levels"
        );
        assert_eq!(
            rule(serde_json::json!({"tools": ["Bash"], "timeout_secs": 1}))
                .unwrap_err()
                .0,
            "approval.timeout_secs"
        );
        assert!(serde_json::from_value::<ApprovalRule>(serde_json::json!({"tool": []})).is_err());
        let gate = rule(serde_json::json!({"levels": ["dangerous"], "timeout_secs": 60}))
            .unwrap()
            .gate();
        assert_eq!(gate.levels, ["dangerous"]);
        assert_eq!(gate.timeout_secs, 60);
    }

    #[test]
    fn the_operator_decides_directly_and_an_oauth_client_through_a_person() {
        let approvers = vec![OPERATOR.to_owned(), "claude-ai".to_owned()];
        assert_eq!(
            may_decide(&approvers, &Caller::admin()),
            Some(Confirmation::Direct)
        );
        let client = |subject: &str| Caller {
            subject: subject.into(),
            scopes: Scopes::ALL,
        };
        assert_eq!(
            may_decide(&approvers, &client("claude-ai")),
            Some(Confirmation::ByPerson)
        );
        assert_eq!(may_decide(&approvers, &client("other")), None);
        assert_eq!(
            may_decide(&["claude-ai".into()], &Caller::admin()),
            Some(Confirmation::Direct),
            "the operator always may"
        );
    }

    #[test]
    fn a_large_input_is_kept_cut() {
        let big = serde_json::json!({"content": "x".repeat(MAX_INPUT_BYTES * 2)});
        let kept = Approval::kept_input(big);
        assert!(kept.as_str().unwrap().ends_with("bytes)"));
        let small = serde_json::json!({"command": "ls"});
        assert_eq!(Approval::kept_input(small.clone()), small);
    }
}
