//! Claude Code hook events: the tokens `autopilot hook` sends them with, and the runs they start
//! for the jobs that answer them (`on_hook`), once per job per debounce window.

use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::{RunId, RunKind, Trigger};
use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::app::App;
use crate::domain::input::validate_name;
use crate::domain::rules::{fill_values, HookToken, HOOK_EVENTS};
use crate::domain::{Job, Run, ServiceError, ServiceResult};
use crate::services::{jobs, rules, runs, traces};
use crate::tokens;

/// Prefix of hook tokens, so one found in a file says what it is.
const TOKEN_PREFIX: &str = "aph_";
/// Largest event accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// How long the jobs that answer events are kept before being read again (jobs changed here
/// are read again at once).
const JOBS_FRESH_FOR: Duration = Duration::from_secs(2);

/// A new hook token, shown once.
#[derive(Serialize, Debug)]
pub struct NewHookToken {
    #[serde(flatten)]
    pub token: HookToken,
    /// Give it to `autopilot hook` (`AUTOPILOT_HOOK_TOKEN`). Shown once.
    pub secret: String,
}

/// What an event started.
#[derive(Serialize, Debug, Default)]
pub struct HookReceipt {
    /// Jobs whose subscription the event matched.
    pub matched: usize,
    /// Runs it started (a match within a job's debounce window starts none).
    pub runs: Vec<RunId>,
    /// Matches held back by a condition or a budget (recorded as skipped fires).
    pub skipped: usize,
}

/// The jobs answering hook events, as last read, and when.
#[derive(Default)]
pub struct Subscribers {
    read: Mutex<Option<Read>>,
}

/// One reading: the jobs-changed generation it saw, when, and the jobs.
type Read = (u64, tokio::time::Instant, Arc<Vec<Job>>);

impl Subscribers {
    async fn get(&self, app: &App) -> ServiceResult<Arc<Vec<Job>>> {
        let mut read = self.read.lock().await;
        let generation = app.webhooks_generation();
        if let Some((seen, at, jobs)) = read.as_ref() {
            if *seen == generation && at.elapsed() < JOBS_FRESH_FOR {
                return Ok(Arc::clone(jobs));
            }
        }
        let subscribed: Vec<Job> = jobs::all(app)
            .await?
            .into_iter()
            .filter(|job| job.enabled && job.rules.on_hook.is_some())
            .collect();
        let subscribed = Arc::new(subscribed);
        *read = Some((
            generation,
            tokio::time::Instant::now(),
            Arc::clone(&subscribed),
        ));
        Ok(subscribed)
    }
}

pub async fn create_token(app: &App, name: &str) -> ServiceResult<NewHookToken> {
    let name = validate_name(name)?;
    let secret = tokens::mint(TOKEN_PREFIX);
    let token = HookToken {
        name,
        token_hash: tokens::digest_hex(&secret),
        created_at: Utc::now(),
    };
    app.store.insert_hook_token(&token).await?;
    tracing::info!(hook_token = %token.name, "hook token created");
    Ok(NewHookToken { token, secret })
}

pub async fn list_tokens(app: &App) -> ServiceResult<Vec<HookToken>> {
    Ok(app.store.list_hook_tokens().await?)
}

pub async fn delete_token(app: &App, name: &str) -> ServiceResult<()> {
    if !app.store.delete_hook_token(name).await? {
        return Err(ServiceError::NotFound {
            what: "hook token",
            id: name.to_owned(),
        });
    }
    tracing::info!(hook_token = %name, "hook token deleted");
    Ok(())
}

/// The name of the hook token `secret`, if it is one.
pub async fn token_name(app: &App, secret: &str) -> ServiceResult<Option<String>> {
    if !secret.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    Ok(app
        .store
        .hook_token_by_hash(&tokens::digest_hex(secret))
        .await?
        .map(|token| token.name))
}

/// An event from a Claude Code session (sent with hook token `token_name`): starts a run of
/// each job that answers it, unless one started within the job's debounce window.
pub async fn receive(
    app: &App,
    subscribers: &Subscribers,
    token_name: &str,
    event: Value,
) -> ServiceResult<HookReceipt> {
    let name = event
        .get("hook_event_name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !HOOK_EVENTS.contains(&name.as_str()) {
        return Err(ServiceError::invalid(
            "hook_event_name",
            format!(
                "`{name}` is not a Claude Code hook event ({}); send the JSON Claude Code gives \
                 the hook on standard input",
                HOOK_EVENTS.join(", ")
            ),
        ));
    }
    let now = Utc::now();
    let mut receipt = HookReceipt::default();
    for job in subscribers.get(app).await?.iter() {
        let Some(subscription) = &job.rules.on_hook else {
            continue;
        };
        if !subscription.matches(&event) {
            continue;
        }
        receipt.matched += 1;
        let window_ms = i64::try_from(subscription.debounce_secs * 1000).unwrap_or(i64::MAX);
        let key = format!("hook:{}", now.timestamp_millis() / window_ms);
        if let Some(reason) = rules::refusal(app, job, now).await? {
            if app.store.record_keyed_fire(job.id, &key, None).await? {
                rules::skipped(app, job, Trigger::Hook, &reason, now).await;
                receipt.skipped += 1;
            }
            continue;
        }
        let mut run = Run::queued(Trigger::Hook, Some(job), job.run_snapshot(), None);
        match &mut run.settings.kind {
            RunKind::Shell { stdin, .. } => *stdin = Some(event.to_string()),
            RunKind::Claude(_) | RunKind::Http(_) => {}
        }
        fill_values(&mut run, job, json!({ "event": event }));
        let queued = runs::prepare(
            &mut run,
            json!({
                "step": "queued",
                "trigger": Trigger::Hook,
                "hook_event": name,
                "tool_name": event.get("tool_name"),
                "session_id": event.get("session_id"),
                "hook_token": token_name,
            }),
        );
        let storing = std::time::SystemTime::now();
        if !app
            .store
            .record_keyed_fire(job.id, &key, Some((&run, &[queued])))
            .await?
        {
            continue; // debounced: this job started a run for an event of this window
        }
        traces::stored([&run], storing);
        receipt.runs.push(run.id);
        runs::send_stored(app, run).await?;
    }
    Ok(receipt)
}
