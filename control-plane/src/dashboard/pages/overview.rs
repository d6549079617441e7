//! The overview: this control plane, workers, queues, runs now, recent failures, next fires,
//! spend.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use chrono::Utc;

use super::runs::RunRow;
use super::{render, Chrome, PageResult};
use crate::dashboard::auth::{authorize, Action, Operator};
use crate::dashboard::format::{in_zone, iso, relative, usd};
use crate::dashboard::Dashboard;
use crate::services::overview::{self, ReplicaView, SoonestFires};

struct WorkerRow {
    id: String,
    pools: String,
    executor: String,
    busy: String,
    draining: bool,
    seen: String,
}

struct QueueRow {
    pool: String,
    queued: u64,
    oldest: String,
}

struct FireRow {
    job_id: String,
    job: String,
    at_iso: String,
    at_zone: String,
    relative: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    replica: ReplicaView,
    workers: Vec<WorkerRow>,
    queues: Vec<QueueRow>,
    active: Vec<RunRow>,
    failures: Vec<RunRow>,
    fires: Vec<FireRow>,
    jobs: usize,
    spend_today: String,
    spend_month: String,
}

pub async fn show(State(dashboard): State<Dashboard>, operator: Operator) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let now = Utc::now();
    let (overview, soonest) = tokio::try_join!(overview::overview(&dashboard.app), async {
        // One computation at a time; the others wait for it and take it.
        let mut kept = dashboard.fires.lock().await;
        match kept.as_ref() {
            Some(fires) if fires.fresh(&dashboard.app, now) => Ok(fires.clone()),
            _ => {
                let fires = SoonestFires::compute(&dashboard.app).await?;
                *kept = Some(fires.clone());
                Ok::<_, crate::domain::ServiceError>(fires)
            }
        }
    })?;
    let page = OverviewPage {
        chrome: Chrome::new(&operator, "overview", "Overview"),
        replica: overview.replica,
        workers: overview
            .workers
            .iter()
            .map(|worker| WorkerRow {
                id: worker.worker_id.to_string(),
                pools: worker.pools.join(", "),
                executor: worker.executor.clone(),
                busy: format!("{} of {}", worker.running.len(), worker.capacity),
                draining: worker.draining,
                seen: relative(worker.last_seen_at, now),
            })
            .collect(),
        queues: overview
            .queues
            .iter()
            .map(|queue| QueueRow {
                pool: queue.pool.clone(),
                queued: queue.queued,
                oldest: relative(queue.oldest_created_at, now),
            })
            .collect(),
        active: overview.active.iter().map(RunRow::from).collect(),
        failures: overview.failures.iter().map(RunRow::from).collect(),
        fires: soonest
            .fires
            .iter()
            .map(|(job, at)| FireRow {
                job_id: job.id.to_string(),
                job: job.name.clone(),
                at_iso: iso(*at),
                at_zone: in_zone(*at, &job.timezone),
                relative: relative(*at, now),
            })
            .collect(),
        jobs: soonest.jobs,
        spend_today: usd(overview.spend.today_usd),
        spend_month: usd(overview.spend.month_usd),
    };
    Ok(render(&page))
}
