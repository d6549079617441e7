//! Jobs: the list (next fire in the job's zone and the viewer's, the last runs' statuses, the
//! enabled switch, run now), a job's page, and the editor (every field of the API, inline
//! errors, a live preview of the next fires with daylight-saving warnings).

use std::collections::HashMap;

use askama::Template;
use autopilot_proto::JobId;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;

use super::runs::RunRow;
use super::{render, see_other, Chrome, PageError, PageResult};
use crate::dashboard::auth::{authorize, Action, Operator, Submitted};
use crate::dashboard::format::{in_zone, iso, relative, utc};
use crate::dashboard::Dashboard;
use crate::domain::input::{from_value, InputError};
use crate::domain::job::{MisfirePolicy, OverlapPolicy};
use crate::domain::{RunFilter, ServiceError};
use crate::services::jobs::{self, JobInput, JobPatch, JobView, PreviewInput};
use crate::services::{runs, tools};

use super::job_form::{JobForm, BUILT_IN_TOOLS};

/// Runs shown in each job's strip.
const STRIP: u32 = 20;
/// Jobs on one page of the list.
const JOBS_PAGE: usize = 100;

struct JobRow {
    id: String,
    name: String,
    description: String,
    kind: &'static str,
    schedule: String,
    timezone: String,
    enabled: bool,
    next_iso: String,
    next_zone: String,
    next_relative: String,
    strip: Vec<(String, &'static str)>,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    chrome: Chrome,
    jobs: Vec<JobRow>,
    query: String,
    /// Jobs matching the query, on all pages.
    matching: usize,
    previous_page: Option<String>,
    next_page: Option<String>,
}

fn jobs_page_link(query: &str, page: usize) -> String {
    let mut link = form_urlencoded::Serializer::new(String::new());
    if !query.is_empty() {
        link.append_pair("q", query);
    }
    link.append_pair("page", &page.to_string());
    format!("/jobs?{}", link.finish())
}

fn schedule_text(job: &JobView) -> String {
    let when = match (&job.schedule, job.at, &job.every) {
        (Some(cron), _, _) => cron.clone(),
        (None, Some(at), _) => format!("once at {}", utc(at)),
        (None, None, Some(every)) => format!("every {every}"),
        (None, None, None) if job.chain.is_some() => String::new(),
        (None, None, None) => "manual".to_owned(),
    };
    match &job.chain {
        Some(chain) if when.is_empty() => {
            format!("after {} job(s), on {:?}", chain.after.len(), chain.on).to_lowercase()
        }
        Some(chain) => format!("{when}; after {} job(s)", chain.after.len()),
        None => when,
    }
}

/// A page of jobs, filtered by `q` (name or description) and paged by `page` (from 1).
pub async fn list(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Query(params): Query<HashMap<String, String>>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let app = &dashboard.app;
    let query = params
        .get("q")
        .map(|q| q.trim().to_owned())
        .unwrap_or_default();
    let page: usize = match params.get("page").map(String::as_str) {
        None | Some("") => 1,
        Some(page) => page.parse().ok().filter(|page| *page >= 1).ok_or_else(|| {
            ServiceError::invalid("page", format!("`{page}` is not a page number (1, 2, …)"))
        })?,
    };
    let (all, count) = jobs::search(app, &query, (page - 1) * JOBS_PAGE, JOBS_PAGE).await?;
    let now = Utc::now();
    // The strips: one small read per job through the (job_id, id) index, a few at a time.
    let strips = futures::future::try_join_all(all.iter().map(|job| {
        runs::list(
            app,
            RunFilter {
                job_id: Some(job.id),
                limit: STRIP,
                ..Default::default()
            },
        )
    }))
    .await?;
    let rows = all
        .iter()
        .zip(strips)
        .map(|(job, recent)| JobRow {
            id: job.id.to_string(),
            name: job.name.clone(),
            description: job.description.clone().unwrap_or_default(),
            kind: job.kind.as_str(),
            schedule: schedule_text(job),
            timezone: job.timezone.clone(),
            enabled: job.enabled,
            next_iso: job.next_fire_at.map(iso).unwrap_or_default(),
            next_zone: job
                .next_fire_at
                .map(|at| in_zone(at, &job.timezone))
                .unwrap_or_default(),
            next_relative: job
                .next_fire_at
                .map(|at| relative(at, now))
                .unwrap_or_default(),
            strip: recent
                .iter()
                .rev()
                .map(|run| (run.id.to_string(), run.status.as_str()))
                .collect(),
        })
        .collect();
    Ok(render(&JobsPage {
        chrome: Chrome::new(&operator, "jobs", "Jobs"),
        jobs: rows,
        previous_page: (page > 1).then(|| jobs_page_link(&query, page - 1)),
        next_page: (page * JOBS_PAGE < count).then(|| jobs_page_link(&query, page + 1)),
        query,
        matching: count,
    }))
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    chrome: Chrome,
    job: JobView,
    kind: &'static str,
    text: String,
    schedule: String,
    fires: Vec<(String, String, String)>,
    runs: Vec<RunRow>,
    settings_json: String,
    /// The chain, hook events, conditions and budget, as JSON (empty when there are none).
    rules_json: String,
    /// Fires a condition or a budget held back: (last, UTC text, trigger, fires, reason).
    skipped: Vec<(String, String, &'static str, u64, String)>,
}

fn parse_job_id(id: &str) -> PageResult<JobId> {
    id.parse().map_err(|_| {
        PageError::Api(crate::http::ApiError::not_found(format!(
            "`{id}` is not a job id"
        )))
    })
}

pub async fn show(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Path(id): Path<String>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let app = &dashboard.app;
    let job = jobs::find(app, &id).await?;
    let view = JobView::from(&job);
    let fires = jobs::upcoming_fires(&job, 5)?
        .into_iter()
        .map(|at| (iso(at), in_zone(at, &job.timezone), utc(at)))
        .collect();
    let recent = runs::list(
        app,
        RunFilter {
            job_id: Some(job.id),
            limit: 20,
            ..Default::default()
        },
    )
    .await?;
    let settings_json = serde_json::to_string_pretty(&view.settings).unwrap_or_default();
    let rules_json = if job.rules == Default::default() {
        String::new()
    } else {
        serde_json::to_string_pretty(&job.rules).unwrap_or_default()
    };
    let skipped = crate::services::rules::list_skipped(app, &job, 10)
        .await?
        .into_iter()
        .map(|skip| {
            (
                iso(skip.last_at),
                utc(skip.last_at),
                skip.trigger.as_str(),
                skip.fires,
                skip.reason,
            )
        })
        .collect();
    Ok(render(&JobPage {
        chrome: Chrome::new(&operator, "jobs", job.name.clone()),
        kind: job.kind.as_str(),
        text: view
            .prompt
            .clone()
            .or_else(|| view.command.clone())
            .or_else(|| {
                view.request
                    .as_ref()
                    .and_then(|request| serde_json::to_string_pretty(request).ok())
            })
            .unwrap_or_default(),
        schedule: schedule_text(&view),
        job: view,
        fires,
        runs: recent.iter().map(RunRow::from).collect(),
        settings_json,
        rules_json,
        skipped,
    }))
}

/// A server a job can be granted, as the editor lists it.
struct ServerChoice {
    name: String,
    description: String,
    granted: bool,
    access: String,
}

#[derive(Template)]
#[template(path = "job_edit.html")]
struct JobEditPage {
    chrome: Chrome,
    /// `None` for a new job.
    job_id: Option<String>,
    form: JobForm,
    error: Option<(String, String)>,
    servers: Vec<ServerChoice>,
    bundles: Vec<(String, bool)>,
    built_in_tools: Vec<(&'static str, bool)>,
    misfire_policies: &'static [&'static str],
    overlap_policies: &'static [&'static str],
    networks: [&'static str; 3],
    accesses: [&'static str; 4],
    timezones: Vec<&'static str>,
}

async fn edit_page(
    dashboard: &Dashboard,
    operator: &Operator,
    job_id: Option<String>,
    form: JobForm,
    error: Option<(String, String)>,
) -> PageResult<JobEditPage> {
    let app = &dashboard.app;
    let (servers, bundles) = tokio::try_join!(tools::list_servers(app), tools::list_bundles(app))?;
    let servers = servers
        .into_iter()
        .map(|view| ServerChoice {
            granted: form.servers.contains_key(&view.server.name),
            access: form
                .servers
                .get(&view.server.name)
                .cloned()
                .unwrap_or_else(|| "read".into()),
            description: view.server.description.clone().unwrap_or_default(),
            name: view.server.name,
        })
        .collect();
    let bundles = bundles
        .into_iter()
        .map(|bundle| {
            let chosen = form.bundles.contains(&bundle.name);
            (bundle.name, chosen)
        })
        .collect();
    let title = match &job_id {
        Some(_) => format!("Edit {}", form.name),
        None => "New job".to_owned(),
    };
    let built_in_tools = BUILT_IN_TOOLS
        .iter()
        .map(|tool| (*tool, form.tools.iter().any(|ticked| ticked == tool)))
        .collect();
    Ok(JobEditPage {
        chrome: Chrome::new(operator, "jobs", title),
        job_id,
        form,
        error,
        servers,
        bundles,
        built_in_tools,
        misfire_policies: MisfirePolicy::NAMES,
        overlap_policies: OverlapPolicy::NAMES,
        networks: ["model-only", "none", "open"],
        accesses: ["read", "write", "admin", "dangerous"],
        timezones: chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect(),
    })
}

/// The editor for a new job; `?from_run=<run id>` starts from a run's prompt, model and tools
/// (a quick run saved as a job).
pub async fn new(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Query(params): Query<HashMap<String, String>>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let form = match params.get("from_run") {
        Some(run_id) => {
            let run_id = run_id.parse().map_err(|_| {
                ServiceError::invalid("from_run", format!("`{run_id}` is not a run id"))
            })?;
            JobForm::from_run(&runs::get(&dashboard.app, run_id).await?)
        }
        None => JobForm::new_job(),
    };
    Ok(render(
        &edit_page(&dashboard, &operator, None, form, None).await?,
    ))
}

pub async fn edit(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Path(id): Path<String>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let job = jobs::find(&dashboard.app, &id).await?;
    let form = JobForm::from_job(&JobView::from(&job));
    Ok(render(
        &edit_page(&dashboard, &operator, Some(job.id.to_string()), form, None).await?,
    ))
}

/// The field an input error names, and its message.
fn field_error(err: PageError) -> Result<(String, String), PageError> {
    match err {
        PageError::Api(api)
            if api.status == StatusCode::UNPROCESSABLE_ENTITY
                || api.status == StatusCode::BAD_REQUEST =>
        {
            Ok((api.field.clone().unwrap_or_default(), api.message))
        }
        PageError::Api(api) if api.status == StatusCode::CONFLICT => {
            Ok(("name".into(), api.message))
        }
        other => Err(other),
    }
}

/// Shows the editor again with what was typed and what was wrong.
async fn refused(
    dashboard: &Dashboard,
    operator: &Operator,
    job_id: Option<String>,
    form: JobForm,
    err: PageError,
) -> PageResult<Response> {
    let error = field_error(err)?;
    let mut response = render(&edit_page(dashboard, operator, job_id, form, Some(error)).await?);
    *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    Ok(response)
}

pub async fn create(
    State(dashboard): State<Dashboard>,
    Submitted {
        operator,
        form: fields,
    }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::EditJobs)?;
    let form = JobForm::from_fields(&fields, None);
    let input: Result<JobInput, InputError> = form.to_json(false, &[]).and_then(from_value);
    let created = match input {
        Ok(input) => jobs::create(&dashboard.app, input)
            .await
            .map_err(PageError::from),
        Err(err) => Err(err.into()),
    };
    match created {
        Ok(job) => Ok(see_other(&format!("/jobs/{}", job.id))),
        Err(err) => refused(&dashboard, &operator, None, form, err).await,
    }
}

pub async fn update(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    Submitted {
        operator,
        form: fields,
    }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::EditJobs)?;
    let job = jobs::find(&dashboard.app, &id).await?;
    let form = JobForm::from_fields(&fields, Some(job.kind.as_str()));
    let patch: Result<JobPatch, InputError> = form
        .to_json(true, &job.settings.servers)
        .and_then(from_value);
    let updated = match patch {
        Ok(patch) => jobs::update(&dashboard.app, job.id, patch)
            .await
            .map_err(PageError::from),
        Err(err) => Err(err.into()),
    };
    match updated {
        Ok(job) => Ok(see_other(&format!("/jobs/{}", job.id))),
        Err(err) => refused(&dashboard, &operator, Some(job.id.to_string()), form, err).await,
    }
}

pub async fn run_now(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    Submitted { operator, .. }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::Run)?;
    let job = jobs::find(&dashboard.app, &id).await?;
    let run = jobs::trigger(&dashboard.app, job).await?;
    Ok(see_other(&format!("/runs/{}", run.id)))
}

