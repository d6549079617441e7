//! Chains: a job that runs after others end. The chainer reads the runs that ended (woken at
//! once by an end written here, and every few seconds for ends written by other replicas or
//! before a restart), starts the runs of the jobs that follow theirs, and hands each end to its
//! job's result handlers (`result_handlers`).
//!
//! A chained fire happens once: the child's run is stored together with a `fire_keys` row
//! keyed by the child and the parent runs it answers, so replicas that see the same end, or one
//! that looks at it twice, start one run.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::{JobId, RunId, RunStatus, Trigger};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::domain::rules::{chain_key, fill_values, parent_values, Chain};
use crate::domain::{Job, OverlapPolicy, Run, RunFilter, ServiceResult};
use crate::services::{jobs, result_handlers, rules, runs, traces};

/// How often ends are looked for without being told (ends written by another replica).
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// How far back the first look goes: ends just before a restart still start their followers.
const LOOK_BACK_AT_START: chrono::Duration = chrono::Duration::minutes(10);
/// Ends are read again for this long, so one written late (its end time before the last look)
/// is not missed; those already handled are remembered.
const OVERLAP: chrono::Duration = chrono::Duration::seconds(30);
/// Most ended runs read in one look.
const BATCH: u32 = 500;

/// The jobs that follow each job, and the jobs with result handlers, as last read.
struct Followers {
    generation: u64,
    read_at: tokio::time::Instant,
    of: HashMap<JobId, Vec<Job>>,
    handled: HashMap<JobId, Job>,
}

impl Followers {
    async fn read(app: &App) -> ServiceResult<Self> {
        let generation = app.webhooks_generation();
        let mut of: HashMap<JobId, Vec<Job>> = HashMap::new();
        let mut handled = HashMap::new();
        for job in jobs::all(app).await? {
            if !job.rules.on_end.is_empty() || job.rules.budget.alert.is_some() {
                handled.insert(job.id, job.clone());
            }
            if let Some(chain) = job.rules.chain.clone().filter(|_| job.enabled) {
                for parent in chain.after {
                    of.entry(parent).or_default().push(job.clone());
                }
            }
        }
        Ok(Followers {
            generation,
            read_at: tokio::time::Instant::now(),
            of,
            handled,
        })
    }

    /// Jobs changed here (or, told by a notice, elsewhere), or a sweep's worth of time passed.
    fn stale(&self, app: &App) -> bool {
        self.generation != app.webhooks_generation() || self.read_at.elapsed() >= SWEEP_EVERY
    }
}

