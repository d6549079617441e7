//! Jobs: what runs, when, and the policies for fires that are missed or overlap.

use std::fmt;
use std::str::FromStr;

use autopilot_proto::{ClaudeSpec, HttpSpec, JobId, RunKind, Sandbox};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::rules::JobRules;
use super::run::RunSnapshot;
use super::settings::RunSettings;

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("`{other}` is not one of {}", Self::NAMES.join(", "))),
                }
            }
        }
    };
}

string_enum!(
    /// What a job runs.
    JobKind { Claude => "claude", Shell => "shell", Http => "http" }
);
impl JobKind {
    /// The sandbox of a job that names none: a claude job reaches the model API only, a shell
    /// job no network at all.
    pub fn default_sandbox(self) -> Sandbox {
        Sandbox::defaults(self == JobKind::Claude)
    }
}

string_enum!(
    /// What to do with fires that were missed (the process was down, or the job was due long ago).
    MisfirePolicy { Skip => "skip", RunOnce => "run_once", RunAll => "run_all" }
);
string_enum!(
    /// What to do when a fire comes while an earlier run of the job is still going.
    OverlapPolicy { Skip => "skip", Queue => "queue", Allow => "allow" }
);

/// When a job fires.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Schedule {
    /// A 5-field (minutes) or 6-field (seconds) cron expression, in the job's time zone.
    Cron(String),
    /// Once, at this time; the job is disabled after it fires.
    At(DateTime<Utc>),
    /// Every `every_secs` seconds, at `start` and whole intervals from it (in real time, so a
    /// daylight-saving change does not move the beat; a restart does not either).
    Every {
        every_secs: u64,
        start: DateTime<Utc>,
    },
    /// Manual or webhook runs only.
    None,
}

/// A schedule as clients write it: one of `schedule` (cron), `at`, or `every` with `start`.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct ScheduleFields {
    pub cron: Option<String>,
    pub at: Option<DateTime<Utc>>,
    pub every: Option<String>,
    pub start: Option<DateTime<Utc>>,
}

impl Schedule {
    pub fn fields(&self) -> ScheduleFields {
        match self {
            Schedule::Cron(expr) => ScheduleFields {
                cron: Some(expr.clone()),
                ..ScheduleFields::default()
            },
            Schedule::At(at) => ScheduleFields {
                at: Some(*at),
                ..ScheduleFields::default()
            },
            Schedule::Every { every_secs, start } => ScheduleFields {
                every: Some(super::schedule::format_interval(*every_secs)),
                start: Some(*start),
                ..ScheduleFields::default()
            },
            Schedule::None => ScheduleFields::default(),
        }
    }
}

#[derive(Clone, PartialEq, Debug)]
pub struct Job {
    pub id: JobId,
    pub name: String,
    pub description: Option<String>,
    pub kind: JobKind,
    /// The prompt of a `claude` job, the command of a `shell` job, or the request of an `http`
    /// job (its `HttpSpec` as JSON).
    pub prompt: String,
    pub schedule: Schedule,
    /// IANA time zone name the schedule is read in.
    pub timezone: String,
    pub enabled: bool,
    /// How its runs execute (model and tools apply to claude jobs only).
    pub settings: RunSettings,
    /// The jobs it follows, the conditions its fires must meet, its budget.
    pub rules: JobRules,
    pub misfire_policy: MisfirePolicy,
    /// Most missed fires run under `run_all`.
    pub misfire_cap: u32,
    pub overlap_policy: OverlapPolicy,
    /// Every fire at or before this time has been handled (run or counted as skipped).
    pub fire_cursor: DateTime<Utc>,
    pub missed_fires: u64,
    pub overlap_skipped: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Job {
    /// An `http` job's request.
    pub fn request(&self) -> Option<HttpSpec> {
        (self.kind == JobKind::Http)
            .then(|| serde_json::from_str(&self.prompt).ok())
            .flatten()
    }

    /// Name of the job's workspace directory. From the id, so a rename keeps the files.
    pub fn workspace(&self) -> String {
        format!("job-{}", self.id)
    }

    /// What a run of this job executes, as of now.
    pub fn run_snapshot(&self) -> RunSnapshot {
        let settings = &self.settings;
        let kind = match self.kind {
            JobKind::Claude => {
                let approval = self.rules.approval.as_ref().map(|rule| rule.gate());
                // A gated tool is offered but never pre-approved nor withheld: each call asks.
                let ungated = |tools: &[String]| -> Vec<String> {
                    tools
                        .iter()
                        .filter(|tool| {
                            !approval.as_ref().is_some_and(|gate| {
                                autopilot_fixed_servers::approval_wire::gated(&gate.tools, tool)
                            })
                        })
                        .cloned()
                        .collect()
                };
                RunKind::Claude(ClaudeSpec {
                    prompt: self.prompt.clone(),
                    model: settings.model.clone(),
                    allowed_tools: ungated(&settings.allowed_tools),
                    disallowed_tools: ungated(&settings.disallowed_tools),
                    max_turns: settings.max_turns,
                    max_cost_usd: settings.max_cost_usd,
                    trace_content: settings.trace_content,
                    mcp_servers: Vec::new(),
                    approval,
                })
            }
            JobKind::Shell => RunKind::Shell {
                command: self.prompt.clone(),
                stdin: None,
            },
            JobKind::Http => RunKind::Http(self.request().unwrap_or_else(|| HttpSpec {
                // Checked when saved: a stored request that does not read is a bug, and the
                // worker's refusal of this empty URL says so on the run.
                method: "GET".to_owned(),
                url: String::new(),
                headers: Default::default(),
                body: None,
                success_status: Vec::new(),
                allow_private: false,
            })),
        };
        RunSnapshot {
            kind,
            timeout_secs: settings.timeout_secs,
            workspace: self.workspace(),
            retry: settings.retry,
            pool: settings.pool.clone(),
            overlap: self.overlap_policy,
            sandbox: Some(settings.sandbox),
            grants: settings.servers.clone(),
            bundles: settings.bundles.clone(),
            image: settings.image.clone(),
            concurrency: None,
            outcome_files: self
                .rules
                .on_end
                .iter()
                .filter_map(|handler| {
                    let path = handler.write.clone()?;
                    let on = match handler.on.unwrap_or(super::rules::ChainOn::Any) {
                        super::rules::ChainOn::Success => autopilot_proto::EndsOn::Success,
                        super::rules::ChainOn::Failure => autopilot_proto::EndsOn::Failure,
                        super::rules::ChainOn::Any => autopilot_proto::EndsOn::Any,
                    };
                    Some(autopilot_proto::OutcomeFile { path, on })
                })
                .collect(),
        }
    }
}
