//! Jobs' memory: what the `memory` server of a run asks for (relayed by its worker), and what an
//! operator reads and changes through the API. Only here is it decided whose memory a run
//! reaches: its job's, or its webhook's when it runs without a job; a quick run has none.

use autopilot_fixed_servers::memory_wire::{
    check_key, MemoryAnswer, MemoryEntry, MemoryOp, LIST_LIMIT, MAX_ENTRIES, SEARCH_LIMIT,
};
use autopilot_proto::{RunId, RunStatus, WorkerId, WorkerReply};
use chrono::{SecondsFormat, Utc};
use serde_json::Value;

use crate::app::App;
use crate::domain::memory::{MemoryFilter, MemoryItem, MemoryScope};
use crate::domain::{Run, ServiceError, ServiceResult};

/// The answer to a run's memory operation: refused in words the model reads when the run has
/// no memory or the operation is wrong; `Rejected` when the attempt is not the worker's.
pub async fn from_run(
    app: &App,
    run_id: RunId,
    attempt: u32,
    worker_id: &WorkerId,
    op: Value,
) -> ServiceResult<WorkerReply> {
    let run = app.store.get_run(run_id).await?;
    let holds = |run: &Run| {
        run.is_held_by(attempt, worker_id.as_str()) && run.status != RunStatus::Cancelling
    };
    let Some(run) = run.filter(holds) else {
        return Ok(WorkerReply::Rejected {
            reason: "the run is not running on this worker at this attempt".to_owned(),
        });
    };
    let answer = match scope_of(&run) {
        None => refused(
            "this run belongs to no job or webhook, so it has no memory (a quick run's memory \
             would be lost with it); save it as a job to keep memory across runs",
        ),
        Some(scope) => match serde_json::from_value::<MemoryOp>(op) {
            Err(err) => refused(format!("the memory operation is not understood: {err}")),
            Ok(op) => match op.check() {
                Err(reason) => refused(reason),
                Ok(()) => apply(app, &scope, op, Some(run.id)).await?,
            },
        },
    };
    Ok(WorkerReply::Memory {
        answer: serde_json::to_value(answer).unwrap_or_default(),
    })
}

/// Whose memory `run` reaches.
pub fn scope_of(run: &Run) -> Option<MemoryScope> {
    match (run.job_id, run.webhook_id) {
        (Some(job), _) => Some(MemoryScope::Job(job)),
        (None, Some(webhook)) => Some(MemoryScope::Webhook(webhook)),
        (None, None) => None,
    }
}

fn refused(reason: impl Into<String>) -> MemoryAnswer {
    MemoryAnswer::Refused {
        reason: reason.into(),
    }
}

