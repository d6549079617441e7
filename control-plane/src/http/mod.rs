//! What the HTTP edges share: the one JSON error shape ([`ApiError`]), the extractors that read
//! JSON bodies and query strings into the services' inputs with errors naming the field, and the
//! shape of OAuth errors.

mod error;
mod json;
pub mod oauth;
pub mod trace;

pub use error::{ApiError, ApiResult};
pub use json::{parse, ApiJson, ApiQuery};

use axum::http::{header, HeaderValue};
use axum::response::Response;

/// Marks a response given before the request's body was read (a refused credential) as the last
/// on its connection. The unread body may still be on its way, so the server cannot reuse the
/// connection; said plainly, the client opens a new one for its next request instead of sending
/// it into a connection that is being closed.
pub fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
