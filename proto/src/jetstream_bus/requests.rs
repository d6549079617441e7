//! Requests over core NATS request / reply, JSON both ways: worker requests to the control
//! planes, and tasks from a control plane to the workers of a pool. Each goes to one member of
//! the serving queue group.
//!
//! A side that cannot answer (its handler dropped the reply, or the request did not decode)
//! answers with an error instead of staying silent, so the asker learns at once rather than at
//! its timeout. The error travels the way NATS services report errors: an empty body with the
//! `Nats-Service-Error` and `Nats-Service-Error-Code` headers.

use std::time::Duration;

use async_nats::{HeaderMap, RequestErrorKind};
use futures::stream::{BoxStream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use super::setup;
use crate::bus::{BusError, Incoming};

/// Who asks whom, for the queue group and the words of errors.
pub(super) struct Channel {
    /// `worker request`, `task`.
    pub what: &'static str,
    /// The serving side: `control plane`, `worker`.
    pub server: &'static str,
    /// Its queue group: each request goes to one of its members.
    pub queue_group: &'static str,
}

pub(super) const WORKER_REQUESTS: Channel = Channel {
    what: "worker request",
    server: "control plane",
    queue_group: "control-planes",
};

pub(super) const TASKS: Channel = Channel {
    what: "task",
    server: "worker",
    queue_group: "workers",
};
const ERROR_HEADER: &str = "Nats-Service-Error";
const ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";
/// The request did not decode.
const CODE_MALFORMED: &str = "400";
/// The control plane took the request but gave no answer (a store failure, say): retry later.
const CODE_UNANSWERED: &str = "503";

pub(super) async fn request<Q: Serialize, A: DeserializeOwned>(
    channel: &Channel,
    client: &async_nats::Client,
    subject: &str,
    timeout: Duration,
    url: &str,
    request: &Q,
) -> Result<A, BusError> {
    let Channel { what, server, .. } = channel;
    let payload =
        serde_json::to_vec(request).map_err(|err| BusError::Malformed(format!("{what}: {err}")))?;
    let sent = async_nats::Request::new()
        .payload(payload.into())
        .timeout(Some(timeout));
    let reply = match client.send_request(subject.to_owned(), sent).await {
        Ok(reply) => reply,
        Err(err) => {
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            return Err(match err.kind() {
                RequestErrorKind::TimedOut if !connected => setup::unavailable(
                    url,
                    &format!("sending a {what}"),
                    "not connected to NATS (reconnecting)",
                ),
                RequestErrorKind::TimedOut => BusError::Timeout(timeout),
                RequestErrorKind::NoResponders => BusError::Unavailable(format!(
                    "no {server} serves {what}s on {subject} at {url}; start a {server} \
                     connected to the same NATS server and prefix"
                )),
                _ => setup::unavailable(url, &format!("sending a {what}"), err),
            });
        }
    };
    if let Some(headers) = &reply.headers {
        if let Some(error) = headers.get(ERROR_HEADER) {
            let code = headers.get(ERROR_CODE_HEADER).map(|code| code.as_str());
            let error = error.as_str().to_owned();
            return Err(match code {
                Some(CODE_MALFORMED) => BusError::Malformed(error),
                _ => BusError::Unavailable(error),
            });
        }
    }
    serde_json::from_slice(&reply.payload)
        .map_err(|err| BusError::Malformed(format!("reply to a {what}: {err}")))
}

pub(super) async fn serve<Q, A>(
    channel: &'static Channel,
    client: &async_nats::Client,
    subject: &str,
    url: &str,
) -> Result<BoxStream<'static, Incoming<Q, A>>, BusError>
where
    Q: DeserializeOwned + Send + 'static,
    A: Serialize + Send + 'static,
{
    let subscriber = client
        .queue_subscribe(subject.to_owned(), channel.queue_group.to_owned())
        .await
        .map_err(|err| setup::unavailable(url, &format!("serving {}s", channel.what), err))?;
    setup::round_trip(client, url).await?;
    let client = client.clone();
    let requests = subscriber
        .filter_map(move |message| futures::future::ready(incoming(channel, &client, message)));
    Ok(requests.boxed())
}

/// Turns one message into a request whose reply is sent back when the handler answers, or an
/// error reply at once when the message does not decode.
fn incoming<Q, A>(
    channel: &'static Channel,
    client: &async_nats::Client,
    message: async_nats::Message,
) -> Option<Incoming<Q, A>>
where
    Q: DeserializeOwned,
    A: Serialize + Send + 'static,
{
    let Channel { what, server, .. } = channel;
    let Some(reply_to) = message.reply else {
        tracing::warn!(subject = %message.subject, "{what} without a reply subject ignored");
        return None;
    };
    let request = match serde_json::from_slice::<Q>(&message.payload) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!(error = %err, "malformed {what} refused");
            let client = client.clone();
            let error = format!("malformed {what}: {err}");
            tokio::spawn(async move {
                send_error(&client, reply_to, CODE_MALFORMED, &error).await;
            });
            return None;
        }
    };
    let (reply, answer) = oneshot::channel::<A>();
    let client = client.clone();
    tokio::spawn(async move {
        let Ok(answer) = answer.await else {
            let error =
                format!("the {server} dropped the {what} without answering; try again later");
            send_error(&client, reply_to, CODE_UNANSWERED, &error).await;
            return;
        };
        let payload = match serde_json::to_vec(&answer) {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(error = %err, "could not encode the reply to a {what}");
                return;
            }
        };
        if let Err(err) = client.publish(reply_to, payload.into()).await {
            tracing::warn!(error = %err, "could not send the reply to a {what}; it will be asked again");
        }
    });
    Some(Incoming { request, reply })
}

async fn send_error(
    client: &async_nats::Client,
    reply_to: async_nats::Subject,
    code: &str,
    error: &str,
) {
    let mut headers = HeaderMap::new();
    headers.insert(ERROR_HEADER, error);
    headers.insert(ERROR_CODE_HEADER, code);
    if let Err(err) = client
        .publish_with_headers(reply_to, headers, bytes::Bytes::new())
        .await
    {
        tracing::warn!(error = %err, "could not send an error reply");
    }
}
