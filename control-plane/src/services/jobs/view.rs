//! A job as clients see it.

use autopilot_proto::{HttpSpec, JobId};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::job::ScheduleFields;
use crate::domain::rules::{Budget, Chain, Conditions, FileSubscription, HookSubscription};
use crate::domain::schedule::Compiled;
use crate::domain::{Job, JobKind, MisfirePolicy, OverlapPolicy, RunSettings};

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
    /// An http job's request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<HttpSpec>,
    pub schedule: Option<String>,
    pub at: Option<DateTime<Utc>>,
    /// The interval of an `every` job (`15m`), and when its beat started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    /// The jobs it runs after (ids), on which of their ends, and whether it waits for all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<Chain>,
    /// The Claude Code hook events it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_hook: Option<HookSubscription>,
    /// Where each run's outcome is POSTed when it ends.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_end: Vec<crate::domain::handlers::EndHandler>,
    /// The files it watches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_file: Option<FileSubscription>,
    #[serde(skip_serializing_if = "Conditions::is_empty")]
    pub conditions: Conditions,
    #[serde(skip_serializing_if = "Budget::is_empty")]
    pub budget: Budget,
    /// The tools whose calls wait for approval, and who may decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::domain::approval::ApprovalRule>,
    /// Most runs of a key going at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<crate::domain::rules::JobConcurrency>,
    /// Its runs wait until then: the credential they use reached its usage limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<DateTime<Utc>>,
    pub timezone: String,
    pub enabled: bool,
    #[serde(flatten)]
    pub settings: RunSettings,
    pub misfire_policy: MisfirePolicy,
    pub misfire_cap: u32,
    pub overlap_policy: OverlapPolicy,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub missed_fires: u64,
    pub overlap_skipped: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Job> for JobView {
    fn from(job: &Job) -> Self {
        let ScheduleFields {
            cron: schedule,
            at,
            every,
            start,
        } = job.schedule.fields();
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
            JobKind::Http => (None, None),
        };
        JobView {
            id: job.id,
            name: job.name.clone(),
            description: job.description.clone(),
            kind: job.kind,
            prompt,
            command,
            request: job.request(),
            schedule,
            at,
            every,
            start,
            chain: job.rules.chain.clone(),
            on_hook: job.rules.on_hook.clone(),
            on_end: job.rules.on_end.clone(),
            on_file: job.rules.on_file.clone(),
            conditions: job.rules.conditions.clone(),
            budget: job.rules.budget.clone(),
            approval: job.rules.approval.clone(),
            concurrency: job.rules.concurrency.clone(),
            paused_until: job.rules.paused_until,
            timezone: job.timezone.clone(),
            enabled: job.enabled,
            settings: job.settings.clone(),
            misfire_policy: job.misfire_policy,
            misfire_cap: job.misfire_cap,
            overlap_policy: job.overlap_policy,
            next_fire_at,
            missed_fires: job.missed_fires,
            overlap_skipped: job.overlap_skipped,
            created_at: job.created_at,
            updated_at: job.updated_at,
        }
    }
}
