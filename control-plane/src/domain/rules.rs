//! What decides a job's runs beside its schedule: the jobs it follows (a chain), the Claude Code
//! hook events it answers, the conditions a fire must meet (time windows, most runs a day or a
//! week), and its budget. Also the values every
//! claude run's prompt may use (`{{ date }}`, `{{ job.name }}`, `{{ parent.result }}` …).

use autopilot_proto::{JobId, RunId, RunStatus, Trigger};
use chrono::{DateTime, Datelike, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use autopilot_proto::files::{split_watch_path, watch_matches};

use super::handlers::{EndHandler, ResultHandler};
use super::limits::MAX_PROMPT_BYTES;
use super::run::Run;
use super::template::{RenderInput, Template, VALUE_ROOTS};
use super::Job;

/// The most of a parent run's result its children's prompts see.
pub const MAX_PARENT_RESULT_BYTES: usize = 16 * 1024;
/// Most jobs one job may follow.
pub const MAX_CHAIN_PARENTS: usize = 20;

/// Which ends of the parent runs start the child.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChainOn {
    /// The parent succeeded.
    #[default]
    Success,
    /// The parent failed, timed out or was lost (a kill is neither: only `any` follows it).
    Failure,
    /// Any end, a kill included.
    Any,
}

impl ChainOn {
    pub fn matches(self, status: RunStatus) -> bool {
        match self {
            ChainOn::Success => status == RunStatus::Succeeded,
            ChainOn::Failure => matches!(
                status,
                RunStatus::Failed | RunStatus::TimedOut | RunStatus::Lost
            ),
            ChainOn::Any => status.is_terminal(),
        }
    }
}

/// A job that runs after others end.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Chain {
    /// The jobs it follows.
    pub after: Vec<JobId>,
    pub on: ChainOn,
    /// Wait until every parent has ended this way since the child last ran (else any one will
    /// do).
    pub require_all: bool,
}

/// A span of local time on some days of the week, in the job's time zone. `from` after `to`
/// spans midnight (the days are those it starts on).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    /// `mon` … `sun`, or `weekdays` / `weekend`; all days when left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// Start, `HH:MM` (included).
    pub from: String,
    /// End, `HH:MM` (excluded).
    pub to: String,
}

