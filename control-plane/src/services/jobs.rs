//! Jobs: validation, create / update / delete, schedule previews and manual triggers.

use autopilot_proto::{JobId, NetworkMode, Sandbox, Trigger};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::app::App;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{Job, JobKind, MisfirePolicy, OverlapPolicy, RetryPolicy, Run, Schedule};
use crate::schedule::{parse_cron, parse_timezone, Compiled};

pub const DEFAULT_TIMEOUT_SECS: u64 = 30 * 60;
pub const DEFAULT_MISFIRE_CAP: u32 = 10;
pub const DEFAULT_POOL: &str = "default";
const MAX_PROMPT_BYTES: usize = 256 * 1024;

/// A job as clients create it. Unknown fields are refused by name.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `claude` (default) or `shell`; a `command` without a `kind` means `shell`.
    #[serde(default)]
    pub kind: Option<JobKind>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
    /// A 5- or 6-field cron expression; absent or null for manual / webhook-only jobs.
    #[serde(default)]
    pub schedule: Option<String>,
    /// A one-shot time (RFC 3339); the job is disabled after it fires.
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    #[serde(default)]
    pub disallowed_tools: Option<Vec<String>>,
    #[serde(default)]
    pub max_turns: Option<u32>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    #[serde(default)]
    pub misfire_policy: Option<MisfirePolicy>,
    #[serde(default)]
    pub misfire_cap: Option<u32>,
    #[serde(default)]
    pub overlap_policy: Option<OverlapPolicy>,
    #[serde(default)]
    pub retry: Option<RetryInput>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub sandbox: Option<SandboxInput>,
}

/// Limits and network of a job's runs in a container; what is left out keeps its value (the
/// default of the job's kind for a new job).
#[derive(Deserialize, Serialize, Debug, Default, Clone, Copy, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxInput {
    /// `none` (no network), `model-only` (only the model API, through the worker's proxy; the
    /// default of claude jobs) or `open`. Shell jobs default to `none`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub network: Option<NetworkMode>,
    /// Memory limit in MiB, swap included (64 to 65536; default 2048). Past it the run is
    /// killed and reported out of memory.
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// CPU cores the run may use (0.1 to 64; default 2).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Most processes and threads at once (16 to 65536; default 512).
    #[serde(default)]
    pub pids: Option<u32>,
}

impl SandboxInput {
    /// Applies the fields given over `base` and checks the result for a job of `kind`.
    pub(crate) fn resolve(self, base: Sandbox, kind: JobKind) -> ServiceResult<Sandbox> {
        let sandbox = Sandbox {
            network: self.network.unwrap_or(base.network),
            memory_mb: self.memory_mb.unwrap_or(base.memory_mb),
            cpus: self.cpus.unwrap_or(base.cpus),
            pids: self.pids.unwrap_or(base.pids),
        };
        if kind == JobKind::Claude && sandbox.network == NetworkMode::None {
            return Err(ServiceError::invalid(
                "sandbox.network",
                "a claude job needs the model API, which network `none` cuts off; use `model-only` (the default) or `open`",
            ));
        }
        if !(64..=65_536).contains(&sandbox.memory_mb) {
            return Err(ServiceError::invalid(
                "sandbox.memory_mb",
                "must be between 64 and 65536 (MiB)",
            ));
        }
        if !(sandbox.cpus.is_finite() && (0.1..=64.0).contains(&sandbox.cpus)) {
            return Err(ServiceError::invalid(
                "sandbox.cpus",
                "must be between 0.1 and 64 (cores)",
            ));
        }
        if !(16..=65_536).contains(&sandbox.pids) {
            return Err(ServiceError::invalid(
                "sandbox.pids",
                "must be between 16 and 65536",
            ));
        }
        Ok(sandbox)
    }
}

