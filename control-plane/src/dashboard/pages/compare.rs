//! Two runs side by side: their settings, outcome, tokens, cost and duration, and their
//! transcripts. Given one run, it is compared with the run of its job before it.

use std::collections::HashMap;

use askama::Template;
use autopilot_proto::{RunId, RunKind};
use axum::extract::{Query, State};
use axum::response::Response;

use super::{render, Chrome, PageError, PageResult};
use crate::dashboard::auth::{authorize, Action, Operator};
use crate::dashboard::format::{count, run_duration, short_id, usd, utc};
use crate::dashboard::transcript::render_events;
use crate::dashboard::Dashboard;
use crate::domain::{Run, RunFilter, ServiceError};
use crate::services::runs;

/// Events of each run shown side by side.
const SHOWN_EVENTS: u32 = 2000;

struct Side {
    id: String,
    title: String,
    transcript: String,
}

struct Row {
    label: &'static str,
    a: String,
    b: String,
    differs: bool,
}

#[derive(Template)]
#[template(path = "compare.html")]
struct ComparePage {
    chrome: Chrome,
    a: Side,
    b: Side,
    rows: Vec<Row>,
}

fn facts(run: &Run) -> Vec<(&'static str, String)> {
    let (prompt, model, tools) = match &run.settings.kind {
        RunKind::Claude(spec) => (
            spec.prompt.clone(),
            spec.model.clone().unwrap_or_else(|| "(CLI default)".into()),
            spec.allowed_tools.join(", "),
        ),
        RunKind::Shell { command, .. } => (command.clone(), String::new(), String::new()),
        RunKind::Http(request) => (
            serde_json::to_string_pretty(request).unwrap_or_default(),
            String::new(),
            String::new(),
        ),
    };
    vec![
        ("Job", run.job_name.clone().unwrap_or_default()),
        ("Trigger", run.trigger.as_str().to_owned()),
        ("Created", utc(run.created_at)),
        ("Status", run.status.as_str().to_owned()),
        ("Error", run.error.clone().unwrap_or_default()),
        ("Prompt", prompt),
        ("Model asked", model),
        ("Models used", run.models.join(", ")),
        ("Allowed tools", tools),
        (
            "Servers",
            run.settings
                .grants
                .iter()
                .map(|g| g.server.clone())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "Duration",
            run_duration(run.started_at, run.finished_at).unwrap_or_default(),
        ),
        (
            "Turns",
            run.num_turns.map(|n| n.to_string()).unwrap_or_default(),
        ),
        ("Input tokens", count(run.usage.input_tokens)),
        ("Output tokens", count(run.usage.output_tokens)),
        ("Cache read tokens", count(run.usage.cache_read_tokens)),
        ("Cost", run.cost_usd.map(usd).unwrap_or_default()),
        ("Permission denials", run.permission_denials.to_string()),
    ]
}

fn run_id(query: &HashMap<String, String>, key: &str) -> PageResult<Option<RunId>> {
    match query
        .get(key)
        .map(|id| id.trim())
        .filter(|id| !id.is_empty())
    {
        None => Ok(None),
        Some(id) => id
            .parse()
            .map(Some)
            .map_err(|_| ServiceError::invalid(key, format!("`{id}` is not a run id")).into()),
    }
}

async fn side(dashboard: &Dashboard, run: &Run) -> PageResult<Side> {
    let events = runs::events(&dashboard.app, run.id, 0, SHOWN_EVENTS).await?;
    Ok(Side {
        id: run.id.to_string(),
        title: format!(
            "{} · {} · {}",
            short_id(run.id),
            run.status.as_str(),
            utc(run.created_at)
        ),
        transcript: render_events(run.id, &events),
    })
}

pub async fn show(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let app = &dashboard.app;
    let Some(a_id) = run_id(&query, "a")? else {
        return Err(PageError::BadRequest(
            "name a run to compare: /runs/compare?a=<run id>&b=<run id>".into(),
        ));
    };
    let a = runs::get(app, a_id).await?;
    let b = match run_id(&query, "b")? {
        Some(b_id) => runs::get(app, b_id).await?,
        None => {
            let previous = match a.job_id {
                Some(job_id) => runs::list(
                    app,
                    RunFilter {
                        job_id: Some(job_id),
                        before: Some(a.id),
                        limit: 1,
                        ..Default::default()
                    },
                )
                .await?
                .into_iter()
                .next(),
                None => None,
            };
            previous.ok_or_else(|| {
                PageError::BadRequest(format!(
                    "run {a_id} has no earlier run of its job to compare with: name one with `b`"
                ))
            })?
        }
    };
    let rows = facts(&a)
        .into_iter()
        .zip(facts(&b))
        .map(|((label, a), (_, b))| Row {
            label,
            differs: a != b,
            a,
            b,
        })
        .collect();
    Ok(render(&ComparePage {
        chrome: Chrome::new(&operator, "runs", "Compare runs"),
        a: side(&dashboard, &a).await?,
        b: side(&dashboard, &b).await?,
        rows,
    }))
}
