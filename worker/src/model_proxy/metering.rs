//! What the model proxy sees of a run's model requests: tokens read from each answer as it
//! streams through (the `usage` of `message_start` and `message_delta`), and one client span per
//! upstream request with its status, latency, usage and how many failed requests of the run
//! came just before it (the CLI's retries).

use std::sync::{Arc, Mutex};

use autopilot_proto::TokenUsage;
use chrono::{DateTime, Utc};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use serde_json::Value;

use crate::stream_json::update_usage;
use crate::trace::{genai::usage_attributes, OpenSpan};

/// What the proxy metered for one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metered {
    /// Requests forwarded upstream.
    pub requests: u32,
    /// Tokens the answers reported (streamed answers' final counts).
    pub usage: TokenUsage,
    /// When the limit behind the latest 429 or 529 answer resets (`retry-after`, else the
    /// latest `anthropic-ratelimit-*-reset`), unless a request succeeded since.
    pub retry_at: Option<DateTime<Utc>>,
}

/// A run's metering, shared by its requests.
#[derive(Clone, Default)]
pub(super) struct RunMeter {
    inner: Arc<Mutex<MeterState>>,
}

#[derive(Default)]
struct MeterState {
    metered: Metered,
    /// Failed requests since the last one that succeeded.
    failures_in_a_row: u32,
}

impl RunMeter {
    pub(super) fn metered(&self) -> Metered {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).metered
    }

    /// An answer's status and headers: a rate limit or an overload notes when it resets; a
    /// success forgets it.
    pub(super) fn answered(&self, status: u16, headers: &reqwest::header::HeaderMap) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if (200..300).contains(&status) {
            state.metered.retry_at = None;
        } else if status == 429 || status == 529 {
            state.metered.retry_at = reset_time(headers, Utc::now()).or(state.metered.retry_at);
        }
    }

    /// A request is being sent upstream: its span (under `trace_parent`) and the number of
    /// failed requests right before it.
    pub(super) fn request(
        &self,
        method: &str,
        path: &str,
        trace_parent: Option<&str>,
    ) -> RequestMeter {
        let resends = {
            let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            state.metered.requests += 1;
            state.failures_in_a_row
        };
        let route = path.split('?').next().unwrap_or(path).to_owned();
        let span = OpenSpan::start(
            format!("{method} {route}"),
            SpanKind::Client,
            trace_parent,
            vec![
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("url.path", route),
                KeyValue::new("http.request.resend_count", i64::from(resends)),
                KeyValue::new("autopilot.component", "model_proxy"),
            ],
        );
        RequestMeter {
            run: self.clone(),
            span,
            started: std::time::Instant::now(),
            status: None,
            pending: Vec::new(),
            usage: TokenUsage::default(),
            seen_usage: false,
            stop_reason: None,
            model: None,
        }
    }
}

/// When a limit the model API answered with resets: `retry-after` (seconds) when given, else
/// the latest of its `anthropic-ratelimit-*-reset` times (RFC 3339).
pub(crate) fn reset_time(
    headers: &reqwest::header::HeaderMap,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(secs) = text("retry-after").and_then(|v| v.trim().parse::<f64>().ok()) {
        if secs.is_finite() && secs >= 0.0 {
            return Some(now + chrono::Duration::milliseconds((secs * 1000.0) as i64));
        }
    }
    [
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
    ]
    .iter()
    .filter_map(|name| text(name))
    .filter_map(|value| DateTime::parse_from_rfc3339(value.trim()).ok())
    .map(|at| at.with_timezone(&Utc))
    .max()
}

#[cfg(test)]
mod reset_tests {
    use super::*;

    #[test]
    fn reset_times_come_from_retry_after_or_the_latest_reset_header() {
        let now = Utc::now();
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(reset_time(&headers, now), None);
        headers.insert(
            "anthropic-ratelimit-requests-reset",
            "2030-01-01T00:00:10Z".parse().unwrap(),
        );
        headers.insert(
            "anthropic-ratelimit-tokens-reset",
            "2030-01-01T00:00:30Z".parse().unwrap(),
        );
        assert_eq!(
            reset_time(&headers, now).map(|at| at.to_rfc3339()),
            Some("2030-01-01T00:00:30+00:00".to_owned())
        );
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(
            reset_time(&headers, now),
            Some(now + chrono::Duration::seconds(7))
        );
    }
}

/// One request's metering: fed the answer's bytes, it ends its span and adds its tokens to the
/// run when dropped (the answer ended, or the client went away).
pub(super) struct RequestMeter {
    run: RunMeter,
    span: Option<OpenSpan>,
    started: std::time::Instant,
    status: Option<u16>,
    /// The incomplete last line of what streamed so far.
    pending: Vec<u8>,
    usage: TokenUsage,
    seen_usage: bool,
    stop_reason: Option<String>,
    model: Option<String>,
}

