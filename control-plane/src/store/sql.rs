//! The SQL store: one implementation for SQLite and PostgreSQL. Both dialects accept `$n`
//! placeholders, `ON CONFLICT` and `RETURNING`, and the schema keeps to types both share, so each
//! query is written once and run on whichever pool the URL chose. Each dialect has its own
//! migrations.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use autopilot_proto::{JobId, NewRunEvent, RunAttempt, RunEvent, RunId, RunStatus, WorkerStatus};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::rows::{
    clamp_i64, schedule_columns, to_json, to_ms, ClientRow, CodeRow, EventRow, JobRow, RefreshRow,
    RunRow,
};
use super::{Store, StoreError, StoreResult};
use crate::domain::oauth::{AuthCode, OAuthClient, RefreshToken, RefreshUse};
use crate::domain::{FireRecord, Job, Run, RunFilter};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

enum Pools {
    /// SQLite allows one writer at a time: writes queue on a one-connection pool instead of
    /// spinning in SQLite's busy handler, while reads use their own connections (WAL mode).
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
    },
    Postgres(PgPool),
}

pub struct SqlStore {
    pools: Pools,
}

/// Runs `$body` with `$pool` bound to the pool for reads.
macro_rules! on_read {
    ($self:ident, $pool:ident => $body:expr) => {
        match &$self.pools {
            Pools::Sqlite { read: $pool, .. } => $body,
            Pools::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` with `$pool` bound to the pool for single-statement writes.
macro_rules! on_write {
    ($self:ident, $pool:ident => $body:expr) => {
        match &$self.pools {
            Pools::Sqlite { write: $pool, .. } => $body,
            Pools::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` inside a write transaction on the SQLite writer pool `$write`, bound to `$tx`,
/// committing when it succeeds. It takes the write lock at `BEGIN`, so another process's writer
/// makes us wait, not fail.
macro_rules! in_sqlite_tx {
    ($write:expr, $tx:ident => $body:block) => {{
        let mut $tx = $write
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)?;
        let out = $body;
        $tx.commit().await.map_err(classify)?;
        out
    }};
}

/// Runs `$body` inside a write transaction bound to `$tx`, committing when it succeeds.
macro_rules! in_write_tx {
    ($self:ident, $tx:ident => $body:block) => {
        match &$self.pools {
            Pools::Sqlite { write, .. } => in_sqlite_tx!(write, $tx => $body),
            Pools::Postgres(pool) => {
                let mut $tx = pool.begin().await.map_err(classify)?;
                let out = $body;
                $tx.commit().await.map_err(classify)?;
                out
            }
        }
    };
}

/// Stores `$events` inside the open transaction `$tx` and evaluates to how many were new: each
/// run's sequence numbers are reserved on its row (serialising writers of one run), and a
/// redelivered event (same run, attempt, origin and origin_seq) is skipped.
macro_rules! append_events_in {
    ($tx:ident, $events:expr) => {{
        let events: &[NewRunEvent] = $events;
        // Group by run, keeping each run's events in order.
        let mut order: Vec<RunId> = Vec::new();
        let mut by_run: HashMap<RunId, Vec<&NewRunEvent>> = HashMap::new();
        for event in events {
            by_run
                .entry(event.run_id)
                .or_insert_with(|| {
                    order.push(event.run_id);
                    Vec::new()
                })
                .push(event);
        }
        let mut stored = 0u64;
        for run_id in &order {
            let run_events = &by_run[run_id];
            let count = i64::try_from(run_events.len()).unwrap_or(i64::MAX);
            let last: Option<(i64,)> = sqlx::query_as(RESERVE_EVENT_SEQS)
                .bind(run_id.to_string())
                .bind(count)
                .fetch_optional(&mut *$tx)
                .await
                .map_err(classify)?;
            let Some((last,)) = last else {
                tracing::warn!(run.id = %run_id, events = count, "events for an unknown run were dropped");
                continue;
            };
            // One statement per chunk of the run's events.
            for (chunk_index, chunk) in run_events.chunks(EVENTS_PER_INSERT).enumerate() {
                let first_seq = last - count + 1 + (chunk_index * EVENTS_PER_INSERT) as i64;
                let sql = insert_events_sql(1, chunk.len());
                stored += bind_events_from!(sqlx::query(&sql), chunk.iter().copied(), first_seq)
                    .execute(&mut *$tx)
                    .await
                    .map_err(classify)?
                    .rows_affected();
            }
        }
        stored
    }};
}

const RESERVE_EVENT_SEQS: &str =
    "UPDATE runs SET event_seq = event_seq + $2 WHERE id = $1 RETURNING event_seq";
/// Most events in one INSERT (8 parameters each, well under SQLite's limit).
const EVENTS_PER_INSERT: usize = 64;

/// `INSERT` of `rows` events, their parameters numbered from `$first`; a redelivered one (same
/// run, attempt, origin and origin_seq) is skipped.
fn insert_events_sql(first: usize, rows: usize) -> String {
    format!(
        "INSERT INTO run_events {EVENT_COLUMNS} VALUES {} {EVENT_REDELIVERED}",
        value_rows(first, rows, 8)
    )
}

const EVENT_COLUMNS: &str = "(run_id, seq, attempt, origin, origin_seq, at_ms, kind, data)";
const EVENT_REDELIVERED: &str = "ON CONFLICT (run_id, attempt, origin, origin_seq) DO NOTHING";

/// `rows` rows of `columns` parameters each, numbered from `$first`: `($1, $2), ($3, $4)`.
fn value_rows(first: usize, rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", first + row * columns + column));
        }
        sql.push(')');
    }
    sql
}

