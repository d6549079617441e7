//! `/api/v1/servers` and `/api/v1/credentials`: the MCP server registry and the credentials
//! vault. A credential's value goes in and never comes out.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::AppState;
use crate::http::{ApiJson, ApiResult};
use crate::services::tools::{self, CredentialView, ServerInput, ServerView};

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
