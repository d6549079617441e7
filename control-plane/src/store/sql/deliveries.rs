//! The batched write of webhook deliveries in the SQL store: which deliveries of a batch claim a
//! delivery id and which repeat one, and the statements that store the new runs with their first
//! events and payloads in one durable transaction, one way for each dialect.

use std::collections::HashMap;

use autopilot_proto::{RunId, WebhookId};
use chrono::{DateTime, Utc};

use super::events::bind_events_from;
use super::runs::{bind_run, RUN_COLUMNS};
use super::{classify, parameter, placeholders, Placeholders, Pools, SqlStore};
use crate::domain::webhook::{DeliveryOutcome, NewDelivery};
use crate::store::rows::{clamp_i64, to_json, to_ms};
use crate::store::{StoreError, StoreResult};

// Named only by the code `bind_run!` expands to: a `macro_rules!` body finds its names where it
// is used, not where it is defined.
use crate::domain::Run;

/// Rows per multi-row insert: well under SQLite's 32766 bound parameters at 32 columns.
const ROWS_PER_INSERT: usize = 500;

/// Binds the runs of `$chunk` (deliveries) for `INSERT INTO runs (RUN_COLUMNS, event_seq)`.
macro_rules! bind_runs {
    ($query:expr, $chunk:expr) => {{
        let mut query = $query;
        for delivery in $chunk {
            query = bind_run!(query, &delivery.run).bind(1i64);
        }
        query
    }};
}

/// Binds the first (queued) events of `$chunk`, each with sequence number 1.
macro_rules! bind_events {
    ($query:expr, $chunk:expr) => {{
        let mut query = $query;
        for delivery in $chunk {
            query = bind_events_from!(query, [&delivery.queued_event], 1);
        }
        query
    }};
}

/// Binds the payloads of `$chunk`.
macro_rules! bind_payloads {
    ($query:expr, $chunk:expr) => {{
        let mut query = $query;
        for delivery in $chunk {
            let payload = &delivery.payload;
            query = query
                .bind(payload.run_id.to_string())
                .bind(payload.content_type.clone())
                .bind(to_json(&payload.headers))
                .bind(to_json(&payload.query))
                .bind(payload.body.clone())
                .bind(clamp_i64(payload.body_bytes))
                .bind(payload.truncated);
        }
        query
    }};
}

/// How a batch of deliveries is written: which claim a delivery id, which repeat an earlier one
/// of the same batch, and which create a run whatever the store holds.
struct Plan<'a> {
    deliveries: &'a [NewDelivery],
    /// Deliveries with an id, first of their key in the batch: they create a run unless the id
    /// was seen within its window.
    claims: Vec<&'a NewDelivery>,
    /// (delivery, earlier delivery of the batch with the same id).
    repeats: Vec<(usize, usize)>,
    /// Every delivery that inserts a run (claims and deliveries without an id).
    inserts: Vec<&'a NewDelivery>,
}

impl<'a> Plan<'a> {
    fn new(deliveries: &'a [NewDelivery]) -> Self {
        let mut first_of: HashMap<(WebhookId, &str), usize> = HashMap::new();
        let mut plan = Plan {
            deliveries,
            claims: Vec::new(),
            repeats: Vec::new(),
            inserts: Vec::new(),
        };
        for (index, delivery) in deliveries.iter().enumerate() {
            let key = match (
                &delivery.run.webhook_id,
                &delivery.run.delivery_id,
                delivery.dedup_until,
            ) {
                (Some(webhook_id), Some(delivery_id), Some(_)) => {
                    (*webhook_id, delivery_id.as_str())
                }
                _ => {
                    plan.inserts.push(delivery);
                    continue;
                }
            };
            match first_of.get(&key) {
                Some(&first) => plan.repeats.push((index, first)),
                None => {
                    first_of.insert(key, index);
                    plan.claims.push(delivery);
                    plan.inserts.push(delivery);
                }
            }
        }
        plan
    }

    /// The outcome of every delivery, given the claims that lost to an earlier delivery (with
    /// the run that earlier delivery started).
    fn outcomes(&self, lost: &HashMap<RunId, RunId>) -> Vec<DeliveryOutcome> {
        let mut outcomes: Vec<DeliveryOutcome> = self
            .deliveries
            .iter()
            .map(|delivery| match lost.get(&delivery.run.id) {
                Some(&earlier) => DeliveryOutcome::Duplicate(earlier),
                None => DeliveryOutcome::Created,
            })
            .collect();
        for &(index, first) in &self.repeats {
            outcomes[index] = match outcomes[first] {
                DeliveryOutcome::Duplicate(run_id) => DeliveryOutcome::Duplicate(run_id),
                DeliveryOutcome::Created => {
                    DeliveryOutcome::Duplicate(self.deliveries[first].run.id)
                }
            };
        }
        outcomes
    }
}

