//! Runs in the SQL store: their columns, how a run is bound to a statement, and the
//! [`RunStore`] writes and queries, several of which store events in the same write as the run.

use async_trait::async_trait;
use autopilot_proto::{JobId, NewRunEvent, RunAttempt, RunId, RunStatus};
use chrono::{DateTime, Utc};

use super::events::{
    append_events_in, bind_events_from, insert_events_sql, EVENT_COLUMNS, EVENT_REDELIVERED,
};
use super::{classify, placeholders, rows_into, Placeholders, Pools, SqlStore};
use crate::domain::{FireRecord, PoolQueue, Run, RunFilter};
use crate::store::rows::{clamp_i64, from_ms, to_json, to_ms, RunRow};
use crate::store::{RunStore, RunUpdate, StoreError, StoreResult};

// Named only by the code `append_events_in!` expands to: a `macro_rules!` body finds its names
// where it is used, not where it is defined.
use super::events::{EVENTS_PER_INSERT, RESERVE_EVENT_SEQS};
use std::collections::HashMap;

/// Most events a run write stores in the statement of the run itself (PostgreSQL) or with it,
/// numbered from the run's row; more take the general path (`append_events_in`).
const EVENTS_WITH_RUN: usize = 256;

/// Whether `events` may be stored with `run`'s own row write: all of that run, and not too many.
fn events_ride_with(run: &Run, events: &[NewRunEvent]) -> bool {
    !events.is_empty()
        && events.len() <= EVENTS_WITH_RUN
        && events.iter().all(|event| event.run_id == run.id)
}

pub(super) const RUN_COLUMNS: &str = "id, job_id, job_name, trigger, status, attempt, scheduled_for_ms, settings, created_at_ms, \
    dispatched_at_ms, not_before_ms, started_at_ms, finished_at_ms, heartbeat_at_ms, worker_id, exit_code, is_error, \
    error, result, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, num_turns, models, \
    permission_denials, webhook_id, delivery_id, trace_parent, billing";

pub(super) const INSERT_RUN: &str = "INSERT INTO runs (id, job_id, job_name, trigger, status, attempt, scheduled_for_ms, settings, \
    created_at_ms, dispatched_at_ms, not_before_ms, started_at_ms, finished_at_ms, heartbeat_at_ms, worker_id, exit_code, \
    is_error, error, result, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, num_turns, \
    models, permission_denials, webhook_id, delivery_id, trace_parent, billing) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
    $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31)";

/// `INSERT_RUN` with the run's last event sequence number as `$32`: a new run's first events
/// are numbered 1..n in the same write, without reserving them on the row afterwards.
fn insert_run_with_events_sql() -> String {
    format!(
        "INSERT INTO runs ({RUN_COLUMNS}, event_seq) VALUES {}",
        placeholders(Placeholders::Numbered, 1, 32, 1)
    )
}

/// Every column of a run, set from `$1`..`$31` in `INSERT_RUN` order.
const SET_RUN: &str = "id = $1, job_id = $2, job_name = $3, trigger = $4, status = $5, attempt = $6, \
    scheduled_for_ms = $7, settings = $8, created_at_ms = $9, dispatched_at_ms = $10, not_before_ms = $11, \
    started_at_ms = $12, finished_at_ms = $13, heartbeat_at_ms = $14, worker_id = $15, exit_code = $16, \
    is_error = $17, error = $18, result = $19, input_tokens = $20, output_tokens = $21, \
    cache_read_tokens = $22, cache_write_tokens = $23, cost_usd = $24, num_turns = $25, models = $26, \
    permission_denials = $27, webhook_id = $28, delivery_id = $29, trace_parent = $30, billing = $31";
/// Which row version an update expects: `$32` status, `$33` attempt.
const RUN_EXPECTED: &str = "WHERE id = $1 AND status = $32 AND attempt = $33";

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
            .bind(run.trace_parent.as_deref().map(|traceparent| {
                crate::store::rows::stored_trace_parent(traceparent, run.id).into_owned()
            }))
            .bind(run.billing.map(|billing| billing.as_str()))
    }};
}

