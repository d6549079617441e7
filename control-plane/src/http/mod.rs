//! What the HTTP edges share: the one JSON error shape ([`ApiError`]), the extractors that read
//! JSON bodies and query strings into the services' inputs with errors naming the field, and the
//! shape of OAuth errors.

mod error;
mod json;
pub mod oauth;

pub use error::{ApiError, ApiResult};
pub use json::{parse, ApiJson, ApiQuery};
