//! Jobs: create, change, delete, look up, preview their schedule, run them now.

mod input;
mod view;

pub use input::{JobInput, JobPatch, DEFAULT_MISFIRE_CAP};
// The MCP tools' fuzz entry point checks arguments as a create or an update would.
pub(crate) use input::{apply, validate};
pub use view::JobView;

use std::collections::HashMap;

use autopilot_proto::{JobId, Trigger};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::app::App;
use crate::domain::memory::MemoryScope;
use crate::domain::rules::fill_values;
use crate::domain::schedule::{parse_cron, parse_timezone, Compiled};
use crate::domain::{Job, OverlapPolicy, Run, Schedule, ServiceError, ServiceResult};
use crate::services::{runs, tools, webhooks};
use crate::store::StoreError;

pub async fn create(app: &App, mut input: JobInput) -> ServiceResult<JobView> {
    resolve_parents(app, &mut input).await?;
    let job = input::validate(input, None, Utc::now())?;
    tools::check_tools(app, &job.settings).await?;
    check_chain(app, &job).await?;
    check_handlers(app, &job).await?;
    app.store.insert_job(&job).await?;
    tracing::info!(job.id = %job.id, job.name = %job.name, "job created");
    app.notify_jobs_changed();
    if job.rules.on_file.is_some() {
        file_watches_changed(app).await;
    }
    Ok(JobView::from(&job))
}

pub async fn update(app: &App, id: JobId, patch: JobPatch) -> ServiceResult<JobView> {
    let existing = get(app, id).await?;
    let mut input = input::apply(&existing, patch);
    resolve_parents(app, &mut input).await?;
    let job = input::validate(input, Some(&existing), Utc::now())?;
    tools::check_tools(app, &job.settings).await?;
    check_chain(app, &job).await?;
    check_handlers(app, &job).await?;
    match app.store.update_job(&job).await {
        Err(StoreError::NotFound) => return Err(not_found(id)),
        other => other?,
    }
    tracing::info!(job.id = %job.id, "job updated");
    // The scheduler looks again, and webhooks pointing at the job take its new settings.
    app.notify_jobs_changed();
    if job.rules.on_file != existing.rules.on_file || job.enabled != existing.enabled {
        file_watches_changed(app).await;
    }
    Ok(JobView::from(&job))
}

pub async fn delete(app: &App, id: JobId) -> ServiceResult<()> {
    let job = get(app, id).await?;
    webhooks::ensure_none_target(app, id, &job.name).await?;
    if !app.store.delete_job(id).await? {
        return Err(not_found(id));
    }
    tracing::info!(job.id = %id, "job deleted");
    app.notify_jobs_changed();
    if job.rules.on_file.is_some() {
        file_watches_changed(app).await;
    }
    super::memory::forget(app, &MemoryScope::Job(id)).await;
    if let Some(saved) = &app.saved_workspaces {
        // No run can use it again. The job is deleted either way: a blob left behind takes
        // room, nothing else.
        let blob = autopilot_worker::workspaces::SharedWorkspaces::blob_name(&job.workspace());
        if let Err(err) = saved.delete(&blob).await {
            tracing::warn!(job.id = %id, error = %err, "could not delete the job's saved workspace");
        }
    }
    Ok(())
}

/// Tells the workers to ask for their file watches again (they also do at every heartbeat).
async fn file_watches_changed(app: &App) {
    if let Err(err) = app
        .bus
        .publish_control(autopilot_proto::ControlMessage::FileWatchesChanged)
        .await
    {
        tracing::warn!(error = %err, "could not tell the workers that file watches changed; they see it at their next heartbeat");
    }
}

/// Names the jobs a chain follows, and those result handlers trigger, by their ids (clients may
/// give names).
async fn resolve_parents(app: &App, input: &mut JobInput) -> ServiceResult<()> {
    if let Some(chain) = &mut input.after {
        for (index, parent) in chain.jobs.iter_mut().enumerate() {
            let job = find(app, parent).await.map_err(|_| {
                ServiceError::invalid(
                    format!("after.jobs.{index}"),
                    format!("there is no job `{parent}` (by name or id) to run after"),
                )
            })?;
            *parent = job.id.to_string();
        }
    }
    // Likewise the jobs result handlers trigger.
    for (index, handler) in input.on_end.iter_mut().flatten().enumerate() {
        if let Some(target) = &mut handler.trigger {
            let job = find(app, target).await.map_err(|_| {
                ServiceError::invalid(
                    format!("on_end.{index}.trigger"),
                    format!("there is no job `{target}` (by name or id) to trigger"),
                )
            })?;
            *target = job.id.to_string();
        }
    }
    Ok(())
}