/// Binds `$events` with sequence numbers from `$first_seq` on, in `insert_events_sql` order.
macro_rules! bind_events_from {
    ($query:expr, $events:expr, $first_seq:expr) => {{
        let mut query = $query;
        let first_seq: i64 = $first_seq;
        for (offset, event) in $events.into_iter().enumerate() {
            let event: &autopilot_proto::NewRunEvent = event;
            query = query
                .bind(event.run_id.to_string())
                .bind(first_seq + offset as i64)
                .bind(i64::from(event.attempt))
                .bind(event.origin.as_str())
                .bind(clamp_i64(event.origin_seq))
                .bind(to_ms(event.at))
                .bind(event.kind.as_str())
                .bind(event.data.to_string());
        }
        query
    }};
}

/// Most events a run write stores in the statement of the run itself (PostgreSQL) or with it,
/// numbered from the run's row; more take the general path (`append_events_in`).
const EVENTS_WITH_RUN: usize = 256;

/// Whether `events` may be stored with `run`'s own row write: all of that run, and not too many.
fn events_ride_with(run: &Run, events: &[NewRunEvent]) -> bool {
    !events.is_empty()
        && events.len() <= EVENTS_WITH_RUN
        && events.iter().all(|event| event.run_id == run.id)
}

const JOB_COLUMNS: &str = "id, name, description, kind, prompt, schedule_kind, schedule_expr, timezone, enabled, \
    model, allowed_tools, disallowed_tools, max_turns, timeout_secs, max_cost_usd, misfire_policy, misfire_cap, \
    overlap_policy, retry_count, retry_backoff_secs, pool, fire_cursor_ms, missed_fires, overlap_skipped, \
    created_at_ms, updated_at_ms, retry_lost, sandbox";

const RUN_COLUMNS: &str = "id, job_id, job_name, trigger, status, attempt, scheduled_for_ms, settings, created_at_ms, \
    dispatched_at_ms, not_before_ms, started_at_ms, finished_at_ms, heartbeat_at_ms, worker_id, exit_code, is_error, \
    error, result, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, num_turns, models, \
    permission_denials, webhook_id, delivery_id";

const INSERT_RUN: &str = "INSERT INTO runs (id, job_id, job_name, trigger, status, attempt, scheduled_for_ms, settings, \
    created_at_ms, dispatched_at_ms, not_before_ms, started_at_ms, finished_at_ms, heartbeat_at_ms, worker_id, exit_code, \
    is_error, error, result, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, num_turns, \
    models, permission_denials, webhook_id, delivery_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
    $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)";

/// `INSERT_RUN` with the run's last event sequence number as `$30`: a new run's first events
/// are numbered 1..n in the same write, without reserving them on the row afterwards.
fn insert_run_with_events_sql() -> String {
    format!(
        "INSERT INTO runs ({RUN_COLUMNS}, event_seq) VALUES {}",
        value_rows(1, 1, 30)
    )
}

/// Every column of a run, set from `$1`..`$29` in `INSERT_RUN` order.
const SET_RUN: &str = "id = $1, job_id = $2, job_name = $3, trigger = $4, status = $5, attempt = $6, \
    scheduled_for_ms = $7, settings = $8, created_at_ms = $9, dispatched_at_ms = $10, not_before_ms = $11, \
    started_at_ms = $12, finished_at_ms = $13, heartbeat_at_ms = $14, worker_id = $15, exit_code = $16, \
    is_error = $17, error = $18, result = $19, input_tokens = $20, output_tokens = $21, \
    cache_read_tokens = $22, cache_write_tokens = $23, cost_usd = $24, num_turns = $25, models = $26, \
    permission_denials = $27, webhook_id = $28, delivery_id = $29";
/// Which row version an update expects: `$30` status, `$31` attempt.
const RUN_EXPECTED: &str = "WHERE id = $1 AND status = $30 AND attempt = $31";

