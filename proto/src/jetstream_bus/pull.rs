//! Pull consumption that outlives connection trouble.
//!
//! async-nats re-issues pull requests after a reconnect by itself. On top of that, any error the
//! pull stream reports (missed heartbeats, a pull request the server refused, the consumer
//! deleted under us) drops the stream and opens it again: the consumer is created or updated
//! first, so a consumer lost with the server's state comes back. The caller just sees the next
//! delivery, later; each failure is logged once, with the delay before the next try.

use std::marker::PhantomData;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::stream;
use async_nats::jetstream::{self as js, AckKind};
use async_trait::async_trait;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use super::setup;
use crate::bus::{Acker, BusError, Delivery};

/// How long one pull request waits on the server for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// How often the server confirms a waiting pull request is alive; two missed ones reopen it.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
const REOPEN_DELAY_MIN: Duration = Duration::from_millis(100);
const REOPEN_DELAY_MAX: Duration = Duration::from_secs(5);

/// Where a pull stream takes its messages from.
pub(super) struct PullSource {
    /// What the messages are, for logs: "run requests", "event batches".
    pub what: &'static str,
    pub jetstream: js::Context,
    /// Set up again with the consumer whenever the pull is reopened: a server that lost its
    /// store (no persistent volume) comes back without either.
    pub stream: stream::Config,
    pub consumer: pull::Config,
    /// Messages asked for per pull request.
    pub batch: usize,
    pub url: String,
}

impl PullSource {
    async fn open(&self, after_failure: bool) -> Result<pull::Stream, BusError> {
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
        consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|err| setup::unavailable(&self.url, &format!("pulling {}", self.what), err))
    }
}

/// Deliveries of `source`, decoded as `T`. Setting up the consumer the first time is the
/// caller's error; later trouble is retried (see the module comment).
pub(super) async fn deliveries<T>(
    source: PullSource,
) -> Result<impl Stream<Item = Delivery<T>> + Send + 'static, BusError>
where
    T: DeserializeOwned + Send + 'static,
{
    let messages = source.open(false).await?;
    let state = PullState::<T> {
        source,
        messages: Some(messages),
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
    messages: Option<pull::Stream>,
    reopen_delay: Duration,
    decoded: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> PullState<T> {
    async fn next_delivery(&mut self) -> Delivery<T> {
        let what = self.source.what;
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match self.source.open(true).await {
                    Ok(messages) => {
                        tracing::info!(what, "pulling again");
                        self.messages = Some(messages);
                        self.reopen_delay = REOPEN_DELAY_MIN;
                    }
                    Err(err) => self.back_off(&err).await,
                }
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => {
                    if let Some(delivery) = decode(message, what).await {
                        return delivery;
                    }
                }
                Some(Err(err)) => {
                    self.messages = None;
                    self.back_off(&err).await;
                }
                None => {
                    self.messages = None;
                    self.back_off(&"the pull stream ended").await;
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
async fn decode<T: DeserializeOwned>(
    message: js::Message,
    what: &'static str,
) -> Option<Delivery<T>> {
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
        Ok(decoded) => Some(Delivery {
            message: decoded,
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
