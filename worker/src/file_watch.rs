//! File watches on this worker's machine: the control plane says which files the jobs of this
//! worker's pools watch (asked at start, at every heartbeat and whenever it says they changed);
//! the directories are watched (inotify on Linux), each file's events are gathered until it is
//! quiet for the watch's debounce, and the settled change is reported, with the file's
//! modification time and size, so that workers sharing the files report the same change.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use autopilot_proto::files::{split_watch_path, watch_matches};
use autopilot_proto::{Bus, FileChange, FileWatch, JobId, WorkerReply, WorkerRequest};
use chrono::Utc;
use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::worker::WorkerConfig;

/// A file's events gathered until it is quiet.
struct Pending {
    created: bool,
    removed: bool,
    due: Instant,
}

/// The watches in force, and the watcher of their directories.
struct Watching {
    watches: Vec<FileWatch>,
    /// Dropped to stop watching.
    _watcher: Option<notify::RecommendedWatcher>,
}

/// Watches until `stop`: reports settled changes of the files this worker's pools watch.
pub async fn serve(
    config: Arc<WorkerConfig>,
    bus: Arc<dyn Bus>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watching = Watching {
        watches: Vec::new(),
        _watcher: None,
    };
    let mut pending: HashMap<(JobId, PathBuf), Pending> = HashMap::new();
    let mut refresh = tokio::time::interval(config.heartbeat_interval);
    loop {
        let next_due = pending.values().map(|p| p.due).min();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = refresh.tick() => refresh_watches(&config, bus.as_ref(), &events_tx, &mut watching).await,
            _ = changed.notified() => refresh_watches(&config, bus.as_ref(), &events_tx, &mut watching).await,
            Some(event) = events.recv() => match event {
                Ok(event) => gather(&watching.watches, &event, &mut pending),
                Err(err) => tracing::warn!(error = %err, "a file watch reported an error"),
            },
            _ = sleep_until(next_due) => {
                let now = Instant::now();
                let due: Vec<(JobId, PathBuf)> = pending
                    .iter()
                    .filter(|(_, p)| p.due <= now)
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in due {
                    if let Some(settled) = pending.remove(&key) {
                        report(&config, &bus, &watching.watches, key, settled);
                    }
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Asks for this worker's watches; when they changed, watches their directories instead.
async fn refresh_watches(
    config: &WorkerConfig,
    bus: &dyn Bus,
    events: &mpsc::UnboundedSender<notify::Result<notify::Event>>,
    watching: &mut Watching,
) {
    let request = WorkerRequest::FileWatches {
        worker_id: config.worker_id.clone(),
        pools: config.pools.clone(),
    };
    let watches = match bus.request(request).await {
        Ok(WorkerReply::FileWatches { watches }) => watches,
        Ok(other) => {
            tracing::debug!(reply = ?other, "file watches not known here");
            return;
        }
        Err(err) => {
            tracing::debug!(error = %err, "asking for file watches failed; trying again at the next beat");
            return;
        }
    };
    if watches == watching.watches {
        return;
    }
    // Each directory once, recursive when any watch of it is.
    let mut directories: HashMap<PathBuf, bool> = HashMap::new();
    for watch in &watches {
        for path in &watch.paths {
            if let Ok((directory, _)) = split_watch_path(path) {
                let recursive = directories.entry(PathBuf::from(directory)).or_default();
                *recursive |= watch.recursive;
            }
        }
    }
    let sender = events.clone();
    let mut watcher = match notify::recommended_watcher(move |event| {
        let _ = sender.send(event);
    }) {
        Ok(watcher) => watcher,
        Err(err) => {
            tracing::error!(error = %err, "this machine cannot watch files");
            return;
        }
    };
    let mut watched = BTreeSet::new();
    for (directory, recursive) in &directories {
        let mode = if *recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        match watcher.watch(directory, mode) {
            Ok(()) => {
                watched.insert(directory.display().to_string());
            }
            // Looked at again at the next beat: it may be made later.
            Err(err) => {
                tracing::warn!(directory = %directory.display(), error = %err, "cannot watch a directory")
            }
        }
    }
    tracing::info!(watches = watches.len(), directories = ?watched, "file watches in force");
    *watching = Watching {
        watches,
        _watcher: Some(watcher),
    };
}

/// Notes an event of each watched file it names.
fn gather(
    watches: &[FileWatch],
    event: &notify::Event,
    pending: &mut HashMap<(JobId, PathBuf), Pending>,
) {
    let (created, removed) = match event.kind {
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => (true, false),
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
            (false, true)
        }
        EventKind::Modify(_) => (false, false),
        _ => return,
    };
    for path in &event.paths {
        let Some(text) = path.to_str() else { continue };
        for watch in watches {
            let wanted = watch
                .paths
                .iter()
                .any(|pattern| watch_matches(pattern, text, watch.recursive));
            if !wanted {
                continue;
            }
            let due = Instant::now() + Duration::from_millis(watch.debounce_ms);
            let entry = pending
                .entry((watch.job_id, path.clone()))
                .or_insert(Pending {
                    created: false,
                    removed: false,
                    due,
                });
            entry.created |= created;
            entry.removed |= removed;
            entry.due = due;
        }
    }
}

/// A file settled: what changed, if its watch asks for that, goes to the control plane.
fn report(
    config: &Arc<WorkerConfig>,
    bus: &Arc<dyn Bus>,
    watches: &[FileWatch],
    (job_id, path): (JobId, PathBuf),
    settled: Pending,
) {
    let metadata = std::fs::metadata(&path).ok();
    let event = match (&metadata, settled.created) {
        (None, _) => "delete",
        (Some(_), true) => "create",
        // Deleted and made again within the debounce: it is new.
        (Some(_), false) if settled.removed => "create",
        (Some(_), false) => "modify",
    };
    let wanted = watches
        .iter()
        .any(|watch| watch.job_id == job_id && watch.events.iter().any(|e| e == event));
    if !wanted {
        return;
    }
    let change = FileChange {
        job_id,
        path: path.display().to_string(),
        event: event.to_owned(),
        modified_ms: metadata.as_ref().and_then(modified_ms),
        size: metadata.as_ref().map(std::fs::Metadata::len),
        seen_at: Utc::now(),
    };
    let request = WorkerRequest::FileChanged {
        worker_id: config.worker_id.clone(),
        change,
    };
    let bus = Arc::clone(bus);
    tokio::spawn(async move {
        match bus.request(request).await {
            Ok(WorkerReply::Ok) => {}
            Ok(WorkerReply::Rejected { reason }) => {
                tracing::debug!(reason, "a file change was not taken");
            }
            Ok(other) => tracing::warn!(reply = ?other, "unexpected answer to a file change"),
            Err(err) => tracing::warn!(error = %err, "could not report a file change"),
        }
    });
}

fn modified_ms(metadata: &std::fs::Metadata) -> Option<i64> {
    let since_epoch = metadata.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(since_epoch.as_millis()).ok()
}