/// Binds every column of a run, in `INSERT_RUN` order.
macro_rules! bind_run {
    ($query:expr, $run:expr) => {{
        let run: &Run = $run;
        $query
            .bind(run.id.to_string())
            .bind(run.job_id.map(|id| id.to_string()))
            .bind(run.job_name.clone())
            .bind(run.trigger.as_str())
            .bind(run.status.as_str())
            .bind(i64::from(run.attempt))
            .bind(run.scheduled_for.map(to_ms))
            .bind(to_json(&run.settings))
            .bind(to_ms(run.created_at))
            .bind(run.dispatched_at.map(to_ms))
            .bind(run.not_before.map(to_ms))
            .bind(run.started_at.map(to_ms))
            .bind(run.finished_at.map(to_ms))
            .bind(run.heartbeat_at.map(to_ms))
            .bind(run.worker_id.clone())
            .bind(run.exit_code.map(i64::from))
            .bind(run.is_error)
            .bind(run.error.clone())
            .bind(run.result.clone())
            .bind(clamp_i64(run.usage.input_tokens))
            .bind(clamp_i64(run.usage.output_tokens))
            .bind(clamp_i64(run.usage.cache_read_tokens))
            .bind(clamp_i64(run.usage.cache_write_tokens))
            .bind(run.cost_usd)
            .bind(run.num_turns.map(i64::from))
            .bind(to_json(&run.models))
            .bind(i64::from(run.permission_denials))
            .bind(run.webhook_id.map(|id| id.to_string()))
            .bind(run.delivery_id.clone())
    }};
}

/// Binds a job's settings, in `INSERT INTO jobs` column order (without the counters).
macro_rules! bind_job {
    ($query:expr, $job:expr) => {{
        let job: &Job = $job;
        let settings = &job.settings;
        let (schedule_kind, schedule_expr) = schedule_columns(&job.schedule);
        $query
            .bind(job.id.to_string())
            .bind(job.name.clone())
            .bind(job.description.clone())
            .bind(job.kind.as_str())
            .bind(job.prompt.clone())
            .bind(schedule_kind)
            .bind(schedule_expr)
            .bind(job.timezone.clone())
            .bind(job.enabled)
            .bind(settings.model.clone())
            .bind(to_json(&settings.allowed_tools))
            .bind(to_json(&settings.disallowed_tools))
            .bind(settings.max_turns.map(i64::from))
            .bind(clamp_i64(settings.timeout_secs))
            .bind(settings.max_cost_usd)
            .bind(job.misfire_policy.as_str())
            .bind(i64::from(job.misfire_cap))
            .bind(job.overlap_policy.as_str())
            .bind(i64::from(settings.retry.count))
            .bind(clamp_i64(settings.retry.backoff_secs))
            .bind(settings.pool.clone())
            .bind(to_ms(job.fire_cursor))
            .bind(to_ms(job.created_at))
            .bind(to_ms(job.updated_at))
            .bind(settings.retry.lost)
            .bind(to_json(&settings.sandbox))
    }};
}

/// Classifies a driver error.
fn classify(err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            StoreError::Retryable(err.to_string())
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(err.to_string())
        }
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        // SQLITE_BUSY / SQLITE_LOCKED, and PostgreSQL serialization failures and deadlocks.
        sqlx::Error::Database(db)
            if matches!(
                db.code().as_deref(),
                Some("5" | "6" | "517" | "40001" | "40P01")
            ) =>
        {
            StoreError::Retryable(db.message().to_owned())
        }
        _ => StoreError::Other(err.to_string()),
    }
}

/// The only unique column a job write can collide on is its name.
fn name_conflict(err: sqlx::Error, job: &Job) -> StoreError {
    match classify(err) {
        StoreError::Conflict(_) => {
            StoreError::Conflict(format!("a job named `{}` already exists", job.name))
        }
        other => other,
    }
}

fn rows_into<R, T>(rows: Vec<R>) -> StoreResult<Vec<T>>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}

impl SqlStore {
    /// Connects and migrates. `sqlite:` URLs create the file (and its directory) if needed.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with(url, super::DEFAULT_PG_CONNECTIONS).await
    }

    /// [`SqlStore::connect`] with at most `pg_connections` PostgreSQL connections.
    pub async fn connect_with(url: &str, pg_connections: u32) -> anyhow::Result<Self> {
        let pools = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|err| anyhow::anyhow!("invalid SQLite URL `{url}`: {err}"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // With WAL, NORMAL keeps every commit across a process crash; only a power loss
                // can take back the last transactions.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // Statement journals and sorts stay in memory, not in temporary files.
                .pragma("temp_store", "memory");
            if let Some(parent) = options.get_filename().parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", parent.display()))?;
            }
            // No commit checkpoints by itself: one that happened to would wait for the copy into
            // the database file (tens of milliseconds at the tail). `checkpoint_wal` does it
            // beside the writer instead. A connection to a local file cannot go stale: no ping
            // before each use.
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
                .await?;
            SQLITE_MIGRATIONS.run(&write).await?;
            let read = SqlitePoolOptions::new()
                .max_connections(4)
                .test_before_acquire(false)
                .connect_with(options.clone().read_only(false))
                .await?;
            tokio::spawn(checkpoint_wal(read.clone(), write.clone()));
            Pools::Sqlite { read, write }
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(pg_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(|err| anyhow::anyhow!("cannot connect to PostgreSQL: {err}"))?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            Pools::Postgres(pool)
        } else {
            anyhow::bail!(
                "unsupported database URL `{}`: use `sqlite://PATH` or `postgres://USER@HOST/DB` (AUTOPILOT_DATABASE_URL)",
                url.split_once("://").map_or(url, |(scheme, _)| scheme)
            );
        };
        Ok(Self { pools })
    }
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL content (frames since it last started over) from which the writer's connection finishes
/// a checkpoint so the WAL starts over.
const WAL_RESTART_BYTES: i64 = 64 * 1024 * 1024;

