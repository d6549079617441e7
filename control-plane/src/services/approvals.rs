//! Approval gates at work: a run's tool call that waits for a person (asked by its worker for
//! the run's `approval` server), the decision (through the API, MCP or the dashboard), and the
//! timeout. The run is `waiting_for_approval` while any of its calls waits, and `running` again
//! once none does. Every decision is recorded with who made it and when, on the approval and as
//! an event of the run.
//!
//! The worker asks again about a pending approval every second until it is decided (see
//! `autopilot_worker::memory_relay`): whichever replica answers reads the store, so a decision
//! made on any replica reaches the run, and a decision past the deadline is refused.

use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::{
    ApprovalAnswer, ApprovalAsk, RunId, RunKind, RunStatus, WorkerId, WorkerReply,
};
use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::domain::approval::{
    may_decide, Approval, ApprovalStatus, Confirmation, DEFAULT_TIMEOUT_SECS, MAX_REASON_CHARS,
    OPERATOR,
};
use crate::domain::auth::Caller;
use crate::domain::handlers::NotifyTarget;
use crate::domain::{Run, ServiceError, ServiceResult};
use crate::services::channels;

/// Who decides a timeout or a run's end.
const AUTOPILOT: &str = "autopilot";
/// Why a call was denied when nobody decided.
const NOBODY_DECIDED: &str = "nobody decided in time";
/// How often pending approvals are looked at for a deadline passed or a run ended (the worker's
/// own questions usually find it first).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// A decision as an approver gives it.
#[derive(Clone, Debug)]
pub struct Decision {
    pub approve: bool,
    pub reason: Option<String>,
}

/// How the decision reached Autopilot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Via {
    /// The API, the dashboard, or the operator's MCP connection.
    Direct,
    /// An MCP client's elicitation form, which a person answered.
    Elicitation,
}

/// The answer to a run's question about a tool call (`WorkerRequest::Approval`).
pub async fn ask(
    app: &Arc<App>,
    run_id: RunId,
    attempt: u32,
    worker_id: &WorkerId,
    ask: ApprovalAsk,
) -> ServiceResult<WorkerReply> {
    let Some(run) = held_run(app, run_id, attempt, worker_id).await? else {
        return Ok(rejected());
    };
    if run.status == RunStatus::Cancelling {
        return Ok(deny(
            None,
            "the run is being stopped; the call was not made",
        ));
    }
    let rule = match run.job_id {
        Some(job_id) => app
            .store
            .get_job(job_id)
            .await?
            .and_then(|job| job.rules.approval),
        None => None,
    };
    let approvers = rule
        .as_ref()
        .map(|rule| rule.approvers.clone())
        .unwrap_or_else(|| vec![OPERATOR.to_owned()]);
    let timeout = match &run.settings.kind {
        RunKind::Claude(claude) => claude.approval.as_ref().map(|gate| gate.timeout_secs),
        _ => None,
    }
    .unwrap_or(DEFAULT_TIMEOUT_SECS);
    let now = Utc::now();
    let approval = Approval {
        id: format!("apr_{}", uuid::Uuid::now_v7().simple()),
        run_id,
        attempt,
        job_id: run.job_id,
        tool: ask.tool,
        input: Approval::kept_input(ask.input),
        tool_use_id: ask.tool_use_id,
        approvers,
        status: ApprovalStatus::Pending,
        requested_at: now,
        expires_at: now + chrono::Duration::seconds(i64::try_from(timeout).unwrap_or(i64::MAX)),
        decided_at: None,
        decided_by: None,
        reason: None,
    };
    app.store.insert_approval(&approval).await?;
    let event = run.control_event(json!({
        "step": "approval_requested",
        "approval_id": approval.id,
        "tool": approval.tool,
        "input": approval.input,
        "approvers": approval.approvers,
        "expires_at": approval.expires_at,
    }));
    let job_name = run.job_name.clone();
    if !set_waiting(app, run, event).await? {
        // The run moved on (a kill) between the read and the write: the call is not made.
        let reason = Some("the run is no longer running");
        settle(app, &approval, ApprovalStatus::Closed, AUTOPILOT, reason).await?;
        return Ok(deny(
            Some(approval.id),
            "the run is no longer running; the call was not made",
        ));
    }
    tracing::info!(run.id = %run_id, approval.id = %approval.id, tool = %approval.tool, "a tool call waits for approval");
    if let Some(target) = rule.and_then(|rule| rule.notify) {
        tell(app, target, &approval, job_name.as_deref());
    }
    Ok(WorkerReply::Approval {
        answer: ApprovalAnswer::Pending {
            approval_id: approval.id,
        },
    })
}

