//! The event sink of one attempt: the events an [`Attempt`](super::attempt::Attempt) reports
//! are numbered in the order they happened and published in batches from a task of their own.
//!
//! The attempt holds the [`EventSender`] while it runs and closes it when the run is over; the
//! sink then hands back what the completion needs ([`EventsLeft`]): how many events went out on
//! the event stream, and the last batch, which travels with the completion through the run
//! loop's completion batcher (see [`super`]) instead of being published on its own.

use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::{Bus, BusError, EventBatch, EventKind, EventOrigin, NewRunEvent, RunId};
use chrono::Utc;
use serde_json::Value;
use tokio::sync::mpsc;

use super::MAX_COMPLETION_BYTES;

/// One event as the attempt reported it, with the time it happened (its batch goes out up to a
/// linger later).
type TimedEvent = (EventKind, Value, chrono::DateTime<Utc>);

/// Numbers a run's events and publishes them in batches from its own task, so a slow bus never
/// blocks reading the process's output for long.
pub(super) struct EventSink;

/// What a run's event stream leaves to its completion: how many events it published, and the
/// last batch, to ride with the completion, with its size in a request.
#[derive(Default)]
pub(super) struct EventsLeft {
    pub(super) published: u64,
    pub(super) last: Vec<NewRunEvent>,
    pub(super) last_bytes: usize,
}

/// The attempt's end of the sink: events go in here, in the order they happened.
pub(super) struct EventSender {
    tx: mpsc::Sender<TimedEvent>,
}

impl EventSink {
    /// Starts the publishing task of attempt `attempt` of run `run_id`: batches of at most
    /// `batch_max` events, each waiting up to `linger` for more. The task ends once the sender
    /// is closed, returning what the completion carries.
    pub(super) fn start(
        bus: Arc<dyn Bus>,
        run_id: RunId,
        attempt: u32,
        batch_max: usize,
        linger: Duration,
    ) -> (EventSender, tokio::task::JoinHandle<EventsLeft>) {
        let (tx, mut rx) = mpsc::channel::<TimedEvent>(1024);
        let publisher = tokio::spawn(async move {
            let mut numbered = 0u64;
            let mut published = 0u64;
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                // What follows within the linger goes in the same batch: a short run's events
                // travel and are stored together. The end of the run (the sender dropped) ends
                // the wait at once.
                let deadline = tokio::time::Instant::now() + linger;
                let mut ended = false;
                while batch.len() < batch_max.max(1) {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(next)) => batch.push(next),
                        Ok(None) => {
                            ended = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let events: Vec<NewRunEvent> = batch
                    .into_iter()
                    .map(|(kind, data, at)| {
                        numbered += 1;
                        NewRunEvent {
                            run_id,
                            attempt,
                            origin: EventOrigin::Worker,
                            origin_seq: numbered,
                            at,
                            kind,
                            data,
                        }
                    })
                    .collect();
                // Sized only at the end: the batches before it are published anyway.
                if let Some(bytes) = ended.then(|| completion_bytes(&events)).flatten() {
                    // The last batch goes with the completion, stored with the final state.
                    return EventsLeft {
                        published,
                        last: events,
                        last_bytes: bytes,
                    };
                }
                published += events.len() as u64;
                publish_with_retry(bus.as_ref(), EventBatch { events }).await;
            }
            EventsLeft {
                published,
                ..EventsLeft::default()
            }
        });
        (EventSender { tx }, publisher)
    }
}

impl EventSender {
    /// Adds an event of `kind`, stamped with the time of this call.
    pub(super) async fn send(&self, kind: EventKind, data: Value) {
        // The publisher only ends after this sender is dropped.
        let _ = self.tx.send((kind, data, Utc::now())).await;
    }

    /// Adds a lifecycle event: `details` with `step` set to `step`.
    pub(super) async fn lifecycle(&self, step: &str, mut details: Value) {
        if let Value::Object(map) = &mut details {
            map.insert("step".into(), Value::String(step.to_owned()));
        }
        self.send(EventKind::Lifecycle, details).await;
    }

    /// Closes the stream and waits until every event is published, but the last batch, which it
    /// returns for the completion.
    pub(super) async fn finish(self, publisher: tokio::task::JoinHandle<EventsLeft>) -> EventsLeft {
        drop(self.tx);
        publisher.await.unwrap_or_default()
    }
}

/// About how many bytes `events` take in a completion request, if they fit in one well under a
/// bus message's size limit (half a request's share); `None` as soon as they do not.
fn completion_bytes(events: &[NewRunEvent]) -> Option<usize> {
    let mut size = 0usize;
    for event in events {
        size += event.data.to_string().len() + 256;
        if size > MAX_COMPLETION_BYTES / 2 {
            return None;
        }
    }
    Some(size)
}

/// Publishes `batch`, trying again with a growing pause while the bus fails, and giving up
/// only when the event stream is closed for good.
async fn publish_with_retry(bus: &dyn Bus, batch: EventBatch) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match bus.publish_events(batch.clone()).await {
            Ok(()) => return,
            Err(BusError::Closed) => {
                tracing::error!("event stream closed; events of this batch are lost");
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "publishing events failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
