//! Workers: what each live worker serves and runs, from the announcements they send at every
//! heartbeat interval.

use autopilot_proto::{RunId, WorkerId, WorkerStatus};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::app::App;
use crate::domain::ServiceResult;

/// Announcements missed before a worker is no longer listed.
const MISSED_BEATS: u32 = 3;
/// A worker silent this long is forgotten.
const FORGET_AFTER: chrono::Duration = chrono::Duration::days(1);

/// A live worker as clients see it.
#[derive(Serialize, Debug, Clone)]
pub struct WorkerView {
    pub worker_id: WorkerId,
    pub pools: Vec<String>,
    pub capacity: u32,
    pub running: Vec<RunId>,
    /// Slots free for more runs.
    pub free: u32,
    pub executor: String,
    pub version: String,
    /// It stopped taking runs and is finishing the ones it has.
    pub draining: bool,
    pub started_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

pub async fn announce(app: &App, status: WorkerStatus) -> ServiceResult<()> {
    app.store.upsert_worker(&status, Utc::now()).await?;
    Ok(())
}

/// Workers that announced themselves within the last few heartbeat intervals; those silent for
/// a day are forgotten on the way.
pub async fn live(app: &App) -> ServiceResult<Vec<WorkerView>> {
    if let Err(err) = app.store.forget_workers(Utc::now() - FORGET_AFTER).await {
        tracing::debug!(error = %err, "forgetting silent workers failed");
    }
    listed_live(app).await
}

/// [`live`], only read: for the questions every worker asks at every heartbeat.
pub async fn listed_live(app: &App) -> ServiceResult<Vec<WorkerView>> {
    let window = chrono::Duration::from_std(app.config.heartbeat_interval * MISSED_BEATS)
        .unwrap_or_else(|_| chrono::Duration::seconds(15));
    let workers = app.store.list_workers(Utc::now() - window).await?;
    Ok(workers
        .into_iter()
        .map(|(status, seen_at)| WorkerView {
            free: status
                .capacity
                .saturating_sub(u32::try_from(status.running.len()).unwrap_or(u32::MAX)),
            worker_id: status.worker_id,
            pools: status.pools,
            capacity: status.capacity,
            running: status.running,
            executor: status.executor,
            version: status.version,
            draining: status.draining,
            started_at: status.started_at,
            last_seen_at: seen_at,
        })
        .collect())
}
