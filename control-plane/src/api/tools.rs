//! `/api/v1/servers`, `/api/v1/dynamic-servers`, `/api/v1/credentials` and `/api/v1/bundles`:
//! the MCP server registry, dynamic servers' versions, the credentials vault (a value goes in
//! and never comes out) and tool bundles.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::AppState;
use crate::domain::dynamic::Author;
use crate::domain::tools::ToolBundle;
use crate::http::{ApiJson, ApiResult};
use crate::services::tools::dynamic::{self, DynamicInput, VersionView};
use crate::services::tools::oauth_client;
use crate::services::tools::{
    self, AssignInput, BundleInput, CredentialView, ImportInput, ServerInput, ServerView,
    TestedServer,
};

pub async fn list_servers(State(AppState(app)): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "servers": tools::list_servers(&app).await? })))
}

pub async fn register_server(
    State(AppState(app)): State<AppState>,
    ApiJson(input): ApiJson<ServerInput>,
) -> ApiResult<(StatusCode, Json<ServerView>)> {
    Ok((
        StatusCode::CREATED,
        Json(tools::register_server(&app, input).await?),
    ))
}

pub async fn get_server(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ServerView>> {
    Ok(Json(tools::get_server(&app, &name).await?))
}

pub async fn replace_server(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
    ApiJson(input): ApiJson<ServerInput>,
) -> ApiResult<Json<ServerView>> {
    Ok(Json(tools::replace_server(&app, &name, input).await?))
}

/// `POST /api/v1/servers/import`: registers the servers of a `.mcp.json` document.
pub async fn import_servers(
    State(AppState(app)): State<AppState>,
    ApiJson(input): ApiJson<ImportInput>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "imported": tools::import(&app, input).await? }),
    ))
}

/// `POST /api/v1/servers/{name}/test`: asks the server for its tools and updates the list.
pub async fn test_server(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TestedServer>> {
    Ok(Json(tools::test_server(&app, &name).await?))
}

pub async fn delete_server(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    tools::delete_server(&app, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_credentials(State(AppState(app)): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "credentials": tools::list_credentials(&app).await? }),
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialValue {
    /// The secret; stored sealed and never shown again.
    value: String,
}

pub async fn set_credential(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
    ApiJson(input): ApiJson<CredentialValue>,
) -> ApiResult<Json<CredentialView>> {
    Ok(Json(
        tools::set_credential(&app, &name, &input.value).await?,
    ))
}

pub async fn delete_credential(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    tools::delete_credential(&app, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_bundles(State(AppState(app)): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "bundles": tools::list_bundles(&app).await? })))
}

pub async fn create_bundle(
    State(AppState(app)): State<AppState>,
    ApiJson(input): ApiJson<BundleInput>,
) -> ApiResult<(StatusCode, Json<ToolBundle>)> {
    Ok((
        StatusCode::CREATED,
        Json(tools::create_bundle(&app, input).await?),
    ))
}

pub async fn get_bundle(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ToolBundle>> {
    Ok(Json(tools::get_bundle(&app, &name).await?))
}

pub async fn replace_bundle(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
    ApiJson(input): ApiJson<BundleInput>,
) -> ApiResult<Json<ToolBundle>> {
    Ok(Json(tools::replace_bundle(&app, &name, input).await?))
}

pub async fn delete_bundle(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    tools::delete_bundle(&app, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/bundles/{name}/assign` with `{"job": …}` or `{"webhook": …}` (and
/// `"remove": true` to take it away).
pub async fn assign_bundle(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
    ApiJson(target): ApiJson<AssignTarget>,
) -> ApiResult<Json<Value>> {
    let input = AssignInput {
        bundle: name,
        job: target.job,
        webhook: target.webhook,
        remove: target.remove,
    };
    Ok(Json(tools::assign_bundle(&app, input).await?))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignTarget {
    /// A job's id or name.
    #[serde(default)]
    job: Option<String>,
    /// A webhook's id or name.
    #[serde(default)]
    webhook: Option<String>,
    /// Take the bundle away instead.
    #[serde(default)]
    remove: bool,
}

/// `POST /dynamic-servers`: a new version of a dynamic server, written by the operator.
pub async fn save_dynamic_server(
    State(AppState(app)): State<AppState>,
    ApiJson(input): ApiJson<DynamicInput>,
) -> ApiResult<(StatusCode, Json<VersionView>)> {
    let saved = dynamic::save(&app, input, Author::Operator).await?;
    Ok((StatusCode::CREATED, Json(saved)))
}

pub async fn dynamic_versions(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "versions": dynamic::versions(&app, &name).await? }),
    ))
}

pub async fn validate_dynamic_server(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<VersionView>> {
    Ok(Json(dynamic::validate(&app, &name, None).await?))
}

pub async fn approve_dynamic_version(
    State(AppState(app)): State<AppState>,
    Path((name, version)): Path<(String, u32)>,
) -> ApiResult<Json<VersionView>> {
    Ok(Json(dynamic::approve(&app, &name, version).await?))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvokeBody {
    /// The tool's name.
    tool: String,
    /// Its arguments (a JSON object).
    #[serde(default)]
    arguments: Value,
}

/// `POST /servers/{name}/invoke`: one tool called directly, by a worker.
pub async fn invoke_server_tool(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<InvokeBody>,
) -> ApiResult<Json<tools::Invoked>> {
    Ok(Json(
        tools::invoke_tool(&app, &name, &body.tool, body.arguments).await?,
    ))
}

/// `POST /servers/{name}/oauth`: start connecting a remote server with OAuth; answers the URL
/// the operator opens.
pub async fn start_oauth(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<oauth_client::Started>> {
    // No body: Autopilot registers itself; `{"client_id", "client_secret"}`: a given client.
    let given = match body.iter().all(u8::is_ascii_whitespace) {
        true => None,
        false => Some(crate::http::parse::<oauth_client::GivenClient>(&body)?),
    };
    Ok(Json(oauth_client::start(&app, &name, given).await?))
}

/// `POST /servers/{name}/oauth/refresh`: refresh its access token now.
pub async fn refresh_oauth(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ServerView>> {
    let server = tools::find_server(&app, &name).await?;
    oauth_client::refresh(&app, server).await?;
    Ok(Json(tools::get_server(&app, &name).await?))
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// `GET /oauth/servers/callback`: where the authorization server sends the operator's browser
/// back. Admitted by its `state` (unguessable, used once), not the admin token.
pub async fn oauth_callback(
    State(AppState(app)): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<CallbackQuery>,
) -> (StatusCode, axum::response::Html<String>) {
    let page = |status: StatusCode, message: String| {
        let escaped = message
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        (
            status,
            axum::response::Html(format!(
                "<!doctype html><meta charset=utf-8><title>Autopilot</title><p>{escaped}</p>"
            )),
        )
    };
    let (Some(code), Some(state)) = (query.code, query.state) else {
        let reason = query
            .error
            .unwrap_or_else(|| "no code came back".to_owned());
        return page(
            StatusCode::BAD_REQUEST,
            format!("The server was not connected: {reason}."),
        );
    };
    match oauth_client::finish(&app, &state, &code).await {
        Ok(server) => page(
            StatusCode::OK,
            format!("Connected: runs granted `{server}` now reach it. You can close this page."),
        ),
        Err(err) => page(
            StatusCode::BAD_REQUEST,
            format!("The server was not connected: {err}"),
        ),
    }
}
