//! `/api/v1/runs` (with a run's events, followed live as Server-Sent Events) and
//! `/api/v1/quick-run`.

use std::convert::Infallible;
use std::time::Duration;

use autopilot_proto::{RunEvent, RunId};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::AppState;
use crate::domain::Run;
use crate::http::{ApiError, ApiJson, ApiQuery, ApiResult};
use crate::services::follow::{self, Followed};
use crate::services::runs::{self, QuickRunInput, RunPage, RunQuery};
use crate::services::webhooks;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    job_id: Option<String>,
    /// Only runs started by this webhook (id or name).
    #[serde(default)]
    webhook: Option<String>,
    /// One status or several, comma-separated.
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
    /// The last run id of the previous page.
    #[serde(default)]
    before: Option<String>,
}

fn parse_run_id(text: &str) -> ApiResult<RunId> {
    text.parse()
        .map_err(|_| ApiError::not_found(format!("run `{text}` not found (run ids are UUIDs)")))
}

pub async fn list(
    State(AppState(app)): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let statuses = query
        .status
        .as_deref()
        .map(|list| list.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let RunPage { runs, next_before } = runs::page(
        &app,
        RunQuery {
            job: query.job_id,
            webhook: query.webhook,
            statuses,
            before: query.before,
            limit: query.limit.unwrap_or(50),
        },
    )
    .await?;
    Ok(Json(json!({ "runs": runs, "next_before": next_before })))
}

pub async fn get(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Run>> {
    Ok(Json(runs::get(&app, parse_run_id(&id)?).await?))
}

/// The request a webhook run came from.
pub async fn payload(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let run_id = parse_run_id(&id)?;
    let run = runs::get(&app, run_id).await?;
    let payload = webhooks::payload(&app, run_id).await?;
    let header_list: Vec<Value> = payload
        .headers
        .iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
    let mut body = json!({
        "run_id": run.id,
        "webhook_id": run.webhook_id,
        "delivery_id": run.delivery_id,
        "content_type": payload.content_type,
        "headers": header_list,
        "query": payload.query.iter().map(|(name, value)| json!({ "name": name, "value": value })).collect::<Vec<_>>(),
        "body_bytes": payload.body_bytes,
        "truncated": payload.truncated,
    });
    match String::from_utf8(payload.body) {
        Ok(text) => body["body"] = json!(text),
        Err(err) => {
            use base64::Engine;
            body["body_base64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(err.into_bytes()))
        }
    }
    Ok(Json(body))
}

/// A new run from a webhook run's stored payload, through the webhook's current settings.
pub async fn replay(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(webhooks::replay(&app, parse_run_id(&id)?).await?),
    ))
}

pub async fn kill(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(runs::kill(&app, parse_run_id(&id)?).await?),
    ))
}

pub async fn quick_run(
    State(AppState(app)): State<AppState>,
    ApiJson(input): ApiJson<QuickRunInput>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(runs::quick_run(&app, input).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a larger sequence number.
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<u32>,
}

/// The run's events as JSON, or followed live as Server-Sent Events when the client accepts
/// `text/event-stream` (resumable with `Last-Event-ID`).
pub async fn events(
    State(AppState(app)): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    let run_id = parse_run_id(&id)?;
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if !wants_stream {
        let events = runs::events(
            &app,
            run_id,
            query.after.unwrap_or(0),
            query.limit.unwrap_or(1000),
        )
        .await?;
        return Ok(Json(json!({ "events": events })).into_response());
    }
    runs::get(&app, run_id).await?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let after = last_event_id.or(query.after).unwrap_or(0);
    let stream = follow::events(app, run_id, after).map(|followed| {
        Ok::<_, Infallible>(match followed {
            Followed::Event(event) => to_sse(&event),
            Followed::End(run) => Event::default()
                .event("end")
                .json_data(json!({ "status": run.status, "run_id": run.id }))
                .unwrap_or_default(),
        })
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn to_sse(event: &RunEvent) -> Event {
    Event::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .json_data(event)
        .unwrap_or_else(|_| {
            Event::default()
                .id(event.seq.to_string())
                .event("error")
                .data("unserializable event")
        })
}
