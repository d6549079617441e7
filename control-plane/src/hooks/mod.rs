//! The webhook intake: `POST /hooks/{token}`, authenticated by the secret URL and, when the
//! webhook asks for one, a signature. A delivery is checked (size, content type, signature, rate
//! limit, the bound on queued work), turned into a run (`crate::services::webhooks::delivery`)
//! and handed to the delivery writer ([`writer`]), which stores deliveries in batches: one
//! transaction for every delivery that arrived while the previous batch was being written. The
//! answer waits for that commit, so a `202` is never given for a run that could be lost.
//!
//! Claude Code's hook events, forwarded by `autopilot hook`, come in at `POST /hook-events`
//! ([`claude_code`]).

mod claude_code;
mod intake;
pub mod writer;

pub use intake::Intake;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::app::App;
use crate::http::ApiError;
use crate::services::hook_events::Subscribers;
use crate::services::webhooks::delivery::DeliveryError;
use writer::Submitted;

#[derive(Clone)]
struct HooksState {
    app: Arc<App>,
    intake: Arc<Intake>,
    /// The jobs answering Claude Code hook events, as last read.
    subscribers: Arc<Subscribers>,
}

/// `POST /hooks/{token}` (the body limit is each webhook's own, checked here) and
/// `POST /hook-events` (Claude Code hook events, [`claude_code`]).
pub fn router(app: Arc<App>, intake: Arc<Intake>) -> Router {
    Router::new()
        .route("/hooks/{token}", post(deliver))
        .route("/hook-events", post(claude_code::receive))
        .with_state(HooksState {
            app,
            intake,
            subscribers: Arc::default(),
        })
}

/// One delivery. `202` with the new run's id once it is stored; `200` with the earlier run's id
/// for a delivery id seen before.
async fn deliver(
    State(state): State<HooksState>,
    Path(token): Path<String>,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut webhook = String::new();
    let response =
        match deliver_inner(&state, &token, raw_query, &headers, body, &mut webhook).await {
            Ok(response) => response,
            Err(err) => delivery_error(err),
        };
    let outcome = match response.status() {
        StatusCode::ACCEPTED => "accepted".to_owned(),
        StatusCode::OK => "duplicate".to_owned(),
        refused => refused.as_u16().to_string(),
    };
    state.app.metrics.webhook_delivery(&webhook, &outcome);
    response
}

async fn deliver_inner(
    state: &HooksState,
    token: &str,
    raw_query: Option<String>,
    headers: &HeaderMap,
    body: Body,
    webhook_name: &mut String,
) -> Result<Response, DeliveryError> {
    let live = state
        .intake
        .webhook(&state.app, token)
        .await?
        .ok_or(DeliveryError::NotFound)?;
    webhook_name.clone_from(&live.webhook.name);
    let limit = live.max_body_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(DeliveryError::TooLarge { limit });
    }
    let body = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|_| DeliveryError::TooLarge { limit })?;
    let query = raw_query
        .map(|raw| {
            form_urlencoded::parse(raw.as_bytes())
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let submitted = state.intake.accept(&live, headers, query, body).await?;
    let webhook = &live.webhook;
    let (status, run_id, duplicate) = match submitted {
        Submitted::Created(run) => (StatusCode::ACCEPTED, run.id, false),
        Submitted::Duplicate(run_id) => (StatusCode::OK, run_id, true),
    };
    let answer = json!({
        "run_id": run_id,
        "status": if duplicate { "duplicate" } else { "queued" },
        "duplicate": duplicate,
        "webhook": webhook.name,
    });
    let mut response = (status, Json(answer)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/runs/{run_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The answer to a refused delivery. 5xx causes are logged once, never sent.
fn delivery_error(err: DeliveryError) -> Response {
    let err = match err {
        DeliveryError::Service(err) => return ApiError::from(err).into_response(),
        other => other,
    };
    let retry_after = match &err {
        DeliveryError::RateLimited { retry_after_secs }
        | DeliveryError::QueueFull { retry_after_secs } => Some(*retry_after_secs),
        _ => None,
    };
    let (status, code) = match &err {
        // Answered above.
        DeliveryError::Service(_) | DeliveryError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        DeliveryError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        DeliveryError::UnsupportedMediaType(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        }
        DeliveryError::Signature(_) => (StatusCode::UNAUTHORIZED, "invalid_signature"),
        DeliveryError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        DeliveryError::QueueFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
        DeliveryError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        DeliveryError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
    };
    let api_error = ApiError::new(status, code, err.to_string());
    let mut response = api_error.into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if response.status() == StatusCode::UNAUTHORIZED {
        // A signature failure is not a bearer-token challenge.
        response.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    response
}
