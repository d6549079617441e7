//! Run events in the SQL store: how a batch of events is numbered and inserted (shared with the
//! run writes and the webhook delivery batch, which store first events with their runs), and
//! the [`EventStore`] queries.

use std::collections::HashMap;

use async_trait::async_trait;
use autopilot_proto::{NewRunEvent, RunEvent, RunId};

use super::{classify, placeholders, rows_into, Placeholders, Pools, SqlStore};
use crate::store::rows::{clamp_i64, to_ms, EventRow};
use crate::store::{EventStore, StoreResult};

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
pub(super) use append_events_in;

pub(super) const RESERVE_EVENT_SEQS: &str =
    "UPDATE runs SET event_seq = event_seq + $2 WHERE id = $1 RETURNING event_seq";
/// Most events in one INSERT (8 parameters each, well under SQLite's limit).
pub(super) const EVENTS_PER_INSERT: usize = 64;

/// `INSERT` of `rows` events, their parameters numbered from `$first`; a redelivered one (same
/// run, attempt, origin and origin_seq) is skipped.
pub(super) fn insert_events_sql(first: usize, rows: usize) -> String {
    format!(
        "INSERT INTO run_events {EVENT_COLUMNS} VALUES {} {EVENT_REDELIVERED}",
        placeholders(Placeholders::Numbered, rows, 8, first)
    )
}

pub(super) const EVENT_COLUMNS: &str =
    "(run_id, seq, attempt, origin, origin_seq, at_ms, kind, data)";
pub(super) const EVENT_REDELIVERED: &str =
    "ON CONFLICT (run_id, attempt, origin, origin_seq) DO NOTHING";

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
pub(super) use bind_events_from;

#[async_trait]
impl EventStore for SqlStore {
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
}
