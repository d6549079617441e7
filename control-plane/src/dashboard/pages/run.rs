//! One run: its summary, the live transcript, and what can be done with it (kill, rerun, rerun
//! with edits, replay its webhook payload, copy the transcript as markdown).

use std::convert::Infallible;

use askama::Template;
use autopilot_proto::{EventKind, RunEvent, RunId, RunKind};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use super::{render, see_other, Chrome, PageError, PageResult};
use crate::dashboard::auth::{authorize, Action, Operator, Submitted};
use crate::dashboard::fields::Fields;
use crate::dashboard::format::{count, cut, iso, run_duration, short_id, usd, utc};
use crate::dashboard::transcript::{self, Transcript};
use crate::dashboard::Dashboard;
use crate::domain::approval::{Approval, ApprovalStatus};
use crate::domain::{Run, RunFilter, ServiceError};
use crate::services::approvals::{self, Decision, Via};
use crate::services::{follow, runs, webhooks};

/// Events shown on a run's page at most (the rest: the API's event pages).
const MAX_SHOWN_EVENTS: usize = 20_000;
/// Bytes of a webhook payload shown on the page.
const SHOWN_PAYLOAD_BYTES: usize = 64 * 1024;

fn parse_run_id(id: &str) -> PageResult<RunId> {
    id.parse().map_err(|_| {
        PageError::Api(crate::http::ApiError::not_found(format!(
            "`{id}` is not a run id"
        )))
    })
}

/// The box at the top of a run's page; sent again live whenever the run's state changes.
#[derive(Template)]
#[template(path = "run_summary.html")]
pub struct RunSummary {
    pub id: String,
    pub status: &'static str,
    pub active: bool,
    pub job_id: String,
    pub job: String,
    pub trigger: &'static str,
    pub attempt: u32,
    pub worker: String,
    pub created: String,
    pub created_iso: String,
    pub started: String,
    pub started_iso: String,
    pub finished: String,
    pub finished_iso: String,
    pub duration: String,
    pub cost: String,
    pub tokens_in: String,
    pub tokens_out: String,
    pub cache_read: String,
    pub cache_write: String,
    pub turns: String,
    pub models: String,
    pub denials: u32,
    pub error: String,
    pub trace_id: String,
    pub webhook_id: String,
    pub delivery_id: String,
    pub csrf: String,
    /// The run's tool calls waiting for a decision.
    pub approvals: Vec<WaitingCall>,
}

/// A tool call of the run waiting for approval, as the summary shows it.
pub struct WaitingCall {
    pub id: String,
    pub tool: String,
    pub input: String,
    pub approvers: String,
    pub expires: String,
    pub expires_iso: String,
}

impl WaitingCall {
    fn new(approval: &Approval) -> Self {
        let input = serde_json::to_string_pretty(&approval.input).unwrap_or_default();
        WaitingCall {
            id: approval.id.clone(),
            tool: approval.tool.clone(),
            input: match cut(&input, 4000) {
                (shown, true) => format!("{shown}…"),
                (shown, false) => shown.to_owned(),
            },
            approvers: approval.approvers.join(", "),
            expires: utc(approval.expires_at),
            expires_iso: iso(approval.expires_at),
        }
    }
}

/// The run's summary with its waiting calls (read only while it waits).
pub async fn summary(app: &crate::app::App, run: &Run, csrf: &str) -> RunSummary {
    let mut summary = RunSummary::new(run, csrf);
    if run.status == autopilot_proto::RunStatus::WaitingForApproval {
        match approvals::list(app, Some(ApprovalStatus::Pending), Some(run.id), Some(20)).await {
            Ok(waiting) => summary.approvals = waiting.iter().map(WaitingCall::new).collect(),
            Err(err) => tracing::warn!(error = %err, "reading a run's approvals failed"),
        }
    }
    summary
}

