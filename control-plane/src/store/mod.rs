//! The `Store`: where jobs, runs, events, leases, settings, OAuth grants, workers and webhooks
//! live, in domain types only; SQLite and PostgreSQL implementations behind it, chosen by the URL
//! scheme.
//!
//! The contract is one narrow trait per aggregate ([`JobStore`], [`RunStore`], [`EventStore`],
//! [`LeaseStore`], [`SettingsStore`], [`OAuthStore`], [`WorkerStore`], [`WebhookStore`],
//! [`ToolStore`], [`MemoryStore`], [`DashboardStore`], [`RulesStore`], [`ApprovalStore`]), and
//! [`Store`] is all of them at once: the app holds an `Arc<dyn Store>`, and a trait object
//! answers its supertraits' methods without them being imported. The traits stay together in
//! this file, not one file each: each is a handful of signatures, and read in one place they give
//! the whole surface of the store, which the SQL implementation then follows with one file per
//! trait.
//!
//! - `rows`: the row shapes both SQL dialects read, and their conversion to and from domain
//!   types.
//! - `sql`: [`SqlStore`], the implementation for both dialects.

mod rows;
mod sql;

use std::time::Duration;

use async_trait::async_trait;
use autopilot_proto::{
    JobId, NewRunEvent, RunAttempt, RunEvent, RunId, RunStatus, Trigger, WebhookId, WorkerStatus,
};
use chrono::{DateTime, Utc};

use crate::domain::approval::{Approval, ApprovalStatus};
use crate::domain::dashboard::{DashboardSession, UsageGroup, UsageTotals};
use crate::domain::dynamic::DynamicVersion;
use crate::domain::memory::{MemoryFilter, MemoryItem, MemoryScope};
use crate::domain::oauth::{AuthCode, OAuthClient, RefreshToken, RefreshUse};
use crate::domain::rules::{HookToken, SkippedFire};
use crate::domain::tools::{Credential, McpServer, ToolBundle};
use crate::domain::webhook::{DeliveryOutcome, NewDelivery, StoredPayload, Webhook};
use crate::domain::{FireRecord, Job, PoolQueue, Run, RunFilter, ServiceError};

pub use sql::SqlStore;

/// Store failures, classified so callers can decide without looking at driver errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken; the text names what collided.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Worth trying again (busy database, lost connection, pool timeout).
    #[error("store temporarily unavailable: {0}")]
    Retryable(String),
    /// Stored data could not be read back (a bug or a hand-edited database).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The disk (SQLite) or the server's disk (PostgreSQL) has no space left.
    #[error("the disk holding the database is full")]
    DiskFull,
    #[error("store error: {0}")]
    Other(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<StoreError> for ServiceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(what) => ServiceError::Conflict(what),
            StoreError::Retryable(why) => ServiceError::Unavailable(why),
            StoreError::DiskFull => ServiceError::StorageFull,
            StoreError::NotFound => ServiceError::NotFound {
                what: "record",
                id: String::new(),
            },
            other => ServiceError::Internal(anyhow::Error::new(other)),
        }
    }
}

