//! The delivery writer: stores deliveries in batches (group commit), answers each waiting
//! request once its run is committed, then sends the new runs to the workers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::RunId;
use chrono::Utc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::error::{ServiceError, ServiceResult};
use crate::model::Run;
use crate::webhooks::model::{DeliveryOutcome, NewDelivery};

/// Deliveries waiting for the writer; beyond this, new ones get 503.
pub(super) const WRITER_QUEUE: usize = 16_384;
/// Most deliveries stored in one transaction.
const MAX_BATCH: usize = 1024;
/// How often queued runs in the store are counted again while deliveries arrive.
const QUEUED_RECOUNT: Duration = Duration::from_millis(500);
/// How often they are counted when no delivery came (the count grows costly with the queue).
const QUEUED_RECOUNT_IDLE: Duration = Duration::from_secs(10);

/// What the writer did with one delivery.
pub enum Submitted {
    Created(Box<Run>),
    Duplicate(RunId),
}

/// A delivery waiting for the writer, and where its outcome goes.
pub(super) struct Pending {
    pub(super) delivery: NewDelivery,
    pub(super) reply: oneshot::Sender<ServiceResult<Submitted>>,
}

/// The delivery writer: stores what arrived while the last batch was written, in one
/// transaction, answers every waiting request, then sends the new runs to the workers.
pub async fn run_delivery_writer(app: Arc<App>, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut queue = app
        .deliveries
        .queue_rx
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
        .ok_or_else(|| anyhow::anyhow!("the delivery writer runs once per process"))?;
    // The count is taken beside the writer, never in its way.
    tokio::spawn(recount_queued_runs(Arc::clone(&app), cancel.clone()));
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                // Whatever is queued already was promised an answer: write it, then stop.
                queue.close();
                None
            }
            first = queue.recv() => first,
        };
        match first {
            Some(pending) => batch.push(pending),
            None if cancel.is_cancelled() => {}
            None => return Ok(()),
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        write_batch(&app, std::mem::take(&mut batch)).await;
    }
}

/// Keeps the estimate of queued runs (the bound on queued work) close to the store's count:
/// every `QUEUED_RECOUNT` while deliveries look at it, every `QUEUED_RECOUNT_IDLE` otherwise
/// (runs queued by other means, completions), so a replica that takes no webhooks does not
/// count a long queue twice a second.
async fn recount_queued_runs(app: Arc<App>, cancel: CancellationToken) {
    let mut counted_at = None::<tokio::time::Instant>;
    loop {
        let asked = app.deliveries.bound_asked.swap(false, Ordering::Relaxed);
        if asked || counted_at.is_none_or(|at| at.elapsed() >= QUEUED_RECOUNT_IDLE) {
            match app.store.count_queued_runs().await {
                Ok(count) => app.deliveries.queued_runs.store(count, Ordering::Relaxed),
                Err(err) => tracing::warn!(error = %err, "counting queued runs failed"),
            }
            counted_at = Some(tokio::time::Instant::now());
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(QUEUED_RECOUNT) => {}
        }
    }
}

async fn write_batch(app: &Arc<App>, batch: Vec<Pending>) {
    let (deliveries, replies): (Vec<NewDelivery>, Vec<_>) = batch
        .into_iter()
        .map(|pending| (pending.delivery, pending.reply))
        .unzip();
    let outcomes = match app.store.record_deliveries(&deliveries, Utc::now()).await {
        Ok(outcomes) => outcomes,
        Err(err) => {
            tracing::warn!(error = %err, deliveries = deliveries.len(), "storing webhook deliveries failed; they were refused");
            for reply in replies {
                let _ = reply.send(Err(ServiceError::Unavailable(format!(
                    "could not store the delivery ({err}); nothing was started, send it again"
                ))));
            }
            return;
        }
    };
    let mut to_publish = Vec::new();
    let mut created = 0u64;
    let mut wake_dispatcher = false;
    for ((delivery, reply), outcome) in deliveries.into_iter().zip(replies).zip(outcomes) {
        let answer = match outcome {
            DeliveryOutcome::Created => {
                let run = delivery.run;
                created += 1;
                tracing::debug!(run.id = %run.id, webhook.id = ?run.webhook_id, "webhook run queued");
                if run.dispatched_at.is_some() {
                    to_publish.push(run.clone());
                } else {
                    wake_dispatcher = true;
                }
                Submitted::Created(Box::new(run))
            }
            DeliveryOutcome::Duplicate(run_id) => Submitted::Duplicate(run_id),
        };
        // The client may have gone; the run is stored either way.
        let _ = reply.send(Ok(answer));
    }
    app.deliveries
        .queued_runs
        .fetch_add(created, Ordering::Relaxed);
    if wake_dispatcher {
        app.dispatcher_wake.notify_one();
    }
    if !to_publish.is_empty() {
        let app = Arc::clone(app);
        tokio::spawn(async move {
            for run in to_publish {
                app.publish_dispatched(run).await;
            }
        });
    }
}
