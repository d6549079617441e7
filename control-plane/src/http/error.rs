//! `ApiError`: the one JSON error shape of the HTTP API.
//!
//! ```json
//! { "error": { "code": "invalid_field", "message": "…", "field": "schedule" } }
//! ```

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::input::InputError;
use crate::domain::ServiceError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Invalid { field, message } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("{field}: {message}"),
            )
            .field(field),
            ServiceError::NotFound { what, id } => {
                ApiError::not_found(format!("{what} `{id}` not found"))
            }
            ServiceError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            ServiceError::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            ServiceError::Unavailable(message) => {
                tracing::warn!(error = %message, "request failed on a temporary condition");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "temporarily unavailable; try again shortly",
                )
            }
            ServiceError::StorageFull => {
                tracing::error!("a write was refused: the disk holding the database is full");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_full",
                    "the disk holding Autopilot's database is full, so nothing was stored; \
                     send again once the operator has freed space",
                )
            }
            ServiceError::Internal(err) => {
                // Logged once here, never sent to the client.
                tracing::error!(error = ?err, "request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the server log has the details",
                )
            }
        }
    }
}

impl From<InputError> for ApiError {
    fn from(err: InputError) -> Self {
        match err {
            InputError::Syntax(message) => ApiError::bad_request(message),
            InputError::Invalid { field, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
                    .field(field)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "code": self.code, "message": self.message });
        if let Some(field) = &self.field {
            body["field"] = json!(field);
        }
        let mut response = (self.status, axum::Json(json!({ "error": body }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
