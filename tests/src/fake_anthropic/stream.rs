//! The fake's answers in the real wire format: a message as server-sent events (or one JSON
//! message), and errors as the API words them.

use super::*;

/// The response for a reply; a streaming body keeps `guard` until it ends.
pub(super) fn build_response(
    shared: &Shared,
    reply: &Reply,
    request: &Value,
    guard: InFlight,
) -> Response {
    let (blocks, stop_reason) = match &reply.body {
        ReplyBody::Error {
            status,
            error_type,
            message,
        } => return error_response(*status, error_type, message, &reply.headers),
        ReplyBody::Message {
            blocks,
            stop_reason,
        } => (blocks, stop_reason),
    };
    let model = reply
        .model
        .clone()
        .or_else(|| {
            request
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| FALLBACK_MODEL.to_owned());
    let blocks: Vec<Block> = blocks
        .iter()
        .map(|b| match b {
            Block::ToolUse {
                id: None,
                name,
                input,
            } => Block::ToolUse {
                id: Some(shared.next_id("toolu")),
                name: name.clone(),
                input: input.clone(),
            },
            other => other.clone(),
        })
        .collect();
    let stop_reason = stop_reason.clone().unwrap_or_else(|| {
        if blocks.iter().any(|b| matches!(b, Block::ToolUse { .. })) {
            "tool_use".to_owned()
        } else {
            "end_turn".to_owned()
        }
    });
    let msg = MessageParts {
        id: shared.next_id("msg"),
        model,
        blocks,
        stop_reason,
        usage: reply.usage,
    };
    let streaming = request.get("stream").and_then(Value::as_bool) == Some(true);
    if !streaming {
        let mut resp = json_response(StatusCode::OK, &msg.full_message());
        add_headers(&mut resp, &reply.headers);
        return resp;
    }

    let mut events = msg.sse_events();
    let stall_mid = reply.stall == Stall::MidStream;
    if stall_mid {
        // message_start, ping, first content_block_start and its first delta.
        events.truncate(4);
    }
    let chunk_delay = reply.chunk_delay;
    let stream =
        futures::stream::iter(events.into_iter().enumerate()).then(move |(i, ev)| async move {
            if i > 0 && !chunk_delay.is_zero() {
                tokio::time::sleep(chunk_delay).await;
            }
            Ok::<Bytes, Infallible>(Bytes::from(ev))
        });
    let tail = if stall_mid {
        futures::stream::pending().left_stream()
    } else {
        futures::stream::empty().right_stream()
    };
    // The guard lives as long as the body stream: until the last event is
    // sent or the client disconnects.
    let stream = stream.chain(tail).map(move |item| {
        let _alive = &guard;
        item
    });
    let body = Body::from_stream(stream);
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header(
            "request-id",
            format!("req_{}", msg.id.trim_start_matches("msg_")),
        )
        .body(body)
        .unwrap_or_default();
    add_headers(&mut resp, &reply.headers);
    resp
}

struct MessageParts {
    id: String,
    model: String,
    blocks: Vec<Block>,
    stop_reason: String,
    usage: Usage,
}

impl MessageParts {
    fn block_json(block: &Block) -> Value {
        match block {
            Block::Thinking(t) => {
                json!({"type": "thinking", "thinking": t, "signature": fake_signature(t)})
            }
            Block::Text(t) => json!({"type": "text", "text": t}),
            Block::ToolUse { id, name, input } => {
                json!({"type": "tool_use", "id": id, "name": name, "input": input})
            }
        }
    }

    fn full_message(&self) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.blocks.iter().map(Self::block_json).collect::<Vec<_>>(),
            "stop_reason": self.stop_reason,
            "stop_sequence": null,
            "usage": self.usage,
        })
    }

    fn sse_events(&self) -> Vec<String> {
        let mut out = Vec::new();
        let start_usage = json!({
            "input_tokens": self.usage.input_tokens,
            "cache_creation_input_tokens": self.usage.cache_creation_input_tokens,
            "cache_read_input_tokens": self.usage.cache_read_input_tokens,
            "output_tokens": self.usage.output_tokens.min(1),
        });
        out.push(sse(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": self.id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": start_usage,
                }
            }),
        ));
        out.push(sse("ping", &json!({"type": "ping"})));
        for (index, block) in self.blocks.iter().enumerate() {
            let (start, deltas) = match block {
                Block::Thinking(t) => (
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    chunk_text(t, TEXT_CHUNK_CHARS)
                        .into_iter()
                        .map(|c| json!({"type": "thinking_delta", "thinking": c}))
                        .chain(std::iter::once(
                            json!({"type": "signature_delta", "signature": fake_signature(t)}),
                        ))
                        .collect::<Vec<_>>(),
                ),
                Block::Text(t) => (
                    json!({"type": "text", "text": ""}),
                    chunk_text(t, TEXT_CHUNK_CHARS)
                        .into_iter()
                        .map(|c| json!({"type": "text_delta", "text": c}))
                        .collect(),
                ),
                Block::ToolUse { id, name, input } => {
                    let raw = input.to_string();
                    let third = raw.chars().count().div_ceil(3).max(1);
                    (
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                        std::iter::once(String::new())
                            .chain(chunk_text(&raw, third))
                            .map(|c| json!({"type": "input_json_delta", "partial_json": c}))
                            .collect(),
                    )
                }
            };
            out.push(sse(
                "content_block_start",
                &json!({"type": "content_block_start", "index": index, "content_block": start}),
            ));
            for delta in deltas {
                out.push(sse(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index, "delta": delta}),
                ));
            }
            out.push(sse(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
        out.push(sse(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": self.usage.output_tokens},
            }),
        ));
        out.push(sse("message_stop", &json!({"type": "message_stop"})));
        out
    }
}

fn sse(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// Split `text` into pieces of at most `size` characters (at least one
/// piece, possibly empty).
fn chunk_text(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars
        .chunks(size.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

fn fake_signature(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("fakesig{}", base62(mix(h), 40))
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

pub(super) fn error_response(
    status: u16,
    error_type: &str,
    message: &str,
    extra: &[(String, String)],
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(
        status,
        &json!({"type": "error", "error": {"type": error_type, "message": message}}),
    );
    add_headers(&mut resp, extra);
    resp
}

fn add_headers(resp: &mut Response, extra: &[(String, String)]) {
    for (name, value) in extra {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                resp.headers_mut().append(n, v);
            }
            _ => tracing::warn!(%name, "fake anthropic: invalid scripted header skipped"),
        }
    }
}