impl RunSummary {
    pub fn new(run: &Run, csrf: &str) -> Self {
        let stamp = |time: Option<chrono::DateTime<chrono::Utc>>| time.map(utc).unwrap_or_default();
        RunSummary {
            id: run.id.to_string(),
            status: run.status.as_str(),
            active: !run.status.is_terminal(),
            job_id: run.job_id.map(|id| id.to_string()).unwrap_or_default(),
            job: run.job_name.clone().unwrap_or_default(),
            trigger: run.trigger.as_str(),
            attempt: run.attempt,
            worker: run.worker_id.clone().unwrap_or_default(),
            created: utc(run.created_at),
            created_iso: iso(run.created_at),
            started: stamp(run.started_at),
            started_iso: run.started_at.map(iso).unwrap_or_default(),
            finished: stamp(run.finished_at),
            finished_iso: run.finished_at.map(iso).unwrap_or_default(),
            duration: run_duration(run.started_at, run.finished_at).unwrap_or_default(),
            cost: run.cost_usd.map(usd).unwrap_or_else(|| "—".into()),
            tokens_in: count(run.usage.input_tokens),
            tokens_out: count(run.usage.output_tokens),
            cache_read: count(run.usage.cache_read_tokens),
            cache_write: count(run.usage.cache_write_tokens),
            turns: run.num_turns.map(|n| n.to_string()).unwrap_or_default(),
            models: run.models.join(", "),
            denials: run.permission_denials,
            error: run.error.clone().unwrap_or_default(),
            trace_id: run
                .trace_parent
                .as_deref()
                .and_then(|parent| parent.split('-').nth(1))
                .unwrap_or_default()
                .to_owned(),
            webhook_id: run.webhook_id.map(|id| id.to_string()).unwrap_or_default(),
            delivery_id: run.delivery_id.clone().unwrap_or_default(),
            csrf: csrf.to_owned(),
            approvals: Vec::new(),
        }
    }

    fn html(&self) -> String {
        self.render().unwrap_or_else(|err| {
            tracing::error!(error = %err, "rendering a run summary failed");
            String::new()
        })
    }
}

/// The request a webhook run came from, as shown.
struct PayloadView {
    content_type: String,
    headers: Vec<(String, String)>,
    body: String,
    shown_bytes: usize,
    body_cut: bool,
    body_bytes: u64,
    truncated: bool,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    chrome: Chrome,
    id: String,
    summary: String,
    kind: &'static str,
    prompt: String,
    transcript: String,
    events_shown: usize,
    more_events: bool,
    last_seq: i64,
    live: bool,
    /// A quick run, which can be saved as a job.
    quick: bool,
    payload: Option<PayloadView>,
    previous_run: String,
}

/// A run's transcript as shown on its page.
struct Rendered {
    html: String,
    shown: usize,
    /// There were more than [`MAX_SHOWN_EVENTS`].
    more: bool,
    last_seq: i64,
}

/// Events read at a time for the page: reading the next ones overlaps rendering these.
const READ_PAGE: u32 = 1000;

/// Renders a run's events, at most [`MAX_SHOWN_EVENTS`], while they are read: a task reads them
/// a page at a time (the store works on its own threads) as the pages before are rendered.
async fn rendered_transcript(dashboard: &Dashboard, id: RunId) -> PageResult<Rendered> {
    let (pages, mut received) = tokio::sync::mpsc::channel::<Vec<RunEvent>>(2);
    let app = dashboard.app.clone();
    let reader = tokio::spawn(async move {
        let mut after = 0;
        let mut read = 0;
        loop {
            let page = runs::events(&app, id, after, READ_PAGE).await?;
            let last_page = page.len() < READ_PAGE as usize;
            read += page.len();
            after = page.last().map_or(after, |event| event.seq);
            // Past the limit, one more page tells whether there were more.
            if page.is_empty()
                || pages.send(page).await.is_err()
                || last_page
                || read > MAX_SHOWN_EVENTS
            {
                return Ok::<_, ServiceError>(());
            }
        }
    });
    let mut transcript = Transcript::new(id);
    let mut rendered = Rendered {
        html: String::with_capacity(256 * 1024),
        shown: 0,
        more: false,
        last_seq: 0,
    };
    while let Some(page) = received.recv().await {
        for event in &page {
            if rendered.shown == MAX_SHOWN_EVENTS {
                rendered.more = true;
                break;
            }
            transcript.render_into(&mut rendered.html, event);
            rendered.shown += 1;
            rendered.last_seq = event.seq;
        }
    }
    reader.await.map_err(|err| {
        ServiceError::Internal(anyhow::anyhow!("reading a run's events: {err}"))
    })??;
    Ok(rendered)
}

