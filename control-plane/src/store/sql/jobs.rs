//! Jobs in the SQL store: their columns, how a job is bound to a statement, and the
//! [`JobStore`] queries.

use async_trait::async_trait;
use autopilot_proto::JobId;

use super::{classify, rows_into, Pools, SqlStore};
use crate::domain::Job;
use crate::store::rows::{clamp_i64, schedule_columns, to_json, to_ms, JobRow};
use crate::store::{JobStore, StoreError, StoreResult};

const JOB_COLUMNS: &str = "id, name, description, kind, prompt, schedule_kind, schedule_expr, timezone, enabled, \
    model, allowed_tools, disallowed_tools, max_turns, timeout_secs, max_cost_usd, misfire_policy, misfire_cap, \
    overlap_policy, retry_count, retry_backoff_secs, pool, fire_cursor_ms, missed_fires, overlap_skipped, \
    created_at_ms, updated_at_ms, retry_lost, sandbox, trace_content, tool_grants, tool_bundles, image, rules";

/// Binds a job's settings, in `INSERT INTO jobs` column order (without the counters).
macro_rules! bind_job {
    ($query:expr, $job:expr) => {{
        let job: &Job = $job;
        let settings = &job.settings;
        let (schedule_kind, schedule_expr) = schedule_columns(&job.schedule);
        $query
            .bind(job.id.to_string())
            .bind(job.name.clone())
            .bind(job.description.clone())
            .bind(job.kind.as_str())
            .bind(job.prompt.clone())
            .bind(schedule_kind)
            .bind(schedule_expr)
            .bind(job.timezone.clone())
            .bind(job.enabled)
            .bind(settings.model.clone())
            .bind(to_json(&settings.allowed_tools))
            .bind(to_json(&settings.disallowed_tools))
            .bind(settings.max_turns.map(i64::from))
            .bind(clamp_i64(settings.timeout_secs))
            .bind(settings.max_cost_usd)
            .bind(job.misfire_policy.as_str())
            .bind(i64::from(job.misfire_cap))
            .bind(job.overlap_policy.as_str())
            .bind(i64::from(settings.retry.count))
            .bind(clamp_i64(settings.retry.backoff_secs))
            .bind(settings.pool.clone())
            .bind(to_ms(job.fire_cursor))
            .bind(to_ms(job.created_at))
            .bind(to_ms(job.updated_at))
            .bind(settings.retry.lost)
            .bind(to_json(&settings.sandbox))
            .bind(settings.trace_content)
            .bind(to_json(&settings.servers))
            .bind(to_json(&settings.bundles))
            .bind(settings.image.clone())
            .bind(to_json(&job.rules))
    }};
}

/// The only unique column a job write can collide on is its name.
fn name_conflict(err: sqlx::Error, job: &Job) -> StoreError {
    match classify(err) {
        StoreError::Conflict(_) => {
            StoreError::Conflict(format!("a job named `{}` already exists", job.name))
        }
        other => other,
    }
}

#[async_trait]
impl JobStore for SqlStore {
    async fn insert_job(&self, job: &Job) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO jobs ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             $15, $16, $17, $18, $19, $20, $21, $22, $32, $33, $23, $24, $25, $26, $27, $28, $29, $30, $31)"
        );
        on_write!(self, pool => {
            bind_job!(sqlx::query(&sql), job)
                .bind(clamp_i64(job.missed_fires))
                .bind(clamp_i64(job.overlap_skipped))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(|err| name_conflict(err, job))?;
        Ok(())
    }

    async fn update_job(&self, job: &Job) -> StoreResult<()> {
        let sql = "UPDATE jobs SET name = $2, description = $3, kind = $4, prompt = $5, schedule_kind = $6, \
             schedule_expr = $7, timezone = $8, enabled = $9, model = $10, allowed_tools = $11, disallowed_tools = $12, \
             max_turns = $13, timeout_secs = $14, max_cost_usd = $15, misfire_policy = $16, misfire_cap = $17, \
             overlap_policy = $18, retry_count = $19, retry_backoff_secs = $20, pool = $21, fire_cursor_ms = $22, \
             created_at_ms = $23, updated_at_ms = $24, retry_lost = $25, sandbox = $26, trace_content = $27, tool_grants = $28, tool_bundles = $29, image = $30, rules = $31 WHERE id = $1";
        let result = on_write!(self, pool => bind_job!(sqlx::query(sql), job).execute(pool).await.map(|done| done.rows_affected()))
            .map_err(|err| name_conflict(err, job))?;
        if result == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn update_job_rules(
        &self,
        id: JobId,
        rules: &crate::domain::rules::JobRules,
    ) -> StoreResult<()> {
        let updated = on_write!(self, pool => {
            sqlx::query("UPDATE jobs SET rules = $2 WHERE id = $1")
                .bind(id.to_string())
                .bind(to_json(rules))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        if updated == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn get_job(&self, id: JobId) -> StoreResult<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = on_read!(self, pool => sqlx::query_as::<_, JobRow>(&sql).bind(id.to_string()).fetch_optional(pool).await)
            .map_err(classify)?;
        row.map(Job::try_from).transpose()
    }

    async fn get_job_by_name(&self, name: &str) -> StoreResult<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE name = $1");
        let row = on_read!(self, pool => sqlx::query_as::<_, JobRow>(&sql).bind(name).fetch_optional(pool).await)
            .map_err(classify)?;
        row.map(Job::try_from).transpose()
    }

    async fn list_jobs(&self) -> StoreResult<Vec<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY name");
        let rows = on_read!(self, pool => sqlx::query_as::<_, JobRow>(&sql).fetch_all(pool).await)
            .map_err(classify)?;
        rows_into(rows)
    }

    async fn delete_job(&self, id: JobId) -> StoreResult<bool> {
        let deleted = on_write!(self, pool => sqlx::query("DELETE FROM jobs WHERE id = $1").bind(id.to_string()).execute(pool).await.map(|done| done.rows_affected()))
            .map_err(classify)?;
        Ok(deleted > 0)
    }
}