/// The compare-and-set update of a run's row and, if it matched, the append of `$events` in
/// their own statements, inside the transaction `$tx` (SQLite or PostgreSQL); whether it
/// matched.
macro_rules! update_then_append {
    ($tx:ident, $run:expr, $expected_status:expr, $expected_attempt:expr, $events:expr) => {{
        let sql = format!("UPDATE runs SET {SET_RUN} {RUN_EXPECTED}");
        let updated = bind_run!(sqlx::query(&sql), $run)
            .bind($expected_status.as_str())
            .bind(i64::from($expected_attempt))
            .execute(&mut *$tx)
            .await
            .map_err(classify)?
            .rows_affected();
        if updated == 1 && !$events.is_empty() {
            append_events_in!($tx, $events);
        }
        updated == 1
    }};
}

/// `update_run` on SQLite, inside the caller's write transaction `tx`.
async fn update_run_sqlite(
    tx: &mut sqlx::SqliteConnection,
    update: &RunUpdate<'_>,
) -> StoreResult<bool> {
    let RunUpdate {
        run,
        expected_status,
        expected_attempt,
        events,
    } = *update;
    if !events_ride_with(run, events) {
        return Ok(update_then_append!(
            tx,
            run,
            expected_status,
            expected_attempt,
            events
        ));
    }
    // The events' sequence numbers are reserved by the update of the row itself ($34 of them),
    // so the row is written once.
    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let sql = format!(
        "UPDATE runs SET {SET_RUN}, event_seq = event_seq + $34 {RUN_EXPECTED} RETURNING event_seq"
    );
    let last: Option<(i64,)> = bind_run!(sqlx::query_as(&sql), run)
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
}

pub(super) use bind_run;