/// Refuses result handlers (and a budget alert) that sign with a credential the vault does not
/// hold or notify a channel no registered `notify` server has, and an http job's request naming
/// a credential not set.
async fn check_handlers(app: &App, job: &Job) -> ServiceResult<()> {
    for (index, handler) in job.rules.on_end.iter().enumerate() {
        if let Some(target) = &handler.notify {
            let field = format!("on_end.{index}.notify");
            super::channels::check(app, target, &field).await?;
        }
    }
    if let Some(target) = job.rules.approval.as_ref().and_then(|a| a.notify.as_ref()) {
        super::channels::check(app, target, "approval.notify").await?;
    }
    let mut names: Vec<(String, &String)> = job
        .rules
        .on_end
        .iter()
        .enumerate()
        .filter_map(|(index, handler)| {
            let name = handler.sign_with.as_ref()?;
            Some((format!("on_end.{index}.sign_with"), name))
        })
        .collect();
    if let Some(name) = job
        .rules
        .budget
        .alert
        .as_ref()
        .and_then(|a| a.sign_with.as_ref())
    {
        names.push(("budget.alert.sign_with".to_owned(), name));
    }
    let request_credentials = job
        .request()
        .map(|request| request.credentials())
        .unwrap_or_default();
    for name in &request_credentials {
        names.push(("request.headers".to_owned(), name));
    }
    if names.is_empty() {
        return Ok(());
    }
    let stored = app.store.list_credentials().await?;
    for (field, name) in names {
        if !stored.iter().any(|credential| &credential.name == name) {
            return Err(ServiceError::invalid(
                field,
                format!("the credential `{name}` is not set; set it first (PUT /api/v1/credentials/{name})"),
            ));
        }
    }
    Ok(())
}

/// Refuses a chain that would loop: `job` following, however indirectly, a job that follows it.
async fn check_chain(app: &App, job: &Job) -> ServiceResult<()> {
    // A job's parents: those it runs `after`, and those whose result handlers trigger it.
    let triggered = |of: &Job| -> Vec<JobId> {
        of.rules
            .on_end
            .iter()
            .filter_map(|handler| handler.trigger.as_deref()?.parse().ok())
            .collect()
    };
    if job.rules.chain.is_none() && triggered(job).is_empty() {
        return Ok(());
    }
    let stored = all(app).await?;
    let jobs: Vec<&Job> = stored
        .iter()
        .filter(|other| other.id != job.id)
        .chain([job])
        .collect();
    let mut parents_of: HashMap<JobId, Vec<JobId>> = HashMap::new();
    for other in &jobs {
        if let Some(chain) = &other.rules.chain {
            parents_of
                .entry(other.id)
                .or_default()
                .extend(chain.after.iter().copied());
        }
        for child in triggered(other) {
            parents_of.entry(child).or_default().push(other.id);
        }
    }
    let names: HashMap<JobId, &str> = jobs
        .iter()
        .map(|other| (other.id, other.name.as_str()))
        .collect();
    // Walk up from the job's parents; reaching the job again is a loop.
    let start = parents_of.get(&job.id).cloned().unwrap_or_default();
    let mut stack: Vec<Vec<JobId>> = start.iter().map(|id| vec![*id]).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(path) = stack.pop() {
        let Some(&last) = path.last() else { continue };
        if last == job.id {
            let mut loop_names: Vec<&str> = vec![names.get(&job.id).copied().unwrap_or("?")];
            loop_names.extend(path.iter().map(|id| names.get(id).copied().unwrap_or("?")));
            let field = match job.rules.chain {
                Some(_) => "after.jobs",
                None => "on_end",
            };
            return Err(ServiceError::invalid(
                field,
                format!(
                    "this chain would loop: {} (each runs after the next, by `after` or a \
                     `trigger` result handler); remove one link",
                    loop_names.join(" ← ")
                ),
            ));
        }
        if !seen.insert(last) {
            continue;
        }
        for parent in parents_of.get(&last).map(Vec::as_slice).unwrap_or_default() {
            let mut longer = path.clone();
            longer.push(*parent);
            stack.push(longer);
        }
    }
    Ok(())
}