/// The claim of delivery ids: a new id, or one whose window ended, takes the delivery's run.
fn claims_sql(style: Placeholders, rows: usize, returning: bool) -> String {
    format!(
        "INSERT INTO webhook_deliveries (webhook_id, delivery_id, run_id, expires_at_ms) VALUES {} \
         ON CONFLICT (webhook_id, delivery_id) DO UPDATE SET run_id = excluded.run_id, \
         expires_at_ms = excluded.expires_at_ms WHERE webhook_deliveries.expires_at_ms <= {}{}",
        placeholders(style, rows, 4, 1),
        parameter(style, rows * 4 + 1),
        if returning { " RETURNING run_id" } else { "" }
    )
}

/// Binds the claims of `$chunk` and the current time, in `claims_sql` order.
macro_rules! bind_claims {
    ($query:expr, $chunk:expr, $now_ms:expr) => {{
        let mut query = $query;
        for delivery in $chunk {
            query = query
                .bind(delivery.run.webhook_id.map(|id| id.to_string()))
                .bind(delivery.run.delivery_id.clone())
                .bind(delivery.run.id.to_string())
                .bind(delivery.dedup_until.map(to_ms));
        }
        query.bind($now_ms)
    }};
}

/// The three inserts of a chunk of runs: the run (its queued event is its first: seq 1), the
/// event, the payload.
fn insert_sql(style: Placeholders, rows: usize) -> [String; 3] {
    [
        format!(
            "INSERT INTO runs ({RUN_COLUMNS}, event_seq) VALUES {}",
            placeholders(style, rows, RUN_COLUMN_COUNT + 1, 1)
        ),
        format!(
            "INSERT INTO run_events (run_id, seq, attempt, origin, origin_seq, at_ms, kind, data) VALUES {}",
            placeholders(style, rows, 8, 1)
        ),
        format!(
            "INSERT INTO run_payloads (run_id, content_type, headers, query, body, body_bytes, truncated) VALUES {}",
            placeholders(style, rows, 7, 1)
        ),
    ]
}

fn parse_run_id(text: &str) -> StoreResult<RunId> {
    text.parse()
        .map_err(|err| StoreError::Corrupt(format!("delivery run id: {err}")))
}

/// The run an earlier delivery with this delivery's id started (`$executor`: a connection or
/// transaction).
macro_rules! earlier_run {
    ($executor:expr, $delivery:expr) => {{
        let delivery: &NewDelivery = $delivery;
        let (run_id,): (String,) = sqlx::query_as(
            "SELECT run_id FROM webhook_deliveries WHERE webhook_id = $1 AND delivery_id = $2",
        )
        .bind(delivery.run.webhook_id.map(|id| id.to_string()))
        .bind(delivery.run.delivery_id.clone())
        .fetch_one($executor)
        .await
        .map_err(classify)?;
        parse_run_id(&run_id)?
    }};
}

impl SqlStore {
    /// The body of `WebhookStore::record_deliveries`: plans the batch, then writes it the way
    /// of the store's dialect.
    pub(super) async fn record_delivery_batch(
        &self,
        deliveries: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<DeliveryOutcome>> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let plan = Plan::new(deliveries);
        match &self.pools {
            Pools::Sqlite { write, .. } => {
                Self::record_deliveries_sqlite(write, &plan, to_ms(now)).await
            }
            Pools::Postgres(pool) => {
                Self::record_deliveries_postgres(pool, &plan, to_ms(now)).await
            }
        }
    }