/// Tells `target`'s channel that `approval` waits, on a task of its own (the worker's question
/// is answered at once), and records how that went as the run's event.
fn tell(app: &Arc<App>, target: NotifyTarget, approval: &Approval, job: Option<&str>) {
    let title = format!("Approval needed: {}", job.unwrap_or("a quick run"));
    let input = channels::excerpt(&approval.input.to_string());
    let text = format!(
        "Run {} waits to call `{}` with: {input}\nDecide before {} on {}/runs/{} (or POST \
         /api/v1/approvals/{}/approve or /deny); it is denied if nobody does.",
        approval.run_id,
        approval.tool,
        approval.expires_at.format("%Y-%m-%d %H:%M:%S UTC"),
        app.config.public_url,
        approval.run_id,
        approval.id,
    );
    let (app, run_id, approval_id) = (Arc::clone(app), approval.run_id, approval.id.clone());
    tokio::spawn(async move {
        let sent = channels::post(&app, &target, &title, &text, &run_id.to_string()).await;
        let mut data = json!({
            "step": "approval_notified",
            "approval_id": approval_id,
            "channel": format!("{}/{}", target.server, target.channel),
            "delivered": sent.is_ok(),
        });
        if let Err((_, why)) = &sent {
            tracing::warn!(run.id = %run_id, error = %why, "telling a channel about a waiting call failed");
            data["error"] = json!(why);
        }
        if let Ok(Some(run)) = app.store.get_run(run_id).await {
            let _ = app.store.append_events(&[run.control_event(data)]).await;
            app.notify_run(run_id);
        }
    });
}

/// Where an approval the run asked for stands (`WorkerRequest::ApprovalStatus`); one past its
/// deadline is denied as timed out now.
pub async fn status(
    app: &App,
    run_id: RunId,
    attempt: u32,
    worker_id: &WorkerId,
    approval_id: &str,
) -> ServiceResult<WorkerReply> {
    let Some(run) = held_run(app, run_id, attempt, worker_id).await? else {
        return Ok(rejected());
    };
    let Some(mut approval) = app
        .store
        .get_approval(approval_id)
        .await?
        .filter(|approval| approval.run_id == run_id && approval.attempt == attempt)
    else {
        return Ok(rejected());
    };
    if approval.status == ApprovalStatus::Pending {
        let ending = if run.status == RunStatus::Cancelling {
            Some((ApprovalStatus::Closed, "the run is being stopped"))
        } else if approval.expires_at <= Utc::now() {
            Some((ApprovalStatus::TimedOut, NOBODY_DECIDED))
        } else {
            None
        };
        if let Some((status, reason)) = ending {
            settle(app, &approval, status, AUTOPILOT, Some(reason)).await?;
            approval = app
                .store
                .get_approval(approval_id)
                .await?
                .unwrap_or(approval);
        }
    }
    Ok(WorkerReply::Approval {
        answer: answer_of(&approval),
    })
}

fn answer_of(approval: &Approval) -> ApprovalAnswer {
    let id = Some(approval.id.clone());
    let reason = approval
        .reason
        .as_deref()
        .map(|reason| format!(": {reason}"))
        .unwrap_or_default();
    let by = approval.decided_by.clone().unwrap_or_default();
    match approval.status {
        ApprovalStatus::Pending => ApprovalAnswer::Pending {
            approval_id: approval.id.clone(),
        },
        ApprovalStatus::Approved => ApprovalAnswer::Allow {
            approval_id: approval.id.clone(),
            by,
        },
        ApprovalStatus::Denied => ApprovalAnswer::Deny {
            approval_id: id,
            message: format!("{by} denied this call{reason}. Do not try to make it another way."),
        },
        ApprovalStatus::TimedOut => ApprovalAnswer::Deny {
            approval_id: id,
            message: "nobody approved this call in time, so it was not made".to_owned(),
        },
        ApprovalStatus::Closed => ApprovalAnswer::Deny {
            approval_id: id,
            message: format!("the call was not made{reason}"),
        },
    }
}

