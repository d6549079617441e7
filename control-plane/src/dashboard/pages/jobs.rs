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
use serde_json::{json, Map, Value};

use super::runs::RunRow;
use super::{render, see_other, Chrome, PageError, PageResult};
use crate::dashboard::auth::{authorize, Action, Operator, Submitted};
use crate::dashboard::fields::Fields;
use crate::dashboard::format::{in_zone, iso, relative, utc, wire_name};
use crate::dashboard::Dashboard;
use crate::domain::input::{from_value, InputError};
use crate::domain::job::{MisfirePolicy, OverlapPolicy};
use crate::domain::tools::ToolGrant;
use crate::domain::{RunFilter, ServiceError};
use crate::services::jobs::{self, JobInput, JobPatch, JobView, PreviewInput};
use crate::services::{runs, tools};

/// Claude Code's own tools, offered as boxes to tick in the editor (others go in the text area).
const BUILT_IN_TOOLS: [&str; 11] = [
    "Read",
    "Write",
    "Edit",
    "Glob",
    "Grep",
    "Bash",
    "WebFetch",
    "WebSearch",
    "NotebookEdit",
    "TodoWrite",
    "Task",
];

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
    match (&job.schedule, job.at) {
        (Some(cron), _) => cron.clone(),
        (None, Some(at)) => format!("once at {}", utc(at)),
        (None, None) => "manual".to_owned(),
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
    Ok(render(&JobPage {
        chrome: Chrome::new(&operator, "jobs", job.name.clone()),
        kind: job.kind.as_str(),
        text: view
            .prompt
            .clone()
            .or_else(|| view.command.clone())
            .unwrap_or_default(),
        schedule: schedule_text(&view),
        job: view,
        fires,
        runs: recent.iter().map(RunRow::from).collect(),
        settings_json,
    }))
}

/// The editor's fields as text, whether read from a job, a failed submission or the defaults.
#[derive(Default)]
struct JobForm {
    name: String,
    description: String,
    kind: String,
    text: String,
    when: String,
    schedule: String,
    at: String,
    timezone: String,
    enabled: bool,
    misfire_policy: String,
    misfire_cap: String,
    overlap_policy: String,
    model: String,
    /// Built-in tools ticked.
    tools: Vec<String>,
    /// Other allowed tools, one per line.
    allowed_tools: String,
    disallowed_tools: String,
    max_turns: String,
    timeout_secs: String,
    max_cost_usd: String,
    pool: String,
    retry_count: String,
    retry_backoff_secs: String,
    retry_lost: bool,
    network: String,
    memory_mb: String,
    cpus: String,
    pids: String,
    trace_content: bool,
    image: String,
    /// Servers granted: name → access.
    servers: HashMap<String, String>,
    bundles: Vec<String>,
}

impl JobForm {
    fn new_job() -> Self {
        JobForm {
            kind: "claude".into(),
            when: "cron".into(),
            timezone: "UTC".into(),
            enabled: true,
            misfire_policy: "run_once".into(),
            misfire_cap: "10".into(),
            overlap_policy: "skip".into(),
            timeout_secs: "1800".into(),
            pool: "default".into(),
            retry_count: "2".into(),
            retry_backoff_secs: "30".into(),
            ..Default::default()
        }
    }

    fn from_job(job: &JobView) -> Self {
        let settings = &job.settings;
        let (built_in, others): (Vec<String>, Vec<String>) = settings
            .allowed_tools
            .iter()
            .cloned()
            .partition(|tool| BUILT_IN_TOOLS.contains(&tool.as_str()));
        JobForm {
            name: job.name.clone(),
            description: job.description.clone().unwrap_or_default(),
            kind: job.kind.as_str().into(),
            text: job
                .prompt
                .clone()
                .or_else(|| job.command.clone())
                .unwrap_or_default(),
            when: match (&job.schedule, job.at) {
                (Some(_), _) => "cron",
                (None, Some(_)) => "at",
                (None, None) => "none",
            }
            .into(),
            schedule: job.schedule.clone().unwrap_or_default(),
            at: job.at.map(|at| at.to_rfc3339()).unwrap_or_default(),
            timezone: job.timezone.clone(),
            enabled: job.enabled,
            misfire_policy: job.misfire_policy.as_str().into(),
            misfire_cap: job.misfire_cap.to_string(),
            overlap_policy: job.overlap_policy.as_str().into(),
            model: settings.model.clone().unwrap_or_default(),
            tools: built_in,
            allowed_tools: others.join("\n"),
            disallowed_tools: settings.disallowed_tools.join("\n"),
            max_turns: settings
                .max_turns
                .map(|n| n.to_string())
                .unwrap_or_default(),
            timeout_secs: settings.timeout_secs.to_string(),
            max_cost_usd: settings
                .max_cost_usd
                .map(|n| n.to_string())
                .unwrap_or_default(),
            pool: settings.pool.clone(),
            retry_count: settings.retry.count.to_string(),
            retry_backoff_secs: settings.retry.backoff_secs.to_string(),
            retry_lost: settings.retry.lost,
            network: settings.sandbox.network.as_str().into(),
            memory_mb: settings.sandbox.memory_mb.to_string(),
            cpus: settings.sandbox.cpus.to_string(),
            pids: settings.sandbox.pids.to_string(),
            trace_content: settings.trace_content,
            image: settings.image.clone().unwrap_or_default(),
            servers: settings
                .servers
                .iter()
                .map(|grant| {
                    let access = wire_name(grant.access);
                    (grant.server.clone(), access)
                })
                .collect(),
            bundles: settings.bundles.clone(),
        }
    }

