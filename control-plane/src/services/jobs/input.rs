//! A job as clients describe it ([`JobInput`]) or change it ([`JobPatch`]), and the check that
//! turns a description into a [`Job`]. A patch is applied to the stored job's description first,
//! then checked like a new one.

use autopilot_proto::JobId;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::domain::approval::ApprovalRule;
use crate::domain::handlers::{EndHandler, MAX_RESULT_HANDLERS};
use crate::domain::input::{flattened, nullable, validate_name};
use crate::domain::job::ScheduleFields;
use crate::domain::limits::MAX_PROMPT_BYTES;
use crate::domain::rules::{
    check_prompt_values, Budget, Chain, ChainOn, Conditions, FileSubscription, HookSubscription,
    JobConcurrency, JobRules, MAX_CHAIN_PARENTS,
};
use crate::domain::schedule::{parse_cron, parse_interval, parse_timezone};
use crate::domain::tools::validate_credential_name;
use crate::domain::{
    Job, JobKind, MisfirePolicy, OverlapPolicy, RetryPolicy, RunSettingsInput, RunSettingsPatch,
    Schedule, ServiceError, ServiceResult,
};
use autopilot_proto::HttpSpec;

pub const DEFAULT_MISFIRE_CAP: u32 = 10;

/// The jobs a job runs after, as clients name them.
#[derive(Deserialize, Debug, Default, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainInput {
    /// The jobs to follow, by name or id.
    pub jobs: Vec<String>,
    /// Which of their ends start this job: `success` (default), `failure` (failed, timed out
    /// or lost) or `any`.
    #[serde(default)]
    pub on: Option<ChainOn>,
    /// Wait until every one of `jobs` has ended that way since this job last ran after them
    /// (default false: any one of them will do).
    #[serde(default)]
    pub require_all: Option<bool>,
}

