//! The job editor's fields: read from a job, a run or a submitted form, and written as the
//! API's own JSON, so the editor is checked exactly like the API.

use std::collections::HashMap;

use autopilot_proto::RunKind;
use serde_json::{json, Map, Value};

use crate::dashboard::fields::Fields;
use crate::dashboard::format::wire_name;
use crate::domain::input::InputError;
use crate::domain::tools::ToolGrant;
use crate::domain::Run;
use crate::services::jobs::JobView;

/// Claude Code's own tools, offered as boxes to tick in the editor (others go in the text area).
pub(super) const BUILT_IN_TOOLS: [&str; 11] = [
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

/// The editor's fields as text, whether read from a job, a failed submission or the defaults.
#[derive(Default)]
pub(super) struct JobForm {
    pub(super) name: String,
    pub(super) description: String,
    pub(super) kind: String,
    pub(super) text: String,
    pub(super) when: String,
    pub(super) schedule: String,
    pub(super) at: String,
    /// An interval (`15m`) and when its beat starts (RFC 3339, blank: from now).
    pub(super) every: String,
    pub(super) start: String,
    /// The job's chain, hook events, result handlers, file watch, conditions, budget and approval gate, as the
    /// API's JSON (see [`RULE_KEYS`]).
    pub(super) rules: String,
    pub(super) timezone: String,
    pub(super) enabled: bool,
    pub(super) misfire_policy: String,
    pub(super) misfire_cap: String,
    pub(super) overlap_policy: String,
    pub(super) model: String,
    /// Built-in tools ticked.
    pub(super) tools: Vec<String>,
    /// Other allowed tools, one per line.
    pub(super) allowed_tools: String,
    pub(super) disallowed_tools: String,
    pub(super) max_turns: String,
    pub(super) timeout_secs: String,
    pub(super) max_cost_usd: String,
    pub(super) pool: String,
    pub(super) retry_count: String,
    pub(super) retry_backoff_secs: String,
    pub(super) retry_lost: bool,
    pub(super) network: String,
    pub(super) memory_mb: String,
    pub(super) cpus: String,
    pub(super) pids: String,
    pub(super) trace_content: bool,
    pub(super) image: String,
    /// Servers granted: name → access.
    pub(super) servers: HashMap<String, String>,
    pub(super) bundles: Vec<String>,
}

impl JobForm {
    pub(super) fn new_job() -> Self {
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

    /// A new job that starts from a run's prompt or command, model, tools, pool and timeout
    /// (a quick run saved as a job).
    pub(super) fn from_run(run: &Run) -> Self {
        let mut form = JobForm::new_job();
        match &run.settings.kind {
            RunKind::Claude(spec) => {
                form.text = spec.prompt.clone();
                form.model = spec.model.clone().unwrap_or_default();
                let (built_in, others) = split_tools(&spec.allowed_tools);
                form.tools = built_in;
                form.allowed_tools = others.join("\n");
            }
            RunKind::Shell { command, .. } => {
                form.kind = "shell".into();
                form.text = command.clone();
            }
            RunKind::Http(request) => {
                form.kind = "http".into();
                form.text = serde_json::to_string_pretty(request).unwrap_or_default();
            }
        }
        form.pool = run.settings.pool.clone();
        form.timeout_secs = run.settings.timeout_secs.to_string();
        form
    }

    pub(super) fn from_job(job: &JobView) -> Self {
        let settings = &job.settings;
        let (built_in, others) = split_tools(&settings.allowed_tools);
        JobForm {
            name: job.name.clone(),
            description: job.description.clone().unwrap_or_default(),
            kind: job.kind.as_str().into(),
            text: job
                .prompt
                .clone()
                .or_else(|| job.command.clone())
                .or_else(|| {
                    job.request
                        .as_ref()
                        .and_then(|request| serde_json::to_string_pretty(request).ok())
                })
                .unwrap_or_default(),
            when: match (&job.schedule, job.at, &job.every) {
                (Some(_), _, _) => "cron",
                (None, Some(_), _) => "at",
                (None, None, Some(_)) => "every",
                (None, None, None) => "none",
            }
            .into(),
            schedule: job.schedule.clone().unwrap_or_default(),
            at: job.at.map(|at| at.to_rfc3339()).unwrap_or_default(),
            every: job.every.clone().unwrap_or_default(),
            start: job.start.map(|at| at.to_rfc3339()).unwrap_or_default(),
            rules: rules_text(job),
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

    pub(super) fn from_fields(form: &Fields, kind: Option<&str>) -> Self {
        let text = |name: &str| form.get(name).unwrap_or_default().to_owned();
        JobForm {
            name: text("name"),
            description: text("description"),
            kind: kind.map(str::to_owned).unwrap_or_else(|| text("kind")),
            text: text("text"),
            when: text("when"),
            schedule: text("schedule"),
            at: text("at"),
            every: text("every"),
            start: text("start"),
            rules: text("rules"),
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
    pub(super) fn to_json(&self, editing: bool, kept: &[ToolGrant]) -> Result<Value, InputError> {
        let mut job = Map::new();
        self.add_rules(editing, &mut job)?;
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
        match self.kind.as_str() {
            "shell" => {
                job.insert("command".into(), json!(self.text));
            }
            "http" => {
                let request = serde_json::from_str::<Value>(&self.text).map_err(|err| {
                    InputError::Invalid {
                        field: "request".to_owned(),
                        message: format!(
                            "request: not JSON ({err}); write e.g. {{ \"method\": \"POST\", \"url\": \"https://…\" }}"
                        ),
                    }
                })?;
                job.insert("request".into(), request);
            }
            _ => {
                job.insert("prompt".into(), json!(self.text));
            }
        }
        let (schedule, at, every) = match self.when.as_str() {
            "at" => (Value::Null, text_or_null(&self.at), Value::Null),
            "every" => (Value::Null, Value::Null, text_or_null(&self.every)),
            "none" => (Value::Null, Value::Null, Value::Null),
            _ => (text_or_null(&self.schedule), Value::Null, Value::Null),
        };
        let start = if every.is_null() {
            Value::Null
        } else {
            text_or_null(&self.start)
        };
        for (key, value) in [("schedule", schedule), ("at", at), ("every", every)] {
            if editing || !value.is_null() {
                job.insert(key.into(), value);
            }
        }
        if !start.is_null() {
            job.insert("start".into(), start);
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
        if self.kind == "claude" {
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
        Ok(Value::Object(job))
    }

    /// The rules text's keys into `job`. On edit a key left out is `null`: taken away.
    fn add_rules(&self, editing: bool, job: &mut Map<String, Value>) -> Result<(), InputError> {
        let invalid = |message: String| InputError::Invalid {
            field: "rules".to_owned(),
            message: format!("rules: {message}"),
        };
        let text = self.rules.trim();
        let rules = match text {
            "" => Map::new(),
            text => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(rules)) => rules,
                Ok(_) => {
                    return Err(invalid(format!(
                        "write a JSON object with any of {}",
                        RULE_KEYS.join(", ")
                    )))
                }
                Err(err) => return Err(invalid(format!("not JSON ({err})"))),
            },
        };
        if let Some(unknown) = rules.keys().find(|key| !RULE_KEYS.contains(&key.as_str())) {
            return Err(invalid(format!(
                "`{unknown}` is not one of {}",
                RULE_KEYS.join(", ")
            )));
        }
        for key in RULE_KEYS {
            match rules.get(key) {
                Some(value) => {
                    job.insert(key.to_owned(), value.clone());
                }
                None if editing => {
                    job.insert(key.to_owned(), Value::Null);
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// What the rules text holds, named as the API's fields.
pub(super) const RULE_KEYS: [&str; 8] = [
    "after",
    "on_hook",
    "on_end",
    "on_file",
    "conditions",
    "budget",
    "approval",
    "concurrency",
];

/// A job's rules as the editor shows them: the API's input shape, empty when there are none.
fn rules_text(job: &JobView) -> String {
    let mut rules = Map::new();
    if let Some(chain) = &job.chain {
        rules.insert(
            "after".into(),
            json!({ "jobs": chain.after, "on": chain.on, "require_all": chain.require_all }),
        );
    }
    let mut put = |key: &str, value: Value| {
        if !value.is_null() && value != json!([]) && value != json!({}) {
            rules.insert(key.to_owned(), value);
        }
    };
    put("on_hook", json!(job.on_hook));
    put("on_end", json!(job.on_end));
    put("on_file", json!(job.on_file));
    put("conditions", json!(job.conditions));
    put("budget", json!(job.budget));
    put("approval", json!(job.approval));
    put("concurrency", json!(job.concurrency));
    if rules.is_empty() {
        String::new()
    } else {
        serde_json::to_string_pretty(&Value::Object(rules)).unwrap_or_default()
    }
}

/// Allowed tools split into Claude Code's own (ticked boxes) and the rest (the text area).
fn split_tools(tools: &[String]) -> (Vec<String>, Vec<String>) {
    tools
        .iter()
        .cloned()
        .partition(|tool| BUILT_IN_TOOLS.contains(&tool.as_str()))
}
