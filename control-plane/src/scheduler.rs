//! The scheduler: sleeps until the next due fire (no polling interval), wakes when a job changes,
//! and fires only while it holds the scheduler lease. A fire is `(job_id, scheduled_for)`,
//! unique in the store, so even two leaders at once start one run per fire.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::{JobId, Trigger};
use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::domain::rules::fill_values;
use crate::domain::schedule::Compiled;
use crate::domain::{FireRecord, Job, MisfirePolicy, OverlapPolicy, Run, Schedule};
use crate::services::{fires, jobs, rules, runs};

pub const LEASE_NAME: &str = "scheduler";

/// Most fires looked at for one job in one step (a per-second job after a day's downtime has
/// 86,400); past it the rest are counted as missed without being listed.
const MAX_FIRES_PER_STEP: usize = 100_000;

struct Planned {
    job: Job,
    compiled: Compiled,
    next: Option<DateTime<Utc>>,
}

impl Planned {
    fn new(job: Job) -> Option<Self> {
        if !job.enabled || job.schedule == Schedule::None {
            return None;
        }
        let compiled = match Compiled::new(&job.schedule, &job.timezone) {
            Ok(compiled) => compiled,
            Err(err) => {
                tracing::error!(job.id = %job.id, error = %err, "stored schedule no longer parses; job not scheduled");
                return None;
            }
        };
        let next = compiled.next_after(job.fire_cursor);
        Some(Planned {
            job,
            compiled,
            next,
        })
    }
}

/// What to do with the fires of one job that are due.
#[derive(Debug, PartialEq, Eq)]
pub struct FirePlan {
    /// Fire times that get a run, oldest first.
    pub run: Vec<DateTime<Utc>>,
    pub missed: u64,
    pub overlap_skipped: u64,
    /// The first this many of `run` may be dispatched now (the rest wait in the queue).
    pub dispatch_now: usize,
}

/// Applies the misfire and overlap policies to the due fires of a job (oldest first).
pub fn plan_fires(
    due: &[DateTime<Utc>],
    now: DateTime<Utc>,
    grace: Duration,
    misfire: MisfirePolicy,
    cap: u32,
    overlap: OverlapPolicy,
    has_active_run: bool,
) -> FirePlan {
    let grace = chrono::Duration::from_std(grace).unwrap_or_default();
    let split = due.partition_point(|fire| now - *fire > grace);
    let (late, on_time) = due.split_at(split);
    let mut run: Vec<DateTime<Utc>> = match misfire {
        MisfirePolicy::Skip => on_time.to_vec(),
        // One catch-up run for everything missed, then the on-time fires as usual.
        MisfirePolicy::RunOnce => late
            .last()
            .copied()
            .into_iter()
            .chain(on_time.iter().copied())
            .collect(),
        MisfirePolicy::RunAll => {
            let keep = late.len().min(cap as usize);
            late[late.len() - keep..]
                .iter()
                .chain(on_time)
                .copied()
                .collect()
        }
    };
    let missed = (due.len() - run.len()) as u64;
    let mut overlap_skipped = 0u64;
    let dispatch_now = match overlap {
        OverlapPolicy::Allow => run.len(),
        OverlapPolicy::Queue => usize::from(!has_active_run && !run.is_empty()),
        OverlapPolicy::Skip => {
            // One run at a time: the newest fire wins, and only if nothing is running.
            let keep = usize::from(!has_active_run && !run.is_empty());
            overlap_skipped = (run.len() - keep) as u64;
            run.drain(..run.len() - keep);
            keep
        }
    };
    FirePlan {
        run,
        missed,
        overlap_skipped,
        dispatch_now,
    }
}

/// Runs the scheduler on a thread of its own with its own single-threaded runtime, so a busy API
/// or a burst of runs starting never delays the timer that fires jobs.
pub async fn run_on_own_thread(app: Arc<App>, cancel: CancellationToken) -> anyhow::Result<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("autopilot-scheduler".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(run_scheduler(app, cancel)));
            let _ = done_tx.send(result);
        })?;
    done_rx
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the scheduler thread panicked")))
}

