//! Webhooks in the SQL store, and the batched write of deliveries.

use std::collections::HashMap;

use async_trait::async_trait;
use autopilot_proto::{JobId, RunId, WebhookId};
use chrono::{DateTime, Utc};

use super::{classify, Pools, SqlStore, RUN_COLUMNS};
use crate::domain::webhook::{DeliveryOutcome, NewDelivery, PreviousToken, StoredPayload, Webhook};
use crate::domain::Run;
use crate::store::rows::{clamp_i64, from_ms, to_json, to_ms};
use crate::store::{StoreError, StoreResult, WebhookStore};

const WEBHOOK_COLUMNS: &str =
    "id, name, enabled, token_hash, previous_token_hash, previous_token_expires_at_ms, \
    job_id, config, signing_secret, created_at_ms, updated_at_ms";

/// Rows per multi-row insert: well under SQLite's 32766 bound parameters at 30 columns.
const ROWS_PER_INSERT: usize = 500;

#[derive(sqlx::FromRow)]
struct WebhookRow {
    id: String,
    name: String,
    enabled: bool,
    token_hash: String,
    previous_token_hash: Option<String>,
    previous_token_expires_at_ms: Option<i64>,
    job_id: Option<String>,
    config: String,
    signing_secret: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl TryFrom<WebhookRow> for Webhook {
    type Error = StoreError;

    fn try_from(row: WebhookRow) -> Result<Self, Self::Error> {
        let corrupt = |what: &str, err: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("webhook {}: {what}: {err}", row.id))
        };
        let previous_token = match (
            row.previous_token_hash.clone(),
            row.previous_token_expires_at_ms,
        ) {
            (Some(token_hash), Some(ms)) => Some(PreviousToken {
                token_hash,
                expires_at: from_ms(ms)?,
            }),
            _ => None,
        };
        Ok(Webhook {
            id: row.id.parse().map_err(|err| corrupt("id", &err))?,
            name: row.name.clone(),
            enabled: row.enabled,
            token_hash: row.token_hash.clone(),
            previous_token,
            job_id: row
                .job_id
                .as_deref()
                .map(str::parse::<JobId>)
                .transpose()
                .map_err(|err| corrupt("job id", &err))?,
            config: serde_json::from_str(&row.config).map_err(|err| corrupt("config", &err))?,
            signing_secret: row.signing_secret.clone(),
            created_at: from_ms(row.created_at_ms)?,
            updated_at: from_ms(row.updated_at_ms)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct PayloadRow {
    run_id: String,
    content_type: String,
    headers: String,
    query: String,
    body: Vec<u8>,
    body_bytes: i64,
    truncated: bool,
}

impl TryFrom<PayloadRow> for StoredPayload {
    type Error = StoreError;

    fn try_from(row: PayloadRow) -> Result<Self, Self::Error> {
        let json = |what: &str, text: &str| {
            serde_json::from_str::<Vec<(String, String)>>(text)
                .map_err(|err| StoreError::Corrupt(format!("payload {what}: {err}")))
        };
        Ok(StoredPayload {
            run_id: row
                .run_id
                .parse()
                .map_err(|err| StoreError::Corrupt(format!("payload run id: {err}")))?,
            content_type: row.content_type,
            headers: json("headers", &row.headers)?,
            query: json("query", &row.query)?,
            body: row.body,
            body_bytes: u64::try_from(row.body_bytes).unwrap_or(0),
            truncated: row.truncated,
        })
    }
}

/// How bound values are written in a statement.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Placeholders {
    /// `$1, $2, …` (PostgreSQL).
    Numbered,
    /// `?, ?, …`, bound in order. SQLite looks numbered parameters up by name one by one (a
    /// linear search each), which makes a statement with thousands of them quadratic.
    Anonymous,
}

/// The `index`th bound value (from 1).
fn parameter(style: Placeholders, index: usize) -> String {
    match style {
        Placeholders::Anonymous => "?".to_owned(),
        Placeholders::Numbered => format!("${index}"),
    }
}

/// `($1, $2, …), ($n, …)` (or `(?, ?, …), …`) for `rows` rows of `columns` values, numbered
/// from `$first`.
fn placeholders(style: Placeholders, rows: usize, columns: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for column in 0..columns {
            if column > 0 {
                out.push_str(", ");
            }
            out.push_str(&parameter(style, first + row * columns + column));
        }
        out.push(')');
    }
    out
}

fn webhook_conflict(err: sqlx::Error, webhook: &Webhook) -> StoreError {
    match classify(err) {
        StoreError::Conflict(_) => {
            StoreError::Conflict(format!("a webhook named `{}` already exists", webhook.name))
        }
        other => other,
    }
}

/// Binds a webhook's columns in `WEBHOOK_COLUMNS` order.
macro_rules! bind_webhook {
    ($query:expr, $webhook:expr) => {{
        let webhook: &Webhook = $webhook;
        $query
            .bind(webhook.id.to_string())
            .bind(webhook.name.clone())
            .bind(webhook.enabled)
            .bind(webhook.token_hash.clone())
            .bind(
                webhook
                    .previous_token
                    .as_ref()
                    .map(|p| p.token_hash.clone()),
            )
            .bind(webhook.previous_token.as_ref().map(|p| to_ms(p.expires_at)))
            .bind(webhook.job_id.map(|id| id.to_string()))
            .bind(to_json(&webhook.config))
            .bind(webhook.signing_secret.clone())
            .bind(to_ms(webhook.created_at))
            .bind(to_ms(webhook.updated_at))
    }};
}

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
    /// SQLite: the whole batch in one call to SQLite's thread, so a delivery waits for one
    /// hand-over, not one per statement. Every delivery inserts its run; a claim that lost (the
    /// id was seen) has its run deleted again before the commit, and the runs that remain say
    /// which claims won.
    async fn record_deliveries_sqlite(
        write: &sqlx::SqlitePool,
        plan: &Plan<'_>,
        now_ms: i64,
    ) -> StoreResult<Vec<DeliveryOutcome>> {
        let style = Placeholders::Anonymous;
        let mut sql = String::from("BEGIN IMMEDIATE; ");
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
        sql.push_str("COMMIT");
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
        let mut conn = write.acquire().await.map_err(classify)?;
        let kept = match query.fetch_all(&mut *conn).await {
            Ok(kept) => kept,
            Err(err) => {
                // The statements stop at the failing one, inside the open transaction.
                if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                    tracing::debug!(error = %rollback, "rollback after a failed delivery batch");
                }
                return Err(classify(err));
            }
        };
        let kept: std::collections::HashSet<String> = kept.into_iter().map(|(id,)| id).collect();
        let mut lost = HashMap::new();
        for delivery in &plan.claims {
            if !kept.contains(&delivery.run.id.to_string()) {
                lost.insert(delivery.run.id, earlier_run!(&mut *conn, delivery));
            }
        }
        Ok(plan.outcomes(&lost))
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
const RUN_COLUMN_COUNT: usize = 29;

#[async_trait]
impl WebhookStore for SqlStore {
    async fn insert_webhook(&self, webhook: &Webhook) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES {}",
            placeholders(Placeholders::Numbered, 1, 11, 1)
        );
        on_write!(self, pool => bind_webhook!(sqlx::query(&sql), webhook).execute(pool).await.map(|done| done.rows_affected()))
            .map_err(|err| webhook_conflict(err, webhook))?;
        Ok(())
    }

    async fn update_webhook(&self, webhook: &Webhook) -> StoreResult<()> {
        let sql = "UPDATE webhooks SET id = $1, name = $2, enabled = $3, token_hash = $4, previous_token_hash = $5, \
                   previous_token_expires_at_ms = $6, job_id = $7, config = $8, signing_secret = $9, \
                   created_at_ms = $10, updated_at_ms = $11 WHERE id = $1";
        let updated = on_write!(self, pool => bind_webhook!(sqlx::query(sql), webhook).execute(pool).await.map(|done| done.rows_affected()))
            .map_err(|err| webhook_conflict(err, webhook))?;
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn get_webhook(&self, id: WebhookId) -> StoreResult<Option<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1");
        let row = on_read!(self, pool => sqlx::query_as::<_, WebhookRow>(&sql).bind(id.to_string()).fetch_optional(pool).await)
            .map_err(classify)?;
        row.map(Webhook::try_from).transpose()
    }

    async fn get_webhook_by_name(&self, name: &str) -> StoreResult<Option<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE name = $1");
        let row = on_read!(self, pool => sqlx::query_as::<_, WebhookRow>(&sql).bind(name).fetch_optional(pool).await)
            .map_err(classify)?;
        row.map(Webhook::try_from).transpose()
    }

    async fn webhook_by_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Webhook>> {
        let sql = format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE token_hash = $1 \
             OR (previous_token_hash = $1 AND previous_token_expires_at_ms > $2) LIMIT 1"
        );
        let row = on_read!(self, pool => {
            sqlx::query_as::<_, WebhookRow>(&sql).bind(token_hash).bind(to_ms(now)).fetch_optional(pool).await
        })
        .map_err(classify)?;
        row.map(Webhook::try_from).transpose()
    }

    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY name");
        let rows =
            on_read!(self, pool => sqlx::query_as::<_, WebhookRow>(&sql).fetch_all(pool).await)
                .map_err(classify)?;
        rows.into_iter().map(Webhook::try_from).collect()
    }

    async fn webhooks_of_job(&self, job_id: JobId) -> StoreResult<Vec<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE job_id = $1 ORDER BY name");
        let rows = on_read!(self, pool => sqlx::query_as::<_, WebhookRow>(&sql).bind(job_id.to_string()).fetch_all(pool).await)
            .map_err(classify)?;
        rows.into_iter().map(Webhook::try_from).collect()
    }

    async fn delete_webhook(&self, id: WebhookId) -> StoreResult<bool> {
        let deleted = on_write!(self, pool => {
            sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(id.to_string()).execute(pool).await.map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(deleted > 0)
    }

    async fn record_deliveries(
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

    async fn get_payload(&self, run_id: RunId) -> StoreResult<Option<StoredPayload>> {
        let sql = "SELECT run_id, content_type, headers, query, body, body_bytes, truncated FROM run_payloads \
                   WHERE run_id = $1";
        let row = on_read!(self, pool => sqlx::query_as::<_, PayloadRow>(sql).bind(run_id.to_string()).fetch_optional(pool).await)
            .map_err(classify)?;
        row.map(StoredPayload::try_from).transpose()
    }

    async fn count_queued_runs(&self) -> StoreResult<u64> {
        let (count,): (i64,) = on_read!(self, pool => {
            sqlx::query_as("SELECT COUNT(*) FROM runs WHERE status = 'queued'").fetch_one(pool).await
        })
        .map_err(classify)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn purge_expired_deliveries(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let deleted = on_write!(self, pool => {
            sqlx::query("DELETE FROM webhook_deliveries WHERE expires_at_ms < $1")
                .bind(to_ms(now))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(deleted)
    }
}

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
            super::super::RUN_COLUMNS.split(',').count(),
            RUN_COLUMN_COUNT,
            "RUN_COLUMN_COUNT must follow RUN_COLUMNS"
        );
    }
}
