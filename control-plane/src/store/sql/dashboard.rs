//! The dashboard's sessions and usage totals in the SQL store: the [`DashboardStore`].

use async_trait::async_trait;
use autopilot_proto::{RunId, RunStatus};
use chrono::{DateTime, Utc};

use super::runs::RUN_COLUMNS;
use super::{classify, rows_into, Pools, SqlStore};
use crate::domain::dashboard::{DashboardSession, UsageGroup, UsageTotals};
use crate::domain::{Run, RunFilter};
use crate::store::rows::{from_ms, to_ms, RunRow};
use crate::store::{DashboardStore, StoreResult};

type SessionRow = (String, String, i64, i64, i64);
type TotalsRow = (
    Option<String>,
    i64,
    Option<f64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

const MS_PER_DAY: i64 = 86_400_000;

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

fn totals_from_row(row: TotalsRow) -> UsageTotals {
    let (label, runs, cost, input, output, cache_read, cache_write) = row;
    UsageTotals {
        label: label.unwrap_or_default(),
        runs: count(runs),
        cost_usd: cost.unwrap_or_default(),
        input_tokens: count(input.unwrap_or_default()),
        output_tokens: count(output.unwrap_or_default()),
        cache_read_tokens: count(cache_read.unwrap_or_default()),
        cache_write_tokens: count(cache_write.unwrap_or_default()),
    }
}

/// The `WHERE` conditions of a run filter that counting by status keeps, with their binds.
fn filter_conditions(filter: &RunFilter) -> (String, Vec<String>) {
    let mut sql = String::from("1 = 1");
    let mut binds: Vec<String> = Vec::new();
    if let Some(job_id) = filter.job_id {
        binds.push(job_id.to_string());
        sql.push_str(&format!(" AND job_id = ${}", binds.len()));
    }
    if let Some(webhook_id) = filter.webhook_id {
        binds.push(webhook_id.to_string());
        sql.push_str(&format!(" AND webhook_id = ${}", binds.len()));
    }
    if let Some(trigger) = filter.trigger {
        binds.push(trigger.as_str().to_owned());
        sql.push_str(&format!(" AND trigger = ${}", binds.len()));
    }
    if let Some(since) = filter.since {
        binds.push(RunId::first_at(since).to_string());
        sql.push_str(&format!(" AND id >= ${}", binds.len()));
    }
    (sql, binds)
}

#[async_trait]
impl DashboardStore for SqlStore {
    async fn insert_session(&self, session: &DashboardSession) -> StoreResult<()> {
        on_write!(self, pool => {
            sqlx::query(
                "INSERT INTO dashboard_sessions (id_hash, csrf_token, created_at_ms, seen_at_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&session.id_hash)
            .bind(&session.csrf_token)
            .bind(to_ms(session.created_at))
            .bind(to_ms(session.seen_at))
            .bind(to_ms(session.expires_at))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn get_session(&self, id_hash: &str) -> StoreResult<Option<DashboardSession>> {
        let row: Option<SessionRow> = on_read!(self, pool => {
            sqlx::query_as(
                "SELECT id_hash, csrf_token, created_at_ms, seen_at_ms, expires_at_ms \
                 FROM dashboard_sessions WHERE id_hash = $1",
            )
            .bind(id_hash)
            .fetch_optional(pool)
            .await
        })
        .map_err(classify)?;
        row.map(|(id_hash, csrf_token, created, seen, expires)| {
            Ok(DashboardSession {
                id_hash,
                csrf_token,
                created_at: from_ms(created)?,
                seen_at: from_ms(seen)?,
                expires_at: from_ms(expires)?,
            })
        })
        .transpose()
    }

    async fn touch_session(
        &self,
        id_hash: &str,
        seen_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        on_write!(self, pool => {
            sqlx::query("UPDATE dashboard_sessions SET seen_at_ms = $2, expires_at_ms = $3 WHERE id_hash = $1")
                .bind(id_hash)
                .bind(to_ms(seen_at))
                .bind(to_ms(expires_at))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        on_write!(self, pool => {
            sqlx::query("DELETE FROM dashboard_sessions WHERE id_hash = $1")
                .bind(id_hash)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn purge_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let purged = on_write!(self, pool => {
            sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at_ms < $1")
                .bind(to_ms(now))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(purged)
    }

    async fn usage(
        &self,
        group: UsageGroup,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<UsageTotals>> {
        // The day is computed the same way in both dialects: whole days since the epoch, turned
        // into a date below. PostgreSQL sums integers as `numeric`: cast back.
        let (label, order) = match group {
            UsageGroup::Day => (
                format!("CAST(created_at_ms / {MS_PER_DAY} AS TEXT)"),
                "1 ASC",
            ),
            UsageGroup::Job => ("COALESCE(job_name, '')".to_owned(), "3 DESC, 1 ASC"),
            UsageGroup::Model => ("models".to_owned(), "3 DESC, 1 ASC"),
            UsageGroup::Billing => (
                "COALESCE(billing, CASE WHEN models = '[]' THEN 'none' ELSE 'api' END)".to_owned(),
                "3 DESC, 1 ASC",
            ),
        };
        let sql = format!(
            "SELECT {label}, COUNT(*), COALESCE(SUM(cost_usd), 0.0), CAST(SUM(input_tokens) AS BIGINT), \
             CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cache_read_tokens) AS BIGINT), \
             CAST(SUM(cache_write_tokens) AS BIGINT) FROM runs \
             WHERE created_at_ms >= $1 GROUP BY 1 ORDER BY {order}"
        );
        let rows: Vec<TotalsRow> = on_read!(self, pool => {
            sqlx::query_as(&sql).bind(to_ms(since)).fetch_all(pool).await
        })
        .map_err(classify)?;
        let mut totals: Vec<UsageTotals> = rows.into_iter().map(totals_from_row).collect();
        if group == UsageGroup::Day {
            for day in &mut totals {
                let days: i64 = day.label.parse().unwrap_or_default();
                day.label = from_ms(days * MS_PER_DAY)?.format("%Y-%m-%d").to_string();
            }
        }
        Ok(totals)
    }

    async fn spend_since(&self, since: DateTime<Utc>) -> StoreResult<f64> {
        let (spent,): (Option<f64>,) = on_read!(self, pool => {
            sqlx::query_as(
                "SELECT SUM(cost_usd) FROM runs WHERE created_at_ms >= $1 \
                 AND (billing IS NULL OR billing <> 'subscription')",
            )
                .bind(to_ms(since))
                .fetch_one(pool)
                .await
        })
        .map_err(classify)?;
        Ok(spent.unwrap_or_default())
    }

    async fn costliest_runs(&self, since: DateTime<Utc>, limit: u32) -> StoreResult<Vec<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE created_at_ms >= $1 AND cost_usd IS NOT NULL \
             ORDER BY cost_usd DESC, id DESC LIMIT $2"
        );
        let rows = on_read!(self, pool => {
            sqlx::query_as::<_, RunRow>(&sql)
                .bind(to_ms(since))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map_err(classify)?;
        rows_into(rows)
    }

    async fn count_runs_by_status(&self, filter: &RunFilter) -> StoreResult<Vec<(RunStatus, u64)>> {
        let (conditions, binds) = filter_conditions(filter);
        let sql = format!("SELECT status, COUNT(*) FROM runs WHERE {conditions} GROUP BY status");
        let rows: Vec<(String, i64)> = on_read!(self, pool => {
            let mut query = sqlx::query_as(&sql);
            for value in &binds {
                query = query.bind(value);
            }
            query.fetch_all(pool).await
        })
        .map_err(classify)?;
        let mut counts = Vec::new();
        for (status, n) in rows {
            let status = status
                .parse::<RunStatus>()
                .map_err(crate::store::StoreError::Corrupt)?;
            counts.push((status, count(n)));
        }
        counts.sort_by_key(|(status, _)| status.as_str());
        Ok(counts)
    }
}