impl From<Sandbox> for SandboxInput {
    fn from(sandbox: Sandbox) -> Self {
        SandboxInput {
            network: Some(sandbox.network),
            memory_mb: Some(sandbox.memory_mb),
            cpus: Some(sandbox.cpus),
            pids: Some(sandbox.pids),
        }
    }
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RetryInput {
    pub count: u32,
    #[serde(default)]
    pub backoff_secs: Option<u64>,
    /// Run a lost attempt again too (default false).
    #[serde(default)]
    pub lost: Option<bool>,
}

/// A partial update. A field left out keeps its value; `null` clears an optional one.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct JobPatch {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub description: Option<Option<String>>,
    pub prompt: Option<String>,
    pub command: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub schedule: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub at: Option<Option<DateTime<Utc>>>,
    pub timezone: Option<String>,
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub model: Option<Option<String>>,
    pub allowed_tools: Option<Vec<String>>,
    pub disallowed_tools: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_turns: Option<Option<u32>>,
    pub timeout_secs: Option<u64>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_cost_usd: Option<Option<f64>>,
    pub misfire_policy: Option<MisfirePolicy>,
    pub misfire_cap: Option<u32>,
    pub overlap_policy: Option<OverlapPolicy>,
    pub retry: Option<RetryInput>,
    pub pool: Option<String>,
    /// Fields given replace those of the job's sandbox; the others keep their values.
    pub sandbox: Option<SandboxInput>,
}