pub async fn run_scheduler(app: Arc<App>, cancel: CancellationToken) -> anyhow::Result<()> {
    let holder = app.replica_id.clone();
    let lease = Arc::clone(&app.lease);
    let renew_every = lease.ttl() / 3;
    // Not leading, look again this often: a dead leader's lease expires within a TTL, and the
    // next leader is whoever asks first after that.
    let follow_every = (lease.ttl() / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut leader = false;
    let mut next_renew = Instant::now();
    let mut planned: Vec<Planned> = Vec::new();
    let mut reload = true;
    loop {
        if Instant::now() >= next_renew {
            let was_leader = leader;
            leader = match lease.acquire(&holder).await {
                Ok(token) => token.is_some(),
                Err(err) => {
                    tracing::warn!(error = %err, "scheduler lease renewal failed");
                    app.metrics.error("scheduler");
                    false
                }
            };
            app.is_leader
                .store(leader, std::sync::atomic::Ordering::Relaxed);
            app.metrics.scheduler_leader(leader);
            match (was_leader, leader) {
                (false, true) => {
                    tracing::info!(holder = %holder, lease = lease.backend(), "scheduler lease acquired; this process fires jobs");
                    reload = true;
                }
                (true, false) => {
                    tracing::warn!(holder = %holder, "scheduler lease lost; stepping down")
                }
                _ => {}
            }
            next_renew = Instant::now() + if leader { renew_every } else { follow_every };
        }
        if !leader {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next_renew) => {}
                _ = app.scheduler_wake.notified() => {}
            }
            continue;
        }
        if reload {
            match jobs::all(&app).await {
                Ok(jobs) => {
                    planned = jobs.into_iter().filter_map(Planned::new).collect();
                    reload = false;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "loading jobs failed; retrying");
                    app.metrics.error("scheduler");
                }
            }
        }
        let now = Utc::now();
        if planned
            .iter()
            .any(|p| p.next.is_some_and(|next| next <= now))
        {
            if let Err(err) = fire_due(&app, &mut planned, now).await {
                // Never disable a schedule for a transient error: try again shortly.
                tracing::warn!(error = %err, "firing due jobs failed; retrying");
                app.metrics.error("scheduler");
                tokio::time::sleep(Duration::from_millis(200)).await;
                reload = true;
            }
            continue;
        }
        let next_fire = planned.iter().filter_map(|p| p.next).min();
        let wake_at = match next_fire {
            Some(next) => {
                next_renew.min(Instant::now() + (next - Utc::now()).to_std().unwrap_or_default())
            }
            None => next_renew,
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                app.is_leader
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                app.metrics.scheduler_leader(false);
                if let Err(err) = lease.release(&holder).await {
                    tracing::warn!(error = %err, "could not give the scheduler lease up; it expires by itself");
                }
                return Ok(());
            }
            _ = app.scheduler_wake.notified() => reload = true,
            _ = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