/// An approver's decision on approval `id`. The operator decides directly; an OAuth client
/// named among the approvers only through a person's elicitation answer.
pub async fn decide(
    app: &App,
    caller: &Caller,
    id: &str,
    decision: Decision,
    via: Via,
) -> ServiceResult<Approval> {
    let approval = get(app, id).await?;
    let by = match may_decide(&approval.approvers, caller) {
        None => {
            return Err(ServiceError::Forbidden(format!(
                "`{}` may not decide approval `{id}`; its approvers are {} (and the operator)",
                caller.subject,
                approval.approvers.join(", ")
            )))
        }
        Some(Confirmation::ByPerson) if via != Via::Elicitation => {
            return Err(ServiceError::Forbidden(format!(
                "a decision through this connection must be confirmed by a person in an \
                 elicitation form; decide on Autopilot's dashboard or with POST \
                 /api/v1/approvals/{id}/approve (or /deny)"
            )))
        }
        Some(Confirmation::ByPerson) => format!("{} (confirmed by a person)", caller.subject),
        Some(Confirmation::Direct) => match caller.subject.as_str() {
            "admin" | "stdio" => OPERATOR.to_owned(),
            other => other.to_owned(),
        },
    };
    let reason = decision
        .reason
        .map(|reason| reason.trim().to_owned())
        .filter(|reason| !reason.is_empty());
    if reason
        .as_ref()
        .is_some_and(|reason| reason.chars().count() > MAX_REASON_CHARS)
    {
        return Err(ServiceError::invalid(
            "reason",
            format!("at most {MAX_REASON_CHARS} characters"),
        ));
    }
    if approval.status != ApprovalStatus::Pending {
        return Err(already(&approval));
    }
    if approval.expires_at <= Utc::now() {
        time_out(app, &approval).await?;
        return Err(ServiceError::Conflict(format!(
            "approval `{id}` timed out at {}; the call was denied",
            approval.expires_at
        )));
    }
    let status = match decision.approve {
        true => ApprovalStatus::Approved,
        false => ApprovalStatus::Denied,
    };
    if !settle(app, &approval, status, &by, reason.as_deref()).await? {
        return Err(already(&get(app, id).await?));
    }
    tracing::info!(approval.id = %id, run.id = %approval.run_id, decision = status.as_str(), by = %by, "a tool call was decided");
    get(app, id).await
}

fn already(approval: &Approval) -> ServiceError {
    ServiceError::Conflict(format!(
        "approval `{}` is already {}{}",
        approval.id,
        approval.status.as_str(),
        approval
            .decided_by
            .as_deref()
            .map(|by| format!(" (by {by})"))
            .unwrap_or_default()
    ))
}

pub async fn get(app: &App, id: &str) -> ServiceResult<Approval> {
    app.store
        .get_approval(id)
        .await?
        .ok_or_else(|| ServiceError::NotFound {
            what: "approval",
            id: id.to_owned(),
        })
}

/// Approvals, newest first: those in `status`, of `run` when given.
pub async fn list(
    app: &App,
    status: Option<ApprovalStatus>,
    run_id: Option<RunId>,
    limit: Option<u32>,
) -> ServiceResult<Vec<Approval>> {
    let limit = limit.unwrap_or(50).clamp(1, 500);
    Ok(app.store.list_approvals(status, run_id, limit).await?)
}