/// Every event of a run, up to [`MAX_SHOWN_EVENTS`]; whether there were more.
async fn all_events(dashboard: &Dashboard, id: RunId) -> PageResult<(Vec<RunEvent>, bool)> {
    let mut events: Vec<RunEvent> = Vec::new();
    loop {
        let after = events.last().map_or(0, |event| event.seq);
        let page = runs::events(&dashboard.app, id, after, runs::MAX_EVENTS_PAGE).await?;
        let full = page.len() == runs::MAX_EVENTS_PAGE as usize;
        events.extend(page);
        if events.len() >= MAX_SHOWN_EVENTS {
            events.truncate(MAX_SHOWN_EVENTS);
            return Ok((events, true));
        }
        if !full {
            return Ok((events, false));
        }
    }
}

pub async fn show(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Path(id): Path<String>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let id = parse_run_id(&id)?;
    let run = runs::get(&dashboard.app, id).await?;
    let transcript = rendered_transcript(&dashboard, id).await?;
    let payload = match run.webhook_id {
        Some(_) => match webhooks::payload(&dashboard.app, id).await {
            Ok(payload) => {
                let text = String::from_utf8_lossy(&payload.body);
                let (shown, _) = cut(&text, SHOWN_PAYLOAD_BYTES);
                Some(PayloadView {
                    content_type: payload.content_type,
                    headers: payload.headers,
                    shown_bytes: shown.len(),
                    body_cut: (shown.len() as u64) < payload.body_bytes,
                    body: shown.to_owned(),
                    body_bytes: payload.body_bytes,
                    truncated: payload.truncated,
                })
            }
            Err(ServiceError::NotFound { .. }) => None,
            Err(err) => return Err(err.into()),
        },
        None => None,
    };
    let previous_run = match run.job_id {
        Some(job_id) => runs::list(
            &dashboard.app,
            RunFilter {
                job_id: Some(job_id),
                before: Some(id),
                limit: 1,
                ..Default::default()
            },
        )
        .await?
        .first()
        .map(|previous| previous.id.to_string())
        .unwrap_or_default(),
        None => String::new(),
    };
    let (kind, prompt) = match &run.settings.kind {
        RunKind::Claude(spec) => ("claude", spec.prompt.clone()),
        RunKind::Shell { command, .. } => ("shell", command.clone()),
        RunKind::Http(request) => (
            "http",
            serde_json::to_string_pretty(request).unwrap_or_default(),
        ),
    };
    let page = RunPage {
        chrome: Chrome::new(&operator, "runs", format!("Run {}", short_id(run.id))),
        id: id.to_string(),
        summary: summary(&dashboard.app, &run, operator.csrf_token())
            .await
            .html(),
        kind,
        prompt,
        transcript: transcript.html,
        events_shown: transcript.shown,
        more_events: transcript.more,
        last_seq: transcript.last_seq,
        live: !run.status.is_terminal(),
        quick: run.trigger == autopilot_proto::Trigger::Quick,
        payload,
        previous_run,
    };
    Ok(render(&page))
}

#[derive(Deserialize)]
pub struct LiveQuery {
    #[serde(default)]
    after: i64,
}