/// What a fire must meet to start a run; a fire that does not is recorded as skipped, with why.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// Runs start only inside one of these windows (none: at any time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<TimeWindow>,
    /// Most runs started a day (midnight to midnight in the job's time zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs_per_day: Option<u32>,
    /// Most runs started a week (from Monday 00:00 in the job's time zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs_per_week: Option<u32>,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        *self == Conditions::default()
    }

    /// Checks the windows and limits, and that every window reads.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for window in &self.windows {
            window_times(window).map_err(|message| ("conditions.windows", message))?;
            for day in &window.days {
                weekdays(day).map_err(|message| ("conditions.windows", message))?;
            }
        }
        if self.windows.len() > 20 {
            return Err(("conditions.windows", "at most 20 windows".to_owned()));
        }
        for (field, limit) in [
            ("conditions.max_runs_per_day", self.max_runs_per_day),
            ("conditions.max_runs_per_week", self.max_runs_per_week),
        ] {
            if limit == Some(0) {
                return Err((
                    field,
                    "must be at least 1 (pause the job to stop its runs)".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// Why a run may not start at `now` by the windows, if it may not.
    pub fn outside_windows(&self, now: DateTime<Utc>, tz: Tz) -> Option<String> {
        if self.windows.is_empty() {
            return None;
        }
        let local = now.with_timezone(&tz);
        let (day, time) = (local.weekday(), local.time());
        let inside = self.windows.iter().any(|window| {
            let Ok((from, to)) = window_times(window) else {
                return false;
            };
            let on = |day: Weekday| {
                window.days.is_empty()
                    || window
                        .days
                        .iter()
                        .any(|name| weekdays(name).is_ok_and(|days| days.contains(&day)))
            };
            if from <= to {
                on(day) && from <= time && time < to
            } else {
                (on(day) && time >= from) || (on(day.pred()) && time < to)
            }
        });
        (!inside).then(|| {
            let windows: Vec<String> = self.windows.iter().map(describe_window).collect();
            format!(
                "outside the job's time windows ({}; it is {} {} in {tz})",
                windows.join("; "),
                day,
                time.format("%H:%M")
            )
        })
    }
}

fn describe_window(window: &TimeWindow) -> String {
    let days = if window.days.is_empty() {
        "every day".to_owned()
    } else {
        window.days.join(",")
    };
    format!("{days} {}–{}", window.from, window.to)
}

fn window_times(window: &TimeWindow) -> Result<(NaiveTime, NaiveTime), String> {
    let time = |text: &str| {
        NaiveTime::parse_from_str(text.trim(), "%H:%M").map_err(|_| {
            format!("`{text}` is not a time of day: write `HH:MM` in 24-hour time, e.g. `09:00` or `17:30`")
        })
    };
    let (from, to) = (time(&window.from)?, time(&window.to)?);
    if from == to {
        return Err(format!(
            "the window {}–{} is empty: give different start and end times",
            window.from, window.to
        ));
    }
    Ok((from, to))
}

fn weekdays(name: &str) -> Result<Vec<Weekday>, String> {
    use Weekday::*;
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "weekdays" => vec![Mon, Tue, Wed, Thu, Fri],
        "weekend" => vec![Sat, Sun],
        "mon" => vec![Mon],
        "tue" => vec![Tue],
        "wed" => vec![Wed],
        "thu" => vec![Thu],
        "fri" => vec![Fri],
        "sat" => vec![Sat],
        "sun" => vec![Sun],
        other => {
            return Err(format!(
                "`{other}` is not a day: use mon, tue, wed, thu, fri, sat, sun, weekdays or weekend"
            ))
        }
    })
}

/// The most a job may spend, by the CLI's reported cost.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// US dollars a day (midnight to midnight in the job's time zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<f64>,
    /// US dollars a calendar month (in the job's time zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
    /// Where to POST an alert when the spend of a day or a month reaches 80 % and 100 % of its
    /// ceiling (once each per period): `{ "post": URL, "sign_with": credential,
    /// "allow_private": false }`, sent like a result handler's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<ResultHandler>,
}

impl Budget {
    pub fn is_empty(&self) -> bool {
        *self == Budget::default()
    }

    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (field, ceiling) in [
            ("budget.daily_usd", self.daily_usd),
            ("budget.monthly_usd", self.monthly_usd),
        ] {
            if ceiling.is_some_and(|usd| !(usd.is_finite() && usd > 0.0)) {
                return Err((field, "must be a positive number of US dollars".to_owned()));
            }
        }
        if let Some(alert) = &self.alert {
            if self.daily_usd.is_none() && self.monthly_usd.is_none() {
                return Err((
                    "budget.alert",
                    "an alert needs `daily_usd` or `monthly_usd`".to_owned(),
                ));
            }
            alert
                .validate_at("budget.alert")
                .map_err(|(field, message)| {
                    // The field names of a budget are static; say which part of the alert.
                    let part = if field.ends_with("sign_with") {
                        "budget.alert.sign_with"
                    } else {
                        "budget.alert.post"
                    };
                    (part, message)
                })?;
        }
        Ok(())
    }
}

/// The Claude Code hook events a job may answer (the `hook_event_name` of `autopilot hook`'s
/// input).
pub const HOOK_EVENTS: [&str; 9] = [
    "SessionStart",
    "SessionEnd",
    "PreToolUse",
    "PostToolUse",
    "UserPromptSubmit",
    "Notification",
    "Stop",
    "SubagentStop",
    "PreCompact",
];

/// Events that carry a `tool_name` a matcher applies to.
const TOOL_EVENTS: [&str; 2] = ["PreToolUse", "PostToolUse"];

fn default_debounce_secs() -> u64 {
    10
}

