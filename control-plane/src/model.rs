//! Domain types of the control plane: jobs, their policies, and runs as the store keeps them.

use std::fmt;
use std::str::FromStr;

use autopilot_proto::{JobId, RunId, RunKind, RunStatus, Sandbox, TokenUsage, Trigger, WebhookId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
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
    JobKind { Claude => "claude", Shell => "shell" }
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
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Schedule {
    /// A 5-field (minutes) or 6-field (seconds) cron expression, in the job's time zone.
    Cron(String),
    /// Once, at this time; the job is disabled after it fires.
    At(DateTime<Utc>),
    /// Manual or webhook runs only.
    None,
}

/// Retries of runs that failed for a transient API reason (overloaded, rate limited, 5xx).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Further attempts after the first.
    pub count: u32,
    /// Delay before the first retry; doubled for each later one.
    pub backoff_secs: u64,
    /// Also run again an attempt that was lost (its worker stopped answering). Off by default:
    /// a lost run may have done part of its work (sent an email) before it was lost.
    #[serde(default)]
    pub lost: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            count: 2,
            backoff_secs: 30,
            lost: false,
        }
    }
}

impl RetryPolicy {
    pub fn delay_before_attempt(&self, attempt: u32) -> std::time::Duration {
        let doublings = attempt.saturating_sub(2).min(16);
        std::time::Duration::from_secs(self.backoff_secs.saturating_mul(1 << doublings))
    }
}

#[derive(Clone, PartialEq, Debug)]
pub struct Job {
    pub id: JobId,
    pub name: String,
    pub description: Option<String>,
    pub kind: JobKind,
    /// The prompt of a `claude` job, or the command of a `shell` job.
    pub prompt: String,
    pub schedule: Schedule,
    /// IANA time zone name the schedule is read in.
    pub timezone: String,
    pub enabled: bool,
    pub model: Option<String>,
    pub allowed_tools: Vec<String>,
    pub disallowed_tools: Vec<String>,
    pub max_turns: Option<u32>,
    pub timeout_secs: u64,
    pub max_cost_usd: Option<f64>,
    pub misfire_policy: MisfirePolicy,
    /// Most missed fires run under `run_all`.
    pub misfire_cap: u32,
    pub overlap_policy: OverlapPolicy,
    pub retry: RetryPolicy,
    pub pool: String,
    /// Limits and network of the job's runs in a container.
    pub sandbox: Sandbox,
    /// Every fire at or before this time has been handled (run or counted as skipped).
    pub fire_cursor: DateTime<Utc>,
    pub missed_fires: u64,
    pub overlap_skipped: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Job {
    /// Name of the job's workspace directory. From the id, so a rename keeps the files.
    pub fn workspace(&self) -> String {
        format!("job-{}", self.id)
    }

    /// What a run of this job executes, as of now.
    pub fn run_settings(&self) -> RunSettings {
        let kind = match self.kind {
            JobKind::Claude => RunKind::Claude(autopilot_proto::ClaudeSpec {
                prompt: self.prompt.clone(),
                model: self.model.clone(),
                allowed_tools: self.allowed_tools.clone(),
                disallowed_tools: self.disallowed_tools.clone(),
                max_turns: self.max_turns,
                max_cost_usd: self.max_cost_usd,
            }),
            JobKind::Shell => RunKind::Shell {
                command: self.prompt.clone(),
                stdin: None,
            },
        };
        RunSettings {
            kind,
            timeout_secs: self.timeout_secs,
            workspace: self.workspace(),
            retry: self.retry,
            pool: self.pool.clone(),
            overlap: self.overlap_policy,
            sandbox: Some(self.sandbox),
        }
    }
}

/// Snapshot of what a run executes, taken when the run is created.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct RunSettings {
    #[serde(flatten)]
    pub kind: RunKind,
    pub timeout_secs: u64,
    pub workspace: String,
    pub retry: RetryPolicy,
    pub pool: String,
    pub overlap: OverlapPolicy,
    /// Absent in runs stored before sandboxes existed: the defaults of the run's kind apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
}

impl RunSettings {
    pub fn sandbox(&self) -> Sandbox {
        self.sandbox
            .unwrap_or_else(|| Sandbox::default_for(&self.kind))
    }
}

#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct Run {
    pub id: RunId,
    pub job_id: Option<JobId>,
    pub job_name: Option<String>,
    pub trigger: Trigger,
    pub status: RunStatus,
    pub attempt: u32,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub settings: RunSettings,
    pub created_at: DateTime<Utc>,
    pub dispatched_at: Option<DateTime<Utc>>,
    /// A retry waits until this time.
    pub not_before: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub worker_id: Option<String>,
    pub exit_code: Option<i32>,
    pub is_error: bool,
    pub error: Option<String>,
    pub result: Option<String>,
    #[serde(flatten)]
    pub usage: TokenUsage,
    pub cost_usd: Option<f64>,
    pub num_turns: Option<u32>,
    pub models: Vec<String>,
    pub permission_denials: u32,
    /// The webhook whose delivery started the run.
    pub webhook_id: Option<WebhookId>,
    /// The delivery id the sender gave (`X-GitHub-Delivery`, `Idempotency-Key`, …).
    pub delivery_id: Option<String>,
}

impl Run {
    /// A new queued run, not yet dispatched.
    pub fn queued(
        trigger: Trigger,
        job: Option<&Job>,
        settings: RunSettings,
        scheduled_for: Option<DateTime<Utc>>,
    ) -> Self {
        Run {
            id: RunId::new(),
            job_id: job.map(|job| job.id),
            job_name: job.map(|job| job.name.clone()),
            trigger,
            status: RunStatus::Queued,
            attempt: 1,
            scheduled_for,
            settings,
            created_at: Utc::now(),
            dispatched_at: None,
            not_before: None,
            started_at: None,
            finished_at: None,
            heartbeat_at: None,
            worker_id: None,
            exit_code: None,
            is_error: false,
            error: None,
            result: None,
            usage: TokenUsage::default(),
            cost_usd: None,
            num_turns: None,
            models: Vec::new(),
            permission_denials: 0,
            webhook_id: None,
            delivery_id: None,
        }
    }

    /// Queues the run again as its next attempt, after the retry policy's delay for it, with
    /// no worker; returns that delay.
    pub fn requeue_as_next_attempt(&mut self) -> std::time::Duration {
        self.attempt += 1;
        let delay = self.settings.retry.delay_before_attempt(self.attempt);
        self.status = RunStatus::Queued;
        self.not_before = Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default());
        self.dispatched_at = None;
        self.worker_id = None;
        self.heartbeat_at = None;
        delay
    }
}

/// Which runs to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub job_id: Option<JobId>,
    pub webhook_id: Option<WebhookId>,
    pub statuses: Vec<RunStatus>,
    /// Only runs older than this one (the previous page's last id).
    pub before: Option<RunId>,
    pub limit: u32,
}

/// One scheduler step for one job, written atomically with the others of its batch.
#[derive(Clone, Debug)]
pub struct FireRecord {
    pub job_id: JobId,
    /// The job's new fire cursor.
    pub cursor: DateTime<Utc>,
    /// Runs to create; a run whose `(job_id, scheduled_for)` exists already is left out.
    pub runs: Vec<Run>,
    /// First events of those runs (stored only for the runs actually created).
    pub events: Vec<autopilot_proto::NewRunEvent>,
    pub missed: u64,
    pub overlap_skipped: u64,
    /// A one-shot job is disabled once it fired.
    pub disable: bool,
}
