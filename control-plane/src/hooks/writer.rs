//! The delivery writer: stores deliveries in batches (group commit), through the webhooks
//! service, and answers each waiting request once its run is committed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::RunId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::intake::Intake;
use crate::app::App;
use crate::domain::webhook::{DeliveryOutcome, NewDelivery};
use crate::domain::{Run, ServiceError, ServiceResult};
use crate::services::{runs, webhooks};

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
pub struct Pending {
    pub(super) delivery: NewDelivery,
    pub(super) reply: oneshot::Sender<ServiceResult<Submitted>>,
}

/// The delivery writer: stores what arrived while the last batch was written, in one
/// transaction, answers every waiting request, then sends the new runs to the workers.
pub async fn run_delivery_writer(
    app: Arc<App>,
    intake: Arc<Intake>,
    mut queue: mpsc::Receiver<Pending>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    // The count is taken beside the writer, never in its way.
    tokio::spawn(recount_queued_runs(
        Arc::clone(&app),
        Arc::clone(&intake),
        cancel.clone(),
    ));
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
        write_batch(&app, &intake, std::mem::take(&mut batch)).await;
    }
}

/// Keeps the estimate of queued runs (the bound on queued work) close to the store's count:
/// every `QUEUED_RECOUNT` while deliveries look at it, every `QUEUED_RECOUNT_IDLE` otherwise
/// (runs queued by other means, completions), so a replica that takes no webhooks does not
/// count a long queue twice a second.
async fn recount_queued_runs(app: Arc<App>, intake: Arc<Intake>, cancel: CancellationToken) {
    let mut counted_at = None::<tokio::time::Instant>;
    loop {
        let asked = intake.bound_asked.swap(false, Ordering::Relaxed);
        if asked || counted_at.is_none_or(|at| at.elapsed() >= QUEUED_RECOUNT_IDLE) {
            match runs::count_queued(&app).await {
                Ok(count) => intake.queued_runs.store(count, Ordering::Relaxed),
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

async fn write_batch(app: &Arc<App>, intake: &Intake, batch: Vec<Pending>) {
    let (deliveries, replies): (Vec<NewDelivery>, Vec<_>) = batch
        .into_iter()
        .map(|pending| (pending.delivery, pending.reply))
        .unzip();
    let outcomes = match webhooks::record_deliveries(app, &deliveries).await {
        Ok(outcomes) => outcomes,
        Err(err) => {
            tracing::warn!(error = %err, deliveries = deliveries.len(), "storing webhook deliveries failed; they were refused");
            app.metrics.error("webhook_writer");
            for reply in replies {
                let _ = reply.send(Err(match &err {
                    ServiceError::StorageFull => ServiceError::StorageFull,
                    err => ServiceError::Unavailable(format!(
                        "could not store the delivery ({err}); nothing was started, send it again"
                    )),
                }));
            }
            return;
        }
    };
    let mut created = 0u64;
    let (mut dispatched, mut waiting) = (Vec::new(), false);
    for ((delivery, reply), outcome) in deliveries.into_iter().zip(replies).zip(outcomes) {
        let answer = match outcome {
            DeliveryOutcome::Created => {
                let run = delivery.run;
                created += 1;
                tracing::debug!(run.id = %run.id, webhook.id = ?run.webhook_id, "webhook run queued");
                if run.dispatched_at.is_some() {
                    dispatched.push(run.clone());
                } else {
                    waiting = true;
                }
                Submitted::Created(Box::new(run))
            }
            DeliveryOutcome::Duplicate(run_id) => Submitted::Duplicate(run_id),
        };
        // The client may have gone; the run is stored either way.
        let _ = reply.send(Ok(answer));
    }
    intake.queued_runs.fetch_add(created, Ordering::Relaxed);
    // Answered first: the runs go to the workers after.
    webhooks::send_created(app, dispatched, waiting);
}