/// The Claude Code hook events that start a run of a job (sent by `autopilot hook`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HookSubscription {
    /// Event names: SessionStart, SessionEnd, PreToolUse, PostToolUse, UserPromptSubmit,
    /// Notification, Stop, SubagentStop, PreCompact.
    pub events: Vec<String>,
    /// For PreToolUse and PostToolUse: the tool names that count, written like Claude Code's
    /// own hook matchers: `Bash`, `Edit|Write`, `mcp__github__.*`. All tools when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matcher: Option<String>,
    /// Only events from sessions working in this directory or below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// At most one run per this many seconds (1 to 86400; default 10): events in between start
    /// nothing.
    #[serde(default = "default_debounce_secs")]
    pub debounce_secs: u64,
}

impl HookSubscription {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.events.is_empty() {
            return Err(("on_hook.events", "name at least one event".to_owned()));
        }
        if let Some(unknown) = self
            .events
            .iter()
            .find(|e| !HOOK_EVENTS.contains(&e.as_str()))
        {
            return Err((
                "on_hook.events",
                format!(
                    "`{unknown}` is not a Claude Code hook event; use {}",
                    HOOK_EVENTS.join(", ")
                ),
            ));
        }
        if let Some(matcher) = &self.matcher {
            let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.*|".contains(c);
            if matcher.trim().is_empty() || !matcher.chars().all(allowed) {
                return Err((
                    "on_hook.matcher",
                    format!(
                        "`{matcher}` is not a tool matcher: write tool names separated by `|`, \
                         each maybe ending in `.*` (e.g. `Edit|Write`, `mcp__github__.*`)"
                    ),
                ));
            }
        }
        if !(1..=86_400).contains(&self.debounce_secs) {
            return Err((
                "on_hook.debounce_secs",
                "must be between 1 and 86400".to_owned(),
            ));
        }
        Ok(())
    }

    /// Whether an event (the hook's input) is one this job answers.
    pub fn matches(&self, event: &Value) -> bool {
        let name = event
            .get("hook_event_name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !self.events.iter().any(|e| e == name) {
            return false;
        }
        if let (Some(matcher), true) = (&self.matcher, TOOL_EVENTS.contains(&name)) {
            let tool = event
                .get("tool_name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let matched = matcher.split('|').map(str::trim).any(|pattern| {
                match pattern
                    .strip_suffix(".*")
                    .or_else(|| pattern.strip_suffix('*'))
                {
                    Some(prefix) => tool.starts_with(prefix),
                    None => pattern == tool,
                }
            });
            if !matched {
                return false;
            }
        }
        if let Some(root) = &self.cwd {
            let root = root.trim_end_matches('/');
            let cwd = event.get("cwd").and_then(Value::as_str).unwrap_or_default();
            let inside = cwd == root
                || cwd
                    .strip_prefix(root)
                    .is_some_and(|rest| rest.starts_with('/'))
                || root.is_empty();
            if !inside {
                return false;
            }
        }
        true
    }
}

/// The kinds of change a file watch reports.
pub const FILE_EVENTS: [&str; 3] = ["create", "modify", "delete"];

fn default_pool() -> String {
    super::settings::DEFAULT_POOL.to_owned()
}

fn default_file_events() -> Vec<String> {
    FILE_EVENTS.iter().map(|e| (*e).to_owned()).collect()
}

fn default_debounce_ms() -> u64 {
    500
}

/// Files whose changes start a run of a job, watched on the machines of a worker pool.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSubscription {
    /// The pool whose workers watch (default `default`; the embedded worker serves it). On a
    /// pool of several workers the files should be shared: a change runs once however many see
    /// it.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// Absolute paths; the last part may hold `*` and `?`, e.g. `/data/inbox/*.csv`.
    pub paths: Vec<String>,
    /// `create`, `modify`, `delete` (default all three).
    #[serde(default = "default_file_events")]
    pub events: Vec<String>,
    /// Also in the directories below (default false).
    #[serde(default)]
    pub recursive: bool,
    /// Quiet time after a file's last event before its change counts, in milliseconds (default
    /// 500; 0 to 600000): a file written in many pieces starts one run.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

