//! The fleet bus on NATS JetStream, with the semantics of the in-memory bus.
//!
//! Layout (every name starts with the configured prefix `P`, so deployments and tests can share a
//! server without seeing each other):
//!
//! - **Run requests**: stream `P-runs` on subjects `P.runs.<pool>`, work-queue retention (a
//!   request is removed once acknowledged), file storage, duplicate window = `dedup_window`
//!   (publishes carry `Nats-Msg-Id` = the dedup id). One durable pull consumer per pool,
//!   `pool-<pool>`, shared by the pool's workers: explicit ack, `ack_wait`, `max_deliver`,
//!   `backoff`. Pulled into the worker's free slots: a pull request asks for as many messages as
//!   the worker has slots free.
//! - **Run events**: stream `P-events` on subjects `P.events.<run id>`, work-queue retention,
//!   file storage. One durable pull consumer, `control-planes`, shared by every control plane:
//!   explicit ack, `ack_wait`, unlimited redelivery. Prefetched 64 at a time.
//! - **Control messages**: core NATS on `P.control`; every subscriber gets every message.
//! - **Notices** between control planes: core NATS on `P.notices`, the same way.
//! - **Worker requests**: core NATS request / reply on `P.worker.requests`, served by the queue
//!   group `control-planes` (one control plane answers each request).
//!
//! A run request that reached `max_deliver` deliveries is given up the way JetStream does it: the
//! server stops delivering it and announces it in a `MAX_DELIVERIES` advisory; one process of the
//! deployment (a queue group) logs the run it belonged to and deletes the message, so a consumer
//! created again later does not resurrect it.
//!
//! The streams and consumers are created or updated at start, so two processes starting at once
//! both succeed and a changed setting (ack wait, max deliver, …) takes effect on the next start.
//!
//! When nats-server goes away the client reconnects by itself, without end. Meanwhile publishes
//! and requests fail with `BusError::Unavailable` (saying what to start) or `Timeout`; pull
//! streams and subscriptions do not end: they resume after the reconnect, and a server that came
//! back without its store gets its streams and consumers set up again (tested in
//! `tests/tests/e2e/bus_jetstream.rs`, on nats-server 2.14 and 2.9).

mod blobs;
mod lease;
mod pull;
mod requests;
mod setup;

pub use blobs::ObjectBlobs;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::bus::{
    Bus, BusError, ControlMessage, Delivery, EventBatch, IncomingRequest, IncomingTask, Notice,
    RunDelivery, RunRequest, WorkerReply, WorkerRequest,
};
use crate::event::NewRunEvent;
use crate::{TaskReply, WorkerTask};

pub use lease::KvLease;
use setup::Names;

