//! Names, stream and consumer settings, idempotent setup, error wording and the watch that gives
//! up run requests after their last delivery.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self as js};
use futures::StreamExt;
use serde::Deserialize;

use super::JetStreamConfig;
use crate::bus::{BusError, RunRequest};

/// Every subject, stream and consumer name of one deployment.
#[derive(Clone, Debug)]
pub(super) struct Names {
    prefix: String,
    pub runs_stream: String,
    pub events_stream: String,
    pub control: String,
    pub notices: String,
    pub worker_requests: String,
}

/// The consumer every control plane shares for run events.
const EVENTS_CONSUMER: &str = "control-planes";

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            runs_stream: format!("{prefix}-runs"),
            events_stream: format!("{prefix}-events"),
            control: format!("{prefix}.control"),
            notices: format!("{prefix}.notices"),
            worker_requests: format!("{prefix}.worker.requests"),
        }
    }

    pub fn runs_subject(&self, pool: &str) -> String {
        format!("{}.runs.{pool}", self.prefix)
    }

    /// Where the workers of `pool` take tasks (core NATS, not a stream).
    pub fn tasks_subject(&self, pool: &str) -> String {
        format!("{}.tasks.{pool}", self.prefix)
    }

    pub fn events_subject(&self, run_id: &str) -> String {
        format!("{}.events.{run_id}", self.prefix)
    }

    pub fn runs_stream_config(&self, config: &JetStreamConfig) -> stream::Config {
        stream::Config {
            name: self.runs_stream.clone(),
            description: Some("Autopilot run requests, one subject per worker pool".into()),
            subjects: vec![format!("{}.runs.*", self.prefix)],
            // A request is removed once a worker acknowledges it.
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            duplicate_window: config.dedup_window,
            num_replicas: 1,
            ..Default::default()
        }
    }

    pub fn events_stream_config(&self, config: &JetStreamConfig) -> stream::Config {
        stream::Config {
            name: self.events_stream.clone(),
            description: Some("Autopilot run events, one subject per run".into()),
            subjects: vec![format!("{}.events.>", self.prefix)],
            // A batch is removed once a control plane has stored it.
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            duplicate_window: config.dedup_window,
            num_replicas: 1,
            ..Default::default()
        }
    }

    pub fn runs_consumer_config(&self, pool: &str, config: &JetStreamConfig) -> pull::Config {
        pull::Config {
            durable_name: Some(format!("pool-{pool}")),
            description: Some(format!("Autopilot workers of pool {pool}")),
            filter_subject: self.runs_subject(pool),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: i64::from(config.max_deliver),
            backoff: config.backoff.clone(),
            ..Default::default()
        }
    }

    pub fn events_consumer_config(&self, config: &JetStreamConfig) -> pull::Config {
        pull::Config {
            durable_name: Some(EVENTS_CONSUMER.into()),
            description: Some("Autopilot control planes storing run events".into()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            // Events are durable: a batch is redelivered until a control plane stores it, however
            // long the store is down. A batch that cannot be decoded is terminated instead.
            max_deliver: -1,
            ..Default::default()
        }
    }
}

/// `BusError::Unavailable` saying what failed and what to start.
pub(super) fn unavailable(url: &str, what: &str, err: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!(
        "{what} failed: {err}; is nats-server running with -js at {url}?"
    ))
}

/// The URL without a password or token, fit for logs and error messages.
pub(super) fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let (scheme, rest) = match server.split_once("://") {
                Some((scheme, rest)) => (format!("{scheme}://"), rest),
                None => (String::new(), server),
            };
            match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}***@{host}"),
                None => server.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) async fn log_connection_event(event: async_nats::Event) {
    match event {
        async_nats::Event::Connected => tracing::info!("connected to nats"),
        async_nats::Event::Disconnected => {
            tracing::warn!("lost the nats connection; reconnecting")
        }
        async_nats::Event::Closed => tracing::info!("nats connection closed"),
        // One per failed reconnect attempt; the disconnect above was the news.
        async_nats::Event::ClientError(err) => tracing::debug!(error = %err, "nats client error"),
        other => tracing::warn!(event = %other, "nats connection event"),
    }
}

/// Returns once the server has processed everything this client sent before, a subscription
/// included: a request to a subject nobody listens on, which the server itself answers with
/// "no responders". (A flush only writes to the socket; another connection's message could
/// still overtake the subscription.)
pub(super) async fn round_trip(client: &async_nats::Client, url: &str) -> Result<(), BusError> {
    match client
        .request(client.new_inbox(), bytes::Bytes::new())
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Err(err) => Err(unavailable(
            url,
            "confirming a subscription with the server",
            err,
        )),
    }
}

