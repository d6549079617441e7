//! Skipped fires, fires made once by key (chains, hook events) and spend in the SQL store: the [`RulesStore`].

use async_trait::async_trait;
use autopilot_proto::{JobId, NewRunEvent, RunId, Trigger};
use chrono::{DateTime, Utc};

use super::events::{append_events_in, bind_events_from, insert_events_sql};
use super::runs::{bind_run, INSERT_RUN, RUN_COLUMNS};
use super::{classify, rows_into, Pools, SqlStore};
use crate::domain::rules::{HookToken, SkippedFire};
use crate::domain::Run;
use crate::store::rows::{clamp_i64, from_ms, parse, to_json, to_ms, RunRow};
use crate::store::StoreError;
use crate::store::{RulesStore, StoreResult};

// Named only by the code `append_events_in!` expands to.
use super::events::{EVENTS_PER_INSERT, RESERVE_EVENT_SEQS};
use std::collections::HashMap;

type SkipRow = (String, i64, i64, i64, String, String);

#[async_trait]
impl RulesStore for SqlStore {
    async fn record_skipped_fire(
        &self,
        job_id: JobId,
        trigger: Trigger,
        reason: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let job = job_id.to_string();
        in_write_tx!(self, tx => {
            let last: Option<(i64, String, String)> = sqlx::query_as(
                "SELECT first_at_ms, trigger, reason FROM skipped_fires WHERE job_id = $1 \
                 ORDER BY first_at_ms DESC LIMIT 1",
            )
            .bind(&job)
            .fetch_optional(&mut *tx)
            .await
            .map_err(classify)?;
            match last {
                Some((first_at, last_trigger, last_reason))
                    if last_trigger == trigger.as_str() && last_reason == reason =>
                {
                    sqlx::query(
                        "UPDATE skipped_fires SET last_at_ms = $3, fires = fires + 1 \
                         WHERE job_id = $1 AND first_at_ms = $2",
                    )
                    .bind(&job)
                    .bind(first_at)
                    .bind(to_ms(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                }
                last => {
                    // Two records never share a start: one a millisecond later if need be.
                    let first_at = last.map_or(to_ms(at), |(previous, _, _)| to_ms(at).max(previous + 1));
                    sqlx::query(
                        "INSERT INTO skipped_fires (job_id, first_at_ms, last_at_ms, fires, trigger, reason) \
                         VALUES ($1, $2, $3, 1, $4, $5)",
                    )
                    .bind(&job)
                    .bind(first_at)
                    .bind(to_ms(at))
                    .bind(trigger.as_str())
                    .bind(reason)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                }
            }
        });
        Ok(())
    }

    async fn skipped_fires(&self, job_id: JobId, limit: u32) -> StoreResult<Vec<SkippedFire>> {
        let rows: Vec<SkipRow> = on_read!(self, pool => {
            sqlx::query_as(
                "SELECT job_id, first_at_ms, last_at_ms, fires, trigger, reason FROM skipped_fires \
                 WHERE job_id = $1 ORDER BY first_at_ms DESC LIMIT $2",
            )
            .bind(job_id.to_string())
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })
        .map_err(classify)?;
        rows.into_iter()
            .map(|(job, first_at, last_at, fires, trigger, reason)| {
                Ok(SkippedFire {
                    job_id: parse("job id", &job)?,
                    trigger: parse("trigger", &trigger)?,
                    reason,
                    first_at: from_ms(first_at)?,
                    last_at: from_ms(last_at)?,
                    fires: u64::try_from(fires).unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn record_keyed_fire(
        &self,
        job_id: JobId,
        key: &str,
        run: Option<(&Run, &[NewRunEvent])>,
    ) -> StoreResult<bool> {
        let run_id: Option<RunId> = run.map(|(run, _)| run.id);
        let made = in_write_tx!(self, tx => {
            let inserted = sqlx::query(
                "INSERT INTO fire_keys (job_id, fire_key, run_id, created_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (job_id, fire_key) DO NOTHING",
            )
            .bind(job_id.to_string())
            .bind(key)
            .bind(run_id.map(|id| id.to_string()))
            .bind(to_ms(Utc::now()))
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
            if inserted == 1 {
                if let Some((run, events)) = run {
                    bind_run!(sqlx::query(INSERT_RUN), run)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                    append_events_in!(tx, events);
                }
            }
            inserted == 1
        });
        Ok(made)
    }

    async fn runs_finished_after(&self, after: DateTime<Utc>, limit: u32) -> StoreResult<Vec<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE finished_at_ms IS NOT NULL AND finished_at_ms > $1 \
             ORDER BY finished_at_ms LIMIT $2"
        );
        let rows = on_read!(self, pool => {
            sqlx::query_as::<_, RunRow>(&sql)
                .bind(to_ms(after))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map_err(classify)?;
        rows_into(rows)
    }

    async fn job_spend_since(
        &self,
        job_id: Option<JobId>,
        since: DateTime<Utc>,
    ) -> StoreResult<f64> {
        let (spent,): (Option<f64>,) = on_read!(self, pool => {
            match job_id {
                // Through the (job, id) index: ids are ordered by creation time.
                Some(job) => sqlx::query_as("SELECT SUM(cost_usd) FROM runs WHERE job_id = $1 AND id >= $2 \
                     AND (billing IS NULL OR billing <> 'subscription')")
                    .bind(job.to_string())
                    .bind(RunId::first_at(since).to_string())
                    .fetch_one(pool)
                    .await,
                None => sqlx::query_as("SELECT SUM(cost_usd) FROM runs WHERE created_at_ms >= $1 \
                     AND (billing IS NULL OR billing <> 'subscription')")
                    .bind(to_ms(since))
                    .fetch_one(pool)
                    .await,
            }
        })
        .map_err(classify)?;
        Ok(spent.unwrap_or_default())
    }

    async fn insert_hook_token(&self, token: &HookToken) -> StoreResult<()> {
        on_write!(self, pool => {
            sqlx::query("INSERT INTO hook_tokens (name, token_hash, created_at_ms) VALUES ($1, $2, $3)")
                .bind(&token.name)
                .bind(&token.token_hash)
                .bind(to_ms(token.created_at))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(|err| match classify(err) {
            StoreError::Conflict(_) => {
                StoreError::Conflict(format!("a hook token named `{}` already exists", token.name))
            }
            other => other,
        })?;
        Ok(())
    }

    async fn hook_token_by_hash(&self, token_hash: &str) -> StoreResult<Option<HookToken>> {
        let row: Option<(String, String, i64)> = on_read!(self, pool => {
            sqlx::query_as("SELECT name, token_hash, created_at_ms FROM hook_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(pool)
                .await
        })
        .map_err(classify)?;
        row.map(hook_token).transpose()
    }

    async fn list_hook_tokens(&self) -> StoreResult<Vec<HookToken>> {
        let rows: Vec<(String, String, i64)> = on_read!(self, pool => {
            sqlx::query_as("SELECT name, token_hash, created_at_ms FROM hook_tokens ORDER BY name")
                .fetch_all(pool)
                .await
        })
        .map_err(classify)?;
        rows.into_iter().map(hook_token).collect()
    }

    async fn delete_hook_token(&self, name: &str) -> StoreResult<bool> {
        let deleted = on_write!(self, pool => {
            sqlx::query("DELETE FROM hook_tokens WHERE name = $1")
                .bind(name)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(deleted > 0)
    }
}

fn hook_token((name, token_hash, created_at): (String, String, i64)) -> StoreResult<HookToken> {
    Ok(HookToken {
        name,
        token_hash,
        created_at: from_ms(created_at)?,
    })
}
