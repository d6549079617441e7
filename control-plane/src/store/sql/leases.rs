//! Leases in the SQL store: the [`LeaseStore`] upsert that hands out fencing tokens, and the
//! release.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{classify, Pools, SqlStore};
use crate::store::rows::to_ms;
use crate::store::{LeaseStore, StoreResult};

#[async_trait]
impl LeaseStore for SqlStore {
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
}