/// Tells "absent" (outer `None`, via `default`) from "null" (`Some(None)`).
pub(crate) fn nullable<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A job as clients see it.
#[derive(Serialize, Debug, Clone)]
pub struct JobView {
    pub id: JobId,
    pub name: String,
    pub description: Option<String>,
    pub kind: JobKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub schedule: Option<String>,
    pub at: Option<DateTime<Utc>>,
    pub timezone: String,
    pub enabled: bool,
    pub model: Option<String>,
    pub allowed_tools: Vec<String>,
    pub disallowed_tools: Vec<String>,
    pub max_turns: Option<u32>,
    pub timeout_secs: u64,
    pub max_cost_usd: Option<f64>,
    pub misfire_policy: MisfirePolicy,
    pub misfire_cap: u32,
    pub overlap_policy: OverlapPolicy,
    pub retry: RetryPolicy,
    pub pool: String,
    pub sandbox: Sandbox,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub missed_fires: u64,
    pub overlap_skipped: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Job> for JobView {
    fn from(job: &Job) -> Self {
        let (schedule, at) = match &job.schedule {
            Schedule::Cron(expr) => (Some(expr.clone()), None),
            Schedule::At(at) => (None, Some(*at)),
            Schedule::None => (None, None),
        };
        let next_fire_at = if job.enabled {
            Compiled::new(&job.schedule, &job.timezone)
                .ok()
                .and_then(|c| c.next_after(job.fire_cursor))
        } else {
            None
        };
        let (prompt, command) = match job.kind {
            JobKind::Claude => (Some(job.prompt.clone()), None),
            JobKind::Shell => (None, Some(job.prompt.clone())),
        };
        JobView {
            id: job.id,
            name: job.name.clone(),
            description: job.description.clone(),
            kind: job.kind,
            prompt,
            command,
            schedule,
            at,
            timezone: job.timezone.clone(),
            enabled: job.enabled,
            model: job.model.clone(),
            allowed_tools: job.allowed_tools.clone(),
            disallowed_tools: job.disallowed_tools.clone(),
            max_turns: job.max_turns,
            timeout_secs: job.timeout_secs,
            max_cost_usd: job.max_cost_usd,
            misfire_policy: job.misfire_policy,
            misfire_cap: job.misfire_cap,
            overlap_policy: job.overlap_policy,
            retry: job.retry,
            pool: job.pool.clone(),
            sandbox: job.sandbox,
            next_fire_at,
            missed_fires: job.missed_fires,
            overlap_skipped: job.overlap_skipped,
            created_at: job.created_at,
            updated_at: job.updated_at,
        }
    }
}

/// Checks a whole job description and builds the job's settings. `existing` supplies the id,
/// counters and creation time on update.
fn validate(input: JobInput, existing: Option<&Job>, now: DateTime<Utc>) -> ServiceResult<Job> {
    let name = validate_name(&input.name)?;
    let kind = match (input.kind, &input.prompt, &input.command) {
        (_, Some(_), Some(_)) => {
            return Err(ServiceError::invalid(
                "command",
                "give either `prompt` (a claude job) or `command` (a shell job), not both",
            ))
        }
        (Some(kind), _, _) => kind,
        (None, _, Some(_)) => JobKind::Shell,
        (None, _, None) => JobKind::Claude,
    };
    let (text_field, text) = match kind {
        JobKind::Claude => ("prompt", input.prompt),
        JobKind::Shell => ("command", input.command),
    };
    let text = text.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
        ServiceError::invalid(
            text_field,
            format!("a {kind} job needs a non-empty `{text_field}`"),
        )
    })?;
    if text.len() > MAX_PROMPT_BYTES {
        return Err(ServiceError::invalid(
            text_field,
            format!("is {} bytes; the limit is {MAX_PROMPT_BYTES}", text.len()),
        ));
    }
    let timezone = input.timezone.unwrap_or_else(|| "UTC".to_owned());
    parse_timezone(&timezone).map_err(|message| ServiceError::invalid("timezone", message))?;
    let schedule = match (input.schedule.filter(|s| !s.trim().is_empty()), input.at) {
        (Some(_), Some(_)) => {
            return Err(ServiceError::invalid(
                "at",
                "give either `schedule` (cron) or `at` (one time), not both",
            ))
        }
        (Some(expr), None) => {
            parse_cron(&expr).map_err(|err| ServiceError::invalid("schedule", err.message))?;
            Schedule::Cron(expr.trim().to_owned())
        }
        (None, Some(at)) => {
            let unchanged = existing.is_some_and(|job| job.schedule == Schedule::At(at));
            if at <= now && !unchanged {
                return Err(ServiceError::invalid("at", format!("{at} is in the past; give a future time (RFC 3339, e.g. 2030-01-01T09:00:00Z)")));
            }
            Schedule::At(at)
        }
        (None, None) => Schedule::None,
    };
    let claude_only = [
        ("model", input.model.is_some()),
        (
            "allowed_tools",
            input.allowed_tools.as_ref().is_some_and(|t| !t.is_empty()),
        ),
        (
            "disallowed_tools",
            input
                .disallowed_tools
                .as_ref()
                .is_some_and(|t| !t.is_empty()),
        ),
        ("max_turns", input.max_turns.is_some()),
        ("max_cost_usd", input.max_cost_usd.is_some()),
    ];
    if kind == JobKind::Shell {
        if let Some((field, _)) = claude_only.iter().find(|(_, set)| *set) {
            return Err(ServiceError::invalid(
                *field,
                "applies to claude jobs only; remove it for a shell job",
            ));
        }
    }
    let ClaudeSettings {
        model,
        allowed_tools,
        disallowed_tools,
        max_turns,
        timeout_secs,
        max_cost_usd,
    } = ClaudeSettings::validate(ClaudeSettings {
        model: input.model,
        allowed_tools: input.allowed_tools.unwrap_or_default(),
        disallowed_tools: input.disallowed_tools.unwrap_or_default(),
        max_turns: input.max_turns,
        timeout_secs: input.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
        max_cost_usd: input.max_cost_usd,
    })?;
    let misfire_cap = input.misfire_cap.unwrap_or(DEFAULT_MISFIRE_CAP);
    if !(1..=1000).contains(&misfire_cap) {
        return Err(ServiceError::invalid(
            "misfire_cap",
            "must be between 1 and 1000",
        ));
    }
    let retry = validate_retry(input.retry, existing.map(|job| job.retry))?;
    let pool = validate_pool(input.pool)?;
    let sandbox = input
        .sandbox
        .unwrap_or_default()
        .resolve(kind.default_sandbox(), kind)?;
    let enabled = input.enabled.unwrap_or(true);
    // Fires are counted from now whenever the timing changes, so an edit never backfills.
    let fire_cursor = match existing {
        Some(job)
            if job.schedule == schedule
                && job.timezone == timezone
                && (job.enabled || !enabled) =>
        {
            job.fire_cursor
        }
        _ => now,
    };
    Ok(Job {
        id: existing.map_or_else(JobId::new, |job| job.id),
        name,
        description: input.description.filter(|d| !d.trim().is_empty()),
        kind,
        prompt: text,
        schedule,
        timezone,
        enabled,
        model,
        allowed_tools,
        disallowed_tools,
        max_turns,
        timeout_secs,
        max_cost_usd,
        misfire_policy: input.misfire_policy.unwrap_or(MisfirePolicy::RunOnce),
        misfire_cap,
        overlap_policy: input.overlap_policy.unwrap_or(OverlapPolicy::Skip),
        retry,
        pool,
        sandbox,
        fire_cursor,
        missed_fires: existing.map_or(0, |job| job.missed_fires),
        overlap_skipped: existing.map_or(0, |job| job.overlap_skipped),
        created_at: existing.map_or(now, |job| job.created_at),
        updated_at: now,
    })
}