/// The run's new events as rendered entries, over SSE. Each entry's id is its sequence number,
/// so a browser that reconnects (`Last-Event-ID`) resumes after the last one it got; a
/// `summary` event carries the run's summary again when its state may have changed, and `end`
/// the final one.
pub async fn live(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Path(id): Path<String>,
    Query(query): Query<LiveQuery>,
    headers: HeaderMap,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let id = parse_run_id(&id)?;
    runs::get(&dashboard.app, id).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<i64>().ok())
        .unwrap_or(query.after)
        .max(0);
    let stream = live_entries(dashboard, id, after, operator.csrf_token().to_owned());
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn live_entries(
    dashboard: Dashboard,
    id: RunId,
    after: i64,
    csrf: String,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let app = dashboard.app.clone();
    let mut transcript = Transcript::new(id);
    follow::events(app.clone(), id, after).then(move |followed| {
        let app = app.clone();
        let csrf = csrf.clone();
        let rendered = match &followed {
            follow::Followed::Event(event) => {
                Some((event.seq, event.kind, transcript.render(event)))
            }
            follow::Followed::End(_) => None,
        };
        async move {
            match (followed, rendered) {
                (follow::Followed::Event(event), Some((seq, kind, html))) => {
                    let mut data = html;
                    // A lifecycle step may change the summary: send it along, in one message.
                    if kind == EventKind::Lifecycle {
                        if let Ok(run) = runs::get(&app, event.run_id).await {
                            data.push_str("\n<!--summary-->\n");
                            data.push_str(&summary(&app, &run, &csrf).await.html());
                        }
                    }
                    // SSE cannot carry a carriage return; HTML does not need one.
                    let data = data.replace('\r', "");
                    Ok(Event::default()
                        .event("entry")
                        .id(seq.to_string())
                        .data(data))
                }
                (follow::Followed::End(run), _) => Ok(Event::default()
                    .event("end")
                    .data(RunSummary::new(&run, &csrf).html().replace('\r', ""))),
                (follow::Followed::Event(_), None) => Ok(Event::default().comment("")),
            }
        }
    })
}

/// One event whole (the transcript shows long ones cut).
pub async fn event(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Path((id, seq)): Path<(String, i64)>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let id = parse_run_id(&id)?;
    let found = runs::events(&dashboard.app, id, seq - 1, 1).await?;
    let Some(event) = found.into_iter().find(|event| event.seq == seq) else {
        return Err(PageError::Api(crate::http::ApiError::not_found(format!(
            "run {id} has no event {seq}"
        ))));
    };
    let text = match &event.data {
        serde_json::Value::Object(object) => match object
            .get("text")
            .or_else(|| object.get("content"))
            .or_else(|| object.get("input"))
        {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(other) => serde_json::to_string_pretty(other).unwrap_or_default(),
            None => serde_json::to_string_pretty(&event.data).unwrap_or_default(),
        },
        other => other.to_string(),
    };
    let page = EventPage {
        chrome: Chrome::new(
            &operator,
            "runs",
            format!("Event {seq} of run {}", short_id(id)),
        ),
        id: id.to_string(),
        seq,
        kind: event.kind.as_str(),
        text,
    };
    Ok(render(&page))
}

#[derive(Template)]
#[template(path = "event.html")]
struct EventPage {
    chrome: Chrome,
    id: String,
    seq: i64,
    kind: &'static str,
    text: String,
}

/// The transcript as markdown, to copy or save.
pub async fn markdown(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Path(id): Path<String>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let id = parse_run_id(&id)?;
    let (events, _) = all_events(&dashboard, id).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/markdown; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&format!("inline; filename=\"run-{id}.md\""))
                    .expect("a run id is a valid header value"),
            ),
        ],
        transcript::to_markdown(&events),
    )
        .into_response())
}

pub async fn kill(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    Submitted { operator, .. }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::Run)?;
    let id = parse_run_id(&id)?;
    runs::kill(&dashboard.app, id).await?;
    Ok(see_other(&format!("/runs/{id}")))
}