fn entry(item: MemoryItem) -> MemoryEntry {
    MemoryEntry {
        key: item.key,
        value: item.value,
        bytes: item.bytes,
        updated_at: item.updated_at.to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}

/// Lists up to `limit`, and whether there were more.
async fn entries(
    app: &App,
    scope: &MemoryScope,
    filter: MemoryFilter,
    limit: u32,
) -> ServiceResult<MemoryAnswer> {
    let mut items = app.store.list_memory(scope, &filter, limit + 1).await?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(MemoryAnswer::Entries {
        entries: items.into_iter().map(entry).collect(),
        more,
    })
}

/// Does `op` on `scope`'s memory, written by `run_id` (an operator when `None`).
async fn apply(
    app: &App,
    scope: &MemoryScope,
    op: MemoryOp,
    run_id: Option<RunId>,
) -> ServiceResult<MemoryAnswer> {
    Ok(match op {
        MemoryOp::Get { key } => MemoryAnswer::Entry {
            entry: app.store.get_memory(scope, &key).await?.map(entry),
        },
        MemoryOp::Put { key, value } => {
            let existed = app.store.get_memory(scope, &key).await?.is_some();
            let item = MemoryItem {
                bytes: value.len() as u64,
                key,
                value: Some(value),
                updated_at: Utc::now(),
                run_id,
            };
            if !app.store.put_memory(scope, &item, MAX_ENTRIES).await? {
                return Ok(refused(format!(
                    "the memory already holds its {MAX_ENTRIES} entries; delete some \
                     (memory_list shows the oldest last) before storing new ones"
                )));
            }
            MemoryAnswer::Stored {
                created: !existed,
                entries: app.store.count_memory(scope).await?,
            }
        }
        MemoryOp::Delete { key } => MemoryAnswer::Deleted {
            existed: app.store.delete_memory(scope, &key).await?,
        },
        MemoryOp::List { prefix } => {
            let filter = MemoryFilter::Prefix(prefix.unwrap_or_default());
            entries(app, scope, filter, LIST_LIMIT).await?
        }
        MemoryOp::Search { query } => {
            let filter = MemoryFilter::Containing(query.trim().to_owned());
            entries(app, scope, filter, SEARCH_LIMIT).await?
        }
    })
}

/// A job's memory as an operator sees it: up to `limit` entries (values included when a
/// `search` is given), most recent first.
pub async fn list(
    app: &App,
    scope: &MemoryScope,
    prefix: Option<String>,
    search: Option<String>,
) -> ServiceResult<MemoryAnswer> {
    let op = match search {
        Some(query) => MemoryOp::Search { query },
        None => MemoryOp::List { prefix },
    };
    op.check()
        .map_err(|reason| ServiceError::invalid("query", reason))?;
    apply(app, scope, op, None).await
}

/// How many entries `scope`'s memory holds.
pub async fn count(app: &App, scope: &MemoryScope) -> ServiceResult<u64> {
    Ok(app.store.count_memory(scope).await?)
}

pub async fn get(app: &App, scope: &MemoryScope, key: &str) -> ServiceResult<MemoryItem> {
    check_key(key).map_err(|reason| ServiceError::invalid("key", reason))?;
    app.store
        .get_memory(scope, key)
        .await?
        .ok_or_else(|| not_found(key))
}

/// Stores `value` under `key` for the operator; whether the key is new.
pub async fn put(
    app: &App,
    scope: &MemoryScope,
    key: String,
    value: String,
) -> ServiceResult<bool> {
    let op = MemoryOp::Put { key, value };
    check(&op)?;
    match apply(app, scope, op, None).await? {
        MemoryAnswer::Stored { created, .. } => Ok(created),
        MemoryAnswer::Refused { reason } => Err(ServiceError::Conflict(reason)),
        other => Err(anyhow::anyhow!("a put answered {other:?}").into()),
    }
}

/// Checks an operator's operation against the limits, naming the field at fault.
pub fn check(op: &MemoryOp) -> ServiceResult<()> {
    op.check().map_err(|reason| {
        let field = match reason.contains("value") {
            true => "value",
            false => "key",
        };
        ServiceError::invalid(field, reason)
    })
}

pub async fn delete(app: &App, scope: &MemoryScope, key: &str) -> ServiceResult<()> {
    check_key(key).map_err(|reason| ServiceError::invalid("key", reason))?;
    match app.store.delete_memory(scope, key).await? {
        true => Ok(()),
        false => Err(not_found(key)),
    }
}

/// Forgets the memory of a deleted job or webhook; a failure is logged, not raised (the entries
/// left take room, nothing else).
pub async fn forget(app: &App, scope: &MemoryScope) {
    match app.store.clear_memory(scope).await {
        Ok(0) => {}
        Ok(count) => tracing::info!(scope = %scope.key(), count, "memory forgotten"),
        Err(err) => {
            tracing::warn!(scope = %scope.key(), error = %err, "could not forget the memory")
        }
    }
}

fn not_found(key: &str) -> ServiceError {
    ServiceError::NotFound {
        what: "memory entry",
        id: key.to_owned(),
    }
}
