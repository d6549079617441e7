//! An HTTP job's attempt: one request, made by the worker itself (no process, no workspace).
//! Credentials named in its headers are filled in here, from the run's sealed secrets; the
//! address is resolved and checked (public only, unless the job allows private ones) and the
//! connection pinned to it; redirects are not followed. The answer's status decides success and
//! its body (capped) is the run's result, with credential values removed.

use std::time::Duration;

use autopilot_proto::address::{checked_addresses, Unreachable};
use autopilot_proto::{placeholders, EventKind, HttpSpec, RunOutcome, Secrets, StopReason};
use futures::StreamExt;
use serde_json::json;

use super::attempt::{Granted, Stopper};
use super::events::EventSender;

/// The most of an answer's body kept as the run's result.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub(super) async fn execute(
    spec: &HttpSpec,
    timeout: Duration,
    granted: &Granted,
    events: &EventSender,
    stopper: &Stopper,
) -> RunOutcome {
    let request = match prepare(spec, granted.secrets()).await {
        Ok(request) => request,
        Err(error) => {
            events
                .lifecycle("failed_to_start", json!({ "error": error }))
                .await;
            return failed(error, false);
        }
    };
    let url = spec.url.trim();
    events
        .lifecycle(
            "started",
            json!({ "executor": "http", "method": spec.method, "host": request.host, "timeout_secs": timeout.as_secs() }),
        )
        .await;
    let started = std::time::Instant::now();
    let sending = async {
        let answer = request.client.execute(request.request).await?;
        let status = answer.status();
        let mut body = Vec::new();
        let mut truncated = false;
        let mut stream = answer.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let room = MAX_BODY_BYTES.saturating_sub(body.len());
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok::<_, reqwest::Error>((status, body, truncated))
    };
    let answered = tokio::select! {
        answered = sending => answered,
        _ = stopper.stopped().cancelled() => {
            let reason = stopper.reason().unwrap_or(StopReason::Cancelled);
            return RunOutcome { stopped: Some(reason), ..failed("cancelled".to_owned(), false) };
        }
        _ = tokio::time::sleep(timeout) => {
            stopper.stop(StopReason::Timeout);
            return RunOutcome {
                stopped: Some(StopReason::Timeout),
                ..failed(format!("timed out after {}s", timeout.as_secs()), false)
            };
        }
    };
    let redactor = &granted.redactor();
    let (status, body, truncated) = match answered {
        Ok(answered) => answered,
        Err(err) => {
            let error = redactor
                .text(&format!("the request to {url} failed: {err}"))
                .into_owned();
            events
                .send(EventKind::Stderr, json!({ "text": error }))
                .await;
            // A connection that failed may work a moment later.
            return failed(error, true);
        }
    };
    let text = redactor.text(&String::from_utf8_lossy(&body)).into_owned();
    let code = status.as_u16();
    events
        .send(
            EventKind::Output,
            json!({
                "text": format!("HTTP {status}"),
                "status": code,
                "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "body": text,
                "truncated": truncated,
            }),
        )
        .await;
    let succeeded = spec.succeeded(code);
    RunOutcome {
        exit_code: Some(if succeeded { 0 } else { 1 }),
        is_error: !succeeded,
        error: (!succeeded).then(|| {
            format!(
                "{url} answered {status}{}",
                if spec.success_status.is_empty() {
                    String::new()
                } else {
                    format!(" (success is {:?})", spec.success_status)
                }
            )
        }),
        transient: !succeeded && (code == 408 || code == 429 || code >= 500),
        result: Some(text),
        ..RunOutcome::default()
    }
}

struct Prepared {
    client: reqwest::Client,
    request: reqwest::Request,
    host: String,
}

/// The request with its credentials filled in, and a client bound to the checked addresses.
async fn prepare(spec: &HttpSpec, secrets: &Secrets) -> Result<Prepared, String> {
    let url = reqwest::Url::parse(spec.url.trim())
        .map_err(|err| format!("`{}` is not a URL: {err}", spec.url))?;
    if !(url.scheme() == "https" || (url.scheme() == "http" && spec.allow_private)) {
        return Err("the URL must be https (http only with `allow_private`)".to_owned());
    }
    let host = url.host_str().ok_or("the URL has no host")?.to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses = checked_addresses(&host, port, spec.allow_private)
        .await
        .map_err(|unreachable| match unreachable {
            Unreachable::Unresolved(why) => why,
            Unreachable::NotPublic(why) => {
                format!("{why}; set `allow_private` in the job's request for an internal endpoint")
            }
        })?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve_to_addrs(&host, &addresses)
        .build()
        .map_err(|err| format!("cannot make an HTTP client: {err}"))?;
    let method = reqwest::Method::from_bytes(spec.method.as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", spec.method))?;
    let mut builder = client.request(method, url);
    let mut used = Secrets::new();
    for (name, value) in &spec.headers {
        let value = placeholders::fill(value, secrets, &mut used).map_err(|missing| {
            format!("the credential `{missing}` named in header `{name}` was not handed to this run; set it in the vault")
        })?;
        builder = builder.header(name.as_str(), value);
    }
    if let Some(body) = &spec.body {
        builder = builder.body(body.clone());
    }
    let request = builder
        .build()
        .map_err(|err| format!("the request cannot be made: {err}"))?;
    Ok(Prepared {
        client,
        request,
        host,
    })
}

fn failed(error: String, transient: bool) -> RunOutcome {
    RunOutcome {
        is_error: true,
        error: Some(error),
        transient,
        ..RunOutcome::default()
    }
}