/// Creates the stream or brings it to `config`. Two processes doing this at once both succeed:
/// whoever loses the race to create updates what the winner created.
pub(super) async fn ensure_stream(
    jetstream: &js::Context,
    config: stream::Config,
    url: &str,
) -> Result<(), BusError> {
    let name = config.name.clone();
    let failed = |err: &CreateStreamError| {
        if jetstream_disabled(&err.kind()) {
            return BusError::Unavailable(format!(
                "JetStream is not enabled on the NATS server at {url} ({err}); start nats-server \
                 with -js"
            ));
        }
        unavailable(url, &format!("setting up the JetStream stream {name}"), err)
    };
    for _ in 0..3 {
        match jetstream.update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(err) if matches!(err.kind(), CreateStreamErrorKind::NotFound) => {}
            Err(err) => return Err(failed(&err)),
        }
        match jetstream.create_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(err) if is_error_code(&err.kind(), ErrorCode::STREAM_NAME_EXIST) => continue,
            Err(err) => return Err(failed(&err)),
        }
    }
    Err(unavailable(
        url,
        &format!("setting up the JetStream stream {name}"),
        "the stream kept appearing and disappearing",
    ))
}

fn is_error_code(kind: &CreateStreamErrorKind, code: ErrorCode) -> bool {
    matches!(kind, CreateStreamErrorKind::JetStream(err) if err.error_code() == code)
}

/// Nobody answers the JetStream API (the server runs without `-js`), or the account has no
/// JetStream.
fn jetstream_disabled(kind: &CreateStreamErrorKind) -> bool {
    matches!(kind, CreateStreamErrorKind::JetStreamUnavailable)
        || is_error_code(kind, ErrorCode::JETSTREAM_NOT_ENABLED)
        || is_error_code(kind, ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT)
}

/// Creates the durable consumer or brings it to `config` (JetStream's create-or-update action,
/// which is idempotent when two processes do it at once).
pub(super) async fn ensure_consumer(
    jetstream: &js::Context,
    stream: &str,
    config: pull::Config,
    url: &str,
) -> Result<js::consumer::PullConsumer, BusError> {
    let name = config.durable_name.clone().unwrap_or_default();
    jetstream
        .create_consumer_on_stream(config, stream)
        .await
        .map_err(|err| {
            unavailable(
                url,
                &format!("setting up the JetStream consumer {name} on {stream}"),
                err,
            )
        })
}

/// The part of JetStream's `io.nats.jetstream.advisory.v1.max_deliver` advisory we use.
#[derive(Deserialize)]
struct MaxDeliveriesAdvisory {
    consumer: String,
    stream_seq: u64,
    deliveries: u64,
}

/// How long to wait before subscribing again after the advisory subscription failed.
const WATCH_RETRY: Duration = Duration::from_secs(5);

/// Logs and deletes each run request JetStream stopped delivering after `max_deliver`. The
/// advisory goes to one process of the deployment (a queue group), so each is handled once.
pub(super) async fn give_up_after_max_deliveries(
    client: async_nats::Client,
    jetstream: js::Context,
    runs_stream: String,
) {
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{runs_stream}.*");
    loop {
        let mut advisories = match client
            .queue_subscribe(subject.clone(), format!("{runs_stream}-max-deliveries"))
            .await
        {
            Ok(subscriber) => subscriber,
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch for run requests past max_deliver; retrying");
                tokio::time::sleep(WATCH_RETRY).await;
                continue;
            }
        };
        while let Some(message) = advisories.next().await {
            match serde_json::from_slice::<MaxDeliveriesAdvisory>(&message.payload) {
                Ok(advisory) => give_up(&jetstream, &runs_stream, advisory).await,
                Err(err) => tracing::warn!(error = %err, "malformed max deliveries advisory"),
            }
        }
        // The subscription ends only when the client closes.
        return;
    }
}

async fn give_up(jetstream: &js::Context, runs_stream: &str, advisory: MaxDeliveriesAdvisory) {
    let Ok(stream) = jetstream.get_stream_no_info(runs_stream).await else {
        return;
    };
    let seq = advisory.stream_seq;
    let request = match stream.get_raw_message(seq).await {
        Ok(message) => serde_json::from_slice::<RunRequest>(&message.payload).ok(),
        Err(err) => {
            tracing::debug!(stream.seq = seq, error = %err, "run request past max_deliver is already gone");
            None
        }
    };
    match &request {
        Some(request) => tracing::error!(
            run.id = %request.run_id,
            run.attempt = request.attempt,
            pool = %request.pool,
            deliveries = advisory.deliveries,
            consumer = %advisory.consumer,
            "run request dropped after its last delivery went unacknowledged"
        ),
        None => tracing::error!(
            stream.seq = seq,
            deliveries = advisory.deliveries,
            consumer = %advisory.consumer,
            "run request dropped after its last delivery went unacknowledged"
        ),
    }
    if let Err(err) = stream.delete_message(seq).await {
        tracing::debug!(stream.seq = seq, error = %err, "could not delete a run request past max_deliver");
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_never_reach_messages() {
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact_url("nats://user:secret@host:4222,nats://token@other:4222"),
            "nats://***@host:4222,nats://***@other:4222"
        );
        assert_eq!(redact_url("user:pw@host"), "***@host");
    }
}