/// The enabled switch (`enabled` = `true` or `false`).
pub async fn set_enabled(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    Submitted {
        operator,
        form: fields,
    }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::EditJobs)?;
    let job_id = parse_job_id(&id)?;
    let enabled = match fields.get("enabled") {
        Some("true") => true,
        Some("false") => false,
        _ => {
            return Err(ServiceError::invalid("enabled", "must be `true` or `false`").into());
        }
    };
    jobs::update(
        &dashboard.app,
        job_id,
        JobPatch {
            enabled: Some(enabled),
            ..Default::default()
        },
    )
    .await?;
    let back = fields
        .get("back")
        .filter(|back| back.starts_with("/jobs"))
        .unwrap_or("/jobs");
    Ok(see_other(back))
}

pub async fn delete(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    Submitted { operator, .. }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::EditJobs)?;
    jobs::delete(&dashboard.app, parse_job_id(&id)?).await?;
    Ok(see_other("/jobs"))
}

#[derive(Template)]
#[template(path = "schedule_preview.html")]
struct SchedulePreview {
    error: Option<String>,
    fires: Vec<(String, String, String)>,
    notes: Vec<String>,
}

/// The next fires of a schedule being typed, and the daylight-saving changes that touch it: an
/// HTML fragment the editor's script puts under the field.
pub async fn schedule_preview(
    operator: Operator,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let schedule = query
        .get("schedule")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let timezone = query
        .get("timezone")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "UTC".into());
    if schedule.is_empty() {
        return Ok(render(&SchedulePreview {
            error: None,
            fires: Vec::new(),
            notes: Vec::new(),
        }));
    }
    let input = PreviewInput {
        schedule,
        timezone: Some(timezone.clone()),
        count: Some(5),
    };
    let now = Utc::now();
    let page = match (jobs::preview_schedule(&input), jobs::daylight_saving_notes(&input)) {
        (Ok(fires), Ok(notes)) => SchedulePreview {
            error: None,
            fires: fires
                .into_iter()
                .map(|at| (iso(at), in_zone(at, &timezone), relative(at, now)))
                .collect(),
            notes: notes
                .into_iter()
                .map(|note| {
                    if note.gap {
                        format!(
                            "On {} the clocks in {timezone} skip from {} to {}: a fire in between happens right after the gap.",
                            note.date, note.from.format("%H:%M"), note.to.format("%H:%M")
                        )
                    } else {
                        format!(
                            "On {} the clocks in {timezone} go back from {} to {}: the times in between happen twice, and the job fires once, at the first.",
                            note.date, note.to.format("%H:%M"), note.from.format("%H:%M")
                        )
                    }
                })
                .collect(),
        },
        (Err(err), _) | (_, Err(err)) => SchedulePreview {
            error: Some(err.to_string()),
            fires: Vec::new(),
            notes: Vec::new(),
        },
    };
    Ok(render(&page))
}
