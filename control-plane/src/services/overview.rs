//! What the dashboard's overview shows: this control plane, the live workers, the queue of each
//! pool, the runs going now, recent failures, the next fires and what was spent.

use autopilot_proto::RunStatus;
use chrono::{DateTime, Utc};

use crate::app::App;
use crate::domain::{PoolQueue, Run, RunFilter, ServiceResult};
use crate::services::jobs::JobView;
use crate::services::usage::{self, Spend};
use crate::services::workers::{self, WorkerView};
use crate::services::{jobs, runs};

/// Runs and fires listed on the overview, each.
const LISTED: usize = 10;

/// The control plane that answered.
#[derive(Debug, Clone)]
pub struct ReplicaView {
    pub id: String,
    pub store: &'static str,
    pub mode: &'static str,
    /// It holds the scheduler lease (as of its last renewal).
    pub leader: bool,
    pub version: &'static str,
}

#[derive(Debug)]
pub struct Overview {
    pub replica: ReplicaView,
    pub workers: Vec<WorkerView>,
    pub queues: Vec<PoolQueue>,
    pub active: Vec<Run>,
    pub failures: Vec<Run>,
    /// Enabled jobs by their next fire, soonest first.
    pub next_fires: Vec<(JobView, DateTime<Utc>)>,
    pub jobs: usize,
    pub spend: Spend,
}

pub async fn overview(app: &App) -> ServiceResult<Overview> {
    let (workers, queues, active, failures, jobs, spend) = tokio::try_join!(
        workers::live(app),
        async { Ok(app.store.queue_by_pool().await?) },
        runs::list(
            app,
            RunFilter {
                statuses: RunStatus::ACTIVE.to_vec(),
                limit: LISTED as u32,
                ..Default::default()
            }
        ),
        runs::list(
            app,
            RunFilter {
                statuses: vec![RunStatus::Failed, RunStatus::TimedOut, RunStatus::Lost],
                limit: LISTED as u32,
                ..Default::default()
            }
        ),
        jobs::list(app),
        usage::spend(app),
    )?;
    let count = jobs.len();
    let mut next_fires: Vec<(JobView, DateTime<Utc>)> = jobs
        .into_iter()
        .filter_map(|job| job.next_fire_at.map(|at| (job, at)))
        .collect();
    next_fires.sort_by_key(|(_, at)| *at);
    next_fires.truncate(LISTED);
    Ok(Overview {
        replica: ReplicaView {
            id: app.replica_id.clone(),
            store: app.store.backend(),
            mode: app.config.mode(),
            leader: app.is_leader.load(std::sync::atomic::Ordering::Relaxed),
            version: env!("CARGO_PKG_VERSION"),
        },
        workers,
        queues,
        active,
        failures,
        next_fires,
        jobs: count,
        spend,
    })
}
