//! The dashboard's pages: each module reads through the services and renders one template.
//! What every page shares is here: the frame around it ([`Chrome`]), rendering, and errors as
//! pages.

pub mod compare;
mod job_form;
pub mod jobs;
pub mod overview;
pub mod quick;
pub mod run;
pub mod runs;
pub mod settings;
pub mod tools;
pub mod usage;
pub mod webhooks;

use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::auth::Operator;
use crate::domain::input::InputError;
use crate::domain::ServiceError;
use crate::http::ApiError;

/// What the frame around every signed-in page shows.
pub struct Chrome {
    pub title: String,
    /// The navigation entry of this page.
    pub active: &'static str,
    /// The session's form token, for the forms on the page.
    pub csrf: String,
}

impl Chrome {
    pub fn new(operator: &Operator, active: &'static str, title: impl Into<String>) -> Self {
        Chrome {
            title: title.into(),
            active,
            csrf: operator.csrf_token().to_owned(),
        }
    }
}

/// Why a page could not be shown or a form not taken.
#[derive(Debug)]
pub enum PageError {
    BadRequest(String),
    Forbidden(String),
    Api(ApiError),
}

pub type PageResult<T> = Result<T, PageError>;

impl From<ServiceError> for PageError {
    fn from(err: ServiceError) -> Self {
        PageError::Api(ApiError::from(err))
    }
}

impl From<InputError> for PageError {
    fn from(err: InputError) -> Self {
        PageError::Api(ApiError::from(err))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::BadRequest(message) => error_page(StatusCode::BAD_REQUEST, &message),
            PageError::Forbidden(message) => error_page(StatusCode::FORBIDDEN, &message),
            PageError::Api(err) => error_page(err.status, &err.message),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

/// A page that says what went wrong, with its status.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error"),
        message,
    };
    let mut response = render(&page);
    *response.status_mut() = status;
    response
}

/// Renders a template as an HTML response.
pub fn render<T: Template>(page: &T) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "rendering a dashboard page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                )],
                "internal error; the server log has the details",
            )
                .into_response()
        }
    }
}

/// A redirect after a form was taken (303: the browser follows with GET).
pub fn see_other(location: &str) -> Response {
    axum::response::Redirect::to(location).into_response()
}