/// A name as given (of a job or a webhook), trimmed: 1 to 100 characters, none of them control
/// characters.
pub(crate) fn validate_name(name: &str) -> ServiceResult<String> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ServiceError::invalid("name", "must be 1 to 100 characters"));
    }
    if let Some(bad) = name.chars().find(|c| c.is_control()) {
        return Err(ServiceError::invalid(
            "name",
            format!("must not contain control characters (found {bad:?})"),
        ));
    }
    Ok(name)
}

/// A retry policy as given, or `current` (the default for a new record) when none is.
pub(crate) fn validate_retry(
    input: Option<RetryInput>,
    current: Option<RetryPolicy>,
) -> ServiceResult<RetryPolicy> {
    let Some(retry) = input else {
        return Ok(current.unwrap_or_default());
    };
    if retry.count > 10 {
        return Err(ServiceError::invalid(
            "retry.count",
            "must be between 0 and 10",
        ));
    }
    let backoff_secs = retry
        .backoff_secs
        .unwrap_or(RetryPolicy::default().backoff_secs);
    if !(1..=86_400).contains(&backoff_secs) {
        return Err(ServiceError::invalid(
            "retry.backoff_secs",
            "must be between 1 and 86400",
        ));
    }
    Ok(RetryPolicy {
        count: retry.count,
        backoff_secs,
        lost: retry.lost.unwrap_or(false),
    })
}

/// A worker pool name as given, or the default pool.
pub(crate) fn validate_pool(input: Option<String>) -> ServiceResult<String> {
    let pool = input.unwrap_or_else(|| DEFAULT_POOL.to_owned());
    if pool.is_empty()
        || pool.len() > 64
        || !pool
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ServiceError::invalid(
            "pool",
            "must be 1 to 64 letters, digits, `-` or `_`",
        ));
    }
    Ok(pool)
}

/// The run settings a job and a quick run share, checked the same way for both.
pub(crate) struct ClaudeSettings {
    pub model: Option<String>,
    pub allowed_tools: Vec<String>,
    pub disallowed_tools: Vec<String>,
    pub max_turns: Option<u32>,
    pub timeout_secs: u64,
    pub max_cost_usd: Option<f64>,
}

