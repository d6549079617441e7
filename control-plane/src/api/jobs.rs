//! `/api/v1/jobs`, `/api/v1/schedule/preview` and the hook tokens jobs' `on_hook` events come
//! with (`/api/v1/hook-tokens`).

use autopilot_proto::JobId;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::AppState;
use crate::app::App;
use crate::domain::Run;
use crate::http::{ApiJson, ApiQuery, ApiResult};
use crate::services::jobs::{self, preview_schedule, JobInput, JobPatch, JobView, PreviewInput};
use crate::services::{hook_events, rules};

pub async fn list(State(AppState(app)): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "jobs": jobs::list(&app).await? })))
}

pub async fn create(
    State(AppState(app)): State<AppState>,
    ApiJson(input): ApiJson<JobInput>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    Ok((StatusCode::CREATED, Json(jobs::create(&app, input).await?)))
}

/// Jobs are addressed by id or by name.
async fn resolve(app: &App, id_or_name: &str) -> ApiResult<JobId> {
    Ok(jobs::find(app, id_or_name).await?.id)
}

pub async fn get(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    // One read: the job found by id or name is the one shown.
    Ok(Json(JobView::from(&jobs::find(&app, &id).await?)))
}

pub async fn update(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<JobPatch>,
) -> ApiResult<Json<JobView>> {
    let id = resolve(&app, &id).await?;
    Ok(Json(jobs::update(&app, id, patch).await?))
}

pub async fn delete(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = resolve(&app, &id).await?;
    jobs::delete(&app, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn trigger(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    // One read: the job found by id or name is the one run.
    let job = jobs::find(&app, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(jobs::trigger(&app, job).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountQuery {
    #[serde(default)]
    count: Option<usize>,
}

pub async fn next_fires(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<CountQuery>,
) -> ApiResult<Json<Value>> {
    let id = resolve(&app, &id).await?;
    let fires: Vec<DateTime<Utc>> =
        jobs::next_fires(&app, id, query.count.unwrap_or(5).clamp(1, 100)).await?;
    Ok(Json(json!({ "next_fires": fires })))
}

/// A job's fires that started no run (a condition or a budget held them back), newest first.
pub async fn skipped_fires(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<CountQuery>,
) -> ApiResult<Json<Value>> {
    let job = jobs::find(&app, &id).await?;
    let limit = query
        .count
        .unwrap_or(50)
        .clamp(1, rules::MAX_SKIPS_PAGE as usize) as u32;
    Ok(Json(
        json!({ "skipped_fires": rules::list_skipped(&app, &job, limit).await? }),
    ))
}

/// A new hook token (`{"name": …}`), its secret shown once.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HookTokenInput {
    name: String,
}

pub async fn create_hook_token(
    State(AppState(app)): State<AppState>,
    ApiJson(input): ApiJson<HookTokenInput>,
) -> ApiResult<(StatusCode, Json<hook_events::NewHookToken>)> {
    Ok((
        StatusCode::CREATED,
        Json(hook_events::create_token(&app, &input.name).await?),
    ))
}

pub async fn list_hook_tokens(State(AppState(app)): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "hook_tokens": hook_events::list_tokens(&app).await? }),
    ))
}

pub async fn delete_hook_token(
    State(AppState(app)): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    hook_events::delete_token(&app, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn preview(ApiJson(input): ApiJson<PreviewInput>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "next_fires": preview_schedule(&input)? })))
}
