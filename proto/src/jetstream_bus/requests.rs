//! Worker requests over core NATS request / reply, JSON both ways.
//!
//! A control plane that cannot answer (its handler dropped the reply, or the request did not
//! decode) answers with an error instead of staying silent, so the worker learns at once rather
//! than at its timeout. The error travels the way NATS services report errors: an empty body with
//! the `Nats-Service-Error` and `Nats-Service-Error-Code` headers.

use std::time::Duration;

use async_nats::{HeaderMap, RequestErrorKind};
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::oneshot;

use super::setup;
use crate::bus::{BusError, IncomingRequest, WorkerReply, WorkerRequest};

/// The queue group of the serving side: each request goes to one control plane.
const SERVING_QUEUE_GROUP: &str = "control-planes";
const ERROR_HEADER: &str = "Nats-Service-Error";
const ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";
/// The request did not decode.
const CODE_MALFORMED: &str = "400";
/// The control plane took the request but gave no answer (a store failure, say): retry later.
const CODE_UNANSWERED: &str = "503";

pub(super) async fn request(
    client: &async_nats::Client,
    subject: &str,
    timeout: Duration,
    url: &str,
    request: &WorkerRequest,
) -> Result<WorkerReply, BusError> {
    let payload = serde_json::to_vec(request)
        .map_err(|err| BusError::Malformed(format!("worker request: {err}")))?;
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
                    "sending a worker request",
                    "not connected to NATS (reconnecting)",
                ),
                RequestErrorKind::TimedOut => BusError::Timeout(timeout),
                RequestErrorKind::NoResponders => BusError::Unavailable(format!(
                    "no control plane serves worker requests on {subject} at {url}; start a \
                     control plane connected to the same NATS server and prefix"
                )),
                _ => setup::unavailable(url, "sending a worker request", err),
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
        .map_err(|err| BusError::Malformed(format!("reply to a worker request: {err}")))
}

pub(super) async fn serve(
    client: &async_nats::Client,
    subject: &str,
    url: &str,
) -> Result<BoxStream<'static, IncomingRequest>, BusError> {
    let subscriber = client
        .queue_subscribe(subject.to_owned(), SERVING_QUEUE_GROUP.to_owned())
        .await
        .map_err(|err| setup::unavailable(url, "serving worker requests", err))?;
    setup::round_trip(client, url).await?;
    let client = client.clone();
    let requests =
        subscriber.filter_map(move |message| futures::future::ready(incoming(&client, message)));
    Ok(requests.boxed())
}

/// Turns one message into a request whose reply is sent back when the handler answers, or an
/// error reply at once when the message is not a worker request.
fn incoming(client: &async_nats::Client, message: async_nats::Message) -> Option<IncomingRequest> {
    let Some(reply_to) = message.reply else {
        tracing::warn!(subject = %message.subject, "worker request without a reply subject ignored");
        return None;
    };
    let request = match serde_json::from_slice::<WorkerRequest>(&message.payload) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!(error = %err, "malformed worker request refused");
            let client = client.clone();
            let error = format!("malformed worker request: {err}");
            tokio::spawn(async move {
                send_error(&client, reply_to, CODE_MALFORMED, &error).await;
            });
            return None;
        }
    };
    let (reply, answer) = oneshot::channel::<WorkerReply>();
    let client = client.clone();
    tokio::spawn(async move {
        let Ok(answer) = answer.await else {
            send_error(
                &client,
                reply_to,
                CODE_UNANSWERED,
                "the control plane dropped the request without answering; try again later",
            )
            .await;
            return;
        };
        let payload = match serde_json::to_vec(&answer) {
            Ok(payload) => payload,
            Err(err) => {
                tracing::error!(error = %err, "could not encode a worker reply");
                return;
            }
        };
        if let Err(err) = client.publish(reply_to, payload.into()).await {
            tracing::warn!(error = %err, "could not send a worker reply; the worker will retry");
        }
    });
    Some(IncomingRequest { request, reply })
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
        tracing::warn!(error = %err, "could not send an error reply to a worker request");
    }
}