/// A job as clients create it. Unknown fields are refused by name.
#[derive(Deserialize, Debug, Default, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    /// Unique name; jobs can be addressed by it.
    pub name: String,
    /// What the job is for, for people reading the list.
    #[serde(default)]
    pub description: Option<String>,
    /// `claude` (default) runs `prompt` with Claude Code; `shell` runs `command` with `sh -c`. A
    /// `command` without a `kind` means `shell`.
    #[serde(default)]
    pub kind: Option<JobKind>,
    /// What Claude should do on each run (claude jobs).
    #[serde(default)]
    pub prompt: Option<String>,
    /// The shell command (shell jobs), run in the job's workspace.
    #[serde(default)]
    pub command: Option<String>,
    /// The request of an http job (kind `http`): method, URL, headers (credentials as
    /// `${NAME}`), body, which statuses are success, whether private addresses may be reached.
    /// The answer's body (capped at 64 KiB) is the run's result.
    #[serde(default)]
    pub request: Option<HttpSpec>,
    /// 5-field (minute hour day-of-month month day-of-week) or 6-field (seconds first) cron
    /// expression, or an alias such as `@hourly`; leave out for a manual-only job.
    #[serde(default)]
    pub schedule: Option<String>,
    /// One time to fire, RFC 3339 (e.g. `2026-12-24T18:00:00Z`), instead of `schedule`; the job
    /// is disabled after it fires.
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// Fire at a fixed interval instead of `schedule`: `30s`, `15m`, `2h`, `1d`, `1h30m`
    /// (1 s to 366 days), in real time from `start`.
    #[serde(default)]
    pub every: Option<String>,
    /// When an `every` job first fires, RFC 3339; later fires follow at whole intervals from
    /// it. Default: one interval after the job is saved.
    #[serde(default)]
    pub start: Option<DateTime<Utc>>,
    /// Run after other jobs end (a chain), beside or instead of a schedule. The parent run's
    /// id, status and result are the prompt's `{{ parent.run_id }}`, `{{ parent.status }}`
    /// and `{{ parent.result }}`.
    #[serde(default)]
    pub after: Option<ChainInput>,
    /// Start a run on Claude Code hook events that `autopilot hook` forwards (from a
    /// developer's sessions): the events, a tool matcher, a directory, a debounce. The event is
    /// the prompt's `{{ event }}` (`{{ event.tool_name }}`, `{{ event.tool_input }}` …), as
    /// data; a shell job gets it on standard input.
    #[serde(default)]
    pub on_hook: Option<HookSubscription>,
    /// After each run ends (at most 5 handlers, each `on` success, failure or any): POST its
    /// outcome (JSON: run id, job, status, result, error, tokens, cost) to `post`, signed with
    /// HMAC-SHA256 when `sign_with` names a vault credential, retried with backoff; or `write`
    /// it to a path in the job's workspace; or `notify` a channel of a registered `notify`
    /// server (`{"server", "channel"}`); or `trigger` another job (name or id), with this run as
    /// its `{{ parent }}`.
    #[serde(default)]
    pub on_end: Option<Vec<EndHandler>>,
    /// Start a run when watched files change on the machines of a worker pool: paths (the last
    /// part may hold `*`), events (create, modify, delete), a debounce. The file is the
    /// prompt's `{{ file.path }}` and `{{ file.event }}`; a shell job gets it as JSON on
    /// standard input.
    #[serde(default)]
    pub on_file: Option<FileSubscription>,
    /// What a fire (scheduled or chained) must meet to start a run: time windows, most runs a
    /// day or a week. A fire that does not is recorded as skipped, with the reason.
    #[serde(default)]
    pub conditions: Option<Conditions>,
    /// Most the job may spend a day and a month (US dollars, by the CLI's reported cost);
    /// past it, new runs are refused and fires are recorded as skipped.
    #[serde(default)]
    pub budget: Option<Budget>,
    /// Tools whose every call waits for a person's approval (claude jobs): `tools` by name and
    /// `levels` of the granted servers' tools, `approvers` (OAuth client ids beside the
    /// operator), `timeout_secs` (then the call is denied). The run shows
    /// `waiting_for_approval` meanwhile.
    #[serde(default)]
    pub approval: Option<ApprovalRule>,
    /// Most runs of a key going at once, across the jobs that render the same key: `{"key":
    /// "{{ file.path }}", "limit": 1}` (the key reads the run's values; a run over the limit
    /// waits, queued).
    #[serde(default)]
    pub concurrency: Option<JobConcurrency>,
    /// IANA time zone the schedule is read in, e.g. `Europe/Paris`. Default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Fires missed while Autopilot was down: `run_once` (default), `skip` or `run_all`.
    #[serde(default)]
    pub misfire_policy: Option<MisfirePolicy>,
    /// Most missed fires run under `run_all` (1 to 1000; default 10).
    #[serde(default)]
    pub misfire_cap: Option<u32>,
    /// A fire while a run is still going: `skip` (default), `queue` or `allow`.
    #[serde(default)]
    pub overlap_policy: Option<OverlapPolicy>,
    #[serde(flatten, deserialize_with = "flattened")]
    pub run: RunSettingsInput,
}

/// A partial update of a job. A field left out keeps its value; `null` clears an optional one.
#[derive(Deserialize, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobPatch {
    /// New unique name.
    pub name: Option<String>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    pub description: Option<Option<String>>,
    /// New prompt (claude jobs).
    pub prompt: Option<String>,
    /// New command (shell jobs).
    pub command: Option<String>,
    /// New request (http jobs).
    pub request: Option<HttpSpec>,
    /// New cron expression; `null` makes the job manual-only.
    #[serde(default, deserialize_with = "nullable")]
    pub schedule: Option<Option<String>>,
    /// One time to fire (RFC 3339); `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    pub at: Option<Option<DateTime<Utc>>>,
    /// New interval (`15m`, `2h` …); `null` makes the job manual-only.
    #[serde(default, deserialize_with = "nullable")]
    pub every: Option<Option<String>>,
    /// When the interval starts (RFC 3339); `null` starts it from now.
    #[serde(default, deserialize_with = "nullable")]
    pub start: Option<Option<DateTime<Utc>>>,
    /// The jobs it runs after; `null` ends the chain.
    #[serde(default, deserialize_with = "nullable")]
    pub after: Option<Option<ChainInput>>,
    /// The hook events it answers; `null` stops answering them.
    #[serde(default, deserialize_with = "nullable")]
    pub on_hook: Option<Option<HookSubscription>>,
    /// Replaces the result handlers; `null` or `[]` removes them.
    #[serde(default, deserialize_with = "nullable")]
    pub on_end: Option<Option<Vec<EndHandler>>>,
    /// The files it watches; `null` stops watching.
    #[serde(default, deserialize_with = "nullable")]
    pub on_file: Option<Option<FileSubscription>>,
    /// `null` removes every condition.
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: Option<Option<Conditions>>,
    /// `null` removes the budget.
    #[serde(default, deserialize_with = "nullable")]
    pub budget: Option<Option<Budget>>,
    /// Replaces the approval gate; `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    pub approval: Option<Option<ApprovalRule>>,
    /// Replaces the concurrency key; `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    pub concurrency: Option<Option<JobConcurrency>>,
    /// IANA time zone the schedule is read in.
    pub timezone: Option<String>,
    /// `false` pauses the job, `true` resumes it.
    pub enabled: Option<bool>,
    /// `run_once`, `skip` or `run_all`.
    pub misfire_policy: Option<MisfirePolicy>,
    /// Most missed fires run under `run_all` (1 to 1000).
    pub misfire_cap: Option<u32>,
    /// `skip`, `queue` or `allow`.
    pub overlap_policy: Option<OverlapPolicy>,
    #[serde(flatten, deserialize_with = "flattened")]
    pub run: RunSettingsPatch,
}