/// Fires every due job in one store transaction, then publishes the runs that may start.
async fn fire_due(app: &App, planned: &mut [Planned], now: DateTime<Utc>) -> anyhow::Result<()> {
    // Which jobs have a run going matters only to the overlap policies that look at it; the
    // query is skipped when every due job allows overlap.
    let needs_busy = planned.iter().any(|plan| {
        plan.next.is_some_and(|next| next <= now) && plan.job.overlap_policy != OverlapPolicy::Allow
    });
    let busy: HashSet<JobId> = if needs_busy {
        fires::busy_jobs(app).await?
    } else {
        HashSet::new()
    };
    let mut records = Vec::new();
    let mut to_publish: HashSet<autopilot_proto::RunId> = HashSet::new();
    let mut advanced: Vec<(usize, DateTime<Utc>, bool)> = Vec::new();
    for (index, plan) in planned.iter().enumerate() {
        if plan.next.is_none_or(|next| next > now) {
            continue;
        }
        let job = &plan.job;
        let mut due = Vec::new();
        let mut cursor = job.fire_cursor;
        let mut uncounted = 0u64;
        while let Some(next) = plan.compiled.next_after(cursor).filter(|next| *next <= now) {
            if due.len() < MAX_FIRES_PER_STEP {
                due.push(next);
            } else {
                uncounted += 1;
                if uncounted > 10 * MAX_FIRES_PER_STEP as u64 {
                    cursor = now;
                    break;
                }
            }
            cursor = next;
        }
        let fire_plan = plan_fires(
            &due,
            now,
            app.config.misfire_grace,
            job.misfire_policy,
            job.misfire_cap,
            job.overlap_policy,
            busy.contains(&job.id),
        );
        let mut fire_plan = fire_plan;
        if !fire_plan.run.is_empty() {
            // A condition or a budget may hold the fire back: it is recorded, with why.
            if let Some(reason) = rules::refusal(app, job, now).await? {
                rules::skipped(app, job, Trigger::Schedule, &reason, now).await;
                fire_plan.run.clear();
                fire_plan.dispatch_now = 0;
            }
        }
        let snapshot = job.run_snapshot();
        let runs: Vec<Run> = fire_plan
            .run
            .iter()
            .enumerate()
            .map(|(position, at)| {
                let mut run =
                    Run::queued(Trigger::Schedule, Some(job), snapshot.clone(), Some(*at));
                fill_values(&mut run, job, serde_json::Value::Null);
                // Every fire of this step happens at the step's instant.
                run.created_at = now;
                if position < fire_plan.dispatch_now && !runs::limited_by_key(&run) {
                    run.dispatched_at = Some(run.created_at);
                    to_publish.insert(run.id);
                }
                run
            })
            .collect();
        let events = runs
            .iter()
            .map(|run| {
                let data = serde_json::json!({ "step": "queued", "trigger": "schedule", "scheduled_for": run.scheduled_for });
                run.control_event(data)
            })
            .collect();
        if fire_plan.missed + uncounted > 0 || fire_plan.overlap_skipped > 0 {
            tracing::info!(
                job.id = %job.id,
                missed = fire_plan.missed + uncounted,
                overlap_skipped = fire_plan.overlap_skipped,
                "fires skipped by policy"
            );
        }
        let disable = matches!(job.schedule, Schedule::At(_));
        records.push(FireRecord {
            job_id: job.id,
            job_name: job.name.clone(),
            cursor,
            runs,
            events,
            missed: fire_plan.missed + uncounted,
            overlap_skipped: fire_plan.overlap_skipped,
            disable,
        });
        advanced.push((index, cursor, disable));
    }
    fires::record(app, records, &to_publish).await?;
    for (index, cursor, disable) in advanced {
        let plan = &mut planned[index];
        plan.job.fire_cursor = cursor;
        plan.next = if disable {
            None
        } else {
            plan.compiled.next_after(cursor)
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
            + chrono::Duration::seconds(i64::from(second))
    }

    const GRACE: Duration = Duration::from_secs(10);

    #[test]
    fn on_time_fires_run_and_late_ones_follow_the_misfire_policy() {
        // Fires at 0..=100 s, now = 100 s: 0..=89 are late, 90..=100 on time.
        let due: Vec<_> = (0..=100).map(at).collect();
        let now = at(100);
        let allow = OverlapPolicy::Allow;
        let skip = plan_fires(&due, now, GRACE, MisfirePolicy::Skip, 5, allow, false);
        assert_eq!(skip.run.len(), 11);
        assert_eq!(skip.missed, 90);
        let once = plan_fires(
            &due[..50],
            now,
            GRACE,
            MisfirePolicy::RunOnce,
            5,
            allow,
            false,
        );
        assert_eq!(once.run, vec![at(49)], "only the newest missed fire runs");
        assert_eq!(once.missed, 49);
        let once = plan_fires(&due, now, GRACE, MisfirePolicy::RunOnce, 5, allow, false);
        assert_eq!(once.run.len(), 12, "one catch-up plus eleven on time");
        assert_eq!((once.run[0], once.missed), (at(89), 89));
        let all = plan_fires(&due, now, GRACE, MisfirePolicy::RunAll, 5, allow, false);
        assert_eq!(all.run.len(), 16, "five newest missed plus eleven on time");
        assert_eq!(all.run[0], at(85));
        assert_eq!(all.missed, 85);
        assert_eq!(all.dispatch_now, 16);
    }

    #[test]
    fn overlap_policies() {
        let due = vec![at(1), at(2)];
        let now = at(2);
        let skip_busy = plan_fires(
            &due,
            now,
            GRACE,
            MisfirePolicy::RunAll,
            5,
            OverlapPolicy::Skip,
            true,
        );
        assert!(skip_busy.run.is_empty());
        assert_eq!(skip_busy.overlap_skipped, 2);
        let skip_idle = plan_fires(
            &due,
            now,
            GRACE,
            MisfirePolicy::RunAll,
            5,
            OverlapPolicy::Skip,
            false,
        );
        assert_eq!(skip_idle.run, vec![at(2)]);
        assert_eq!(skip_idle.overlap_skipped, 1);
        let queue = plan_fires(
            &due,
            now,
            GRACE,
            MisfirePolicy::RunAll,
            5,
            OverlapPolicy::Queue,
            false,
        );
        assert_eq!((queue.run.len(), queue.dispatch_now), (2, 1));
        let queue_busy = plan_fires(
            &due,
            now,
            GRACE,
            MisfirePolicy::RunAll,
            5,
            OverlapPolicy::Queue,
            true,
        );
        assert_eq!((queue_busy.run.len(), queue_busy.dispatch_now), (2, 0));
    }
}
