//! Pull consumption that outlives connection trouble.
//!
//! Two ways to pull:
//!
//! - **Into free slots** (run requests): a pull request asks for as many messages as the caller
//!   has free slots (up to a batch size), and holds those slots until its messages came or it
//!   expired; each message takes one slot with it. A worker whose slots are all busy asks for
//!   nothing, so it holds nothing an idle worker could start. (async-nats's long-lived pull
//!   stream renews its pull request on a timer whatever the caller can take, which would park a
//!   request at a busy worker until its ack wait ran out.) Under load one pull request brings
//!   many messages; when idle, a message is delivered the moment it is published. After a
//!   reconnect the stream, the consumer and the pending pull request are set up again, since a
//!   restarted server has forgotten the request and may have lost more.
//! - **Prefetch** (event batches): async-nats's pull stream with a batch size, which renews pull
//!   requests by itself, also after a reconnect, and checks the server's heartbeats.
//!
//! Any error (missed heartbeats, a pull request the server refused, the consumer deleted under
//! us) drops the pull and opens it again after a growing delay: the stream and the consumer are
//! created or updated first, so a server that came back without its store gets them back. The
//! caller just sees the next delivery, later; each failure is logged once, with the delay
//! before the next try.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, PullConsumer};
use async_nats::jetstream::stream;
use async_nats::jetstream::{self as js, AckKind};
use async_trait::async_trait;
use futures::{FutureExt, Stream, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::setup;
use crate::bus::{Acker, BusError, Delivery};

/// How long one pull request waits on the server for messages before it is renewed. Also
/// bounds how long a pull request the server lost without a reconnect goes unnoticed.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// How often the server confirms a waiting prefetch pull request is alive; two missed ones
/// reopen it.
const PULL_HEARTBEAT: Duration = Duration::from_secs(3);
const REOPEN_DELAY_MIN: Duration = Duration::from_millis(100);
const REOPEN_DELAY_MAX: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub(super) enum PullMode {
    /// As many messages per pull request as `slots` has free permits, up to `batch`; each
    /// message comes with its permit.
    IntoSlots { slots: Arc<Semaphore>, batch: usize },
    /// Up to this many messages per pull request, renewed ahead of the caller.
    Prefetch(usize),
}

/// Where a pull stream takes its messages from.
pub(super) struct PullSource {
    /// What the messages are, for logs: "run requests", "event batches".
    pub what: &'static str,
    pub jetstream: js::Context,
    /// Set up again with the consumer whenever the pull is reopened.
    pub stream: stream::Config,
    pub consumer: pull::Config,
    pub mode: PullMode,
    /// Changes on every reconnection of the client.
    pub reconnections: watch::Receiver<u64>,
    pub url: String,
}

/// An open pull.
enum Pull {
    IntoSlots {
        /// Boxed: consumer info is large, and one pull lives as long as its stream.
        consumer: Box<PullConsumer>,
        slots: Arc<Semaphore>,
        batch: usize,
        /// The pull request waiting for messages, with the slots kept for them.
        waiting: Option<(pull::Batch, OwnedSemaphorePermit)>,
    },
    Prefetch(pull::Stream),
}

impl PullSource {
    async fn open(&self, after_failure: bool) -> Result<Pull, BusError> {
        if after_failure {
            setup::ensure_stream(&self.jetstream, self.stream.clone(), &self.url).await?;
        }
        let consumer = setup::ensure_consumer(
            &self.jetstream,
            &self.stream.name,
            self.consumer.clone(),
            &self.url,
        )
        .await?;
        match &self.mode {
            PullMode::IntoSlots { slots, batch } => Ok(Pull::IntoSlots {
                consumer: Box::new(consumer),
                slots: Arc::clone(slots),
                batch: *batch,
                waiting: None,
            }),
            PullMode::Prefetch(batch) => consumer
                .stream()
                .max_messages_per_batch(*batch)
                .expires(PULL_EXPIRES)
                .heartbeat(PULL_HEARTBEAT)
                .messages()
                .await
                .map(Pull::Prefetch)
                .map_err(|err| {
                    setup::unavailable(&self.url, &format!("pulling {}", self.what), err)
                }),
        }
    }
}

type PullError = Box<dyn std::error::Error + Send + Sync>;

/// What waiting on a pull gave.
enum Pulled {
    /// A message, with its slot when pulled into slots.
    Message(Box<js::Message>, Option<OwnedSemaphorePermit>),
    /// The pull stream ended; open it again.
    Ended,
    /// The client reconnected while a pull into slots waited. The server may have restarted
    /// and forgotten the pull request, or even lost the consumer (nats-server 2.9 then stays
    /// silent), so the pull is set up again from the stream down.
    Reconnected,
}

impl Pull {
    async fn next(
        &mut self,
        reconnections: &mut watch::Receiver<u64>,
    ) -> Result<Pulled, PullError> {
        match self {
            Pull::Prefetch(messages) => match messages.next().await {
                Some(message) => Ok(Pulled::Message(Box::new(message?), None)),
                None => Ok(Pulled::Ended),
            },
            Pull::IntoSlots {
                consumer,
                slots,
                batch: most,
                waiting,
            } => loop {
                let (batch, held) = match waiting {
                    Some(waiting) => waiting,
                    None => {
                        // One free slot to wait for, and every other one free now.
                        let mut held = Arc::clone(slots).acquire_owned().await?;
                        let more = slots.available_permits().min(most.saturating_sub(1));
                        if let Ok(more) = Arc::clone(slots).try_acquire_many_owned(more as u32) {
                            held.merge(more);
                        }
                        let batch = consumer
                            .batch()
                            .max_messages(held.num_permits())
                            .expires(PULL_EXPIRES)
                            .messages()
                            .await?;
                        waiting.insert((batch, held))
                    }
                };
                tokio::select! {
                    message = batch.next() => match message {
                        Some(message) => {
                            let slot = take_slot(held, slots).await?;
                            return Ok(Pulled::Message(Box::new(message?), Some(slot)));
                        }
                        // Every message came, or the request expired: the slots left go back,
                        // and the next request asks for what is free then.
                        None => *waiting = None,
                    },
                    Ok(()) = reconnections.changed() => {
                        // A message that arrived before the connection dropped is still ours.
                        let pulled = match batch.next().now_or_never().flatten() {
                            Some(message) => {
                                let slot = take_slot(held, slots).await?;
                                Pulled::Message(Box::new(message?), Some(slot))
                            }
                            None => Pulled::Reconnected,
                        };
                        *waiting = None;
                        return Ok(pulled);
                    }
                }
            },
        }
    }
}

/// One of the slots kept for a pull request, for a message it brought. The server sends no more
/// than was asked for; should it, the message waits for a slot to free up.
async fn take_slot(
    held: &mut OwnedSemaphorePermit,
    slots: &Arc<Semaphore>,
) -> Result<OwnedSemaphorePermit, PullError> {
    match held.split(1) {
        Some(slot) => Ok(slot),
        None => Ok(Arc::clone(slots).acquire_owned().await?),
    }
}

/// A message type delivered by a pull: decoded from the payload, then given the headers it
/// reads something from.
pub(super) trait BusMessage: DeserializeOwned {
    fn read_headers(&mut self, _headers: &async_nats::HeaderMap) {}
}

impl BusMessage for crate::bus::EventBatch {}

impl BusMessage for crate::bus::RunRequest {
    fn read_headers(&mut self, headers: &async_nats::HeaderMap) {
        self.trace_parent = headers
            .get(crate::bus::TRACEPARENT_HEADER)
            .map(|value| value.as_str().to_owned());
    }
}

/// Deliveries of `source`, decoded as `T`, each with its slot when pulled into slots. Setting
/// up the consumer the first time is the caller's error; later trouble is retried (see the
/// module comment).
pub(super) async fn deliveries<T>(
    mut source: PullSource,
) -> Result<
    impl Stream<Item = (Delivery<T>, Option<OwnedSemaphorePermit>)> + Send + 'static,
    BusError,
>
where
    T: BusMessage + Send + 'static,
{
    source.reconnections.mark_unchanged();
    let pull = source.open(false).await?;
    let state = PullState::<T> {
        source,
        pull: Some(pull),
        reopen_delay: REOPEN_DELAY_MIN,
        decoded: PhantomData,
    };
    Ok(futures::stream::unfold(state, |mut state| async move {
        let delivery = state.next_delivery().await;
        Some((delivery, state))
    }))
}

struct PullState<T> {
    source: PullSource,
    /// `None` after a failure, until it is opened again.
    pull: Option<Pull>,
    reopen_delay: Duration,
    decoded: PhantomData<fn() -> T>,
}

impl<T: BusMessage> PullState<T> {
    async fn next_delivery(&mut self) -> (Delivery<T>, Option<OwnedSemaphorePermit>) {
        let what = self.source.what;
        loop {
            let Some(pull) = self.pull.as_mut() else {
                match self.source.open(true).await {
                    Ok(pull) => {
                        tracing::info!(what, "pulling again");
                        self.pull = Some(pull);
                        self.reopen_delay = REOPEN_DELAY_MIN;
                    }
                    Err(err) => self.back_off(&err).await,
                }
                continue;
            };
            match pull.next(&mut self.source.reconnections).await {
                Ok(Pulled::Message(message, slot)) => {
                    // A message that does not decode gives its slot back.
                    if let Some(delivery) = decode(*message, what).await {
                        return (delivery, slot);
                    }
                }
                Ok(Pulled::Reconnected) => self.pull = None,
                Ok(Pulled::Ended) => {
                    self.pull = None;
                    self.back_off(&"the pull stream ended").await;
                }
                Err(err) => {
                    self.pull = None;
                    self.back_off(&err).await;
                }
            }
        }
    }

    async fn back_off(&mut self, err: &(dyn std::fmt::Display + Send + Sync)) {
        tracing::warn!(
            what = self.source.what,
            stream = %self.source.stream.name,
            error = %err,
            retry_in_ms = self.reopen_delay.as_millis() as u64,
            "pulling from the bus failed; opening the pull again"
        );
        tokio::time::sleep(self.reopen_delay).await;
        self.reopen_delay = (self.reopen_delay * 2).min(REOPEN_DELAY_MAX);
    }
}

/// The delivery of one message, or `None` for a message that is not ours to deliver: a payload
/// that does not decode is terminated (redelivering it would only fail again) and logged.
async fn decode<T: BusMessage>(message: js::Message, what: &'static str) -> Option<Delivery<T>> {
    let (delivery_count, stream_seq) = match message.info() {
        Ok(info) => (
            u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1),
            info.stream_sequence,
        ),
        Err(err) => {
            tracing::warn!(what, subject = %message.subject, error = %err, "message without JetStream delivery info ignored");
            return None;
        }
    };
    let (message, acker) = message.split();
    match serde_json::from_slice::<T>(&message.payload) {
        Ok(mut decoded) => Some(Delivery {
            message: {
                if let Some(headers) = &message.headers {
                    decoded.read_headers(headers);
                }
                decoded
            },
            delivery_count,
            acker: Box::new(JetStreamAcker { acker }),
        }),
        Err(err) => {
            tracing::error!(
                what,
                subject = %message.subject,
                stream.seq = stream_seq,
                error = %err,
                "malformed message on the bus terminated; it will not be delivered again"
            );
            if let Err(err) = acker.ack_with(AckKind::Term).await {
                tracing::warn!(what, stream.seq = stream_seq, error = %err, "could not terminate a malformed message");
            }
            None
        }
    }
}

/// `ack` → `+ACK`, `nak(delay)` → `-NAK {"delay": …}`, `in_progress` → `+WPI`.
struct JetStreamAcker {
    acker: js::message::Acker,
}

fn acknowledgement_failed(err: async_nats::Error) -> BusError {
    BusError::Unavailable(format!("acknowledging a delivery failed: {err}"))
}

#[async_trait]
impl Acker for JetStreamAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.acker.ack().await.map_err(acknowledgement_failed)
    }

    async fn nak(&self, delay: Duration) -> Result<(), BusError> {
        let delay = Some(delay).filter(|delay| !delay.is_zero());
        self.acker
            .ack_with(AckKind::Nak(delay))
            .await
            .map_err(acknowledgement_failed)
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        self.acker
            .ack_with(AckKind::Progress)
            .await
            .map_err(acknowledgement_failed)
    }
}
