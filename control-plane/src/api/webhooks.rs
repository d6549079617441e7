//! `/api/v1/webhooks` (managing webhooks, with the admin token) and `POST /hooks/{token}` (the
//! deliveries themselves, authenticated by the secret URL and, when configured, a signature).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::json::ApiJson;
use super::{ApiError, ApiResult, AppState};
use crate::services::webhooks::{
    RotateInput, WebhookInput, WebhookPatch, WebhookSecrets, WebhookView,
};
use crate::webhooks::delivery::DeliveryError;
use crate::webhooks::writer::Submitted;

pub async fn list(State(AppState(app)): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "webhooks": app.list_webhooks().await? })))
}

pub async fn create(
    State(AppState(app)): State<AppState>,
    ApiJson(input): ApiJson<WebhookInput>,
) -> ApiResult<(StatusCode, Json<WebhookSecrets>)> {
    Ok((StatusCode::CREATED, Json(app.create_webhook(input).await?)))
}

pub async fn get(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookView>> {
    Ok(Json(app.webhook_view(&app.find_webhook(&id).await?)))
}

pub async fn update(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<WebhookPatch>,
) -> ApiResult<Json<Value>> {
    let (view, signing_secret) = app.update_webhook(&id, patch).await?;
    let mut body = serde_json::to_value(view).map_err(|err| {
        ApiError::from(crate::error::ServiceError::Internal(anyhow::Error::new(
            err,
        )))
    })?;
    if let Some(secret) = signing_secret {
        body["signing_secret"] = json!(secret);
    }
    Ok(Json(body))
}

pub async fn delete(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.delete_webhook(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/webhooks/{id}/rotate`; the body is optional.
pub async fn rotate(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<WebhookSecrets>> {
    let input: RotateInput = if body.iter().all(u8::is_ascii_whitespace) {
        RotateInput::default()
    } else {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        super::json::parse(&body)?
    };
    Ok(Json(app.rotate_webhook(&id, input).await?))
}

/// `POST /hooks/{token}`: one delivery. `202` with the new run's id once it is stored; `200`
/// with the earlier run's id for a delivery id seen before.
pub async fn deliver(
    State(AppState(app)): State<AppState>,
    Path(token): Path<String>,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match deliver_inner(&app, &token, raw_query, &headers, body).await {
        Ok(response) => response,
        Err(err) => delivery_error(err),
    }
}

async fn deliver_inner(
    app: &crate::app::App,
    token: &str,
    raw_query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, DeliveryError> {
    let live = app
        .webhook_for_token(token)
        .await?
        .ok_or(DeliveryError::NotFound)?;
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
    let submitted = app.accept_delivery(&live, headers, query, body).await?;
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
