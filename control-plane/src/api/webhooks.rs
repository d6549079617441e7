//! `/api/v1/webhooks`: managing webhooks (the deliveries themselves are the webhook intake's,
//! `crate::hooks`).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::domain::ServiceError;
use crate::http::{ApiError, ApiJson, ApiResult};
use crate::services::webhooks::{
    self, RotateInput, WebhookInput, WebhookPatch, WebhookSecrets, WebhookView,
};

pub async fn list(State(AppState(app)): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "webhooks": webhooks::list(&app).await? })))
}

pub async fn create(
    State(AppState(app)): State<AppState>,
    ApiJson(input): ApiJson<WebhookInput>,
) -> ApiResult<(StatusCode, Json<WebhookSecrets>)> {
    Ok((
        StatusCode::CREATED,
        Json(webhooks::create(&app, input).await?),
    ))
}

pub async fn get(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookView>> {
    Ok(Json(webhooks::view(
        &app,
        &webhooks::find(&app, &id).await?,
    )))
}

pub async fn update(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<WebhookPatch>,
) -> ApiResult<Json<Value>> {
    let (view, signing_secret) = webhooks::update(&app, &id, patch).await?;
    let mut body = serde_json::to_value(view)
        .map_err(|err| ApiError::from(ServiceError::Internal(anyhow::Error::new(err))))?;
    if let Some(secret) = signing_secret {
        body["signing_secret"] = json!(secret);
    }
    Ok(Json(body))
}

pub async fn delete(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    webhooks::delete(&app, &id).await?;
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
        crate::http::parse(&body)?
    };
    Ok(Json(webhooks::rotate(&app, &id, input).await?))
}