#[async_trait]
impl RunStore for SqlStore {
    async fn record_fires(&self, fires: &[FireRecord]) -> StoreResult<Vec<RunId>> {
        let insert =
            format!("{INSERT_RUN} ON CONFLICT (job_id, scheduled_for_ms) WHERE scheduled_for_ms IS NOT NULL DO NOTHING RETURNING id");
        // The cursor only moves forward: a leader that wakes from a pause with an older plan
        // cannot move it back under its successor.
        let advance = "UPDATE jobs SET fire_cursor_ms = CASE WHEN fire_cursor_ms > $2 THEN fire_cursor_ms ELSE $2 END, missed_fires = missed_fires + $3, \
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
                    insert_events_sql(33, first_events.len())
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
        if let Some(trigger) = filter.trigger {
            binds.push(trigger.as_str().to_owned());
            sql.push_str(&format!(" AND trigger = ${}", binds.len()));
        }
        if let Some(before) = filter.before {
            binds.push(before.to_string());
            sql.push_str(&format!(" AND id < ${}", binds.len()));
        }
        if let Some(since) = filter.since {
            // Run ids are UUIDv7, ordered by creation time: the time bound is an id bound too,
            // so the primary key (or `(job_id, id)`) serves it.
            binds.push(RunId::first_at(since).to_string());
            sql.push_str(&format!(" AND id >= ${}", binds.len()));
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
            // One statement needs no transaction of its own.
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
        let pool = match &self.pools {
            Pools::Sqlite { write, .. } => {
                let update = RunUpdate {
                    run,
                    expected_status,
                    expected_attempt,
                    events,
                };
                return Ok(in_sqlite_tx!(write, tx => { update_run_sqlite(tx, &update).await? }));
            }
            Pools::Postgres(pool) => pool,
        };
        if !events_ride_with(run, events) {
            let mut tx = pool.begin().await.map_err(classify)?;
            let written = update_then_append!(tx, run, expected_status, expected_attempt, events);
            tx.commit().await.map_err(classify)?;
            return Ok(written);
        }
        // One statement: the events take their numbers from the updated row (which reserves
        // `$34` of them), and are stored only if the row matched. Each event's `seq` parameter
        // is its place, 1..count, and `n` in the statement.
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let update = format!(
            "UPDATE runs SET {SET_RUN}, event_seq = event_seq + $34 {RUN_EXPECTED} RETURNING event_seq"
        );
        let sql = format!(
            "WITH updated AS ({update}), stored AS (INSERT INTO run_events {EVENT_COLUMNS} \
             SELECT e.run_id, updated.event_seq - $34 + e.n, e.attempt, e.origin, e.origin_seq, e.at_ms, \
             e.kind, e.data FROM updated CROSS JOIN (VALUES {}) \
             AS e (run_id, n, attempt, origin, origin_seq, at_ms, kind, data) {EVENT_REDELIVERED}) \
             SELECT event_seq FROM updated",
            placeholders(Placeholders::Numbered, events.len(), 8, 35)
        );
        let query = bind_run!(sqlx::query_as::<_, (i64,)>(&sql), run)
            .bind(expected_status.as_str())
            .bind(i64::from(expected_attempt))
            .bind(count);
        let query = bind_events_from!(query, events, 1);
        let updated = query.fetch_optional(pool).await.map_err(classify)?;
        Ok(updated.is_some())
    }

    async fn update_runs(&self, updates: &[RunUpdate<'_>]) -> StoreResult<Vec<bool>> {
        match &self.pools {
            Pools::Sqlite { write, .. } => {
                if updates.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(in_sqlite_tx!(write, tx => {
                    let mut written = Vec::with_capacity(updates.len());
                    for update in updates {
                        written.push(update_run_sqlite(tx, update).await?);
                    }
                    written
                }))
            }
            // Each on a connection of its own, at once: PostgreSQL commits them side by side.
            Pools::Postgres(_) => {
                futures::future::try_join_all(updates.iter().map(|update| {
                    self.update_run(
                        update.run,
                        update.expected_status,
                        update.expected_attempt,
                        update.events,
                    )
                }))
                .await
            }
        }
    }

    async fn claim_runs(
        &self,
        runs: &[RunAttempt],
        worker_id: &str,
        claim_token: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Run>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        // `id IN (…)` besides the (id, attempt) pairs, naming the same parameters: it lets
        // SQLite find the rows by their key instead of going through every queued run (which
        // made each claim cost milliseconds with a long queue).
        // A repeated claim (same worker, same token: `claim_token = NULL` matches nothing)
        // keeps the run's start; the SET expressions see the row as it was.
        let ids = (0..runs.len())
            .map(|i| format!("${}", 4 + 2 * i))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE runs SET status = 'running', worker_id = $1, claim_token = $3, heartbeat_at_ms = $2, \
             started_at_ms = CASE WHEN status = 'queued' THEN $2 ELSE started_at_ms END \
             WHERE id IN ({ids}) AND (id, attempt) IN (VALUES {}) \
             AND (status = 'queued' OR (status = 'running' AND worker_id = $1 AND claim_token = $3)) \
             RETURNING {RUN_COLUMNS}",
            placeholders(Placeholders::Numbered, runs.len(), 2, 4)
        );
        let rows = on_write!(self, pool => {
            let mut query = sqlx::query_as::<_, RunRow>(&sql)
                .bind(worker_id)
                .bind(to_ms(now))
                .bind(claim_token);
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
                   AND status IN ('running', 'waiting_for_approval', 'cancelling') RETURNING status";
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

    async fn queue_by_pool(&self) -> StoreResult<Vec<PoolQueue>> {
        // The pool is in each run's settings snapshot (JSON text); queued runs are few enough,
        // and found through the status index, to read it there.
        let rows: Vec<(Option<String>, i64, i64)> = match &self.pools {
            Pools::Sqlite { read, .. } => {
                sqlx::query_as(
                    "SELECT json_extract(settings, '$.pool'), COUNT(*), MIN(created_at_ms) \
                     FROM runs WHERE status = 'queued' GROUP BY 1",
                )
                .fetch_all(read)
                .await
            }
            Pools::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT settings::jsonb ->> 'pool', COUNT(*), MIN(created_at_ms) \
                     FROM runs WHERE status = 'queued' GROUP BY 1",
                )
                .fetch_all(pool)
                .await
            }
        }
        .map_err(classify)?;
        rows.into_iter()
            .map(|(pool, queued, oldest)| {
                Ok(PoolQueue {
                    pool: pool.unwrap_or_default(),
                    queued: u64::try_from(queued).unwrap_or(0),
                    oldest_created_at: from_ms(oldest)?,
                })
            })
            .collect()
    }

    async fn count_queued_runs(&self) -> StoreResult<u64> {
        let (count,): (i64,) = on_read!(self, pool => {
            sqlx::query_as("SELECT COUNT(*) FROM runs WHERE status = 'queued'").fetch_one(pool).await
        })
        .map_err(classify)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