    /// SQLite: the whole batch in one call to SQLite's thread, so a delivery waits for one
    /// hand-over, not one per statement. Every delivery inserts its run; a claim that lost (the
    /// id was seen) has its run deleted again before the commit, and the runs that remain say
    /// which claims won.
    async fn record_deliveries_sqlite(
        write: &super::group_commit::Writer,
        plan: &Plan<'_>,
        now_ms: i64,
    ) -> StoreResult<Vec<DeliveryOutcome>> {
        let style = Placeholders::Anonymous;
        let mut sql = String::new();
        for chunk in plan.claims.chunks(ROWS_PER_INSERT) {
            sql.push_str(&claims_sql(style, chunk.len(), false));
            sql.push_str("; ");
        }
        for chunk in plan.inserts.chunks(ROWS_PER_INSERT) {
            for statement in insert_sql(style, chunk.len()) {
                sql.push_str(&statement);
                sql.push_str("; ");
            }
        }
        for chunk in plan.claims.chunks(ROWS_PER_INSERT) {
            // Events and payloads of a deleted run go with it (ON DELETE CASCADE).
            sql.push_str(&format!(
                "DELETE FROM runs WHERE id IN ({}) AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d \
                 WHERE d.webhook_id = runs.webhook_id AND d.delivery_id = runs.delivery_id AND d.run_id = runs.id); ",
                vec!["?"; chunk.len()].join(", ")
            ));
        }
        for chunk in plan.claims.chunks(ROWS_PER_INSERT) {
            sql.push_str(&format!(
                "SELECT id FROM runs WHERE id IN ({}); ",
                vec!["?"; chunk.len()].join(", ")
            ));
        }
        // One call to SQLite's thread for the whole write, its savepoint included.
        let sql = super::group_commit::enclose(&sql);
        let mut query = sqlx::query_as::<_, (String,)>(&sql);
        for chunk in plan.claims.chunks(ROWS_PER_INSERT) {
            query = bind_claims!(query, chunk, now_ms);
        }
        for chunk in plan.inserts.chunks(ROWS_PER_INSERT) {
            query = bind_payloads!(bind_events!(bind_runs!(query, chunk), chunk), chunk);
        }
        for _ in 0..2 {
            for delivery in &plan.claims {
                query = query.bind(delivery.run.id.to_string());
            }
        }
        // One write of the shared transaction: a failing statement stops the rest, and the
        // write's savepoint is rolled back.
        let mut write = write.begin_enclosed().await.map_err(classify)?;
        let result = async {
            let conn = write.connection();
            let kept = query.fetch_all(&mut *conn).await.map_err(classify)?;
            let kept: std::collections::HashSet<String> =
                kept.into_iter().map(|(id,)| id).collect();
            let mut lost = HashMap::new();
            for delivery in &plan.claims {
                if !kept.contains(&delivery.run.id.to_string()) {
                    lost.insert(delivery.run.id, earlier_run!(&mut *conn, delivery));
                }
            }
            Ok(plan.outcomes(&lost))
        }
        .await;
        write.finish(result).await
    }

    /// PostgreSQL: claims first (they say which deliveries are new), then the new runs.
    async fn record_deliveries_postgres(
        pool: &sqlx::PgPool,
        plan: &Plan<'_>,
        now_ms: i64,
    ) -> StoreResult<Vec<DeliveryOutcome>> {
        let style = Placeholders::Numbered;
        let mut tx = pool.begin().await.map_err(classify)?;
        let mut lost = HashMap::new();
        for chunk in plan.claims.chunks(ROWS_PER_INSERT) {
            let sql = claims_sql(style, chunk.len(), true);
            let claimed: Vec<(String,)> = bind_claims!(sqlx::query_as(&sql), chunk, now_ms)
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?;
            let claimed: std::collections::HashSet<String> =
                claimed.into_iter().map(|(id,)| id).collect();
            for delivery in chunk {
                if !claimed.contains(&delivery.run.id.to_string()) {
                    lost.insert(delivery.run.id, earlier_run!(&mut *tx, delivery));
                }
            }
        }
        let created: Vec<&NewDelivery> = plan
            .inserts
            .iter()
            .copied()
            .filter(|delivery| !lost.contains_key(&delivery.run.id))
            .collect();
        for chunk in created.chunks(ROWS_PER_INSERT) {
            let [runs, events, payloads] = insert_sql(style, chunk.len());
            bind_runs!(sqlx::query(&runs), chunk)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            bind_events!(sqlx::query(&events), chunk)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            bind_payloads!(sqlx::query(&payloads), chunk)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)?;
        Ok(plan.outcomes(&lost))
    }
}

/// Columns in `RUN_COLUMNS`.
const RUN_COLUMN_COUNT: usize = 31;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_every_value() {
        use Placeholders::*;
        assert_eq!(
            placeholders(Numbered, 2, 3, 1),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(placeholders(Numbered, 1, 2, 5), "($5, $6)");
        assert_eq!(placeholders(Anonymous, 2, 2, 5), "(?, ?), (?, ?)");
        assert_eq!(
            RUN_COLUMNS.split(',').count(),
            RUN_COLUMN_COUNT,
            "RUN_COLUMN_COUNT must follow RUN_COLUMNS"
        );
    }
}
