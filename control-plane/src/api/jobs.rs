use autopilot_proto::JobId;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::json::{ApiJson, ApiQuery};
use super::{ApiResult, AppState};
use crate::model::Run;
use crate::services::jobs::{preview_schedule, JobInput, JobPatch, JobView};

pub async fn list(State(AppState(app)): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "jobs": app.list_jobs().await? })))
}

pub async fn create(
    State(AppState(app)): State<AppState>,
    ApiJson(input): ApiJson<JobInput>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    Ok((StatusCode::CREATED, Json(app.create_job(input).await?)))
}

/// Jobs are addressed by id or by name.
async fn resolve(app: &crate::app::App, id_or_name: &str) -> ApiResult<JobId> {
    Ok(app.find_job(id_or_name).await?.id)
}

pub async fn get(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobView>> {
    // One read: the job found by id or name is the one shown.
    Ok(Json(JobView::from(&app.find_job(&id).await?)))
}

pub async fn update(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<JobPatch>,
) -> ApiResult<Json<JobView>> {
    let id = resolve(&app, &id).await?;
    Ok(Json(app.update_job(id, patch).await?))
}

pub async fn delete(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = resolve(&app, &id).await?;
    app.delete_job(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn trigger(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    // One read: the job found by id or name is the one run.
    let job = app.find_job(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(app.trigger_job(job).await?)))
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
    let fires: Vec<DateTime<Utc>> = app
        .next_fires(id, query.count.unwrap_or(5).clamp(1, 100))
        .await?;
    Ok(Json(json!({ "next_fires": fires })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewInput {
    schedule: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    count: Option<usize>,
}

pub async fn preview(ApiJson(input): ApiJson<PreviewInput>) -> ApiResult<Json<Value>> {
    let fires = preview_schedule(
        &input.schedule,
        input.timezone.as_deref(),
        input.count.unwrap_or(5).clamp(1, 100),
    )?;
    Ok(Json(json!({ "next_fires": fires })))
}
