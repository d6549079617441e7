//! `/api/v1/approvals`: tool calls of runs that wait for (or had) an operator's decision, and
//! the decision itself. The API is the operator's (admin token), who may decide every approval.

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::AppState;
use crate::domain::approval::{unknown_status, Approval, ApprovalStatus};
use crate::domain::auth::Caller;
use crate::domain::ServiceError;
use crate::http::{ApiQuery, ApiResult};
use crate::services::approvals::{self, Decision, Via};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `pending`, `approved`, `denied`, `timed_out` or `closed`.
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/v1/approvals[?status=pending][&run_id=…][&limit=…]`, newest first.
pub async fn list(
    State(AppState(app)): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let status = query
        .status
        .map(|text| ApprovalStatus::parse(&text).ok_or_else(|| unknown_status(&text)))
        .transpose()?;
    let run_id = query
        .run_id
        .map(|id| {
            id.parse()
                .map_err(|_| ServiceError::invalid("run_id", format!("`{id}` is not a run id")))
        })
        .transpose()?;
    let approvals = approvals::list(&app, status, run_id, query.limit).await?;
    Ok(Json(json!({ "approvals": approvals })))
}

pub async fn get(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Approval>> {
    Ok(Json(approvals::get(&app, &id).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    /// Why, for the record (and, on a denial, for the model).
    #[serde(default)]
    reason: Option<String>,
}

/// The body is optional: none, or `{"reason": "…"}`.
fn decision(approve: bool, body: &Bytes) -> Result<Decision, ServiceError> {
    let body: DecisionBody = match body.iter().all(u8::is_ascii_whitespace) {
        true => DecisionBody::default(),
        false => serde_json::from_slice(body).map_err(|err| {
            ServiceError::invalid("body", format!("expected {{\"reason\": \"…\"}}: {err}"))
        })?,
    };
    Ok(Decision {
        approve,
        reason: body.reason,
    })
}

/// `POST /api/v1/approvals/{id}/approve` and `POST /api/v1/approvals/{id}/deny`.
pub async fn decide(
    State(AppState(app)): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, verb)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Approval>> {
    let approve = match verb.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            return Err(crate::http::ApiError::not_found(format!(
                "`{verb}` is not a decision: POST …/approve or …/deny"
            )))
        }
    };
    let decision = decision(approve, &body)?;
    Ok(Json(
        approvals::decide(&app, &caller, &id, decision, Via::Direct).await?,
    ))
}
