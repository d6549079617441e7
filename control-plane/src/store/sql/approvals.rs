//! Tool calls waiting for approval in the SQL store: the [`ApprovalStore`]. A decision is a
//! compare-and-set from `pending`, so two approvers (or an approver and the timeout) racing
//! leave exactly one decision.

use async_trait::async_trait;
use autopilot_proto::RunId;
use chrono::{DateTime, Utc};

use super::{classify, Pools, SqlStore};
use crate::domain::approval::{Approval, ApprovalStatus};
use crate::store::rows::{from_ms, parse, to_json, to_ms};
use crate::store::{ApprovalStore, StoreError, StoreResult};

const COLUMNS: &str = "id, run_id, attempt, job_id, tool, input, tool_use_id, approvers, status, \
                       requested_at_ms, expires_at_ms, decided_at_ms, decided_by, reason";

#[derive(sqlx::FromRow)]
struct ApprovalRow {
    id: String,
    run_id: String,
    attempt: i64,
    job_id: Option<String>,
    tool: String,
    input: String,
    tool_use_id: Option<String>,
    approvers: String,
    status: String,
    requested_at_ms: i64,
    expires_at_ms: i64,
    decided_at_ms: Option<i64>,
    decided_by: Option<String>,
    reason: Option<String>,
}

impl TryFrom<ApprovalRow> for Approval {
    type Error = StoreError;

    fn try_from(row: ApprovalRow) -> StoreResult<Self> {
        let corrupt = |what: &str, err: serde_json::Error| {
            StoreError::Corrupt(format!("approval {}: {what}: {err}", row.id))
        };
        Ok(Approval {
            run_id: parse("run id", &row.run_id)?,
            attempt: u32::try_from(row.attempt).unwrap_or_default(),
            job_id: row
                .job_id
                .as_deref()
                .map(|id| parse("job id", id))
                .transpose()?,
            input: serde_json::from_str(&row.input).map_err(|err| corrupt("input", err))?,
            approvers: serde_json::from_str(&row.approvers)
                .map_err(|err| corrupt("approvers", err))?,
            status: ApprovalStatus::parse(&row.status).ok_or_else(|| {
                StoreError::Corrupt(format!("approval {}: status `{}`", row.id, row.status))
            })?,
            requested_at: from_ms(row.requested_at_ms)?,
            expires_at: from_ms(row.expires_at_ms)?,
            decided_at: row.decided_at_ms.map(from_ms).transpose()?,
            tool: row.tool,
            tool_use_id: row.tool_use_id,
            decided_by: row.decided_by,
            reason: row.reason,
            id: row.id,
        })
    }
}

fn approvals(rows: Vec<ApprovalRow>) -> StoreResult<Vec<Approval>> {
    rows.into_iter().map(Approval::try_from).collect()
}

#[async_trait]
impl ApprovalStore for SqlStore {
    async fn insert_approval(&self, approval: &Approval) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO approvals ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        );
        let input = to_json(&approval.input);
        let approvers = to_json(&approval.approvers);
        on_write!(self, pool => {
            sqlx::query(&sql)
                .bind(&approval.id)
                .bind(approval.run_id.to_string())
                .bind(i64::from(approval.attempt))
                .bind(approval.job_id.map(|id| id.to_string()))
                .bind(&approval.tool)
                .bind(&input)
                .bind(&approval.tool_use_id)
                .bind(&approvers)
                .bind(approval.status.as_str())
                .bind(to_ms(approval.requested_at))
                .bind(to_ms(approval.expires_at))
                .bind(approval.decided_at.map(to_ms))
                .bind(&approval.decided_by)
                .bind(&approval.reason)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(classify)?;
        Ok(())
    }

    async fn get_approval(&self, id: &str) -> StoreResult<Option<Approval>> {
        let sql = format!("SELECT {COLUMNS} FROM approvals WHERE id = $1");
        let row: Option<ApprovalRow> = on_read!(self, pool => {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await
        })
        .map_err(classify)?;
        row.map(Approval::try_from).transpose()
    }

    async fn list_approvals(
        &self,
        status: Option<ApprovalStatus>,
        run_id: Option<RunId>,
        limit: u32,
    ) -> StoreResult<Vec<Approval>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM approvals \
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR run_id = $2) \
             ORDER BY requested_at_ms DESC, id DESC LIMIT $3"
        );
        let rows: Vec<ApprovalRow> = on_read!(self, pool => {
            sqlx::query_as(&sql)
                .bind(status.map(ApprovalStatus::as_str))
                .bind(run_id.map(|id| id.to_string()))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map_err(classify)?;
        approvals(rows)
    }

    async fn decide_approval(
        &self,
        id: &str,
        status: ApprovalStatus,
        decided_by: &str,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let done = on_write!(self, pool => {
            sqlx::query(
                "UPDATE approvals SET status = $2, decided_by = $3, reason = $4, decided_at_ms = $5 \
                 WHERE id = $1 AND status = 'pending'",
            )
            .bind(id)
            .bind(status.as_str())
            .bind(decided_by)
            .bind(reason)
            .bind(to_ms(at))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(classify)?;
        Ok(done == 1)
    }

    async fn expired_approvals(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Approval>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM approvals WHERE status = 'pending' AND expires_at_ms <= $1 \
             ORDER BY expires_at_ms LIMIT $2"
        );
        let rows: Vec<ApprovalRow> = on_read!(self, pool => {
            sqlx::query_as(&sql)
                .bind(to_ms(now))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })
        .map_err(classify)?;
        approvals(rows)
    }
}