impl FileSubscription {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.paths.is_empty() || self.paths.len() > 20 {
            return Err(("on_file.paths", "name 1 to 20 paths".to_owned()));
        }
        for path in &self.paths {
            let (directory, _) = split_watch_path(path).map_err(|why| ("on_file.paths", why))?;
            if directory.contains(['*', '?', '[']) {
                return Err((
                    "on_file.paths",
                    format!("`{path}`: only the last part of a path may hold `*` or `?`"),
                ));
            }
        }
        if self.events.is_empty() {
            return Err((
                "on_file.events",
                "name at least one of create, modify, delete".to_owned(),
            ));
        }
        if let Some(unknown) = self
            .events
            .iter()
            .find(|e| !FILE_EVENTS.contains(&e.as_str()))
        {
            return Err((
                "on_file.events",
                format!("`{unknown}` is not one of create, modify, delete"),
            ));
        }
        if self.debounce_ms > 600_000 {
            return Err((
                "on_file.debounce_ms",
                "must be at most 600000 (ten minutes)".to_owned(),
            ));
        }
        if self.pool.trim().is_empty() {
            return Err((
                "on_file.pool",
                "name the worker pool whose machines watch".to_owned(),
            ));
        }
        Ok(())
    }

    /// Whether a change the worker reported is one this watch asks for.
    pub fn wants(&self, path: &str, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
            && self
                .paths
                .iter()
                .any(|pattern| watch_matches(pattern, path, self.recursive))
    }
}

/// A token that admits Claude Code hook events (and nothing else), by name; only its digest is
/// kept.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct HookToken {
    pub name: String,
    #[serde(skip)]
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
}

/// Everything beside the schedule that decides a job's runs, stored with the job.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct JobRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Chain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_hook: Option<HookSubscription>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_end: Vec<EndHandler>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_file: Option<FileSubscription>,
    #[serde(default, skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    #[serde(default, skip_serializing_if = "Budget::is_empty")]
    pub budget: Budget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<super::approval::ApprovalRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<JobConcurrency>,
    /// Set by Autopilot, not by clients: the credential the job's runs use reached its usage
    /// limit, which resets then; no run starts before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<DateTime<Utc>>,
}

impl JobRules {
    /// Whether anything must be checked before a run of the job starts.
    pub fn gates_runs(&self) -> bool {
        !self.conditions.is_empty() || !self.budget.is_empty() || self.paused_until.is_some()
    }
}

/// Most runs of one concurrency key going at once, beside the job's overlap policy: the key is
/// a template of the run's values (`{{ file.name }}`, `{{ event.session_id }}`, `{{ trigger }}`,
/// or plain text), and every job whose runs render the same key shares its limit (put
/// `{{ job.id }}` in it to keep it to the job). A run over the limit waits, queued.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobConcurrency {
    /// e.g. `{{ file.path }}`, `deploy`, `{{ job.id }}-{{ event.cwd }}`; a run that renders it
    /// empty is not limited.
    pub key: String,
    /// Runs of the key going at once (1 to 1000; default 1).
    #[serde(default = "one")]
    pub limit: u32,
}

fn one() -> u32 {
    1
}

/// Longest rendered concurrency key kept (a longer one is cut: it still tells runs apart).
pub const MAX_KEY_BYTES: usize = 512;

impl JobConcurrency {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.key.trim().is_empty() {
            return Err((
                "concurrency.key",
                "give a key, e.g. `{{ file.path }}` or `deploy`".to_owned(),
            ));
        }
        check_prompt_values(&self.key).map_err(|message| ("concurrency.key", message))?;
        if !(1..=1000).contains(&self.limit) {
            return Err(("concurrency.limit", "must be between 1 and 1000".to_owned()));
        }
        Ok(())
    }
}

/// A fire that started no run, and why (a condition, a budget). Repeats of the same reason
/// from the same trigger are counted on one record.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct SkippedFire {
    pub job_id: JobId,
    pub trigger: Trigger,
    pub reason: String,
    /// When it was first skipped for this reason (in a row).
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// How many fires were skipped for it.
    pub fires: u64,
}

