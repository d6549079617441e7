//! `POST /hook-events`: Claude Code hook events that `autopilot hook` forwards from a
//! developer's sessions, with a hook token (`Authorization: Bearer aph_…`), which admits this and
//! nothing else. `202` with the runs started, `200` when none (no job answers the event, or each
//! already ran within its debounce window).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::HooksState;
use crate::http::ApiError;
use crate::services::hook_events::{self, MAX_EVENT_BYTES};
use crate::tokens;

pub(super) async fn receive(
    State(state): State<HooksState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match receive_inner(&state, &headers, &body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn receive_inner(
    state: &HooksState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let refused = || {
        ApiError::unauthorized(
            "send a hook token as `Authorization: Bearer aph_…` (create one with POST \
             /api/v1/hook-tokens; give it to `autopilot hook` as AUTOPILOT_HOOK_TOKEN)",
        )
    };
    let secret = tokens::bearer(headers).ok_or_else(refused)?;
    let token = hook_events::token_name(&state.app, secret)
        .await?
        .ok_or_else(refused)?;
    if body.len() > MAX_EVENT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the event is {} bytes; the limit is {MAX_EVENT_BYTES}",
                body.len()
            ),
        ));
    }
    let event: Value = serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request(format!(
            "the body is not JSON ({err}): send the JSON Claude Code gives the hook on standard input"
        ))
    })?;
    let receipt = hook_events::receive(&state.app, &state.subscribers, &token, event).await?;
    let status = if receipt.runs.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(receipt)).into_response())
}