/// Keeps the WAL bounded without making the writer wait for copies. A read connection copies
/// what is in the WAL while the writer goes on (`PASSIVE` never waits for it). When the writer
/// pauses long enough for that copy to catch up, its next transaction starts the WAL over by
/// itself. Under a load that never pauses the WAL only grows, so once its content passes
/// `WAL_RESTART_BYTES` the writer's own connection copies the last frames, between two of its
/// transactions, and the WAL starts over. The measure is the WAL's content as the checkpoint
/// reports it, not the file, which keeps its largest size: a writer checkpoint costs two
/// `fsync`s on the writer's path. Runs until the pools close; a failed checkpoint is retried at
/// the next tick.
async fn checkpoint_wal(read: SqlitePool, write: SqlitePool) {
    // `wal_checkpoint` answers (busy, frames in the WAL, frames copied).
    let checkpoint = |pool: SqlitePool| async move {
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await
        {
            Ok((_, frames, _)) => Some(frames),
            Err(err) => {
                if !pool.is_closed() {
                    tracing::debug!(error = %err, "WAL checkpoint failed; retrying");
                }
                None
            }
        }
    };
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&read)
        .await
        .unwrap_or(4096);
    while !read.is_closed() && !write.is_closed() {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        let frames = checkpoint(read.clone()).await.unwrap_or(0);
        if frames * page_size > WAL_RESTART_BYTES {
            checkpoint(write.clone()).await;
        }
    }
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        match self.pools {
            Pools::Sqlite { .. } => "sqlite",
            Pools::Postgres(_) => "postgres",
        }
    }

    async fn insert_job(&self, job: &Job) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             $15, $16, $17, $18, $19, $20, $21, $22, $27, $28, $23, $24, $25, $26)"
        );
        on_write!(self, pool => {
            bind_job!(sqlx::query(&sql), job)
                .bind(clamp_i64(job.missed_fires))
                .bind(clamp_i64(job.overlap_skipped))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(|err| name_conflict(err, job))?;
        Ok(())
    }

    async fn update_job(&self, job: &Job) -> StoreResult<()> {
        let sql = "UPDATE jobs SET name = $2, description = $3, kind = $4, prompt = $5, schedule_kind = $6, \
             schedule_expr = $7, timezone = $8, enabled = $9, model = $10, allowed_tools = $11, disallowed_tools = $12, \
             max_turns = $13, timeout_secs = $14, max_cost_usd = $15, misfire_policy = $16, misfire_cap = $17, \
             overlap_policy = $18, retry_count = $19, retry_backoff_secs = $20, pool = $21, fire_cursor_ms = $22, \
             created_at_ms = $23, updated_at_ms = $24, retry_lost = $25, sandbox = $26 WHERE id = $1";
        let result = on_write!(self, pool => bind_job!(sqlx::query(sql), job).execute(pool).await.map(|done| done.rows_affected()))
            .map_err(|err| name_conflict(err, job))?;
        if result == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn get_job(&self, id: JobId) -> StoreResult<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = on_read!(self, pool => sqlx::query_as::<_, JobRow>(&sql).bind(id.to_string()).fetch_optional(pool).await)
            .map_err(classify)?;
        row.map(Job::try_from).transpose()
    }

    async fn get_job_by_name(&self, name: &str) -> StoreResult<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE name = $1");
        let row = on_read!(self, pool => sqlx::query_as::<_, JobRow>(&sql).bind(name).fetch_optional(pool).await)
            .map_err(classify)?;
        row.map(Job::try_from).transpose()
    }

    async fn list_jobs(&self) -> StoreResult<Vec<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY name");
        let rows = on_read!(self, pool => sqlx::query_as::<_, JobRow>(&sql).fetch_all(pool).await)
            .map_err(classify)?;
        rows_into(rows)
    }

    async fn delete_job(&self, id: JobId) -> StoreResult<bool> {
        let deleted = on_write!(self, pool => sqlx::query("DELETE FROM jobs WHERE id = $1").bind(id.to_string()).execute(pool).await.map(|done| done.rows_affected()))
            .map_err(classify)?;
        Ok(deleted > 0)
    }

    async fn record_fires(&self, fires: &[FireRecord]) -> StoreResult<Vec<RunId>> {
        let insert =
            format!("{INSERT_RUN} ON CONFLICT (job_id, scheduled_for_ms) WHERE scheduled_for_ms IS NOT NULL DO NOTHING RETURNING id");
        let advance = "UPDATE jobs SET fire_cursor_ms = $2, missed_fires = missed_fires + $3, \
                       overlap_skipped = overlap_skipped + $4, enabled = (enabled AND NOT $5) WHERE id = $1";
        let created = in_write_tx!(self, tx => {
            let mut created = Vec::new();
            for fire in fires {
                for run in &fire.runs {
                    let inserted: Option<(String,)> =
                        bind_run!(sqlx::query_as(&insert), run).fetch_optional(&mut *tx).await.map_err(classify)?;
                    if inserted.is_some() {
                        created.push(run.id);
                    }
                }
                sqlx::query(advance)
                    .bind(fire.job_id.to_string())
                    .bind(to_ms(fire.cursor))
                    .bind(clamp_i64(fire.missed))
                    .bind(clamp_i64(fire.overlap_skipped))
                    .bind(fire.disable)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
            }
            let events: Vec<NewRunEvent> = fires
                .iter()
                .flat_map(|fire| fire.events.iter())
                .filter(|event| created.contains(&event.run_id))
                .cloned()
                .collect();
            append_events_in!(tx, &events);
            created
        });
        Ok(created)
    }

    async fn insert_run(&self, run: &Run, first_events: &[NewRunEvent]) -> StoreResult<()> {
        if !events_ride_with(run, first_events) {
            in_write_tx!(self, tx => {
                bind_run!(sqlx::query(INSERT_RUN), run).execute(&mut *tx).await.map_err(classify)?;
                append_events_in!(tx, first_events);
            });
            return Ok(());
        }
        // The run's own first events are numbered 1..n by the row itself.
        let count = i64::try_from(first_events.len()).unwrap_or(i64::MAX);
        match &self.pools {
            Pools::Sqlite { write, .. } => in_sqlite_tx!(write, tx => {
                bind_run!(sqlx::query(&insert_run_with_events_sql()), run)
                    .bind(count)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                let sql = insert_events_sql(1, first_events.len());
                bind_events_from!(sqlx::query(&sql), first_events, 1)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
            }),
            Pools::Postgres(pool) => {
                // One statement, so one round trip and no BEGIN / COMMIT: a data-modifying
                // `WITH` runs whether or not the outer statement reads it.
                let sql = format!(
                    "WITH run AS ({}) {}",
                    insert_run_with_events_sql(),
                    insert_events_sql(31, first_events.len())
                );
                bind_events_from!(
                    bind_run!(sqlx::query(&sql), run).bind(count),
                    first_events,
                    1
                )
                .execute(pool)
                .await
                .map_err(classify)?;
            }
        }
        Ok(())
    }

    async fn get_run(&self, id: RunId) -> StoreResult<Option<Run>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        let row = on_read!(self, pool => sqlx::query_as::<_, RunRow>(&sql).bind(id.to_string()).fetch_optional(pool).await)
            .map_err(classify)?;
        row.map(Run::try_from).transpose()
    }

    async fn get_runs(&self, ids: &[RunId]) -> StoreResult<Vec<Run>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN ({})",
            placeholders.join(", ")
        );
        let rows = on_read!(self, pool => {
            let mut query = sqlx::query_as::<_, RunRow>(&sql);
            for id in ids {
                query = query.bind(id.to_string());
            }
            query.fetch_all(pool).await
        })
        .map_err(classify)?;
        rows.into_iter().map(Run::try_from).collect()
    }

    async fn list_runs(&self, filter: &RunFilter) -> StoreResult<Vec<Run>> {
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        if let Some(job_id) = filter.job_id {
            binds.push(job_id.to_string());
            sql.push_str(&format!(" AND job_id = ${}", binds.len()));
        }
        if let Some(webhook_id) = filter.webhook_id {
            binds.push(webhook_id.to_string());
            sql.push_str(&format!(" AND webhook_id = ${}", binds.len()));
        }
        if !filter.statuses.is_empty() {
            let mut placeholders = Vec::new();
            for status in &filter.statuses {
                binds.push(status.as_str().to_owned());
                placeholders.push(format!("${}", binds.len()));
            }
            sql.push_str(&format!(" AND status IN ({})", placeholders.join(", ")));
        }
        if let Some(before) = filter.before {
            binds.push(before.to_string());
            sql.push_str(&format!(" AND id < ${}", binds.len()));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", binds.len() + 1));
        let rows = on_read!(self, pool => {
            let mut query = sqlx::query_as::<_, RunRow>(&sql);
            for value in &binds {
                query = query.bind(value);
            }
            query.bind(i64::from(filter.limit)).fetch_all(pool).await
        })
        .map_err(classify)?;
        rows_into(rows)
    }

    async fn update_run(
        &self,
        run: &Run,
        expected_status: RunStatus,
        expected_attempt: u32,
        events: &[NewRunEvent],
    ) -> StoreResult<bool> {
        let plain_update = || format!("UPDATE runs SET {SET_RUN} {RUN_EXPECTED}");
        if events.is_empty() {
            let sql = plain_update();
            let updated = on_write!(self, pool => {
                bind_run!(sqlx::query(&sql), run)
                    .bind(expected_status.as_str())
                    .bind(i64::from(expected_attempt))
                    .execute(pool)
                    .await
                    .map(|done| done.rows_affected())
            })
            .map_err(classify)?;
            return Ok(updated == 1);
        }
        if !events_ride_with(run, events) {
            let sql = plain_update();
            let updated = in_write_tx!(self, tx => {
                let updated = bind_run!(sqlx::query(&sql), run)
                    .bind(expected_status.as_str())
                    .bind(i64::from(expected_attempt))
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?
                    .rows_affected();
                if updated == 1 {
                    append_events_in!(tx, events);
                }
                updated
            });
            return Ok(updated == 1);
        }
        // The events' sequence numbers are reserved by the update of the row itself ($32 of
        // them), so the row is written once.
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let update = format!(
            "UPDATE runs SET {SET_RUN}, event_seq = event_seq + $32 {RUN_EXPECTED} RETURNING event_seq"
        );
        match &self.pools {
            Pools::Sqlite { write, .. } => in_sqlite_tx!(write, tx => {
                let last: Option<(i64,)> = bind_run!(sqlx::query_as(&update), run)
                    .bind(expected_status.as_str())
                    .bind(i64::from(expected_attempt))
                    .bind(count)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(classify)?;
                if let Some((last,)) = last {
                    let sql = insert_events_sql(1, events.len());
                    bind_events_from!(sqlx::query(&sql), events, last - count + 1)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                }
                Ok(last.is_some())
            }),
            Pools::Postgres(pool) => {
                // One statement: the events take their numbers from the updated row, and are
                // stored only if the row matched. Each event's `seq` parameter is its place,
                // 1..count, and `n` in the statement.
                let sql = format!(
                    "WITH updated AS ({update}), stored AS (INSERT INTO run_events {EVENT_COLUMNS} \
                     SELECT e.run_id, updated.event_seq - $32 + e.n, e.attempt, e.origin, e.origin_seq, e.at_ms, \
                     e.kind, e.data FROM updated CROSS JOIN (VALUES {}) \
                     AS e (run_id, n, attempt, origin, origin_seq, at_ms, kind, data) {EVENT_REDELIVERED}) \
                     SELECT event_seq FROM updated",
                    value_rows(33, events.len(), 8)
                );
                let query = bind_run!(sqlx::query_as::<_, (i64,)>(&sql), run)
                    .bind(expected_status.as_str())
                    .bind(i64::from(expected_attempt))
                    .bind(count);
                let query = bind_events_from!(query, events, 1);
                let updated = query.fetch_optional(pool).await.map_err(classify)?;
                Ok(updated.is_some())
            }
        }
    }

    async fn claim_runs(
        &self,
        runs: &[RunAttempt],
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Run>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "UPDATE runs SET status = 'running', worker_id = $1, started_at_ms = $2, heartbeat_at_ms = $2 \
             WHERE status = 'queued' AND (id, attempt) IN (VALUES {}) RETURNING {RUN_COLUMNS}",
            value_rows(3, runs.len(), 2)
        );
        let rows = on_write!(self, pool => {
            let mut query = sqlx::query_as::<_, RunRow>(&sql).bind(worker_id).bind(to_ms(now));
            for run in runs {
                query = query.bind(run.run_id.to_string()).bind(i64::from(run.attempt));
            }
            query.fetch_all(pool).await
        })
        .map_err(classify)?;
        rows.into_iter().map(Run::try_from).collect()
    }

    async fn heartbeat_run(
        &self,
        run_id: RunId,
        attempt: u32,
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<RunStatus>> {
        let sql = "UPDATE runs SET heartbeat_at_ms = $4 WHERE id = $1 AND attempt = $2 AND worker_id = $3 \
                   AND status IN ('running', 'cancelling') RETURNING status";
        let status: Option<(String,)> = on_write!(self, pool => {
            sqlx::query_as(sql)
                .bind(run_id.to_string())
                .bind(i64::from(attempt))
                .bind(worker_id)
                .bind(to_ms(now))
                .fetch_optional(pool)
                .await
        })
        .map_err(classify)?;
        status
            .map(|(status,)| status.parse().map_err(StoreError::Corrupt))
            .transpose()
    }

    async fn queued_runs(
        &self,
        dispatched_before: Option<DateTime<Utc>>,
        limit: u32,
    ) -> StoreResult<Vec<Run>> {
        let dispatched = match dispatched_before {
            None => "dispatched_at_ms IS NULL",
            Some(_) => "dispatched_at_ms < $2",
        };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status = 'queued' AND {dispatched} ORDER BY id LIMIT $1"
        );
        let rows = on_read!(self, pool => {
            let mut query = sqlx::query_as::<_, RunRow>(&sql).bind(i64::from(limit));
            if let Some(before) = dispatched_before {
                query = query.bind(to_ms(before));
            }
            query.fetch_all(pool).await
        })
        .map_err(classify)?;
        rows_into(rows)
    }

    async fn runs_in_status(
        &self,
        statuses: &[RunStatus],
        job_id: Option<JobId>,
    ) -> StoreResult<Vec<Run>> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=statuses.len()).map(|i| format!("${i}")).collect();
        let mut sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status IN ({})",
            placeholders.join(", ")
        );
        if job_id.is_some() {
            sql.push_str(&format!(" AND job_id = ${}", statuses.len() + 1));
        }
        sql.push_str(" ORDER BY id");
        let rows = on_read!(self, pool => {
            let mut query = sqlx::query_as::<_, RunRow>(&sql);
            for status in statuses {
                query = query.bind(status.as_str());
            }
            if let Some(job_id) = job_id {
                query = query.bind(job_id.to_string());
            }
            query.fetch_all(pool).await
        })
        .map_err(classify)?;
        rows_into(rows)
    }

    async fn append_events(&self, events: &[NewRunEvent]) -> StoreResult<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        let stored = in_write_tx!(self, tx => { append_events_in!(tx, events) });
        Ok(stored)
    }

    async fn list_events(
        &self,
        run_id: RunId,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<RunEvent>> {
        let sql = "SELECT run_id, seq, attempt, at_ms, kind, data FROM run_events WHERE run_id = $1 AND seq > $2 \
                   ORDER BY seq LIMIT $3";
        let rows = on_read!(self, pool => {
            sqlx::query_as::<_, EventRow>(sql)
                .bind(run_id.to_string())
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map_err(classify)?;
        rows_into(rows)
    }

    async fn count_worker_events(&self, run_id: RunId, attempt: u32) -> StoreResult<u64> {
        let sql = "SELECT COUNT(*) FROM run_events WHERE run_id = $1 AND attempt = $2 AND origin = 'worker'";
        let (count,): (i64,) = on_read!(self, pool => {
            sqlx::query_as(sql).bind(run_id.to_string()).bind(i64::from(attempt)).fetch_one(pool).await
        })
        .map_err(classify)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<i64>> {
        let expires = to_ms(now) + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let sql = "INSERT INTO leases (name, holder, token, expires_at_ms) VALUES ($1, $2, 1, $3) \
                   ON CONFLICT (name) DO UPDATE SET \
                     token = CASE WHEN leases.holder = excluded.holder THEN leases.token ELSE leases.token + 1 END, \
                     holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
                   WHERE leases.holder = excluded.holder OR leases.expires_at_ms < $4 \
                   RETURNING token";
        let token: Option<(i64,)> = on_write!(self, pool => {
            sqlx::query_as(sql).bind(name).bind(holder).bind(expires).bind(to_ms(now)).fetch_optional(pool).await
        })
        .map_err(classify)?;
        Ok(token.map(|(token,)| token))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        on_write!(self, pool => {
            sqlx::query("UPDATE leases SET expires_at_ms = 0 WHERE name = $1 AND holder = $2").bind(name).bind(holder).execute(pool).await.map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn insert_oauth_client(&self, client: &OAuthClient) -> StoreResult<()> {
        let sql = "INSERT INTO oauth_clients (client_id, secret_hash, auth_method, redirect_uris, client_name, scope, \
                   created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)";
        on_write!(self, pool => {
            sqlx::query(sql)
                .bind(&client.client_id)
                .bind(&client.secret_hash)
                .bind(&client.auth_method)
                .bind(to_json(&client.redirect_uris))
                .bind(&client.client_name)
                .bind(&client.scope)
                .bind(to_ms(client.created_at))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn get_oauth_client(&self, client_id: &str) -> StoreResult<Option<OAuthClient>> {
        let sql = "SELECT client_id, secret_hash, auth_method, redirect_uris, client_name, scope, created_at_ms \
                   FROM oauth_clients WHERE client_id = $1";
        let row: Option<ClientRow> = on_read!(self, pool => {
            sqlx::query_as(sql).bind(client_id).fetch_optional(pool).await
        })
        .map_err(classify)?;
        row.map(OAuthClient::try_from).transpose()
    }

    async fn insert_auth_code(&self, code: &AuthCode) -> StoreResult<()> {
        let sql = "INSERT INTO oauth_codes (code_hash, client_id, redirect_uri, code_challenge, resource, scope, \
                   expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)";
        on_write!(self, pool => {
            sqlx::query(sql)
                .bind(&code.code_hash)
                .bind(&code.client_id)
                .bind(&code.redirect_uri)
                .bind(&code.code_challenge)
                .bind(&code.resource)
                .bind(&code.scope)
                .bind(to_ms(code.expires_at))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn take_auth_code(&self, code_hash: &str) -> StoreResult<Option<AuthCode>> {
        let sql = "DELETE FROM oauth_codes WHERE code_hash = $1 RETURNING code_hash, client_id, redirect_uri, \
                   code_challenge, resource, scope, expires_at_ms";
        let row: Option<CodeRow> = on_write!(self, pool => {
            sqlx::query_as(sql).bind(code_hash).fetch_optional(pool).await
        })
        .map_err(classify)?;
        row.map(AuthCode::try_from).transpose()
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        let sql = "INSERT INTO oauth_refresh_tokens (token_hash, family_id, client_id, resource, scope, expires_at_ms) \
                   VALUES ($1, $2, $3, $4, $5, $6)";
        on_write!(self, pool => {
            sqlx::query(sql)
                .bind(&token.token_hash)
                .bind(&token.family_id)
                .bind(&token.client_id)
                .bind(&token.resource)
                .bind(&token.scope)
                .bind(to_ms(token.expires_at))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn use_refresh_token(&self, token_hash: &str) -> StoreResult<RefreshUse> {
        let take = "UPDATE oauth_refresh_tokens SET used = TRUE WHERE token_hash = $1 AND used = FALSE \
                    AND revoked = FALSE RETURNING token_hash, family_id, client_id, resource, scope, expires_at_ms";
        let taken: Option<RefreshRow> = on_write!(self, pool => {
            sqlx::query_as(take).bind(token_hash).fetch_optional(pool).await
        })
        .map_err(classify)?;
        if let Some(row) = taken {
            return Ok(RefreshUse::Fresh(RefreshToken::try_from(row)?));
        }
        match self.refresh_family_of(token_hash).await? {
            Some((family_id, _)) => {
                self.revoke_refresh_family(&family_id).await?;
                Ok(RefreshUse::Replayed { family_id })
            }
            None => Ok(RefreshUse::Unknown),
        }
    }

    async fn revoke_refresh_family(&self, family_id: &str) -> StoreResult<()> {
        on_write!(self, pool => {
            sqlx::query("UPDATE oauth_refresh_tokens SET revoked = TRUE WHERE family_id = $1")
                .bind(family_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn refresh_family_of(&self, token_hash: &str) -> StoreResult<Option<(String, String)>> {
        let row: Option<(String, String)> = on_read!(self, pool => {
            sqlx::query_as("SELECT family_id, client_id FROM oauth_refresh_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(pool)
                .await
        })
        .map_err(classify)?;
        Ok(row)
    }

    async fn upsert_worker(
        &self,
        status: &WorkerStatus,
        seen_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let sql = "INSERT INTO workers (worker_id, status, seen_at_ms) VALUES ($1, $2, $3) \
                   ON CONFLICT (worker_id) DO UPDATE SET status = excluded.status, seen_at_ms = excluded.seen_at_ms";
        on_write!(self, pool => {
            sqlx::query(sql)
                .bind(status.worker_id.as_str())
                .bind(to_json(status))
                .bind(to_ms(seen_at))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn list_workers(
        &self,
        seen_since: DateTime<Utc>,
    ) -> StoreResult<Vec<(WorkerStatus, DateTime<Utc>)>> {
        let rows: Vec<(String, i64)> = on_read!(self, pool => {
            sqlx::query_as("SELECT status, seen_at_ms FROM workers WHERE seen_at_ms >= $1 ORDER BY worker_id")
                .bind(to_ms(seen_since))
                .fetch_all(pool)
                .await
        })
        .map_err(classify)?;
        rows.into_iter()
            .map(|(status, seen_at_ms)| {
                let status: WorkerStatus = serde_json::from_str(&status)
                    .map_err(|err| StoreError::Corrupt(format!("worker status: {err}")))?;
                Ok((status, super::rows::from_ms(seen_at_ms)?))
            })
            .collect()
    }

    async fn forget_workers(&self, seen_before: DateTime<Utc>) -> StoreResult<u64> {
        let deleted = on_write!(self, pool => {
            sqlx::query("DELETE FROM workers WHERE seen_at_ms < $1")
                .bind(to_ms(seen_before))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(deleted)
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        let row: Option<(String,)> = on_read!(self, pool => {
            sqlx::query_as("SELECT value FROM settings WHERE key = $1").bind(key).fetch_optional(pool).await
        })
        .map_err(classify)?;
        Ok(row.map(|(value,)| value))
    }

    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<bool> {
        let inserted = on_write!(self, pool => {
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .bind(value)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(inserted == 1)
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        on_write!(self, pool => {
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                .bind(key)
                .bind(value)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }
}

mod webhooks;