/// Checks a whole job description and builds the job. `existing` supplies the id, counters and
/// creation time on update.
pub(crate) fn validate(
    input: JobInput,
    existing: Option<&Job>,
    now: DateTime<Utc>,
) -> ServiceResult<Job> {
    let name = validate_name(&input.name)?;
    let given = [
        input.prompt.is_some(),
        input.command.is_some(),
        input.request.is_some(),
    ];
    if given.iter().filter(|given| **given).count() > 1 {
        return Err(ServiceError::invalid(
            if input.request.is_some() { "request" } else { "command" },
            "give one of `prompt` (a claude job), `command` (a shell job) or `request` (an http job)",
        ));
    }
    let kind = match (input.kind, given) {
        (Some(kind), _) => kind,
        (None, [_, true, _]) => JobKind::Shell,
        (None, [_, _, true]) => JobKind::Http,
        (None, _) => JobKind::Claude,
    };
    let (text_field, text) = match kind {
        JobKind::Claude => ("prompt", input.prompt),
        JobKind::Shell => ("command", input.command),
        JobKind::Http => (
            "request",
            input
                .request
                .map(|request| {
                    validate_request(request).map(|request| {
                        serde_json::to_string(&request).expect("a request always serializes")
                    })
                })
                .transpose()?,
        ),
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
    let every = input.every.filter(|e| !e.trim().is_empty());
    let cron = input.schedule.filter(|s| !s.trim().is_empty());
    if every.is_some() && (cron.is_some() || input.at.is_some()) {
        return Err(ServiceError::invalid(
            "every",
            "give one of `schedule` (cron), `every` (an interval) or `at` (one time)",
        ));
    }
    if input.start.is_some() && every.is_none() {
        return Err(ServiceError::invalid(
            "start",
            "`start` anchors an interval: give `every` with it",
        ));
    }
    let schedule = match (cron, input.at) {
        _ if every.is_some() => {
            let text = every.unwrap_or_default();
            let every_secs =
                parse_interval(&text).map_err(|message| ServiceError::invalid("every", message))?;
            let start = match (input.start, existing.map(|job| &job.schedule)) {
                (Some(start), _) => start,
                // The same interval keeps its beat across an edit.
                (
                    None,
                    Some(Schedule::Every {
                        every_secs: old,
                        start,
                    }),
                ) if *old == every_secs => *start,
                (None, _) => now + chrono::Duration::seconds(every_secs as i64),
            };
            Schedule::Every { every_secs, start }
        }
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
    if kind == JobKind::Claude {
        check_prompt_values(&text).map_err(|message| ServiceError::invalid("prompt", message))?;
    }
    let mut rules = validate_rules(input.after, input.conditions, input.budget, existing)?;
    if let Some(subscription) = &input.on_hook {
        subscription
            .validate()
            .map_err(|(field, message)| ServiceError::invalid(field, message))?;
    }
    rules.on_hook = input.on_hook;
    let handlers = input.on_end.unwrap_or_default();
    if handlers.len() > MAX_RESULT_HANDLERS {
        return Err(ServiceError::invalid(
            "on_end",
            format!("at most {MAX_RESULT_HANDLERS} result handlers"),
        ));
    }
    for (index, handler) in handlers.iter().enumerate() {
        handler
            .validate(index)
            .map_err(|(field, message)| ServiceError::invalid(field, message))?;
    }
    rules.on_end = handlers;
    if let Some(subscription) = &input.on_file {
        subscription
            .validate()
            .map_err(|(field, message)| ServiceError::invalid(field, message))?;
    }
    rules.on_file = input.on_file;
    if let Some(concurrency) = &input.concurrency {
        concurrency
            .validate()
            .map_err(|(field, message)| ServiceError::invalid(field, message))?;
    }
    rules.concurrency = input.concurrency;
    rules.approval = match input.approval {
        None => None,
        Some(_) if kind != JobKind::Claude => {
            return Err(ServiceError::invalid(
                "approval",
                "approval gates are for claude jobs, whose tool calls they hold",
            ))
        }
        Some(rule) => Some(
            rule.normalised()
                .map_err(|(field, message)| ServiceError::invalid(field, message))?,
        ),
    };
    // A pause for a usage limit outlives an edit.
    rules.paused_until = existing.and_then(|job| job.rules.paused_until);
    let settings = input.run.resolve(kind, RetryPolicy::default())?;
    if let Some(rule) = &rules.approval {
        if rule.timeout_secs() >= settings.timeout_secs {
            return Err(ServiceError::invalid(
                "approval.timeout_secs",
                format!(
                    "is {} s, but a run may last {} s (timeout_secs), waits included: make the \
                     approval timeout shorter or the run's timeout longer",
                    rule.timeout_secs(),
                    settings.timeout_secs
                ),
            ));
        }
    }
    let misfire_cap = input.misfire_cap.unwrap_or(DEFAULT_MISFIRE_CAP);
    if !(1..=1000).contains(&misfire_cap) {
        return Err(ServiceError::invalid(
            "misfire_cap",
            "must be between 1 and 1000",
        ));
    }
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
        settings,
        rules,
        misfire_policy: input.misfire_policy.unwrap_or(MisfirePolicy::RunOnce),
        misfire_cap,
        overlap_policy: input.overlap_policy.unwrap_or(OverlapPolicy::Skip),
        fire_cursor,
        missed_fires: existing.map_or(0, |job| job.missed_fires),
        overlap_skipped: existing.map_or(0, |job| job.overlap_skipped),
        created_at: existing.map_or(now, |job| job.created_at),
        updated_at: now,
    })
}