impl ClaudeSettings {
    /// Checks every field, naming the wrong one, and normalises tool names.
    pub(crate) fn validate(self) -> ServiceResult<ClaudeSettings> {
        let model = match self.model.map(|m| m.trim().to_owned()) {
            Some(m) if m.is_empty() || m.len() > 100 => {
                return Err(ServiceError::invalid(
                    "model",
                    "must be 1 to 100 characters",
                ))
            }
            other => other,
        };
        if self
            .max_turns
            .is_some_and(|turns| !(1..=1000).contains(&turns))
        {
            return Err(ServiceError::invalid(
                "max_turns",
                "must be between 1 and 1000",
            ));
        }
        if !(1..=7 * 24 * 3600).contains(&self.timeout_secs) {
            return Err(ServiceError::invalid(
                "timeout_secs",
                "must be between 1 and 604800 (a week)",
            ));
        }
        if self
            .max_cost_usd
            .is_some_and(|cost| !cost.is_finite() || cost <= 0.0)
        {
            return Err(ServiceError::invalid(
                "max_cost_usd",
                "must be a positive number of US dollars, e.g. 0.5",
            ));
        }
        Ok(ClaudeSettings {
            model,
            allowed_tools: tools("allowed_tools", self.allowed_tools)?,
            disallowed_tools: tools("disallowed_tools", self.disallowed_tools)?,
            max_turns: self.max_turns,
            timeout_secs: self.timeout_secs,
            max_cost_usd: self.max_cost_usd,
        })
    }
}

fn tools(field: &str, names: Vec<String>) -> ServiceResult<Vec<String>> {
    let mut normalised = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(ServiceError::invalid(
                format!("{field}.{index}"),
                "a tool name must be 1 to 200 characters",
            ));
        }
        if name.trim() == "mcp__*" {
            return Err(ServiceError::invalid(
                format!("{field}.{index}"),
                "`mcp__*` matches nothing in Claude Code; name the server (`mcp__github`) or its tools (`mcp__github__*`)",
            ));
        }
        let tool = autopilot_worker::command::normalise_tool_name(name);
        if !normalised.contains(&tool) {
            normalised.push(tool);
        }
    }
    Ok(normalised)
}

/// Turns a job back into the input that describes it, so a patch can be validated as a whole.
fn input_of(job: &Job) -> JobInput {
    let (schedule, at) = match &job.schedule {
        Schedule::Cron(expr) => (Some(expr.clone()), None),
        Schedule::At(at) => (None, Some(*at)),
        Schedule::None => (None, None),
    };
    let (prompt, command) = match job.kind {
        JobKind::Claude => (Some(job.prompt.clone()), None),
        JobKind::Shell => (None, Some(job.prompt.clone())),
    };
    JobInput {
        name: job.name.clone(),
        description: job.description.clone(),
        kind: Some(job.kind),
        prompt,
        command,
        schedule,
        at,
        timezone: Some(job.timezone.clone()),
        enabled: Some(job.enabled),
        model: job.model.clone(),
        allowed_tools: Some(job.allowed_tools.clone()),
        disallowed_tools: Some(job.disallowed_tools.clone()),
        max_turns: job.max_turns,
        timeout_secs: Some(job.timeout_secs),
        max_cost_usd: job.max_cost_usd,
        misfire_policy: Some(job.misfire_policy),
        misfire_cap: Some(job.misfire_cap),
        overlap_policy: Some(job.overlap_policy),
        retry: Some(RetryInput {
            count: job.retry.count,
            backoff_secs: Some(job.retry.backoff_secs),
            lost: Some(job.retry.lost),
        }),
        pool: Some(job.pool.clone()),
        sandbox: Some(job.sandbox.into()),
    }
}

fn apply(job: &Job, patch: JobPatch) -> JobInput {
    let mut input = input_of(job);
    macro_rules! set {
        ($($field:ident),+) => { $(if let Some(value) = patch.$field { input.$field = value.into(); })+ };
    }
    set!(
        name,
        timezone,
        enabled,
        allowed_tools,
        disallowed_tools,
        timeout_secs,
        misfire_policy,
        misfire_cap,
        overlap_policy,
        retry,
        pool
    );
    set!(description, model, max_turns, max_cost_usd);
    if let Some(patch) = patch.sandbox {
        let current = input.sandbox.unwrap_or_default();
        input.sandbox = Some(SandboxInput {
            network: patch.network.or(current.network),
            memory_mb: patch.memory_mb.or(current.memory_mb),
            cpus: patch.cpus.or(current.cpus),
            pids: patch.pids.or(current.pids),
        });
    }
    if let Some(prompt) = patch.prompt {
        input.prompt = Some(prompt);
    }
    if let Some(command) = patch.command {
        input.command = Some(command);
    }
    // Setting one kind of schedule replaces the other.
    match (patch.schedule, patch.at) {
        (Some(schedule), Some(at)) => (input.schedule, input.at) = (schedule, at),
        (Some(schedule), None) => (input.schedule, input.at) = (schedule, None),
        (None, Some(at)) => (input.schedule, input.at) = (None, at),
        (None, None) => {}
    }
    input
}

