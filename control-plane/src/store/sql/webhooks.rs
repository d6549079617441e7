//! Webhooks in the SQL store, and the batched write of deliveries.

use std::collections::HashMap;

use async_trait::async_trait;
use autopilot_proto::{JobId, RunId, WebhookId};
use chrono::{DateTime, Utc};
use sqlx::Connection;

use super::{classify, Pools, SqlStore, RUN_COLUMNS};
use crate::model::Run;
use crate::store::rows::{clamp_i64, from_ms, to_json, to_ms};
use crate::store::{StoreError, StoreResult, WebhookStore};
use crate::webhooks::model::{DeliveryOutcome, NewDelivery, PreviousToken, StoredPayload, Webhook};

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

/// `($1, $2, …), ($n, …)` for `rows` rows of `columns` values, numbered from `$first`.
fn placeholders(rows: usize, columns: usize, first: usize) -> String {
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
            out.push('$');
            out.push_str(&(first + row * columns + column).to_string());
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

/// Records `$deliveries` in the open transaction `$tx`; evaluates to one outcome per delivery.
/// A delivery id seen within its window (in the store, or earlier in the same batch) creates
/// nothing and answers with the first run's id.
macro_rules! record_deliveries_in {
    ($tx:ident, $deliveries:expr, $now:expr) => {{
        let deliveries: &[NewDelivery] = $deliveries;
        let now_ms = to_ms($now);
        let mut outcomes: Vec<Option<DeliveryOutcome>> = vec![None; deliveries.len()];
        // Within the batch, a repeated delivery id follows its first occurrence.
        let mut first_of: HashMap<(WebhookId, &str), usize> = HashMap::new();
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        let mut claims: Vec<usize> = Vec::new();
        for (index, delivery) in deliveries.iter().enumerate() {
            let key = match (&delivery.run.webhook_id, &delivery.run.delivery_id, delivery.dedup_until) {
                (Some(webhook_id), Some(delivery_id), Some(_)) => (*webhook_id, delivery_id.as_str()),
                _ => {
                    outcomes[index] = Some(DeliveryOutcome::Created);
                    continue;
                }
            };
            match first_of.get(&key) {
                Some(&first) => repeats.push((index, first)),
                None => {
                    first_of.insert(key, index);
                    claims.push(index);
                }
            }
        }
        for chunk in claims.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO webhook_deliveries (webhook_id, delivery_id, run_id, expires_at_ms) VALUES {} \
                 ON CONFLICT (webhook_id, delivery_id) DO UPDATE SET run_id = excluded.run_id, \
                 expires_at_ms = excluded.expires_at_ms WHERE webhook_deliveries.expires_at_ms <= ${} \
                 RETURNING run_id",
                placeholders(chunk.len(), 4, 1),
                chunk.len() * 4 + 1
            );
            let mut query = sqlx::query_as::<_, (String,)>(&sql);
            for &index in chunk {
                let delivery = &deliveries[index];
                query = query
                    .bind(delivery.run.webhook_id.map(|id| id.to_string()))
                    .bind(delivery.run.delivery_id.clone())
                    .bind(delivery.run.id.to_string())
                    .bind(delivery.dedup_until.map(to_ms));
            }
            let claimed: Vec<(String,)> = query.bind(now_ms).fetch_all(&mut *$tx).await.map_err(classify)?;
            let claimed: std::collections::HashSet<String> = claimed.into_iter().map(|(id,)| id).collect();
            for &index in chunk {
                let delivery = &deliveries[index];
                if claimed.contains(&delivery.run.id.to_string()) {
                    outcomes[index] = Some(DeliveryOutcome::Created);
                    continue;
                }
                let existing: (String,) = sqlx::query_as(
                    "SELECT run_id FROM webhook_deliveries WHERE webhook_id = $1 AND delivery_id = $2",
                )
                .bind(delivery.run.webhook_id.map(|id| id.to_string()))
                .bind(delivery.run.delivery_id.clone())
                .fetch_one(&mut *$tx)
                .await
                .map_err(classify)?;
                let run_id: RunId = existing
                    .0
                    .parse()
                    .map_err(|err| StoreError::Corrupt(format!("delivery run id: {err}")))?;
                outcomes[index] = Some(DeliveryOutcome::Duplicate(run_id));
            }
        }
        for (index, first) in repeats {
            outcomes[index] = Some(match outcomes[first] {
                Some(DeliveryOutcome::Duplicate(run_id)) => DeliveryOutcome::Duplicate(run_id),
                _ => DeliveryOutcome::Duplicate(deliveries[first].run.id),
            });
        }
        let created: Vec<&NewDelivery> = deliveries
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| **outcome == Some(DeliveryOutcome::Created))
            .map(|(delivery, _)| delivery)
            .collect();
        for chunk in created.chunks(ROWS_PER_INSERT) {
            // The queued event is the run's first: its sequence number is 1.
            let sql = format!(
                "INSERT INTO runs ({RUN_COLUMNS}, event_seq) VALUES {}",
                placeholders(chunk.len(), RUN_COLUMN_COUNT + 1, 1)
            );
            let mut query = sqlx::query(&sql);
            for delivery in chunk {
                query = bind_run!(query, &delivery.run).bind(1i64);
            }
            query.execute(&mut *$tx).await.map_err(classify)?;
            let sql = format!(
                "INSERT INTO run_events (run_id, seq, attempt, origin, origin_seq, at_ms, kind, data) VALUES {}",
                placeholders(chunk.len(), 8, 1)
            );
            let mut query = sqlx::query(&sql);
            for delivery in chunk {
                let event = &delivery.queued_event;
                query = query
                    .bind(event.run_id.to_string())
                    .bind(1i64)
                    .bind(i64::from(event.attempt))
                    .bind(event.origin.as_str())
                    .bind(clamp_i64(event.origin_seq))
                    .bind(to_ms(event.at))
                    .bind(event.kind.as_str())
                    .bind(event.data.to_string());
            }
            query.execute(&mut *$tx).await.map_err(classify)?;
            let sql = format!(
                "INSERT INTO run_payloads (run_id, content_type, headers, query, body, body_bytes, truncated) VALUES {}",
                placeholders(chunk.len(), 7, 1)
            );
            let mut query = sqlx::query(&sql);
            for delivery in chunk {
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
            query.execute(&mut *$tx).await.map_err(classify)?;
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(DeliveryOutcome::Created))
            .collect::<Vec<_>>()
    }};
}