/// Checks that a job's prompt reads as a template of the run's own values (`{{ date }}`, …);
/// a delivery's values belong in a webhook's template.
pub fn check_prompt_values(prompt: &str) -> Result<(), String> {
    if !prompt.contains("{{") {
        return Ok(());
    }
    let template = Template::parse(prompt)
        .map_err(|err| format!("{err} (write `\\{{{{` for a literal `{{{{`)"))?;
    if let Some(root) = template
        .roots()
        .into_iter()
        .find(|root| !VALUE_ROOTS.contains(root))
    {
        return Err(format!(
            "`{{{{ {root} }}}}` is a webhook delivery's value; a job's prompt may use {} (put \
             delivery values in the webhook's prompt template)",
            VALUE_ROOTS.join(", ")
        ));
    }
    Ok(())
}

/// What a chained run learns of the run that started it.
pub fn parent_values(parent: &Run) -> Value {
    let result = parent.result.as_deref().map(|text| {
        if text.len() <= MAX_PARENT_RESULT_BYTES {
            text.to_owned()
        } else {
            let mut end = MAX_PARENT_RESULT_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}… [truncated {} bytes]", &text[..end], text.len() - end)
        }
    });
    json!({
        "run_id": parent.id,
        "job": parent.job_name,
        "job_id": parent.job_id,
        "status": parent.status.as_str(),
        "result": result,
        "error": parent.error,
        "cost_usd": parent.cost_usd,
    })
}

/// Fills the run's values into a claude run's prompt and into the job's concurrency key: the
/// date and time in the job's zone (of the fire a scheduled run is for, else of the run's
/// creation), the job, the run, its trigger, and the trigger's own values (`parent` for a
/// chain, `event`, `file`). A prompt with no `{{` is left as it is, and so is one stored before
/// prompts were templates that does not read as one.
pub fn fill_values(run: &mut Run, job: &Job, trigger_values: Value) {
    let needs_prompt = matches!(&run.settings.kind, autopilot_proto::RunKind::Claude(claude) if claude.prompt.contains("{{"));
    let concurrency = job.rules.concurrency.as_ref();
    if !needs_prompt && concurrency.is_none() {
        return;
    }
    let values = run_values(run, job, trigger_values);
    let input = RenderInput::values_only(&values);
    if let Some(concurrency) = concurrency {
        let key = Template::parse(&concurrency.key)
            .ok()
            .and_then(|key| key.render_raw(&input, usize::MAX).ok())
            .map(|key| key.chars().take(MAX_KEY_BYTES / 4).collect::<String>())
            .unwrap_or_default();
        if !key.trim().is_empty() {
            run.settings.concurrency = Some(super::run::RunConcurrency {
                key,
                limit: concurrency.limit,
                newest_wins: false,
            });
        }
    }
    let autopilot_proto::RunKind::Claude(claude) = &mut run.settings.kind else {
        return;
    };
    if !needs_prompt {
        return;
    }
    let Ok(template) = Template::parse(&claude.prompt) else {
        return;
    };
    if let Ok(prompt) = template.render(&input, MAX_PROMPT_BYTES) {
        claude.prompt = prompt;
    }
}

/// The values a run's templates read (see [`fill_values`]).
fn run_values(run: &Run, job: &Job, trigger_values: Value) -> Value {
    let now = run.scheduled_for.unwrap_or(run.created_at);
    let tz: Tz = job.timezone.parse().unwrap_or(Tz::UTC);
    let local = now.with_timezone(&tz);
    let mut values = json!({
        "date": local.format("%Y-%m-%d").to_string(),
        "time": local.format("%H:%M:%S").to_string(),
        "datetime": local.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "weekday": local.format("%A").to_string(),
        "timezone": job.timezone,
        "job": { "id": job.id, "name": job.name, "description": job.description },
        "run": { "id": run.id, "scheduled_for": run.scheduled_for },
        "trigger": run.trigger.as_str(),
    });
    if let (Value::Object(values), Value::Object(extra)) = (&mut values, trigger_values) {
        values.extend(extra);
    }
    values
}

/// The key that makes a chained fire happen once: the parent runs it answers.
pub fn chain_key(parents: &[RunId]) -> String {
    let mut ids: Vec<String> = parents.iter().map(ToString::to_string).collect();
    ids.sort();
    ids.join(",")
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
