//! Who may use the dashboard, and how each request proves it: sign-in with the operator
//! password, the session cookie, the same-origin check on writes, the form token, and
//! [`authorize`], which every action passes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::fields::Fields;
use super::pages::{error_page, render, PageError, PageResult};
use super::Dashboard;
use crate::domain::dashboard::DashboardSession;
use crate::services::sessions;

/// Failed sign-ins one client address may make per window before it must wait.
const FAILURES_PER_ADDRESS: u32 = 5;
/// Failed sign-ins from all addresses together per window (a spray from many addresses).
const FAILURES_IN_ALL: u32 = 50;
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The signed-in operator of a request (put there by [`require_session`]).
#[derive(Clone, Debug)]
pub struct Operator {
    pub session: DashboardSession,
}

impl Operator {
    /// The token this session's forms carry.
    pub fn csrf_token(&self) -> &str {
        &self.session.csrf_token
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Operator>()
            .cloned()
            .ok_or_else(|| Redirect::to("/sign-in").into_response())
    }
}

/// What an operator asks to do. Every handler names its action to [`authorize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read any page (secrets are never on one).
    View,
    /// Create, change, pause or delete jobs.
    EditJobs,
    /// Start, rerun, replay or kill runs.
    Run,
    /// Create, rotate, test or delete webhooks.
    EditWebhooks,
    /// Set or delete credentials, test servers, approve dynamic server versions.
    EditTools,
}

/// The one place that decides whether an operator may do something. There is one role today
/// (the operator may do everything); roles are added here.
pub fn authorize(operator: &Operator, action: Action) -> PageResult<()> {
    let _ = (operator, action);
    Ok(())
}

/// A form submitted by the signed-in operator, whose token (`_csrf`) is the session's: taking
/// one as a handler's last argument is what checks the token. The handler still names its
/// action to [`authorize`].
pub struct Submitted {
    pub operator: Operator,
    pub form: Fields,
}

impl<S: Send + Sync> FromRequest<S> for Submitted {
    type Rejection = Response;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        let Some(operator) = request.extensions().get::<Operator>().cloned() else {
            return Err(Redirect::to("/sign-in").into_response());
        };
        let form = Fields::read(request)
            .await
            .map_err(IntoResponse::into_response)?;
        let given = form.get("_csrf").unwrap_or_default();
        if !crate::tokens::same(given.as_bytes(), operator.csrf_token().as_bytes()) {
            return Err(PageError::Forbidden(
                "the form's token is missing or out of date: reload the page and submit again"
                    .into(),
            )
            .into_response());
        }
        Ok(Submitted { operator, form })
    }
}

/// The session cookie's name: `__Host-` prefixed when the dashboard is served over https (the
/// prefix needs `Secure`, which browsers refuse to store from a plain-http page).
fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-autopilot_session"
    } else {
        "autopilot_session"
    }
}

fn is_secure(dashboard: &Dashboard) -> bool {
    dashboard.app.config.public_url.starts_with("https://")
}

/// The session id the request's cookie carries.
fn session_cookie(headers: &HeaderMap, secure: bool) -> Option<String> {
    let name = cookie_name(secure);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

fn set_cookie(value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure_attribute = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure_attribute}",
        cookie_name(secure)
    ))
    .expect("cookie values are base64url")
}

/// Lets a request through with its [`Operator`] only when its cookie names a live session;
/// anything else goes to the sign-in page (or gets 401, for the live stream and fragments).
pub async fn require_session(
    State(dashboard): State<Dashboard>,
    mut request: Request,
    next: Next,
) -> Response {
    let secure = is_secure(&dashboard);
    let session = match session_cookie(request.headers(), secure) {
        Some(cookie) => sessions::resume(&dashboard.app, &cookie).await,
        None => Ok(None),
    };
    match session {
        Ok(Some(session)) => {
            request.extensions_mut().insert(Operator { session });
            next.run(request).await
        }
        Ok(None) => {
            let wants_page = request.method() == Method::GET
                && request
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|accept| accept.to_str().ok())
                    .is_none_or(|accept| accept.contains("text/html") || accept.contains("*/*"));
            if wants_page {
                let back = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let target = format!(
                    "/sign-in?next={}",
                    form_urlencoded::byte_serialize(back.as_bytes()).collect::<String>()
                );
                Redirect::to(&target).into_response()
            } else {
                error_page(
                    StatusCode::UNAUTHORIZED,
                    "Signed out: sign in again to go on.",
                )
            }
        }
        Err(err) => PageError::from(err).into_response(),
    }
}

/// Refuses a state-changing request that a browser says came from another site. Fetch
/// Metadata (`Sec-Fetch-Site`) decides where the browser sends it; otherwise the `Origin` must
/// be this host. Clients that send neither (not browsers) still need the form token.
pub async fn same_origin_writes(request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let headers = request.headers();
    let verdict = match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("same-origin") | Some("none") => Ok(()),
        Some(other) => Err(format!("a request from another site (`{other}`)")),
        None => match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            None => Ok(()),
            Some(origin) => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let origin_host = origin.split_once("://").map(|(_, rest)| rest);
                if origin_host == Some(host) {
                    Ok(())
                } else {
                    Err(format!("a request from another origin (`{origin}`)"))
                }
            }
        },
    };
    match verdict {
        Ok(()) => next.run(request).await,
        Err(what) => error_page(
            StatusCode::FORBIDDEN,
            &format!("Refused {what}: the dashboard only takes forms from its own pages."),
        ),
    }
}

