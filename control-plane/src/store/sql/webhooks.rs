//! Webhooks in the SQL store: their columns, how a webhook is bound to a statement, and the
//! [`WebhookStore`] writes and queries. The batched write of deliveries is in `deliveries`.

use async_trait::async_trait;
use autopilot_proto::{JobId, RunId, WebhookId};
use chrono::{DateTime, Utc};

use super::{classify, placeholders, Placeholders, Pools, SqlStore};
use crate::domain::webhook::{DeliveryOutcome, NewDelivery, StoredPayload, Webhook};
use crate::store::rows::{to_json, to_ms, PayloadRow, WebhookRow};
use crate::store::{StoreError, StoreResult, WebhookStore};

const WEBHOOK_COLUMNS: &str =
    "id, name, enabled, token_hash, previous_token_hash, previous_token_expires_at_ms, \
    job_id, config, signing_secret, created_at_ms, updated_at_ms";

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
        self.record_delivery_batch(deliveries, now).await
    }

    async fn get_payload(&self, run_id: RunId) -> StoreResult<Option<StoredPayload>> {
        let sql = "SELECT run_id, content_type, headers, query, body, body_bytes, truncated FROM run_payloads \
                   WHERE run_id = $1";
        let row = on_read!(self, pool => sqlx::query_as::<_, PayloadRow>(sql).bind(run_id.to_string()).fetch_optional(pool).await)
            .map_err(classify)?;
        row.map(StoredPayload::try_from).transpose()
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