/// Approves or denies a waiting tool call (the dashboard's operator may decide any).
pub async fn decide(
    State(dashboard): State<Dashboard>,
    Path((id, verb)): Path<(String, String)>,
    Submitted { operator, form }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::Run)?;
    let approve = match verb.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            return Err(PageError::Api(crate::http::ApiError::not_found(
                "approvals are approved or denied",
            )))
        }
    };
    let reason = form.get("reason").map(str::to_owned);
    let caller = crate::domain::auth::Caller::admin();
    let decided = approvals::decide(
        &dashboard.app,
        &caller,
        &id,
        Decision { approve, reason },
        Via::Direct,
    )
    .await?;
    Ok(see_other(&format!("/runs/{}", decided.run_id)))
}

#[derive(Template)]
#[template(path = "rerun.html")]
struct RerunPage {
    chrome: Chrome,
    id: String,
    shell: bool,
    prompt: String,
    model: String,
    allowed_tools: String,
    error: Option<(String, String)>,
}

async fn rerun_page(
    dashboard: &Dashboard,
    operator: &Operator,
    id: RunId,
    form: Option<&Fields>,
    error: Option<(String, String)>,
) -> PageResult<RerunPage> {
    let run = runs::get(&dashboard.app, id).await?;
    let (shell, prompt, model, allowed_tools) = match &run.settings.kind {
        RunKind::Claude(spec) => (
            false,
            spec.prompt.clone(),
            spec.model.clone().unwrap_or_default(),
            spec.allowed_tools.join("\n"),
        ),
        RunKind::Shell { command, .. } => (true, command.clone(), String::new(), String::new()),
        RunKind::Http(request) => (
            true,
            serde_json::to_string_pretty(request).unwrap_or_default(),
            String::new(),
            String::new(),
        ),
    };
    let given = |name: &str, stored: String| {
        form.and_then(|form| form.get(name).map(str::to_owned))
            .unwrap_or(stored)
    };
    Ok(RerunPage {
        chrome: Chrome::new(operator, "runs", format!("Rerun {}", short_id(id))),
        id: id.to_string(),
        shell,
        prompt: given("prompt", prompt),
        model: given("model", model),
        allowed_tools: given("allowed_tools", allowed_tools),
        error,
    })
}

pub async fn rerun_form(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Path(id): Path<String>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let id = parse_run_id(&id)?;
    Ok(render(
        &rerun_page(&dashboard, &operator, id, None, None).await?,
    ))
}

/// Runs it again: as it was (no fields), or with the edits of the rerun form.
pub async fn rerun(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    Submitted { operator, form }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::Run)?;
    let id = parse_run_id(&id)?;
    let edits = if form.get("edited").is_some() {
        runs::RerunEdits {
            prompt: form.get("prompt").map(str::to_owned),
            model: form.get("model").map(|model| Some(model.to_owned())),
            allowed_tools: form
                .get("allowed_tools")
                .map(|_| form.lines("allowed_tools")),
        }
    } else {
        runs::RerunEdits::default()
    };
    match runs::rerun(&dashboard.app, id, edits).await {
        Ok(new) => Ok(see_other(&format!("/runs/{}", new.id))),
        Err(ServiceError::Invalid { field, message }) => {
            let mut page = render(
                &rerun_page(
                    &dashboard,
                    &operator,
                    id,
                    Some(&form),
                    Some((field, message)),
                )
                .await?,
            );
            *page.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
            Ok(page)
        }
        Err(err) => Err(err.into()),
    }
}

/// Replays the webhook payload the run came from.
pub async fn replay(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    Submitted { operator, .. }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::Run)?;
    let id = parse_run_id(&id)?;
    let new = webhooks::replay(&dashboard.app, id).await?;
    Ok(see_other(&format!("/runs/{}", new.id)))
}