    fn from_fields(form: &Fields, kind: Option<&str>) -> Self {
        let text = |name: &str| form.get(name).unwrap_or_default().to_owned();
        JobForm {
            name: text("name"),
            description: text("description"),
            kind: kind.map(str::to_owned).unwrap_or_else(|| text("kind")),
            text: text("text"),
            when: text("when"),
            schedule: text("schedule"),
            at: text("at"),
            timezone: text("timezone"),
            enabled: form.checked("enabled"),
            misfire_policy: text("misfire_policy"),
            misfire_cap: text("misfire_cap"),
            overlap_policy: text("overlap_policy"),
            model: text("model"),
            tools: form.all("tool").map(str::to_owned).collect(),
            allowed_tools: text("allowed_tools"),
            disallowed_tools: text("disallowed_tools"),
            max_turns: text("max_turns"),
            timeout_secs: text("timeout_secs"),
            max_cost_usd: text("max_cost_usd"),
            pool: text("pool"),
            retry_count: text("retry_count"),
            retry_backoff_secs: text("retry_backoff_secs"),
            retry_lost: form.checked("retry_lost"),
            network: text("network"),
            memory_mb: text("memory_mb"),
            cpus: text("cpus"),
            pids: text("pids"),
            trace_content: form.checked("trace_content"),
            image: text("image"),
            servers: form
                .all("server")
                .map(|name| {
                    let access = form
                        .get(&format!("access.{name}"))
                        .unwrap_or("read")
                        .to_owned();
                    (name.to_owned(), access)
                })
                .collect(),
            bundles: form.all("bundle").map(str::to_owned).collect(),
        }
    }

