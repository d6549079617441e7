//! Settings in the SQL store: the [`SettingsStore`] key-value reads and writes.

use async_trait::async_trait;

use super::{classify, Pools, SqlStore};
use crate::store::{SettingsStore, StoreResult};

#[async_trait]
impl SettingsStore for SqlStore {
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

    async fn replace_setting(&self, key: &str, expected: &str, value: &str) -> StoreResult<bool> {
        let replaced = on_write!(self, pool => {
            sqlx::query("UPDATE settings SET value = $3 WHERE key = $1 AND value = $2")
                .bind(key)
                .bind(expected)
                .bind(value)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(replaced == 1)
    }
}