/// Checks an http job's request.
fn validate_request(mut request: HttpSpec) -> ServiceResult<HttpSpec> {
    request.method = request.method.trim().to_ascii_uppercase();
    if !HttpSpec::METHODS.contains(&request.method.as_str()) {
        return Err(ServiceError::invalid(
            "request.method",
            format!("use one of {}", HttpSpec::METHODS.join(", ")),
        ));
    }
    let url = reqwest::Url::parse(request.url.trim()).map_err(|err| {
        ServiceError::invalid(
            "request.url",
            format!("`{}` is not a URL: {err}", request.url),
        )
    })?;
    if !(url.scheme() == "https" || (url.scheme() == "http" && request.allow_private))
        || url.host_str().is_none()
    {
        return Err(ServiceError::invalid(
            "request.url",
            "give an https URL (http only with `allow_private`, for an internal endpoint)",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ServiceError::invalid(
            "request.url",
            "put no credentials in the URL: put them in a header as `${NAME}`",
        ));
    }
    for (name, value) in &request.headers {
        let field = format!("request.headers.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(ServiceError::invalid(
                field,
                "a header name is letters, digits, `-` and `_`",
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(ServiceError::invalid(
                field,
                "a header value holds no control characters",
            ));
        }
        for credential in autopilot_proto::placeholders::names(value) {
            validate_credential_name(&field, &credential)?;
        }
    }
    if request
        .body
        .as_ref()
        .is_some_and(|body| body.len() > MAX_PROMPT_BYTES)
    {
        return Err(ServiceError::invalid(
            "request.body",
            format!("is over {MAX_PROMPT_BYTES} bytes"),
        ));
    }
    if let Some(status) = request
        .success_status
        .iter()
        .find(|s| !(100..=599).contains(*s))
    {
        return Err(ServiceError::invalid(
            "request.success_status",
            format!("{status} is not an HTTP status"),
        ));
    }
    Ok(request)
}

/// Checks a job's chain (its parents must be ids by now: names are looked up before), its
/// conditions and its budget.
fn validate_rules(
    after: Option<ChainInput>,
    conditions: Option<Conditions>,
    budget: Option<Budget>,
    existing: Option<&Job>,
) -> ServiceResult<JobRules> {
    let chain = match after {
        None => None,
        Some(chain) => {
            if chain.jobs.is_empty() || chain.jobs.len() > MAX_CHAIN_PARENTS {
                return Err(ServiceError::invalid(
                    "after.jobs",
                    format!("name 1 to {MAX_CHAIN_PARENTS} jobs to run after"),
                ));
            }
            let mut ids = Vec::with_capacity(chain.jobs.len());
            for (index, name) in chain.jobs.iter().enumerate() {
                let id: JobId = name.parse().map_err(|_| ServiceError::NotFound {
                    what: "job",
                    id: name.clone(),
                })?;
                if existing.is_some_and(|job| job.id == id) {
                    return Err(ServiceError::invalid(
                        format!("after.jobs.{index}"),
                        "a job cannot run after itself",
                    ));
                }
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Some(Chain {
                after: ids,
                on: chain.on.unwrap_or_default(),
                require_all: chain.require_all.unwrap_or(false),
            })
        }
    };
    let conditions = conditions.unwrap_or_default();
    conditions
        .validate()
        .map_err(|(field, message)| ServiceError::invalid(field, message))?;
    let budget = budget.unwrap_or_default();
    budget
        .validate()
        .map_err(|(field, message)| ServiceError::invalid(field, message))?;
    Ok(JobRules {
        chain,
        on_hook: None,
        on_end: Vec::new(),
        on_file: None,
        paused_until: None,
        conditions,
        budget,
        approval: None,
        concurrency: None,
    })
}

/// The input that describes `job` with `patch` applied, so it can be checked as a whole.
pub(crate) fn apply(job: &Job, patch: JobPatch) -> JobInput {
    let ScheduleFields {
        cron: schedule,
        at,
        every,
        start,
    } = job.schedule.fields();
    let (prompt, command) = match job.kind {
        JobKind::Claude => (Some(job.prompt.clone()), None),
        JobKind::Shell => (None, Some(job.prompt.clone())),
        JobKind::Http => (None, None),
    };
    let mut input = JobInput {
        name: job.name.clone(),
        description: job.description.clone(),
        kind: Some(job.kind),
        prompt,
        command,
        request: job.request(),
        schedule,
        at,
        every,
        start,
        after: job.rules.chain.as_ref().map(|chain| ChainInput {
            jobs: chain.after.iter().map(ToString::to_string).collect(),
            on: Some(chain.on),
            require_all: Some(chain.require_all),
        }),
        on_hook: job.rules.on_hook.clone(),
        on_end: Some(job.rules.on_end.clone()),
        on_file: job.rules.on_file.clone(),
        conditions: Some(job.rules.conditions.clone()),
        budget: Some(job.rules.budget.clone()),
        approval: job.rules.approval.clone(),
        concurrency: job.rules.concurrency.clone(),
        timezone: Some(job.timezone.clone()),
        enabled: Some(job.enabled),
        misfire_policy: Some(job.misfire_policy),
        misfire_cap: Some(job.misfire_cap),
        overlap_policy: Some(job.overlap_policy),
        run: RunSettingsInput::from(&job.settings),
    };
    macro_rules! set {
        ($($field:ident),+) => { $(if let Some(value) = patch.$field { input.$field = value.into(); })+ };
    }
    set!(
        name,
        timezone,
        enabled,
        misfire_policy,
        misfire_cap,
        overlap_policy,
        description,
        prompt,
        command
    );
    if let Some(request) = patch.request {
        input.request = Some(request);
    }
    input.run.apply(patch.run);
    set!(
        after,
        on_hook,
        on_end,
        on_file,
        conditions,
        budget,
        approval,
        concurrency
    );
    // Setting one kind of schedule replaces the others.
    if patch.schedule.is_some() || patch.at.is_some() || patch.every.is_some() {
        input.schedule = patch.schedule.flatten();
        input.at = patch.at.flatten();
        input.every = patch.every.flatten();
        input.start = None;
    }
    if let Some(start) = patch.start {
        input.start = start;
    }
    input
}

#[cfg(test)]
#[path = "input_tests.rs"]
mod tests;
