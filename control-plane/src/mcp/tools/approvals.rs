//! The approval tools: list the tool calls that wait for a decision, and decide one. The
//! operator's connection decides directly. A connection through OAuth (claude.ai, where the
//! model acts) decides only through a person: the call answers with an elicitation form
//! (MCP 2026-07-28 input requests, which work without a session), and the person's answer in
//! that form is the decision, whatever the model asked for.

use std::collections::BTreeMap;

use rmcp::model::{
    CallToolResponse, InputRequest, InputRequiredResult, JsonObject, ProtocolVersion,
};
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{input, object, parse, parse_run_id, success, to_value, Failure, Outcome, Spec};
use crate::app::App;
use crate::domain::approval::{may_decide, unknown_status, Approval, ApprovalStatus, Confirmation};
use crate::domain::auth::Caller;
use crate::services::approvals::{self, Decision, Via};

/// The key of the elicitation in the input requests (and of its answer).
const FORM: &str = "decision";

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ListArgs {
    /// Only approvals in this state: pending (default), approved, denied, timed_out, closed, or
    /// `all`.
    #[serde(default)]
    status: Option<String>,
    /// Only those of this run.
    #[serde(default)]
    run_id: Option<String>,
    /// At most this many, newest first (1 to 500; default 50).
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DecideArgs {
    /// The approval's id (`apr_…`; list_approvals shows them).
    approval_id: String,
    /// `approve` or `deny`. Through OAuth, a person confirms or changes it in a form.
    decision: String,
    /// Why (kept with the decision; a denial's reason is shown to the run's model).
    #[serde(default)]
    reason: Option<String>,
}

pub(super) fn specs() -> Vec<Spec> {
    vec![
        Spec {
            name: "list_approvals",
            title: "List approvals",
            description: "Lists tool calls of runs that wait for a person's approval (jobs with \
                an `approval` gate), newest first: the tool, its input, the run, who may \
                decide and until when. Example: {\"status\": \"pending\"}",
            input: input::<ListArgs>(),
            output: object(
                json!({ "approvals": { "type": "array", "items": { "type": "object" } } }),
                &["approvals"],
            ),
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "decide_approval",
            title: "Approve or deny a tool call",
            description: "Approves or denies one waiting tool call of a run; the run goes on \
                at once. From claude.ai and other OAuth connections the user is asked to \
                confirm in a form (MCP elicitation), and their answer is the decision. \
                Example: {\"approval_id\": \"apr_…\", \"decision\": \"approve\"}",
            input: input::<DecideArgs>(),
            output: object(json!({ "approval": { "type": "object" } }), &["approval"]),
            read_only: false,
            destructive: false,
            idempotent: false,
            open_world: false,
        },
    ]
}

pub(super) async fn list(app: &App, args: JsonObject) -> Outcome {
    let ListArgs {
        status,
        run_id,
        limit,
    } = parse(args)?;
    let status = match status.as_deref().map(str::trim) {
        None | Some("") | Some("pending") => Some(ApprovalStatus::Pending),
        Some("all") => None,
        Some(text) => Some(ApprovalStatus::parse(text).ok_or_else(|| unknown_status(text))?),
    };
    let run_id = run_id
        .as_deref()
        .map(|id| parse_run_id("run_id", id))
        .transpose()?;
    let found = approvals::list(app, status, run_id, limit).await?;
    let summary = match found.len() {
        0 => "No approvals match.".to_owned(),
        n => {
            let lines: Vec<String> = found.iter().map(line).collect();
            format!("{n} approval(s):\n{}", lines.join("\n"))
        }
    };
    success(summary, json!({ "approvals": to_value(&found)? }))
}

fn line(approval: &Approval) -> String {
    format!(
        "- {} {} `{}` (run {}, until {})",
        approval.id,
        approval.status.as_str(),
        approval.tool,
        approval.run_id,
        approval.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// `decide_approval`: direct for the operator; through a form for an OAuth approver.
pub(super) async fn decide(
    app: &App,
    caller: &Caller,
    args: JsonObject,
    input_responses: Option<BTreeMap<String, Value>>,
    request_state: Option<String>,
    context: &RequestContext<RoleServer>,
) -> Result<CallToolResponse, Failure> {
    let DecideArgs {
        approval_id,
        decision,
        reason,
    } = parse(args)?;
    let approve = match decision.trim() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(Failure::invalid(
                "decision",
                format!("`{other}` is neither `approve` nor `deny`"),
            ))
        }
    };
    let approval = approvals::get(app, &approval_id).await?;
    let confirmation = may_decide(&approval.approvers, caller);
    if confirmation != Some(Confirmation::ByPerson) {
        // The operator, or someone who may not decide (the service says so).
        let decided = approvals::decide(
            app,
            caller,
            &approval_id,
            Decision { approve, reason },
            Via::Direct,
        )
        .await?;
        return decided_result(&decided).map(Into::into);
    }
    // A person answers in a form. First the form; then, on the retried call, their answer.
    let answer = input_responses.and_then(|mut responses| responses.remove(FORM));
    let Some(answer) = answer else {
        if !offers_forms(context) {
            return Err(Failure::Message(format!(
                "a decision from this connection must be confirmed by a person in a form (MCP \
                 elicitation with protocol 2026-07-28), which this client does not offer; ask \
                 the user to decide on Autopilot's dashboard or with POST \
                 /api/v1/approvals/{}/approve (or /deny)",
                approval.id
            )));
        }
        return Ok(form(&approval, approve)?.into());
    };
    if request_state.as_deref() != Some(approval.id.as_str()) {
        return Err(Failure::Message(
            "the form's answer belongs to another approval; call decide_approval again".to_owned(),
        ));
    }
    let action = answer
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let content = answer.get("content").cloned().unwrap_or(Value::Null);
    let chosen = content.get("decision").and_then(Value::as_str);
    let (approve, reason) = match (action, chosen) {
        ("accept", Some("approve")) => (true, text(&content, "reason")),
        ("accept", Some("deny")) => (false, text(&content, "reason")),
        _ => {
            return success(
                format!(
                    "The user did not decide; approval {} still waits (until {}).",
                    approval.id, approval.expires_at
                ),
                json!({ "approval": to_value(&approval)? }),
            )
            .map(Into::into)
        }
    };
    let decided = approvals::decide(
        app,
        caller,
        &approval_id,
        Decision { approve, reason },
        Via::Elicitation,
    )
    .await?;
    decided_result(&decided).map(Into::into)
}

fn text(content: &Value, field: &str) -> Option<String> {
    content
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Whether this request's client shows elicitation forms inside a call: protocol 2026-07-28 or
/// later (input requests, no session needed) and the elicitation capability.
fn offers_forms(context: &RequestContext<RoleServer>) -> bool {
    let modern = context
        .protocol_version()
        .is_some_and(|version| version.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
    let forms = context
        .client_capabilities()
        .and_then(|capabilities| capabilities.elicitation)
        .is_some_and(|elicitation| elicitation.form.is_some() || elicitation.url.is_none());
    modern && forms
}

/// The form a person answers: the call, and approve or deny.
fn form(approval: &Approval, proposed: bool) -> Result<InputRequiredResult, Failure> {
    let input = serde_json::to_string_pretty(&approval.input).unwrap_or_default();
    let message = format!(
        "Run {} wants to call `{}` with:\n{input}\nClaude proposes to {} it. Approve or deny it \
         (it is denied at {} if nobody decides).",
        approval.run_id,
        approval.tool,
        if proposed { "approve" } else { "deny" },
        approval.expires_at.format("%H:%M:%S UTC")
    );
    let request = json!({
        "method": "elicitation/create",
        "params": {
            "mode": "form",
            "message": message,
            "requestedSchema": {
                "type": "object",
                "properties": {
                    "decision": {
                        "type": "string",
                        "title": "Decision",
                        "enum": ["approve", "deny"],
                    },
                    "reason": {
                        "type": "string",
                        "title": "Reason (optional)",
                    },
                },
                "required": ["decision"],
            },
        },
    });
    let request: InputRequest = serde_json::from_value(request)
        .map_err(|err| Failure::Message(format!("could not build the form: {err}")))?;
    let mut requests = BTreeMap::new();
    requests.insert(FORM.to_owned(), request);
    // The approval lives in the store: the state is only its id, checked on the way back.
    Ok(InputRequiredResult::new(
        Some(requests),
        Some(approval.id.clone()),
    ))
}

fn decided_result(approval: &Approval) -> Outcome {
    success(
        format!(
            "Approval {} is {} by {}; the run goes on.",
            approval.id,
            approval.status.as_str(),
            approval.decided_by.as_deref().unwrap_or("?")
        ),
        json!({ "approval": to_value(approval)? }),
    )
}