/// What the dashboard keeps (operator sessions) and the totals it reads (part of every [`Store`]).
#[async_trait]
pub trait DashboardStore: Send + Sync {
    async fn insert_session(&self, session: &DashboardSession) -> StoreResult<()>;
    /// The session with this id digest, expired or not (the caller decides).
    async fn get_session(&self, id_hash: &str) -> StoreResult<Option<DashboardSession>>;
    /// Records that the session was used and moves its expiry.
    async fn touch_session(
        &self,
        id_hash: &str,
        seen_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()>;
    async fn delete_session(&self, id_hash: &str) -> StoreResult<()>;
    /// Deletes sessions expired before `now`; how many.
    async fn purge_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64>;
    /// Runs, tokens and cost of runs created since `since`, grouped; largest cost first (by
    /// day: oldest day first).
    async fn usage(&self, group: UsageGroup, since: DateTime<Utc>)
        -> StoreResult<Vec<UsageTotals>>;
    /// The billed cost of runs created since `since` (a subscription's estimates left out).
    async fn spend_since(&self, since: DateTime<Utc>) -> StoreResult<f64>;
    /// The costliest runs created since `since`.
    async fn costliest_runs(&self, since: DateTime<Utc>, limit: u32) -> StoreResult<Vec<Run>>;
    /// How many runs of each status match the filter (its statuses, `before` and limit aside).
    async fn count_runs_by_status(&self, filter: &RunFilter) -> StoreResult<Vec<(RunStatus, u64)>>;
}

/// What a job's chain, hook events, conditions and budget read and write (part of every
/// [`Store`]).
#[async_trait]
pub trait RulesStore: Send + Sync {
    /// Records a fire that started no run. The same reason from the same trigger right after
    /// the job's last record is counted on that record.
    async fn record_skipped_fire(
        &self,
        job_id: JobId,
        trigger: Trigger,
        reason: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// A job's skipped fires, newest first.
    async fn skipped_fires(&self, job_id: JobId, limit: u32) -> StoreResult<Vec<SkippedFire>>;
    /// Stores a run (and its first events) unless job `job_id` already fired for `key` (a
    /// chain's parent runs, `chain_key`; a hook event's debounce window); `run` `None` records
    /// the key with no run (the fire was skipped). Returns whether this call made the fire.
    async fn record_keyed_fire(
        &self,
        job_id: JobId,
        key: &str,
        run: Option<(&Run, &[NewRunEvent])>,
    ) -> StoreResult<bool>;
    /// Runs that ended after `after` (by their end time), oldest end first.
    async fn runs_finished_after(&self, after: DateTime<Utc>, limit: u32) -> StoreResult<Vec<Run>>;
    /// What a job's runs created since `since` cost (or, with no job, every run's), by API key:
    /// runs on a subscription (`billing = subscription`) are not counted.
    async fn job_spend_since(
        &self,
        job_id: Option<JobId>,
        since: DateTime<Utc>,
    ) -> StoreResult<f64>;
    /// `Conflict` when the name is taken.
    async fn insert_hook_token(&self, token: &HookToken) -> StoreResult<()>;
    async fn hook_token_by_hash(&self, token_hash: &str) -> StoreResult<Option<HookToken>>;
    /// By name.
    async fn list_hook_tokens(&self) -> StoreResult<Vec<HookToken>>;
    async fn delete_hook_token(&self, name: &str) -> StoreResult<bool>;
}

/// Tool calls waiting for (or past) an operator's approval (part of every [`Store`]).
#[async_trait]
pub trait ApprovalStore: Send + Sync {
    async fn insert_approval(&self, approval: &Approval) -> StoreResult<()>;
    async fn get_approval(&self, id: &str) -> StoreResult<Option<Approval>>;
    /// Newest first; only those in `status` and of `run` when given.
    async fn list_approvals(
        &self,
        status: Option<ApprovalStatus>,
        run_id: Option<RunId>,
        limit: u32,
    ) -> StoreResult<Vec<Approval>>;
    /// `pending → status`, with who decided, when and why. `false` when it was not pending.
    async fn decide_approval(
        &self,
        id: &str,
        status: ApprovalStatus,
        decided_by: &str,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Pending approvals whose wait ended before `now`, oldest first.
    async fn expired_approvals(&self, now: DateTime<Utc>, limit: u32)
        -> StoreResult<Vec<Approval>>;
}

/// Everything the control plane keeps, as one trait object: every aggregate's trait, plus which
/// database holds them.
pub trait Store:
    JobStore
    + RunStore
    + EventStore
    + LeaseStore
    + SettingsStore
    + OAuthStore
    + WorkerStore
    + WebhookStore
    + ToolStore
    + MemoryStore
    + DashboardStore
    + RulesStore
    + ApprovalStore
    + Send
    + Sync
{
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
}

/// Jobs and their fire cursors (part of every [`Store`]).
#[async_trait]
pub trait JobStore: Send + Sync {
    async fn insert_job(&self, job: &Job) -> StoreResult<()>;
    /// Replaces a job's settings (not its fire cursor's counters). `NotFound` if it is gone.
    async fn update_job(&self, job: &Job) -> StoreResult<()>;
    /// Replaces a job's rules alone (what Autopilot itself sets on them, a usage-limit pause),
    /// leaving its settings and fire cursor as they are. `NotFound` if it is gone.
    async fn update_job_rules(
        &self,
        id: JobId,
        rules: &crate::domain::rules::JobRules,
    ) -> StoreResult<()>;
    async fn get_job(&self, id: JobId) -> StoreResult<Option<Job>>;
    async fn get_job_by_name(&self, name: &str) -> StoreResult<Option<Job>>;
    async fn list_jobs(&self) -> StoreResult<Vec<Job>>;
    /// Returns whether a job was deleted. Its runs stay, detached from it.
    async fn delete_job(&self, id: JobId) -> StoreResult<bool>;
}

/// Runs: created by scheduler fires or directly, claimed and heartbeaten by workers, updated by
/// compare-and-set (part of every [`Store`]).
/// One compare-and-set write of [`RunStore::update_runs`].
#[derive(Clone, Copy, Debug)]
pub struct RunUpdate<'a> {
    pub run: &'a Run,
    pub expected_status: RunStatus,
    pub expected_attempt: u32,
    pub events: &'a [NewRunEvent],
}

#[async_trait]
pub trait RunStore: Send + Sync {
    /// Applies a batch of scheduler steps in one transaction: creates the fires' runs (skipping
    /// any `(job_id, scheduled_for)` that exists) with their first events, and advances each
    /// job's cursor and counters. Returns the runs actually created.
    async fn record_fires(&self, fires: &[FireRecord]) -> StoreResult<Vec<RunId>>;