/// Looks a job up by id or, failing that, by name.
pub async fn find(app: &App, id_or_name: &str) -> ServiceResult<Job> {
    if let Ok(id) = id_or_name.parse::<JobId>() {
        return get(app, id).await;
    }
    app.store
        .get_job_by_name(id_or_name)
        .await?
        .ok_or_else(|| ServiceError::NotFound {
            what: "job",
            id: id_or_name.to_owned(),
        })
}

pub async fn get(app: &App, id: JobId) -> ServiceResult<Job> {
    app.store.get_job(id).await?.ok_or_else(|| not_found(id))
}

/// Every job as stored (for the scheduler).
pub async fn all(app: &App) -> ServiceResult<Vec<Job>> {
    Ok(app.store.list_jobs().await?)
}

pub async fn list(app: &App) -> ServiceResult<Vec<JobView>> {
    Ok(app
        .store
        .list_jobs()
        .await?
        .iter()
        .map(JobView::from)
        .collect())
}

/// The jobs whose name or description holds `query` (any case; all when empty), by name: the
/// `limit` from `offset` on, and how many match in all.
pub async fn search(
    app: &App,
    query: &str,
    offset: usize,
    limit: usize,
) -> ServiceResult<(Vec<JobView>, usize)> {
    let needle = query.trim().to_lowercase();
    let matching: Vec<Job> = app
        .store
        .list_jobs()
        .await?
        .into_iter()
        .filter(|job| {
            needle.is_empty()
                || job.name.to_lowercase().contains(&needle)
                || job
                    .description
                    .as_deref()
                    .is_some_and(|d| d.to_lowercase().contains(&needle))
        })
        .collect();
    let total = matching.len();
    // Only the page's jobs get their next fire computed.
    let page = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(JobView::from)
        .collect();
    Ok((page, total))
}

/// The enabled jobs that fire soonest, with their next fire, soonest first; and how many jobs
/// there are.
pub async fn soonest_fires(
    app: &App,
    count: usize,
) -> ServiceResult<(Vec<(JobView, DateTime<Utc>)>, usize)> {
    let jobs = app.store.list_jobs().await?;
    let total = jobs.len();
    // Computed on every core, off the async threads.
    let (jobs, fires) = tokio::task::spawn_blocking(move || {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = jobs.len().div_ceil(cores).max(1);
        let mut fires: Vec<(DateTime<Utc>, usize)> = std::thread::scope(|scope| {
            let workers: Vec<_> = jobs
                .chunks(chunk)
                .enumerate()
                .map(|(index, part)| scope.spawn(move || next_fires_of(part, index * chunk)))
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap_or_default())
                .collect()
        });
        fires.sort_by_key(|(at, _)| *at);
        fires.truncate(count);
        (jobs, fires)
    })
    .await
    .map_err(|err| ServiceError::Internal(anyhow::anyhow!("computing next fires: {err}")))?;
    let fires: Vec<(DateTime<Utc>, &Job)> = fires
        .into_iter()
        .map(|(at, index)| (at, &jobs[index]))
        .collect();
    Ok((
        fires
            .into_iter()
            .take(count)
            .map(|(at, job)| (JobView::from(job), at))
            .collect(),
        total,
    ))
}

/// The next fire of each enabled, scheduled job of `jobs` (whose first is job `first` of the
/// whole list), with its index in the whole list. Jobs often share a schedule, and then their
/// cursor too (the fire they last handled): each schedule is compiled, and each (schedule, zone,
/// cursor) searched, once.
fn next_fires_of(jobs: &[Job], first: usize) -> Vec<(DateTime<Utc>, usize)> {
    let mut compiled: HashMap<(&Schedule, &str), Option<Compiled>> = HashMap::new();
    // (schedule, zone, cursor) → the next fire after the cursor.
    type Searched<'a> = HashMap<(&'a Schedule, &'a str, DateTime<Utc>), Option<DateTime<Utc>>>;
    let mut searched: Searched = HashMap::new();
    let mut fires = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        if !job.enabled || matches!(job.schedule, Schedule::None) {
            continue;
        }
        let key = (&job.schedule, job.timezone.as_str());
        let next = *searched
            .entry((key.0, key.1, job.fire_cursor))
            .or_insert_with(|| {
                compiled
                    .entry(key)
                    .or_insert_with(|| Compiled::new(key.0, key.1).ok())
                    .as_ref()
                    .and_then(|schedule| schedule.next_after(job.fire_cursor))
            });
        if let Some(at) = next {
            fires.push((at, first + index));
        }
    }
    fires
}

