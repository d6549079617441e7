//! File watches: the workers of a pool ask which files its jobs watch (`on_file`), and one of
//! them, the first by id of the pool's live workers that are not draining, is answered with
//! them: it watches and reports each settled change. When it stops announcing itself, the next
//! takes over at its next question (every heartbeat). A change starts the job's run once, even
//! when two workers watched for a moment (the change's file, kind and modification time key
//! the fire).

use autopilot_proto::{FileChange, FileWatch, RunKind, Trigger, WorkerId, WorkerReply};
use chrono::Utc;
use serde_json::json;

use crate::app::App;
use crate::domain::rules::fill_values;
use crate::domain::{Run, ServiceResult};
use crate::services::{jobs, rules, runs, traces, workers};

/// What the jobs of `pools` watch, for the pools whose watcher `worker_id` is.
pub async fn watches(
    app: &App,
    worker_id: &WorkerId,
    pools: &[String],
) -> ServiceResult<WorkerReply> {
    let live = workers::listed_live(app).await?;
    let pools: Vec<&String> = pools
        .iter()
        .filter(|pool| watcher_of(&live, pool).is_none_or(|watcher| watcher == worker_id.as_str()))
        .collect();
    if pools.is_empty() {
        return Ok(WorkerReply::FileWatches {
            watches: Vec::new(),
        });
    }
    let watches = jobs::all(app)
        .await?
        .into_iter()
        .filter(|job| job.enabled)
        .filter_map(|job| {
            let watch = job.rules.on_file?;
            pools.contains(&&watch.pool).then_some(FileWatch {
                job_id: job.id,
                paths: watch.paths,
                events: watch.events,
                recursive: watch.recursive,
                debounce_ms: watch.debounce_ms,
            })
        })
        .collect();
    Ok(WorkerReply::FileWatches { watches })
}

/// The worker that watches `pool`'s files: the first by id of its live workers that are not
/// draining (`None` when none is known yet: then each asker watches, and the store keeps a
/// change to one run).
fn watcher_of<'a>(live: &'a [workers::WorkerView], pool: &str) -> Option<&'a str> {
    live.iter()
        .filter(|worker| !worker.draining && worker.pools.iter().any(|p| p == pool))
        .map(|worker| worker.worker_id.as_str())
        .min()
}

/// A worker saw a watched file change: the job's run starts, once per change.
pub async fn changed(
    app: &App,
    worker_id: &WorkerId,
    change: FileChange,
) -> ServiceResult<WorkerReply> {
    let job = match jobs::get(app, change.job_id).await {
        Ok(job) => job,
        Err(_) => {
            return Ok(WorkerReply::Rejected {
                reason: format!("job {} no longer exists", change.job_id),
            })
        }
    };
    let Some(watch) = job.rules.on_file.as_ref().filter(|_| job.enabled) else {
        return Ok(WorkerReply::Rejected {
            reason: format!("job {} watches no files now", job.id),
        });
    };
    if !watch.wants(&change.path, &change.event) {
        return Ok(WorkerReply::Rejected {
            reason: format!(
                "job {} does not watch `{}` for {}",
                job.id, change.path, change.event
            ),
        });
    }
    // The same change of a shared file has the same modification time on every worker; a
    // delete has none, and counts once per debounce window.
    let stamp = match change.modified_ms {
        Some(ms) => format!("m{ms}:{}", change.size.unwrap_or_default()),
        None => {
            let window = i64::try_from(watch.debounce_ms.max(1000)).unwrap_or(i64::MAX);
            format!("w{}", change.seen_at.timestamp_millis() / window)
        }
    };
    let key = format!("file:{}:{}:{stamp}", change.event, change.path);
    let now = Utc::now();
    if let Some(reason) = rules::refusal(app, &job, now).await? {
        if app.store.record_keyed_fire(job.id, &key, None).await? {
            rules::skipped(app, &job, Trigger::File, &reason, now).await;
        }
        return Ok(WorkerReply::Ok);
    }
    let file = json!({
        "path": change.path,
        "name": change.path.rsplit('/').next(),
        "event": change.event,
        "size": change.size,
        "modified_at": change.modified_ms.and_then(chrono::DateTime::<Utc>::from_timestamp_millis),
    });
    let mut run = Run::queued(Trigger::File, Some(&job), job.run_snapshot(), None);
    if let RunKind::Shell { stdin, .. } = &mut run.settings.kind {
        *stdin = Some(file.to_string());
    }
    fill_values(&mut run, &job, json!({ "file": file }));
    let queued = runs::prepare(
        &mut run,
        json!({
            "step": "queued",
            "trigger": Trigger::File,
            "path": change.path,
            "event": change.event,
            "seen_by": worker_id,
            "seen_at": change.seen_at,
        }),
    );
    let storing = std::time::SystemTime::now();
    if app
        .store
        .record_keyed_fire(job.id, &key, Some((&run, &[queued])))
        .await?
    {
        traces::stored([&run], storing);
        runs::send_stored(app, run).await?;
    }
    Ok(WorkerReply::Ok)
}
