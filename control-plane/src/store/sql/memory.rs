//! Jobs' memory in the SQL store: the [`MemoryStore`] reads and writes. A put that would take a
//! full scope past its limit is one statement that writes nothing, so two runs writing at once
//! cannot both take the last place.

use async_trait::async_trait;

use super::{classify, Pools, SqlStore};
use crate::domain::memory::{MemoryFilter, MemoryItem, MemoryScope};
use crate::store::rows::{from_ms, parse, to_ms};
use crate::store::{MemoryStore, StoreResult};

type ItemRow = (String, Option<String>, i64, i64, Option<String>);

fn item_from_row((key, value, bytes, updated, run_id): ItemRow) -> StoreResult<MemoryItem> {
    Ok(MemoryItem {
        key,
        value,
        bytes: u64::try_from(bytes).unwrap_or_default(),
        updated_at: from_ms(updated)?,
        run_id: run_id
            .as_deref()
            .map(|id| parse("run id", id))
            .transpose()?,
    })
}

/// `text` as a `LIKE` pattern matching itself anywhere, with `\` as the escape.
fn containing(text: &str) -> String {
    let mut pattern = String::from("%");
    for c in text.to_ascii_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

#[async_trait]
impl MemoryStore for SqlStore {
    async fn get_memory(&self, scope: &MemoryScope, key: &str) -> StoreResult<Option<MemoryItem>> {
        let scope = scope.key();
        let row: Option<ItemRow> = on_read!(self, pool => {
            sqlx::query_as(
                "SELECT key, value, bytes, updated_at_ms, run_id FROM memories \
                 WHERE scope = $1 AND key = $2",
            )
            .bind(&scope)
            .bind(key)
            .fetch_optional(pool)
            .await
        })
        .map_err(classify)?;
        row.map(item_from_row).transpose()
    }

    async fn put_memory(
        &self,
        scope: &MemoryScope,
        item: &MemoryItem,
        max_entries: u32,
    ) -> StoreResult<bool> {
        let scope = scope.key();
        let written = on_write!(self, pool => {
            sqlx::query(
                "INSERT INTO memories (scope, key, value, bytes, updated_at_ms, run_id) \
                 SELECT $1, $2, $3, $4, $5, $6 \
                 WHERE EXISTS (SELECT 1 FROM memories WHERE scope = $1 AND key = $2) \
                    OR (SELECT count(*) FROM memories WHERE scope = $1) < $7 \
                 ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, \
                 bytes = excluded.bytes, updated_at_ms = excluded.updated_at_ms, \
                 run_id = excluded.run_id",
            )
            .bind(&scope)
            .bind(&item.key)
            .bind(item.value.as_deref().unwrap_or_default())
            .bind(i64::try_from(item.bytes).unwrap_or(i64::MAX))
            .bind(to_ms(item.updated_at))
            .bind(item.run_id.map(|id| id.to_string()))
            .bind(i64::from(max_entries))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(written > 0)
    }

    async fn delete_memory(&self, scope: &MemoryScope, key: &str) -> StoreResult<bool> {
        let scope = scope.key();
        let deleted = on_write!(self, pool => {
            sqlx::query("DELETE FROM memories WHERE scope = $1 AND key = $2")
                .bind(&scope)
                .bind(key)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(deleted > 0)
    }

    async fn list_memory(
        &self,
        scope: &MemoryScope,
        filter: &MemoryFilter,
        limit: u32,
    ) -> StoreResult<Vec<MemoryItem>> {
        let scope = scope.key();
        let limit = i64::from(limit);
        let rows: Vec<ItemRow> = match filter {
            // `substr` counts characters in both dialects (PostgreSQL's takes an `integer`); a
            // `LIKE` prefix would ignore case in SQLite and not in PostgreSQL.
            MemoryFilter::Prefix(prefix) => on_read!(self, pool => {
                sqlx::query_as(
                    "SELECT key, NULL, bytes, updated_at_ms, run_id FROM memories \
                     WHERE scope = $1 AND substr(key, 1, $2) = $3 \
                     ORDER BY updated_at_ms DESC, key LIMIT $4",
                )
                .bind(&scope)
                .bind(i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX))
                .bind(prefix)
                .bind(limit)
                .fetch_all(pool)
                .await
            }),
            MemoryFilter::Containing(text) => on_read!(self, pool => {
                sqlx::query_as(
                    "SELECT key, value, bytes, updated_at_ms, run_id FROM memories \
                     WHERE scope = $1 AND (lower(key) LIKE $2 ESCAPE '\\' \
                                           OR lower(value) LIKE $2 ESCAPE '\\') \
                     ORDER BY updated_at_ms DESC, key LIMIT $3",
                )
                .bind(&scope)
                .bind(containing(text))
                .bind(limit)
                .fetch_all(pool)
                .await
            }),
        }
        .map_err(classify)?;
        rows.into_iter().map(item_from_row).collect()
    }

    async fn count_memory(&self, scope: &MemoryScope) -> StoreResult<u64> {
        let scope = scope.key();
        let (n,): (i64,) = on_read!(self, pool => {
            sqlx::query_as("SELECT count(*) FROM memories WHERE scope = $1")
                .bind(&scope)
                .fetch_one(pool)
                .await
        })
        .map_err(classify)?;
        Ok(count(n))
    }

    async fn clear_memory(&self, scope: &MemoryScope) -> StoreResult<u64> {
        let scope = scope.key();
        let deleted = on_write!(self, pool => {
            sqlx::query("DELETE FROM memories WHERE scope = $1")
                .bind(&scope)
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
    #[test]
    fn a_search_pattern_escapes_like_wildcards_and_ignores_case() {
        assert_eq!(super::containing("Sent 50%_a\\b"), "%sent 50\\%\\_a\\\\b%");
    }
}
