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
    pub spend: Spend,
}

/// The jobs that fire next, and how many jobs there are: the costly part of the overview with
/// many jobs (each job's next fire is computed), so a caller may keep it a while
/// ([`SoonestFires::fresh`]).
#[derive(Debug, Clone)]
pub struct SoonestFires {
    /// Enabled jobs by their next fire, soonest first.
    pub fires: Vec<(JobView, DateTime<Utc>)>,
    pub jobs: usize,
    computed_at: DateTime<Utc>,
    /// `App::webhooks_generation` when computed (raised by any job change on this replica).
    generation: u64,
}

/// How long [`SoonestFires`] may be kept at most (changes made on other replicas show within it).
const FIRES_KEPT: chrono::Duration = chrono::Duration::seconds(15);

impl SoonestFires {
    pub async fn compute(app: &App) -> ServiceResult<Self> {
        let generation = app.webhooks_generation();
        let (fires, jobs) = jobs::soonest_fires(app, LISTED).await?;
        Ok(SoonestFires {
            fires,
            jobs,
            computed_at: Utc::now(),
            generation,
        })
    }

    /// Still true: no job changed here, the first listed fire has not come, and it is recent.
    pub fn fresh(&self, app: &App, now: DateTime<Utc>) -> bool {
        self.generation == app.webhooks_generation()
            && now < self.computed_at + FIRES_KEPT
            && self.fires.first().is_none_or(|(_, at)| now < *at)
    }
}

pub async fn overview(app: &App) -> ServiceResult<Overview> {
    let (workers, queues, active, failures, spend) = tokio::try_join!(
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
        usage::spend(app),
    )?;
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
        spend,
    })
}