/// Records `status` on a pending approval and the run's event, and sets the run running again
/// when no other call of it waits. `false` when someone decided first.
async fn settle(
    app: &App,
    approval: &Approval,
    status: ApprovalStatus,
    by: &str,
    reason: Option<&str>,
) -> ServiceResult<bool> {
    let now = Utc::now();
    if !app
        .store
        .decide_approval(&approval.id, status, by, reason, now)
        .await?
    {
        return Ok(false);
    }
    let Some(run) = app.store.get_run(approval.run_id).await? else {
        return Ok(true);
    };
    let event = run.control_event(json!({
        "step": "approval_decided",
        "approval_id": approval.id,
        "tool": approval.tool,
        "decision": status.as_str(),
        "by": by,
        "reason": reason,
        "waited_ms": (now - approval.requested_at).num_milliseconds(),
    }));
    let still_waiting = !app
        .store
        .list_approvals(Some(ApprovalStatus::Pending), Some(run.id), 1)
        .await?
        .is_empty();
    if run.status == RunStatus::WaitingForApproval
        && run.attempt == approval.attempt
        && !still_waiting
    {
        let mut resumed = run.clone();
        resumed.status = RunStatus::Running;
        if app
            .store
            .update_run(
                &resumed,
                RunStatus::WaitingForApproval,
                run.attempt,
                std::slice::from_ref(&event),
            )
            .await?
        {
            app.notify_run(run.id);
            return Ok(true);
        }
    }
    app.store.append_events(&[event]).await?;
    app.notify_run(run.id);
    Ok(true)
}

/// Denies a pending approval whose deadline passed.
async fn time_out(app: &App, approval: &Approval) -> ServiceResult<bool> {
    let reason = Some(NOBODY_DECIDED);
    settle(app, approval, ApprovalStatus::TimedOut, AUTOPILOT, reason).await
}

/// `running → waiting_for_approval` with `event` (or only the event when another call already
/// waits). `false` when the run is neither.
async fn set_waiting(
    app: &App,
    run: Run,
    event: autopilot_proto::NewRunEvent,
) -> ServiceResult<bool> {
    match run.status {
        RunStatus::Running => {
            let mut waiting = run.clone();
            waiting.status = RunStatus::WaitingForApproval;
            let written = app
                .store
                .update_run(&waiting, RunStatus::Running, run.attempt, &[event])
                .await?;
            if written {
                app.notify_run(run.id);
            }
            Ok(written)
        }
        RunStatus::WaitingForApproval => {
            app.store.append_events(&[event]).await?;
            app.notify_run(run.id);
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The run when `worker_id` executes its attempt `attempt`.
async fn held_run(
    app: &App,
    run_id: RunId,
    attempt: u32,
    worker_id: &WorkerId,
) -> ServiceResult<Option<Run>> {
    Ok(app
        .store
        .get_run(run_id)
        .await?
        .filter(|run| run.is_held_by(attempt, worker_id.as_str())))
}

fn rejected() -> WorkerReply {
    WorkerReply::Rejected {
        reason: "the run is not running on this worker at this attempt".to_owned(),
    }
}

fn deny(approval_id: Option<String>, message: &str) -> WorkerReply {
    WorkerReply::Approval {
        answer: ApprovalAnswer::Deny {
            approval_id,
            message: message.to_owned(),
        },
    }
}

/// Times out pending approvals past their deadline and closes those whose run ended, every few
/// seconds, on every replica (a decision is a compare-and-set: doing it twice is harmless).
pub async fn run_sweeper(app: Arc<App>, cancel: CancellationToken) -> anyhow::Result<()> {
    loop {
        if let Err(err) = sweep(&app).await {
            tracing::warn!(error = %err, "looking at pending approvals failed; retrying");
            app.metrics.error("approvals");
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

async fn sweep(app: &App) -> ServiceResult<()> {
    let now = Utc::now();
    for approval in app.store.expired_approvals(now, 100).await? {
        time_out(app, &approval).await?;
    }
    let pending = app
        .store
        .list_approvals(Some(ApprovalStatus::Pending), None, 200)
        .await?;
    for approval in pending {
        let ended = match app.store.get_run(approval.run_id).await? {
            None => true,
            Some(run) => run.status.is_terminal() || run.attempt != approval.attempt,
        };
        if ended {
            settle(
                app,
                &approval,
                ApprovalStatus::Closed,
                AUTOPILOT,
                Some("the run ended"),
            )
            .await?;
        }
    }
    Ok(())
}