    /// The job as the API's JSON: what `JobInput` (new) or `JobPatch` (edit) reads, so the
    /// editor is checked exactly like the API. Blank optional fields are `null` on edit. A server
    /// still granted keeps the tool lists (`allow`, `deny`) of its grant in `kept`, which the
    /// editor does not show.
    fn to_json(&self, editing: bool, kept: &[ToolGrant]) -> Value {
        let mut job = Map::new();
        let blank = |value: &str| value.trim().is_empty();
        let text_or_null = |value: &str| {
            if blank(value) {
                Value::Null
            } else {
                Value::String(value.trim().to_owned())
            }
        };
        // A number as typed; anything else goes through as text, for the input check to name.
        let number = |value: &str| {
            let value = value.trim();
            value
                .parse::<u64>()
                .map(Value::from)
                .or_else(|_| value.parse::<f64>().map(Value::from))
                .unwrap_or_else(|_| Value::String(value.to_owned()))
        };
        let lines = |value: &str| {
            Value::from(
                value
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .collect::<Vec<_>>(),
            )
        };
        job.insert("name".into(), json!(self.name.trim()));
        job.insert("description".into(), text_or_null(&self.description));
        if !editing {
            job.insert("kind".into(), json!(self.kind));
        }
        let text_field = if self.kind == "shell" {
            "command"
        } else {
            "prompt"
        };
        job.insert(text_field.into(), json!(self.text));
        let (schedule, at) = match self.when.as_str() {
            "at" => (Value::Null, text_or_null(&self.at)),
            "none" => (Value::Null, Value::Null),
            _ => (text_or_null(&self.schedule), Value::Null),
        };
        if editing || !schedule.is_null() {
            job.insert("schedule".into(), schedule);
        }
        if editing || !at.is_null() {
            job.insert("at".into(), at);
        }
        if !blank(&self.timezone) {
            job.insert("timezone".into(), json!(self.timezone.trim()));
        }
        job.insert("enabled".into(), json!(self.enabled));
        for (key, value) in [
            ("misfire_policy", &self.misfire_policy),
            ("overlap_policy", &self.overlap_policy),
            ("pool", &self.pool),
        ] {
            if !blank(value) {
                job.insert(key.into(), json!(value.trim()));
            }
        }
        for (key, value) in [
            ("misfire_cap", &self.misfire_cap),
            ("timeout_secs", &self.timeout_secs),
        ] {
            if !blank(value) {
                job.insert(key.into(), number(value));
            }
        }
        for (key, value) in [
            ("max_turns", &self.max_turns),
            ("max_cost_usd", &self.max_cost_usd),
        ] {
            if !blank(value) {
                job.insert(key.into(), number(value));
            } else if editing {
                job.insert(key.into(), Value::Null);
            }
        }
        if !blank(&self.model) || editing {
            job.insert("model".into(), text_or_null(&self.model));
        }
        if !blank(&self.image) || editing {
            job.insert("image".into(), text_or_null(&self.image));
        }
        if self.kind != "shell" {
            let mut allowed: Vec<Value> = self.tools.iter().map(|tool| json!(tool)).collect();
            if let Value::Array(others) = lines(&self.allowed_tools) {
                allowed.extend(others);
            }
            job.insert("allowed_tools".into(), Value::Array(allowed));
            job.insert("disallowed_tools".into(), lines(&self.disallowed_tools));
            job.insert("trace_content".into(), json!(self.trace_content));
            let mut servers: Vec<(&String, &String)> = self.servers.iter().collect();
            servers.sort();
            job.insert(
                "servers".into(),
                Value::from(
                    servers
                        .into_iter()
                        .map(|(server, access)| {
                            let mut grant = json!({ "server": server, "access": access });
                            if let Some(before) = kept.iter().find(|grant| &grant.server == server)
                            {
                                grant["allow"] = json!(before.allow);
                                grant["deny"] = json!(before.deny);
                            }
                            grant
                        })
                        .collect::<Vec<_>>(),
                ),
            );
            job.insert("bundles".into(), json!(self.bundles));
        }
        if !blank(&self.retry_count) {
            let mut retry = json!({ "count": number(&self.retry_count), "lost": self.retry_lost });
            if !blank(&self.retry_backoff_secs) {
                retry["backoff_secs"] = number(&self.retry_backoff_secs);
            }
            job.insert("retry".into(), retry);
        }
        let mut sandbox = Map::new();
        if !blank(&self.network) {
            sandbox.insert("network".into(), json!(self.network));
        }
        for (key, value) in [
            ("memory_mb", &self.memory_mb),
            ("cpus", &self.cpus),
            ("pids", &self.pids),
        ] {
            if !blank(value) {
                sandbox.insert(key.into(), number(value));
            }
        }
        if !sandbox.is_empty() {
            job.insert("sandbox".into(), Value::Object(sandbox));
        }
        Value::Object(job)
    }
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
    let mut form = JobForm::new_job();
    if let Some(run_id) = params.get("from_run") {
        let run_id = run_id.parse().map_err(|_| {
            ServiceError::invalid("from_run", format!("`{run_id}` is not a run id"))
        })?;
        let run = runs::get(&dashboard.app, run_id).await?;
        let (built_in, others): (Vec<String>, Vec<String>) = match &run.settings.kind {
            autopilot_proto::RunKind::Claude(spec) => {
                form.text = spec.prompt.clone();
                form.model = spec.model.clone().unwrap_or_default();
                spec.allowed_tools
                    .iter()
                    .cloned()
                    .partition(|tool| BUILT_IN_TOOLS.contains(&tool.as_str()))
            }
            autopilot_proto::RunKind::Shell { command, .. } => {
                form.kind = "shell".into();
                form.text = command.clone();
                (Vec::new(), Vec::new())
            }
        };
        form.tools = built_in;
        form.allowed_tools = others.join("\n");
        form.pool = run.settings.pool.clone();
        form.timeout_secs = run.settings.timeout_secs.to_string();
    }
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
    let input: Result<JobInput, InputError> = from_value(form.to_json(false, &[]));
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
    let patch: Result<JobPatch, InputError> = from_value(form.to_json(true, &job.settings.servers));
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