pub async fn run_chainer(app: Arc<App>, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut cursor = Utc::now() - LOOK_BACK_AT_START;
    let mut handled: HashMap<RunId, DateTime<Utc>> = HashMap::new();
    let mut followers: Option<Followers> = None;
    loop {
        if let Err(err) = step(&app, &mut followers, &mut cursor, &mut handled).await {
            tracing::warn!(error = %err, "starting chained runs failed; retrying");
            app.metrics.error("chainer");
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            _ = app.chains_wake.notified() => {}
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

async fn step(
    app: &Arc<App>,
    followers: &mut Option<Followers>,
    cursor: &mut DateTime<Utc>,
    handled: &mut HashMap<RunId, DateTime<Utc>>,
) -> ServiceResult<()> {
    if followers.as_ref().is_none_or(|known| known.stale(app)) {
        *followers = Some(Followers::read(app).await?);
    }
    let Some(followers) = followers.as_ref() else {
        return Ok(());
    };
    let fleet_alert = app.config.fleet_budget_alert.is_some();
    if followers.of.is_empty() && followers.handled.is_empty() && !fleet_alert {
        // No chains, no handlers: nothing to read, and nothing older than now will matter.
        *cursor = Utc::now() - OVERLAP;
        handled.clear();
        return Ok(());
    }
    let mut read_from = *cursor - OVERLAP;
    loop {
        let ended = app.store.runs_finished_after(read_from, BATCH).await?;
        let full = ended.len() == BATCH as usize;
        // The fleet's spend is read once per batch of ended runs, not per run.
        if let Some(last) = ended
            .iter()
            .rev()
            .find(|run| !handled.contains_key(&run.id))
        {
            if fleet_alert {
                result_handlers::check_fleet_budget(app, last);
            }
        }
        for parent in &ended {
            let Some(finished_at) = parent.finished_at else {
                continue;
            };
            *cursor = (*cursor).max(finished_at);
            read_from = read_from.max(finished_at);
            if handled.contains_key(&parent.id) {
                continue;
            }
            if let Some(job) = parent.job_id.and_then(|id| followers.handled.get(&id)) {
                result_handlers::started(app, job, parent);
                result_handlers::check_budget(app, job, parent);
            }
            let children = parent
                .job_id
                .and_then(|job_id| followers.of.get(&job_id))
                .map(Vec::as_slice)
                .unwrap_or_default();
            for child in children {
                if let Err(err) = follow(app, child, parent).await {
                    // Looked at again at the next step: the fire is made once whatever happens.
                    tracing::warn!(run.id = %parent.id, job.id = %child.id, error = %err, "starting a chained run failed");
                    return Err(err);
                }
            }
            handled.insert(parent.id, finished_at);
        }
        let forget_before = *cursor - OVERLAP;
        handled.retain(|_, finished_at| *finished_at >= forget_before);
        // A full batch whose runs all ended in the same millisecond would be read again and
        // again: go past that millisecond (a rare loss is better than a stuck chainer).
        if full && ended.first().and_then(|run| run.finished_at) == Some(read_from) {
            read_from += chrono::Duration::milliseconds(1);
        }
        if !full {
            return Ok(());
        }
    }
}

/// `parent` ended: starts a run of `child` if its chain says so (once per parent runs).
async fn follow(app: &App, child: &Job, parent: &Run) -> ServiceResult<()> {
    let Some(chain) = &child.rules.chain else {
        return Ok(());
    };
    if !chain.on.matches(parent.status) {
        return Ok(());
    }
    let parents = if chain.require_all {
        match all_parents_ended(app, child, chain, parent).await? {
            Some(parents) => parents,
            None => return Ok(()), // not every parent has ended that way yet
        }
    } else {
        vec![parent.id]
    };
    let key = chain_key(&parents);
    start_after(app, child, parent, &key, &parents).await
}

/// Starts a run of `child` after `parent` ended (a chain, or a parent's `trigger` result
/// handler), once for `key`: held back, and recorded as skipped, by the child's conditions,
/// budget or `skip` overlap.
pub(crate) async fn start_after(
    app: &App,
    child: &Job,
    parent: &Run,
    key: &str,
    parents: &[RunId],
) -> ServiceResult<()> {
    let now = Utc::now();
    let mut refusal = rules::refusal(app, child, now).await?;
    if refusal.is_none()
        && child.overlap_policy == OverlapPolicy::Skip
        && !runs::active(app, child.id).await?.is_empty()
    {
        refusal = Some("a run of the job is still going (overlap_policy `skip`)".to_owned());
    }
    if let Some(reason) = refusal {
        if app.store.record_keyed_fire(child.id, key, None).await? {
            rules::skipped(app, child, Trigger::Chain, &reason, now).await;
        }
        return Ok(());
    }
    let mut run = Run::queued(Trigger::Chain, Some(child), child.run_snapshot(), None);
    fill_values(&mut run, child, json!({ "parent": parent_values(parent) }));
    let queued = runs::prepare(
        &mut run,
        json!({
            "step": "queued",
            "trigger": Trigger::Chain,
            "parent_run_id": parent.id,
            "parent_job": parent.job_name,
            "parent_status": parent.status.as_str(),
            "parents": parents,
        }),
    );
    let storing = std::time::SystemTime::now();
    if !app
        .store
        .record_keyed_fire(child.id, key, Some((&run, &[queued])))
        .await?
    {
        return Ok(()); // another look (here or on another replica) made this fire
    }
    traces::stored([&run], storing);
    if let Some(hop) = parent
        .finished_at
        .and_then(|ended| (run.created_at - ended).to_std().ok())
    {
        tracing::debug!(run.id = %run.id, parent.id = %parent.id, hop_ms = hop.as_millis() as u64, "chained");
    }
    runs::send_stored(app, run).await?;
    Ok(())
}

/// Under `require_all`: the last ended run of each parent job, if every one ended the way the
/// chain asks since the child last ran after them (or, before that, since its chain was set).
async fn all_parents_ended(
    app: &App,
    child: &Job,
    chain: &Chain,
    ended: &Run,
) -> ServiceResult<Option<Vec<RunId>>> {
    let last_chained = app
        .store
        .list_runs(&RunFilter {
            job_id: Some(child.id),
            trigger: Some(Trigger::Chain),
            limit: 1,
            ..RunFilter::default()
        })
        .await?;
    let round_start = last_chained
        .first()
        .map_or(child.updated_at, |run| run.created_at);
    let terminal: Vec<RunStatus> = RunStatus::ALL
        .into_iter()
        .filter(|status| status.is_terminal())
        .collect();
    let mut parents = Vec::with_capacity(chain.after.len());
    let mut seen = HashSet::new();
    for job_id in &chain.after {
        if !seen.insert(*job_id) {
            continue;
        }
        let latest = if Some(*job_id) == ended.job_id {
            Some(ended.clone())
        } else {
            app.store
                .list_runs(&RunFilter {
                    job_id: Some(*job_id),
                    statuses: terminal.clone(),
                    limit: 1,
                    ..RunFilter::default()
                })
                .await?
                .into_iter()
                .next()
        };
        let Some(latest) = latest else {
            return Ok(None);
        };
        let in_round = latest.finished_at.is_some_and(|at| at > round_start);
        if !in_round || !chain.on.matches(latest.status) {
            return Ok(None);
        }
        parents.push(latest.id);
    }
    Ok(Some(parents))
}
