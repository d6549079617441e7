//! `/api/v1/jobs/{id}/memory` and `/api/v1/webhooks/{id}/memory`: an operator reads and changes
//! the memory a job's (or webhook's) runs keep through the `memory` server. Keys may hold `/`,
//! so an entry's key is the rest of its path.

use axum::extract::{MatchedPath, Path, State};
use axum::http::StatusCode;
use axum::Json;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::AppState;
use crate::app::App;
use crate::domain::memory::{MemoryItem, MemoryScope};
use crate::http::{ApiJson, ApiQuery, ApiResult};
use crate::services::{jobs, memory, webhooks};

/// Whose memory a path names: a webhook's under `/webhooks/`, else a job's, by id or name.
async fn scope(app: &App, route: &MatchedPath, id: &str) -> ApiResult<MemoryScope> {
    Ok(match route.as_str().contains("/webhooks/") {
        true => MemoryScope::Webhook(webhooks::find(app, id).await?.id),
        false => MemoryScope::Job(jobs::find(app, id).await?.id),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only keys starting with this.
    #[serde(default)]
    prefix: Option<String>,
    /// Entries whose key or value contains this (values included).
    #[serde(default)]
    search: Option<String>,
}

pub async fn list(
    State(AppState(app)): State<AppState>,
    route: MatchedPath,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let scope = scope(&app, &route, &id).await?;
    let answer = memory::list(&app, &scope, query.prefix, query.search).await?;
    let count = memory::count(&app, &scope).await?;
    let mut body = serde_json::to_value(answer).unwrap_or_default();
    if let Some(object) = body.as_object_mut() {
        object.remove("answer");
        object.insert("count".into(), json!(count));
    }
    Ok(Json(body))
}

pub async fn get(
    State(AppState(app)): State<AppState>,
    route: MatchedPath,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<Json<MemoryItem>> {
    let scope = scope(&app, &route, &id).await?;
    Ok(Json(memory::get(&app, &scope, &key).await?))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    /// Text, at most 64 KiB.
    value: String,
}

pub async fn put(
    State(AppState(app)): State<AppState>,
    route: MatchedPath,
    Path((id, key)): Path<(String, String)>,
    ApiJson(body): ApiJson<PutBody>,
) -> ApiResult<(StatusCode, Json<MemoryItem>)> {
    let scope = scope(&app, &route, &id).await?;
    let created = memory::put(&app, &scope, key.clone(), body.value).await?;
    let status = match created {
        true => StatusCode::CREATED,
        false => StatusCode::OK,
    };
    Ok((status, Json(memory::get(&app, &scope, &key).await?)))
}

pub async fn delete(
    State(AppState(app)): State<AppState>,
    route: MatchedPath,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let scope = scope(&app, &route, &id).await?;
    memory::delete(&app, &scope, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}