impl App {
    pub async fn create_job(&self, input: JobInput) -> ServiceResult<JobView> {
        let job = validate(input, None, Utc::now())?;
        self.store.insert_job(&job).await?;
        tracing::info!(job.id = %job.id, job.name = %job.name, "job created");
        self.notify_jobs_changed();
        Ok(JobView::from(&job))
    }

    pub async fn update_job(&self, id: JobId, patch: JobPatch) -> ServiceResult<JobView> {
        let existing = self.job(id).await?;
        let job = validate(apply(&existing, patch), Some(&existing), Utc::now())?;
        match self.store.update_job(&job).await {
            Err(crate::store::StoreError::NotFound) => return Err(not_found(id)),
            other => other?,
        }
        tracing::info!(job.id = %job.id, "job updated");
        self.notify_jobs_changed();
        // Webhooks pointing at the job take its new settings.
        self.deliveries.clear();
        Ok(JobView::from(&job))
    }

    pub async fn delete_job(&self, id: JobId) -> ServiceResult<()> {
        let job = self.job(id).await?;
        self.ensure_no_webhooks(id, &job.name).await?;
        if !self.store.delete_job(id).await? {
            return Err(not_found(id));
        }
        tracing::info!(job.id = %id, "job deleted");
        self.notify_jobs_changed();
        if let Some(saved) = self.saved_workspaces.get() {
            // No run can use it again. The job is deleted either way: a blob left behind takes
            // room, nothing else.
            let blob = autopilot_worker::workspaces::SharedWorkspaces::blob_name(&job.workspace());
            if let Err(err) = saved.delete(&blob).await {
                tracing::warn!(job.id = %id, error = %err, "could not delete the job's saved workspace");
            }
        }
        Ok(())
    }

    /// Looks a job up by id or, failing that, by name.
    pub async fn find_job(&self, id_or_name: &str) -> ServiceResult<Job> {
        if let Ok(id) = id_or_name.parse::<JobId>() {
            return self.job(id).await;
        }
        self.store
            .get_job_by_name(id_or_name)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                what: "job",
                id: id_or_name.to_owned(),
            })
    }

    pub async fn job(&self, id: JobId) -> ServiceResult<Job> {
        self.store.get_job(id).await?.ok_or_else(|| not_found(id))
    }

    pub async fn list_jobs(&self) -> ServiceResult<Vec<JobView>> {
        Ok(self
            .store
            .list_jobs()
            .await?
            .iter()
            .map(JobView::from)
            .collect())
    }

    /// The next `count` fire times of a job.
    pub async fn next_fires(&self, id: JobId, count: usize) -> ServiceResult<Vec<DateTime<Utc>>> {
        upcoming_fires(&self.job(id).await?, count)
    }

    /// Runs a job now (as just read by `find_job`). Under `overlap_policy: skip`, a job that is
    /// still running is refused.
    pub async fn trigger_job(&self, job: Job) -> ServiceResult<Run> {
        if job.overlap_policy == OverlapPolicy::Skip && !self.active_runs(job.id).await?.is_empty()
        {
            return Err(ServiceError::Conflict(format!(
                "job `{}` has a run in progress and its overlap_policy is `skip`; wait for it, kill it, or set overlap_policy to `queue` or `allow`",
                job.name
            )));
        }
        let run = Run::queued(Trigger::Manual, Some(&job), job.run_settings(), None);
        self.submit_run(run).await
    }
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