impl RequestMeter {
    /// The traceparent upstream should get: the request's own span.
    pub(super) fn traceparent(&self) -> Option<String> {
        self.span
            .as_ref()
            .and_then(OpenSpan::traceparent)
            .map(str::to_owned)
    }

    pub(super) fn status(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// A chunk of the answer's body.
    pub(super) fn observe(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        while let Some(end) = self.pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(&line);
        }
        // A JSON answer (no stream) is one object; keep it whole until the end, within reason.
        if self.pending.len() > 4 * 1024 * 1024 {
            self.pending.clear();
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = line
            .strip_prefix(b"data:")
            .map(|data| String::from_utf8_lossy(data).trim().to_owned())
        else {
            return;
        };
        let Ok(event) = serde_json::from_str::<Value>(&data) else {
            return;
        };
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let message = event.get("message");
                if let Some(usage) = message.and_then(|m| m.get("usage")) {
                    self.take_usage(usage);
                }
                self.model = message
                    .and_then(|m| m.get("model"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            Some("message_delta") => {
                if let Some(usage) = event.get("usage") {
                    self.take_usage(usage);
                }
                self.stop_reason = event
                    .get("delta")
                    .and_then(|delta| delta.get("stop_reason"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            _ => {}
        }
    }

    /// Counts in `usage` are the message's totals so far; later ones replace earlier ones.
    fn take_usage(&mut self, usage: &Value) {
        update_usage(&mut self.usage, usage);
        self.seen_usage = true;
    }

    /// An answer that was not streamed: one JSON object with `usage` at its top.
    fn finish_json(&mut self) {
        if self.seen_usage || self.pending.is_empty() {
            return;
        }
        if let Ok(answer) = serde_json::from_slice::<Value>(&self.pending) {
            if answer.get("type").and_then(Value::as_str) == Some("message") {
                if let Some(usage) = answer.get("usage") {
                    self.take_usage(usage);
                }
                self.model = answer
                    .get("model")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                self.stop_reason = answer
                    .get("stop_reason")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
        }
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        self.finish_json();
        let failed = self
            .status
            .is_none_or(|status| status == 429 || status >= 500);
        {
            let mut state = self.run.inner.lock().unwrap_or_else(|p| p.into_inner());
            state.metered.usage.add(&self.usage);
            state.failures_in_a_row = if failed {
                state.failures_in_a_row + 1
            } else {
                0
            };
        }
        let Some(span) = self.span.take() else {
            return;
        };
        let mut attributes = vec![KeyValue::new(
            "autopilot.proxy.duration_ms",
            i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX),
        )];
        if let Some(status) = self.status {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if self.seen_usage {
            attributes.extend(usage_attributes(&self.usage));
        }
        if let Some(model) = self.model.take() {
            attributes.push(KeyValue::new("gen_ai.response.model", model));
        }
        if let Some(reason) = self.stop_reason.take() {
            attributes.push(KeyValue::new("autopilot.stop_reason", reason));
        }
        let error = match self.status {
            None => Some("the model API could not be reached".to_owned()),
            Some(status) if status >= 400 => Some(format!("the model API answered {status}")),
            Some(_) => None,
        };
        span.end_with(attributes, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_answer_is_metered_from_its_final_usage() {
        let run = RunMeter::default();
        {
            let mut request = run.request("POST", "/v1/messages?beta=true", None);
            request.status(200);
            let body = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":100,\"output_tokens\":1,\"cache_read_input_tokens\":7}}}\n\n\
                        event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n\
                        event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":42}}\n\n";
            // Split mid-line, as a network would.
            let (first, second) = body.as_bytes().split_at(61);
            request.observe(first);
            request.observe(second);
        }
        let metered = run.metered();
        assert_eq!(metered.requests, 1);
        assert_eq!(
            metered.usage,
            TokenUsage {
                input_tokens: 100,
                output_tokens: 42,
                cache_read_tokens: 7,
                cache_write_tokens: 0,
            }
        );
    }

    #[test]
    fn a_json_answer_and_failed_requests_count_too() {
        let run = RunMeter::default();
        {
            let mut failed = run.request("POST", "/v1/messages", None);
            failed.status(529);
            failed.observe(br#"{"type":"error","error":{"type":"overloaded_error"}}"#);
        }
        {
            let mut request = run.request("POST", "/v1/messages", None);
            request.status(200);
            request.observe(
                br#"{"type":"message","model":"m","usage":{"input_tokens":5,"output_tokens":6}}"#,
            );
        }
        let metered = run.metered();
        assert_eq!(metered.requests, 2);
        assert_eq!(
            (metered.usage.input_tokens, metered.usage.output_tokens),
            (5, 6)
        );
    }
}