/// Failed sign-ins per client address, and in all, within the current window.
#[derive(Default)]
pub struct SignInLimits {
    failures: Mutex<Failures>,
}

#[derive(Default)]
struct Failures {
    window_start: Option<Instant>,
    by_address: HashMap<IpAddr, u32>,
    all: u32,
}

impl SignInLimits {
    /// How long `address` must wait before trying again, if it must.
    fn wait(&self, address: Option<IpAddr>) -> Option<Duration> {
        let mut failures = self.failures.lock().expect("sign-in limits lock");
        let start = *failures.window_start.get_or_insert_with(Instant::now);
        let elapsed = start.elapsed();
        if elapsed >= FAILURE_WINDOW {
            *failures = Failures::default();
            return None;
        }
        let by_address = address
            .and_then(|address| failures.by_address.get(&address).copied())
            .unwrap_or(0);
        (by_address >= FAILURES_PER_ADDRESS || failures.all >= FAILURES_IN_ALL)
            .then(|| FAILURE_WINDOW - elapsed)
    }

    fn failed(&self, address: Option<IpAddr>) {
        let mut failures = self.failures.lock().expect("sign-in limits lock");
        failures.window_start.get_or_insert_with(Instant::now);
        failures.all += 1;
        if let Some(address) = address {
            *failures.by_address.entry(address).or_default() += 1;
        }
    }
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    next: String,
    error: Option<String>,
}

/// Where to go after signing in: only a path on this server.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next) if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') => {
            next.to_owned()
        }
        _ => "/".to_owned(),
    }
}

pub async fn sign_in_form(
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    render(&SignInPage {
        next: safe_next(query.get("next").map(String::as_str)),
        error: None,
    })
}

pub async fn sign_in(State(dashboard): State<Dashboard>, request: Request) -> Response {
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let secure = is_secure(&dashboard);
    let previous = session_cookie(request.headers(), secure);
    let form = match Fields::read(request).await {
        Ok(form) => form,
        Err(err) => return err.into_response(),
    };
    let next = safe_next(form.get("next"));
    if let Some(wait) = dashboard.limits.wait(address) {
        let mut response = render(&SignInPage {
            next,
            error: Some(format!(
                "Too many wrong passwords: try again in {} minutes.",
                wait.as_secs().div_ceil(60)
            )),
        });
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
        return response;
    }
    let password = form.get("password").unwrap_or_default();
    match sessions::sign_in(&dashboard.app, password, previous.as_deref()).await {
        Ok(Some(signed_in)) => {
            tracing::info!("dashboard sign-in");
            let mut response = Redirect::to(&next).into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                set_cookie(
                    &signed_in.cookie_value,
                    sessions::MAX_AGE.num_seconds(),
                    secure,
                ),
            );
            response
        }
        Ok(None) => {
            dashboard.limits.failed(address);
            tracing::warn!("dashboard sign-in with a wrong password");
            let mut response = render(&SignInPage {
                next,
                error: Some("That is not the operator password.".into()),
            });
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        }
        Err(err) => PageError::from(err).into_response(),
    }
}

pub async fn sign_out(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Submitted { operator, .. }: Submitted,
) -> Response {
    let secure = is_secure(&dashboard);
    let cookie = session_cookie(&headers, secure);
    if let Err(err) = authorize(&operator, Action::View) {
        return err.into_response();
    }
    if let Some(cookie) = cookie {
        if let Err(err) = sessions::sign_out(&dashboard.app, &cookie).await {
            return PageError::from(err).into_response();
        }
    }
    let mut response = Redirect::to("/sign-in").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie("", 0, secure));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(
            safe_next(Some("/runs?status=failed")),
            "/runs?status=failed"
        );
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn the_cookie_is_host_prefixed_and_secure_over_https_only() {
        let https = set_cookie("abc", 60, true);
        let https = https.to_str().unwrap();
        assert!(
            https.starts_with("__Host-autopilot_session=abc;"),
            "{https}"
        );
        for attribute in ["; Secure", "; HttpOnly", "; SameSite=Strict", "; Path=/"] {
            assert!(https.contains(attribute), "{https}");
        }
        assert!(
            !https.contains("Domain="),
            "__Host- cookies carry no domain"
        );
        let http = set_cookie("abc", 60, false);
        let http = http.to_str().unwrap();
        assert!(
            http.starts_with("autopilot_session=abc;") && !http.contains("Secure"),
            "{http}"
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-autopilot_session=xyz"),
        );
        assert_eq!(session_cookie(&headers, true).as_deref(), Some("xyz"));
        assert_eq!(session_cookie(&headers, false), None);
    }

    #[test]
    fn an_address_waits_after_five_failures_and_others_do_not() {
        let limits = SignInLimits::default();
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..FAILURES_PER_ADDRESS {
            assert!(limits.wait(Some(one)).is_none());
            limits.failed(Some(one));
        }
        assert!(limits.wait(Some(one)).is_some());
        assert!(limits.wait(Some(other)).is_none());
    }
}
