//! A JSON body extractor whose errors name the field that was wrong.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::domain::input;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + JsonSchema,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "the request body is larger than 1 MiB",
                    )
                } else {
                    ApiError::bad_request(format!("could not read the request body: {rejection}"))
                }
            })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body into a service input; errors name the field.
pub fn parse<T: DeserializeOwned + JsonSchema>(bytes: &[u8]) -> Result<T, ApiError> {
    input::from_slice(bytes).map_err(ApiError::from)
}

/// A query-string extractor whose errors use the API's JSON error shape.
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|query| ApiQuery(query.0))
            .map_err(|rejection| {
                let text = rejection.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_owned();
                // serde's path comes first: `colour: unknown field …`, `limit: invalid digit …`.
                let field = detail
                    .split_once(": ")
                    .map(|(path, _)| path.to_owned())
                    .filter(|path| !path.contains(' '));
                let error = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    format!("query string: {detail}"),
                );
                match field {
                    Some(field) => error.field(field),
                    None => error,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::jobs::JobInput;
    use crate::services::webhooks::WebhookPatch;

    #[test]
    fn unknown_and_mistyped_fields_are_named() {
        let err =
            parse::<JobInput>(br#"{"name":"a","prompt":"p","shedule":"* * * * *"}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("shedule"));
        assert!(err.message.contains("expected one of"), "{}", err.message);
        let err =
            parse::<JobInput>(br#"{"name":"a","prompt":"p","max_turns":"many"}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("max_turns"));
        let err = parse::<JobInput>(br#"{"name":"a","retry":{"count":1,"bogus":2}}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("retry.bogus"));
        let err = parse::<JobInput>(b"{not json").unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let err = parse::<JobInput>(br#"{"prompt":"p"}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("name"));
        let err = parse::<WebhookPatch>(br#"{"max_turns":0.5}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("max_turns"));
        let err = parse::<WebhookPatch>(br#"{"sandbox":{"cpus":"x"}}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("sandbox.cpus"));
    }
}