/// The next `count` fire times of a job.
pub async fn next_fires(app: &App, id: JobId, count: usize) -> ServiceResult<Vec<DateTime<Utc>>> {
    upcoming_fires(&get(app, id).await?, count)
}

/// Runs a job now (as just read by [`find`]). Under `overlap_policy: skip`, a job that is still
/// running is refused.
pub async fn trigger(app: &App, job: Job) -> ServiceResult<Run> {
    if job.overlap_policy == OverlapPolicy::Skip && !runs::active(app, job.id).await?.is_empty() {
        return Err(ServiceError::Conflict(format!(
            "job `{}` has a run in progress and its overlap_policy is `skip`; wait for it, kill it, or set overlap_policy to `queue` or `allow`",
            job.name
        )));
    }
    if let Some(reason) = super::rules::over_budget(app, &job, Utc::now()).await? {
        return Err(ServiceError::Conflict(format!(
            "job `{}` is {reason}; raise its budget or wait",
            job.name
        )));
    }
    let mut run = Run::queued(Trigger::Manual, Some(&job), job.run_snapshot(), None);
    fill_values(&mut run, &job, serde_json::Value::Null);
    runs::submit(app, run).await
}

/// The next `count` fire times of a job already read (none while it is disabled).
pub fn upcoming_fires(job: &Job, count: usize) -> ServiceResult<Vec<DateTime<Utc>>> {
    if !job.enabled {
        return Ok(Vec::new());
    }
    let compiled = Compiled::new(&job.schedule, &job.timezone)
        .map_err(|message| ServiceError::invalid("schedule", message))?;
    Ok(compiled.next_fires(Utc::now().max(job.fire_cursor), count))
}

/// A schedule to preview before it is saved.
#[derive(Deserialize, Debug, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewInput {
    /// Cron expression: 5 fields (minute hour day-of-month month day-of-week), 6 with seconds
    /// first, or an alias such as `@daily`.
    pub schedule: String,
    /// IANA time zone, e.g. `America/New_York`. Default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// How many fire times (1 to 100; default 5).
    #[serde(default)]
    pub count: Option<usize>,
}

/// The next fire times of a schedule that is not saved yet.
pub fn preview_schedule(input: &PreviewInput) -> ServiceResult<Vec<DateTime<Utc>>> {
    let timezone = input.timezone.as_deref().unwrap_or("UTC");
    parse_timezone(timezone).map_err(|message| ServiceError::invalid("timezone", message))?;
    parse_cron(&input.schedule).map_err(|err| ServiceError::invalid("schedule", err.message))?;
    let compiled = Compiled::new(&Schedule::Cron(input.schedule.clone()), timezone)
        .map_err(|m| ServiceError::invalid("schedule", m))?;
    Ok(compiled.next_fires(Utc::now(), input.count.unwrap_or(5).clamp(1, 100)))
}

fn not_found(id: JobId) -> ServiceError {
    ServiceError::NotFound {
        what: "job",
        id: id.to_string(),
    }
}

/// The daylight-saving changes in the coming year that touch a schedule (local times it names
/// that are skipped or happen twice).
pub fn daylight_saving_notes(
    input: &PreviewInput,
) -> ServiceResult<Vec<crate::domain::schedule::DaylightSavingNote>> {
    let timezone = input.timezone.as_deref().unwrap_or("UTC");
    let tz =
        parse_timezone(timezone).map_err(|message| ServiceError::invalid("timezone", message))?;
    let cron = parse_cron(&input.schedule)
        .map_err(|err| ServiceError::invalid("schedule", err.message))?;
    Ok(crate::domain::schedule::daylight_saving_notes(
        &cron,
        tz,
        Utc::now(),
        366,
    ))
}