/// Tuning of the JetStream bus. The defaults suit production; tests shorten the timers and pick a
/// prefix of their own.
#[derive(Clone, Debug)]
pub struct JetStreamConfig {
    /// First token of every subject and stream name: 1 to 32 letters, digits, `-` or `_`.
    pub prefix: String,
    /// A run request delivery neither acknowledged nor kept alive (`in_progress`) within this
    /// time is delivered again.
    pub ack_wait: Duration,
    /// After this many deliveries a run request is given up (and logged).
    pub max_deliver: u32,
    /// How long each delivery of a run request may go unacknowledged before the next one, the
    /// last delay repeating; empty means `ack_wait` every time. JetStream takes the ack wait
    /// from the first delay (it overrides `ack_wait`, checked with nats-server 2.14), so the first
    /// delay must equal `ack_wait`; and `max_deliver` deliveries have `max_deliver - 1`
    /// redeliveries, so there must be fewer delays than that.
    pub backoff: Vec<Duration>,
    /// How long a run request's dedup id is remembered.
    pub dedup_window: Duration,
    /// How long a worker request waits for the control plane's reply, and any JetStream call
    /// (a publish acknowledgement, stream setup) for the server's answer.
    pub request_timeout: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            prefix: "autopilot".to_owned(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            backoff: Vec::new(),
            dedup_window: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl JetStreamConfig {
    fn validate(&self) -> Result<(), BusError> {
        let invalid =
            |field: &str, why: String| Err(BusError::InvalidConfig(format!("{field} {why}")));
        if !is_token(&self.prefix, 32) {
            return invalid(
                "prefix",
                format!(
                    "must be 1 to 32 letters, digits, `-` or `_` (got {:?})",
                    self.prefix
                ),
            );
        }
        if self.max_deliver == 0 {
            return invalid("max_deliver", "must be at least 1".into());
        }
        for (field, value) in [
            ("ack_wait", self.ack_wait),
            ("dedup_window", self.dedup_window),
            ("request_timeout", self.request_timeout),
        ] {
            if value < Duration::from_millis(1) {
                return invalid(field, format!("must be at least 1 ms (got {value:?})"));
            }
        }
        if self.backoff.iter().any(|delay| delay.is_zero()) {
            return invalid("backoff", "delays must not be zero".into());
        }
        if let Some(first) = self.backoff.first() {
            if *first != self.ack_wait {
                return invalid(
                    "backoff",
                    format!(
                        "must start with ack_wait ({:?}), got {first:?}: JetStream uses the \
                         first delay as the ack wait",
                        self.ack_wait
                    ),
                );
            }
            if self.backoff.len() >= self.max_deliver as usize {
                return invalid(
                    "backoff",
                    format!(
                        "must have fewer delays than max_deliver ({} >= {}): {} deliveries have \
                         {} redeliveries",
                        self.backoff.len(),
                        self.max_deliver,
                        self.max_deliver,
                        self.max_deliver - 1
                    ),
                );
            }
        }
        Ok(())
    }
}

/// A subject token and JetStream name: ASCII letters, digits, `-`, `_`.
fn is_token(value: &str, max_len: usize) -> bool {
    !value.is_empty()
        && value.len() <= max_len
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The bus of a fleet: cheap to clone, every clone shares one NATS connection.
#[derive(Clone)]
pub struct JetStreamBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: JetStreamConfig,
    names: Names,
    /// The server URL without credentials, for error messages.
    url: String,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// Changes on every reconnection (see `pull`).
    reconnections: watch::Receiver<u64>,
    /// When the connection was last made; `None` while it is down.
    connected_at: Arc<Mutex<Option<Instant>>>,
    /// Gives up run requests after their last delivery; stopped with the bus.
    max_deliveries_watch: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.max_deliveries_watch.abort();
    }
}

impl JetStreamBus {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`) and creates or updates the streams, which
    /// fails with a clear message when the server runs without JetStream. Consumers are set up
    /// by [`Bus::pull_runs`] and [`Bus::pull_events`], so a worker never creates the control
    /// planes' consumer.
    ///
    /// Once connected, the client reconnects by itself for as long as the bus lives.
    pub async fn connect(url: &str, config: JetStreamConfig) -> Result<Self, BusError> {
        config.validate()?;
        let shown_url = setup::redact_url(url);
        // Counts reconnections, so pulls into slots know to send their pull request again.
        let (reconnected, reconnections) = watch::channel(0u64);
        let disconnected = AtomicBool::new(false);
        let connected_at = Arc::new(Mutex::new(Some(Instant::now())));
        let connection = Arc::clone(&connected_at);
        let client = async_nats::ConnectOptions::new()
            .name("autopilot")
            .request_timeout(Some(config.request_timeout))
            .event_callback(move |event| {
                match event {
                    async_nats::Event::Disconnected => {
                        disconnected.store(true, Ordering::SeqCst);
                        *connection.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    }
                    async_nats::Event::Connected if disconnected.swap(false, Ordering::SeqCst) => {
                        *connection.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Instant::now());
                        reconnected.send_modify(|count| *count += 1)
                    }
                    _ => {}
                }
                setup::log_connection_event(event)
            })
            .connect(url)
            .await
            .map_err(|err| {
                BusError::Unavailable(format!(
                    "cannot connect to NATS at {shown_url}: {err}; is nats-server running with -js \
                     at {shown_url}?"
                ))
            })?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        let names = Names::new(&config.prefix);
        for stream in [
            names.runs_stream_config(&config),
            names.events_stream_config(&config),
        ] {
            setup::ensure_stream(&jetstream, stream, &shown_url).await?;
        }
        let max_deliveries_watch = tokio::spawn(setup::give_up_after_max_deliveries(
            client.clone(),
            jetstream.clone(),
            names.runs_stream.clone(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                names,
                url: shown_url,
                client,
                jetstream,
                reconnections,
                connected_at,
                max_deliveries_watch,
            }),
        })
    }

    fn connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes on core NATS: no persistence, every subscriber at that moment gets it.
    async fn publish_core<T: Serialize>(
        &self,
        subject: String,
        message: &T,
        what: &str,
    ) -> Result<(), BusError> {
        let payload = serde_json::to_vec(message)
            .map_err(|err| BusError::Malformed(format!("{what}: {err}")))?;
        self.inner
            .client
            .publish(subject, payload.into())
            .await
            .map_err(|err| self.unavailable(&format!("publishing a {what}"), err))
    }

    /// Subscribes on core NATS; malformed messages are logged and skipped.
    async fn subscribe_core<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        subject: String,
        what: &'static str,
    ) -> Result<BoxStream<'static, T>, BusError> {
        let subscriber = self
            .inner
            .client
            .subscribe(subject)
            .await
            .map_err(|err| self.unavailable(&format!("subscribing to {what}s"), err))?;
        // The server has the subscription before anything published after we return.
        setup::round_trip(&self.inner.client, &self.inner.url).await?;
        let messages = subscriber.filter_map(move |message| {
            let decoded = serde_json::from_slice::<T>(&message.payload);
            if let Err(err) = &decoded {
                tracing::warn!(subject = %message.subject, error = %err, "malformed {what} ignored");
            }
            futures::future::ready(decoded.ok())
        });
        Ok(messages.boxed())
    }

    fn unavailable(&self, what: &str, err: impl std::fmt::Display) -> BusError {
        setup::unavailable(&self.inner.url, what, err)
    }

    fn publish_error(
        &self,
        what: &str,
        subject: &str,
        err: async_nats::jetstream::context::PublishError,
    ) -> BusError {
        let failed = format!("publishing {what}");
        match err.kind() {
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe if !self.connected() => {
                self.unavailable(&failed, "not connected to NATS (reconnecting)")
            }
            PublishErrorKind::TimedOut => BusError::Timeout(self.inner.config.request_timeout),
            PublishErrorKind::MaxPayloadExceeded => BusError::Malformed(format!(
                "{what} is larger than the server's max_payload: {err}"
            )),
            PublishErrorKind::StreamNotFound => self.unavailable(
                &failed,
                format!(
                    "no JetStream stream answered for {subject} (JetStream not ready, or the \
                     stream was deleted)"
                ),
            ),
            _ => self.unavailable(&failed, err),
        }
    }

    /// Publishes one message to a stream and waits for the server to store it. When no stream
    /// takes the subject (a server that came back without its store), the stream is set up
    /// again and the publish tried once more.
    async fn publish_to_stream(
        &self,
        what: &str,
        stream: fn(&Names, &JetStreamConfig) -> jetstream::stream::Config,
        subject: String,
        publish: PublishMessage,
    ) -> Result<jetstream::publish::PublishAck, BusError> {
        match self.publish_once(subject.clone(), publish.clone()).await {
            Err(err) if err.kind() == PublishErrorKind::StreamNotFound && self.connected() => {
                let config = stream(&self.inner.names, &self.inner.config);
                tracing::warn!(stream = %config.name, %subject, "no stream takes the subject; setting it up again");
                setup::ensure_stream(&self.inner.jetstream, config, &self.inner.url).await?;
                self.publish_once(subject.clone(), publish).await
            }
            other => other,
        }
        .map_err(|err| self.publish_error(what, &subject, err))
    }

    async fn publish_once(
        &self,
        subject: String,
        publish: PublishMessage,
    ) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        self.inner
            .jetstream
            .send_publish(subject, publish)
            .await?
            .await
    }

    /// Publishes events in order, splitting a batch that is larger than the server accepts in
    /// one message (the store dedups each event, so a batch needs no atomicity).
    async fn publish_event_slices(&self, events: &[NewRunEvent]) -> Result<(), BusError> {
        #[derive(Serialize)]
        struct EventBatchSlice<'a> {
            events: &'a [NewRunEvent],
        }
        let max_payload = self.inner.client.server_info().max_payload;
        // Depth first, front half first, so the events go out in their order.
        let mut pending = vec![events];
        while let Some(slice) = pending.pop() {
            let Some(first) = slice.first() else { continue };
            let payload = serde_json::to_vec(&EventBatchSlice { events: slice })
                .map_err(|err| BusError::Malformed(format!("event batch: {err}")))?;
            if payload.len() > max_payload {
                if slice.len() == 1 {
                    return Err(BusError::Malformed(format!(
                        "event {} of run {} is {} bytes, more than the server's max_payload of {max_payload}",
                        first.origin_seq,
                        first.run_id,
                        payload.len()
                    )));
                }
                let (front, back) = slice.split_at(slice.len() / 2);
                pending.push(back);
                pending.push(front);
                continue;
            }
            let subject = self.inner.names.events_subject(&first.run_id.to_string());
            self.publish_to_stream(
                "run events",
                Names::events_stream_config,
                subject,
                PublishMessage::build().payload(payload.into()),
            )
            .await?;
        }
        Ok(())
    }
}

/// Dedup ids travel in a header, so they must be one line of printable text.
fn validate_dedup_id(dedup_id: &str) -> Result<(), BusError> {
    if dedup_id.is_empty() || dedup_id.len() > 512 || dedup_id.chars().any(|c| c.is_control()) {
        return Err(BusError::Malformed(format!(
            "dedup_id must be 1 to 512 characters without control characters (got {dedup_id:?})"
        )));
    }
    Ok(())
}

fn validate_pool(pool: &str) -> Result<(), BusError> {
    if !is_token(pool, 64) {
        return Err(BusError::Malformed(format!(
            "pool must be 1 to 64 letters, digits, `-` or `_` (got {pool:?})"
        )));
    }
    Ok(())
}

#[async_trait]
impl Bus for JetStreamBus {
    fn connected_for(&self) -> Option<Duration> {
        let connected_at = *self
            .inner
            .connected_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        connected_at
            .filter(|_| self.connected())
            .map(|at| at.elapsed())
    }

    async fn publish_run(&self, request: RunRequest) -> Result<bool, BusError> {
        validate_pool(&request.pool)?;
        validate_dedup_id(&request.dedup_id)?;
        if !self.connected() {
            // Fail at once rather than after the request timeout: the caller (an API call, the
            // dispatcher) keeps the run queued and tries again.
            return Err(self.unavailable(
                "publishing a run request",
                "not connected to NATS (reconnecting)",
            ));
        }
        let payload = serde_json::to_vec(&request)
            .map_err(|err| BusError::Malformed(format!("run request: {err}")))?;
        let mut publish = PublishMessage::build()
            .payload(payload.into())
            .message_id(&request.dedup_id);
        if let Some(trace_parent) = &request.trace_parent {
            publish = publish.header(crate::bus::TRACEPARENT_HEADER, trace_parent.as_str());
        }
        let subject = self.inner.names.runs_subject(&request.pool);
        let ack = self
            .publish_to_stream("a run request", Names::runs_stream_config, subject, publish)
            .await?;
        if ack.duplicate {
            tracing::debug!(run.id = %request.run_id, dedup_id = %request.dedup_id, "run request dropped as a duplicate");
        }
        Ok(!ack.duplicate)
    }

    async fn pull_runs(
        &self,
        pool: &str,
        slots: Arc<Semaphore>,
        batch: usize,
    ) -> Result<BoxStream<'static, RunDelivery>, BusError> {
        validate_pool(pool)?;
        let source = pull::PullSource {
            what: "run requests",
            jetstream: self.inner.jetstream.clone(),
            stream: self.inner.names.runs_stream_config(&self.inner.config),
            consumer: self
                .inner
                .names
                .runs_consumer_config(pool, &self.inner.config),
            mode: pull::PullMode::IntoSlots {
                slots,
                batch: batch.max(1),
            },
            reconnections: self.inner.reconnections.clone(),
            url: self.inner.url.clone(),
        };
        let deliveries = pull::deliveries(source)
            .await?
            .filter_map(|(delivery, slot)| {
                // Pulled into slots, every delivery has one.
                futures::future::ready(slot.map(|slot| RunDelivery { delivery, slot }))
            });
        Ok(deliveries.boxed())
    }

    async fn publish_events(&self, batch: EventBatch) -> Result<(), BusError> {
        self.publish_event_slices(&batch.events).await
    }

    async fn pull_events(&self) -> Result<BoxStream<'static, Delivery<EventBatch>>, BusError> {
        let source = pull::PullSource {
            what: "event batches",
            jetstream: self.inner.jetstream.clone(),
            stream: self.inner.names.events_stream_config(&self.inner.config),
            consumer: self.inner.names.events_consumer_config(&self.inner.config),
            // The ingester stores up to 64 deliveries per transaction; prefetch as many.
            mode: pull::PullMode::Prefetch(64),
            reconnections: self.inner.reconnections.clone(),
            url: self.inner.url.clone(),
        };
        let deliveries = pull::deliveries(source).await?;
        Ok(deliveries.map(|(delivery, _)| delivery).boxed())
    }

    async fn publish_control(&self, message: ControlMessage) -> Result<(), BusError> {
        let subject = self.inner.names.control.clone();
        self.publish_core(subject, &message, "control message")
            .await
    }

    async fn subscribe_control(&self) -> Result<BoxStream<'static, ControlMessage>, BusError> {
        let subject = self.inner.names.control.clone();
        self.subscribe_core(subject, "control message").await
    }

    async fn publish_notice(&self, notice: Notice) -> Result<(), BusError> {
        let subject = self.inner.names.notices.clone();
        self.publish_core(subject, &notice, "notice").await
    }

    async fn subscribe_notices(&self) -> Result<BoxStream<'static, Notice>, BusError> {
        let subject = self.inner.names.notices.clone();
        self.subscribe_core(subject, "notice").await
    }

    async fn request(&self, request: WorkerRequest) -> Result<WorkerReply, BusError> {
        requests::request(
            &requests::WORKER_REQUESTS,
            &self.inner.client,
            &self.inner.names.worker_requests,
            self.inner.config.request_timeout,
            &self.inner.url,
            &request,
        )
        .await
    }

    async fn serve_requests(&self) -> Result<BoxStream<'static, IncomingRequest>, BusError> {
        requests::serve(
            &requests::WORKER_REQUESTS,
            &self.inner.client,
            &self.inner.names.worker_requests,
            &self.inner.url,
        )
        .await
    }

    async fn request_task(
        &self,
        pool: &str,
        task: WorkerTask,
        timeout: Duration,
    ) -> Result<TaskReply, BusError> {
        validate_pool(pool)?;
        let subject = self.inner.names.tasks_subject(pool);
        requests::request(
            &requests::TASKS,
            &self.inner.client,
            &subject,
            timeout,
            &self.inner.url,
            &task,
        )
        .await
    }

    async fn serve_tasks(&self, pool: &str) -> Result<BoxStream<'static, IncomingTask>, BusError> {
        validate_pool(pool)?;
        let subject = self.inner.names.tasks_subject(pool);
        requests::serve(
            &requests::TASKS,
            &self.inner.client,
            &subject,
            &self.inner.url,
        )
        .await
    }
}