/// Columns in `RUN_COLUMNS`.
const RUN_COLUMN_COUNT: usize = 29;

#[async_trait]
impl WebhookStore for SqlStore {
    async fn insert_webhook(&self, webhook: &Webhook) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES {}",
            placeholders(1, 11, 1)
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
        match &self.pools {
            Pools::Sqlite { write, .. } => {
                // Acknowledged deliveries must survive a power loss too, not only a crash: this
                // batch's commit waits for the WAL to reach the disk (one fsync for the batch).
                let mut conn = write.acquire().await.map_err(classify)?;
                sqlx::query("PRAGMA synchronous = FULL")
                    .execute(&mut *conn)
                    .await
                    .map_err(classify)?;
                let written: StoreResult<Vec<DeliveryOutcome>> = async {
                    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(classify)?;
                    let outcomes = record_deliveries_in!(tx, deliveries, now);
                    tx.commit().await.map_err(classify)?;
                    Ok(outcomes)
                }
                .await;
                if let Err(err) = sqlx::query("PRAGMA synchronous = NORMAL")
                    .execute(&mut *conn)
                    .await
                {
                    tracing::warn!(error = %err, "could not restore synchronous = NORMAL");
                }
                written
            }
            Pools::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(classify)?;
                let outcomes = record_deliveries_in!(tx, deliveries, now);
                tx.commit().await.map_err(classify)?;
                Ok(outcomes)
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
        assert_eq!(placeholders(2, 3, 1), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(1, 2, 5), "($5, $6)");
        assert_eq!(
            super::super::RUN_COLUMNS.split(',').count(),
            RUN_COLUMN_COUNT,
            "RUN_COLUMN_COUNT must follow RUN_COLUMNS"
        );
    }
}