/// Previews fire times of a schedule that is not saved yet.
pub fn preview_schedule(
    schedule: &str,
    timezone: Option<&str>,
    count: usize,
) -> ServiceResult<Vec<DateTime<Utc>>> {
    let timezone = timezone.unwrap_or("UTC");
    parse_timezone(timezone).map_err(|message| ServiceError::invalid("timezone", message))?;
    parse_cron(schedule).map_err(|err| ServiceError::invalid("schedule", err.message))?;
    let compiled = Compiled::new(&Schedule::Cron(schedule.to_owned()), timezone)
        .map_err(|m| ServiceError::invalid("schedule", m))?;
    Ok(compiled.next_fires(Utc::now(), count))
}

fn not_found(id: JobId) -> ServiceError {
    ServiceError::NotFound {
        what: "job",
        id: id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> JobInput {
        JobInput {
            name: "digest".into(),
            prompt: Some("summarise".into()),
            schedule: Some("0 9 * * 1-5".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_follow_the_issue() {
        let job = validate(input(), None, Utc::now()).unwrap();
        assert_eq!(job.kind, JobKind::Claude);
        assert_eq!(job.timezone, "UTC");
        assert_eq!(job.timeout_secs, 1800);
        assert_eq!(job.misfire_policy, MisfirePolicy::RunOnce);
        assert_eq!(job.overlap_policy, OverlapPolicy::Skip);
        assert!(job.enabled);
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases: Vec<(JobInput, &str)> = vec![
            (
                JobInput {
                    schedule: Some("0 99 * * *".into()),
                    ..input()
                },
                "schedule",
            ),
            (
                JobInput {
                    timezone: Some("Mars/Base".into()),
                    ..input()
                },
                "timezone",
            ),
            (
                JobInput {
                    prompt: None,
                    ..input()
                },
                "prompt",
            ),
            (
                JobInput {
                    at: Some(Utc::now()),
                    ..input()
                },
                "at",
            ),
            (
                JobInput {
                    max_cost_usd: Some(-1.0),
                    ..input()
                },
                "max_cost_usd",
            ),
            (
                JobInput {
                    allowed_tools: Some(vec!["mcp__*".into()]),
                    ..input()
                },
                "allowed_tools.0",
            ),
            (
                JobInput {
                    kind: Some(JobKind::Shell),
                    prompt: None,
                    command: Some("ls".into()),
                    model: Some("x".into()),
                    ..input()
                },
                "model",
            ),
        ];
        for (case, field) in cases {
            match validate(case, None, Utc::now()) {
                Err(ServiceError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected an error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn tools_are_normalised_and_deduplicated() {
        let job = validate(
            JobInput {
                allowed_tools: Some(vec![
                    "github:create_issue".into(),
                    "Bash".into(),
                    "Bash".into(),
                ]),
                ..input()
            },
            None,
            Utc::now(),
        )
        .unwrap();
        assert_eq!(job.allowed_tools, ["mcp__github__create_issue", "Bash"]);
    }

    #[test]
    fn patch_keeps_what_it_does_not_name_and_clears_nulls() {
        let job = validate(
            JobInput {
                model: Some("claude-sonnet-4-5".into()),
                ..input()
            },
            None,
            Utc::now(),
        )
        .unwrap();
        let patch: JobPatch =
            serde_json::from_str(r#"{"model": null, "timeout_secs": 60}"#).unwrap();
        let updated = validate(apply(&job, patch), Some(&job), Utc::now()).unwrap();
        assert_eq!(updated.model, None);
        assert_eq!(updated.timeout_secs, 60);
        assert_eq!(updated.schedule, job.schedule);
        assert_eq!(
            updated.fire_cursor, job.fire_cursor,
            "an unchanged schedule keeps its cursor"
        );
    }
}
