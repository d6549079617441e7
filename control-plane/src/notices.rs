//! Notices between control-plane replicas. In the fleet, whatever one replica changes (a run's
//! events or state, a job) is told to the others over the bus, so a client following a run live
//! sees it whichever replica it reached, a completion on one replica sees the events another one
//! stored, and the leader's scheduler looks at a job created on any replica. Notices are hints:
//! the store stays the truth, and followers also look again periodically.

use std::collections::HashSet;
use std::sync::Arc;

use autopilot_proto::{Notice, NoticeKind, RunId};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Change};

/// Most run ids in one notice.
const MAX_RUNS_PER_NOTICE: usize = 512;

/// Sends this replica's changes to the others, and hands theirs to the local followers and the
/// scheduler.
pub async fn run_relay(
    app: Arc<App>,
    mut outgoing: mpsc::Receiver<Change>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut incoming = app.bus.subscribe_notices().await?;
    loop {
        // Not biased: a steady flow of notices from the others must not starve ours.
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            notice = incoming.next() => match notice {
                Some(notice) if notice.origin != app.replica_id => receive(&app, notice.what),
                Some(_) => {}
                None => anyhow::bail!("the bus closed the notice stream"),
            },
            first = outgoing.recv() => {
                let Some(first) = first else { return Ok(()) };
                send(&app, first, &mut outgoing).await;
            }
        }
    }
}

fn receive(app: &App, what: NoticeKind) {
    match what {
        NoticeKind::RunsUpdated { run_ids } => {
            for run_id in run_ids {
                // Nobody following is fine.
                let _ = app.run_updates.send(run_id);
            }
        }
        NoticeKind::JobsChanged => {
            // The scheduler and what keeps jobs read (the webhook intake, the chainer) look again.
            app.scheduler_wake.notify_one();
            app.notify_webhooks_changed();
        }
    }
}

/// Tells everything waiting, in as few notices as it takes.
async fn send(app: &App, first: Change, outgoing: &mut mpsc::Receiver<Change>) {
    let mut runs: HashSet<RunId> = HashSet::new();
    let mut jobs = false;
    let mut next = Some(first);
    while let Some(change) = next.take() {
        match change {
            Change::Run(run_id) => {
                runs.insert(run_id);
            }
            Change::Jobs => jobs = true,
        }
        if runs.len() < MAX_RUNS_PER_NOTICE * 4 {
            next = outgoing.try_recv().ok();
        }
    }
    let runs: Vec<RunId> = runs.into_iter().collect();
    let mut notices: Vec<NoticeKind> = runs
        .chunks(MAX_RUNS_PER_NOTICE)
        .map(|chunk| NoticeKind::RunsUpdated {
            run_ids: chunk.to_vec(),
        })
        .collect();
    if jobs {
        notices.push(NoticeKind::JobsChanged);
    }
    for what in notices {
        let notice = Notice {
            origin: app.replica_id.clone(),
            what,
        };
        if let Err(err) = app.bus.publish_notice(notice).await {
            // Other replicas' followers catch up at their next periodic look.
            tracing::debug!(error = %err, "telling the other control planes failed");
        }
    }
}