    /// Creates a run together with its first events, so they come before any other.
    async fn insert_run(&self, run: &Run, first_events: &[NewRunEvent]) -> StoreResult<()>;
    async fn get_run(&self, id: RunId) -> StoreResult<Option<Run>>;
    /// The runs of `ids` that exist, in no particular order.
    async fn get_runs(&self, ids: &[RunId]) -> StoreResult<Vec<Run>>;
    async fn list_runs(&self, filter: &RunFilter) -> StoreResult<Vec<Run>>;
    /// Compare-and-set: writes `run` (and appends `events`, in the same transaction) only if the
    /// stored row still has `expected_status` and `expected_attempt`. Returns whether it was
    /// written.
    async fn update_run(
        &self,
        run: &Run,
        expected_status: RunStatus,
        expected_attempt: u32,
        events: &[NewRunEvent],
    ) -> StoreResult<bool>;
    /// Several [`RunStore::update_run`]s, each with its own expectation, returning whether each
    /// was written, in order. SQLite writes them in one transaction (one sync to disk for all,
    /// so a burst of ending runs does not crowd out other writes); if one fails, none is written.
    async fn update_runs(&self, updates: &[RunUpdate<'_>]) -> StoreResult<Vec<bool>> {
        let mut written = Vec::with_capacity(updates.len());
        for update in updates {
            written.push(
                self.update_run(
                    update.run,
                    update.expected_status,
                    update.expected_attempt,
                    update.events,
                )
                .await?,
            );
        }
        Ok(written)
    }
    /// `queued → running` for `worker_id` of each run queued at its attempt, in one statement.
    /// A run already running at that attempt for the same `worker_id` and `claim_token` is
    /// claimed again (its heartbeat renewed, its start kept): the claim's repeat by the process
    /// that made it. Returns the claimed runs, in no particular order.
    async fn claim_runs(
        &self,
        runs: &[RunAttempt],
        worker_id: &str,
        claim_token: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Run>>;
    /// Records a heartbeat if `worker_id` still holds the run at `attempt`; returns the run's
    /// status then (`running` or `cancelling`), or `None` when the worker no longer holds it.
    async fn heartbeat_run(
        &self,
        run_id: RunId,
        attempt: u32,
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<RunStatus>>;
    /// Queued runs, oldest first, at most `limit`: those not sent to the bus yet when
    /// `dispatched_before` is `None`, else those sent before that time.
    async fn queued_runs(
        &self,
        dispatched_before: Option<DateTime<Utc>>,
        limit: u32,
    ) -> StoreResult<Vec<Run>>;
    /// Runs in any of `statuses`, oldest first, optionally of one job.
    async fn runs_in_status(
        &self,
        statuses: &[RunStatus],
        job_id: Option<JobId>,
    ) -> StoreResult<Vec<Run>>;
    /// Queued runs by worker pool: how many, and the oldest's creation time.
    async fn queue_by_pool(&self) -> StoreResult<Vec<PoolQueue>>;
    async fn count_queued_runs(&self) -> StoreResult<u64>;
}

/// The numbered events of runs (part of every [`Store`]). Runs written with their events
/// ([`RunStore::insert_run`], [`RunStore::update_run`], [`RunStore::record_fires`]) number
/// them the same way.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Stores events, giving each the next sequence number of its run. Events already stored
    /// (same run, attempt, origin and origin_seq) are skipped; so are events of unknown runs.
    /// Returns how many were stored.
    async fn append_events(&self, events: &[NewRunEvent]) -> StoreResult<u64>;
    async fn list_events(
        &self,
        run_id: RunId,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<RunEvent>>;
    async fn count_worker_events(&self, run_id: RunId, attempt: u32) -> StoreResult<u64>;
}

/// Named leases with fencing tokens, for one-at-a-time background tasks (part of every
/// [`Store`]).
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes or renews the lease `name` for `holder`. Returns the fencing token (raised each time
    /// the holder changes) when `holder` holds it afterwards, `None` when someone else does.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<i64>>;
    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()>;
}

/// Key-value settings the control plane keeps for itself (part of every [`Store`]).
#[async_trait]
pub trait SettingsStore: Send + Sync {
    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>>;
    /// Sets `key` only if it has no value. Returns whether it was set.
    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<bool>;
    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()>;
    /// Sets `key` to `value` only if it holds `expected` now (compare-and-set). Returns whether
    /// it was set; `false` when someone changed it since it was read, or it has no value.
    async fn replace_setting(&self, key: &str, expected: &str, value: &str) -> StoreResult<bool>;
}

/// The OAuth authorization server's clients, authorization codes and refresh tokens (part of
/// every [`Store`]).
#[async_trait]
pub trait OAuthStore: Send + Sync {
    async fn insert_oauth_client(&self, client: &OAuthClient) -> StoreResult<()>;
    async fn get_oauth_client(&self, client_id: &str) -> StoreResult<Option<OAuthClient>>;
    async fn insert_auth_code(&self, code: &AuthCode) -> StoreResult<()>;
    /// Removes and returns the code: a code can be taken once.
    async fn take_auth_code(&self, code_hash: &str) -> StoreResult<Option<AuthCode>>;
    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()>;
    /// Marks a refresh token used. Presenting one that was used or revoked before revokes its
    /// whole family (the grant is taken to be stolen).
    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<RefreshUse>;
    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<()>;
    /// The family and client of a refresh token, if it exists.
    async fn refresh_family_of(&self, token_hash: &str) -> StoreResult<Option<(String, String)>>;
}

/// What workers last announced about themselves (part of every [`Store`]).
#[async_trait]
pub trait WorkerStore: Send + Sync {
    /// Records what a worker announced, and when.
    async fn upsert_worker(&self, status: &WorkerStatus, seen_at: DateTime<Utc>)
        -> StoreResult<()>;
    /// Workers that announced themselves at or after `seen_since`, by id, with when they did.
    async fn list_workers(
        &self,
        seen_since: DateTime<Utc>,
    ) -> StoreResult<Vec<(WorkerStatus, DateTime<Utc>)>>;
    /// Forgets workers silent since before `seen_before`. Returns how many.
    async fn forget_workers(&self, seen_before: DateTime<Utc>) -> StoreResult<u64>;
}

/// Webhooks and their deliveries (part of every [`Store`]).
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// `Conflict` when the name is taken.
    async fn insert_webhook(&self, webhook: &Webhook) -> StoreResult<()>;
    /// Replaces a webhook. `NotFound` if it is gone.
    async fn update_webhook(&self, webhook: &Webhook) -> StoreResult<()>;
    async fn get_webhook(&self, id: WebhookId) -> StoreResult<Option<Webhook>>;
    async fn get_webhook_by_name(&self, name: &str) -> StoreResult<Option<Webhook>>;
    /// The webhook whose current token, or previous token still in its grace period, has this
    /// digest.
    async fn webhook_by_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Webhook>>;
    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>>;
    async fn webhooks_of_job(&self, job_id: JobId) -> StoreResult<Vec<Webhook>>;
    /// Returns whether a webhook was deleted. Its runs stay.
    async fn delete_webhook(&self, id: WebhookId) -> StoreResult<bool>;
    /// Stores a batch of deliveries in one durable transaction: for each, unless its delivery id
    /// was seen within its window (in the store or earlier in the batch), the run, its first
    /// event and its payload. Returns one outcome per delivery, in order.
    async fn record_deliveries(
        &self,
        deliveries: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<DeliveryOutcome>>;
    async fn get_payload(&self, run_id: RunId) -> StoreResult<Option<StoredPayload>>;
    /// Forgets delivery ids whose window ended. Returns how many.
    async fn purge_expired_deliveries(&self, now: DateTime<Utc>) -> StoreResult<u64>;
}

/// MCP servers, the sealed credentials they use and the bundles that grant them (part of every
/// [`Store`]). Both are small
/// (tens of rows), so lookups by name read the table.
#[async_trait]
pub trait ToolStore: Send + Sync {
    /// Adds the server; a conflict when its name is taken.
    async fn insert_server(&self, server: &McpServer) -> StoreResult<()>;
    /// Replaces the server of that name; `NotFound` when there is none.
    async fn update_server(&self, server: &McpServer) -> StoreResult<()>;
    async fn list_servers(&self) -> StoreResult<Vec<McpServer>>;
    /// Whether it existed.
    async fn delete_server(&self, name: &str) -> StoreResult<bool>;
    /// Adds the credential or replaces the value of the one of that name (keeping when it was
    /// made).
    async fn put_credential(&self, credential: &Credential) -> StoreResult<()>;
    async fn list_credentials(&self) -> StoreResult<Vec<Credential>>;
    /// Whether it existed.
    async fn delete_credential(&self, name: &str) -> StoreResult<bool>;
    /// Records that a run was given these credentials at `at`.
    async fn mark_credentials_used(&self, names: &[String], at: DateTime<Utc>) -> StoreResult<()>;
    /// Adds the bundle; a conflict when its name is taken.
    async fn insert_bundle(&self, bundle: &ToolBundle) -> StoreResult<()>;
    /// Replaces the bundle of that name; `NotFound` when there is none.
    async fn update_bundle(&self, bundle: &ToolBundle) -> StoreResult<()>;
    async fn list_bundles(&self) -> StoreResult<Vec<ToolBundle>>;
    /// Whether it existed.
    async fn delete_bundle(&self, name: &str) -> StoreResult<bool>;

    /// Saves a new version; `Conflict` when that version of the server exists.
    async fn insert_dynamic_version(&self, version: &DynamicVersion) -> StoreResult<()>;
    /// Replaces a version's document (its validation, its approval).
    async fn update_dynamic_version(&self, version: &DynamicVersion) -> StoreResult<()>;
    /// A server's versions, oldest first.
    async fn list_dynamic_versions(&self, server: &str) -> StoreResult<Vec<DynamicVersion>>;
    /// Forgets a server's versions; how many there were.
    async fn delete_dynamic_versions(&self, server: &str) -> StoreResult<u64>;
}

/// Jobs' (and webhooks') memory, kept for the `memory` server (part of every [`Store`]).
#[async_trait]
pub trait MemoryStore: Send + Sync {
    async fn get_memory(&self, scope: &MemoryScope, key: &str) -> StoreResult<Option<MemoryItem>>;
    /// Creates or replaces the entry, unless it is new and the scope already holds
    /// `max_entries`: `false` then, and nothing is written.
    async fn put_memory(
        &self,
        scope: &MemoryScope,
        item: &MemoryItem,
        max_entries: u32,
    ) -> StoreResult<bool>;
    /// Whether it existed.
    async fn delete_memory(&self, scope: &MemoryScope, key: &str) -> StoreResult<bool>;
    /// Up to `limit` entries, most recently written first.
    async fn list_memory(
        &self,
        scope: &MemoryScope,
        filter: &MemoryFilter,
        limit: u32,
    ) -> StoreResult<Vec<MemoryItem>>;
    async fn count_memory(&self, scope: &MemoryScope) -> StoreResult<u64>;
    /// Forgets the whole scope (its job or webhook is deleted); how many entries it held.
    async fn clear_memory(&self, scope: &MemoryScope) -> StoreResult<u64>;
}

/// Opens the store named by `url`: `sqlite://path` (created if missing) or `postgres://…`.
/// Runs the migrations of that dialect.
pub async fn connect(url: &str) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    connect_with(url, DEFAULT_PG_CONNECTIONS).await
}

/// Most PostgreSQL connections of a store opened with [`connect`].
pub const DEFAULT_PG_CONNECTIONS: u32 = 16;

/// [`connect`] with at most `pg_connections` PostgreSQL connections (SQLite ignores it).
pub async fn connect_with(
    url: &str,
    pg_connections: u32,
) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    Ok(std::sync::Arc::new(
        SqlStore::connect_with(url, pg_connections).await?,
    ))
}
