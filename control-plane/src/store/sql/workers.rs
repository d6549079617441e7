//! Workers in the SQL store: the [`WorkerStore`] record of what each worker last announced.

use async_trait::async_trait;
use autopilot_proto::WorkerStatus;
use chrono::{DateTime, Utc};

use super::{classify, Pools, SqlStore};
use crate::store::rows::{from_ms, to_json, to_ms};
use crate::store::{StoreError, StoreResult, WorkerStore};

#[async_trait]
impl WorkerStore for SqlStore {
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
                Ok((status, from_ms(seen_at_ms)?))
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
}
