use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

/// One HTTP/1.1 exchange over a bare TCP socket (`Connection: close`).
async fn raw_request(fake: &FakeAnthropic, method: &str, path: &str, body: &Value) -> RawResponse {
    let mut stream = TcpStream::connect(fake.addr()).await.expect("connect");
    let payload = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         x-api-key: test-key\r\nanthropic-version: 2023-06-01\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n{payload}",
        addr = fake.addr(),
        len = payload.len(),
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response within 10s")
        .expect("read");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> RawResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).expect("utf-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    RawResponse {
        status,
        headers,
        body: String::from_utf8(body).expect("utf-8 body"),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = std::str::from_utf8(&data[..eol]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        data = &data[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        assert_eq!(&data[size..size + 2], b"\r\n", "chunk terminator");
        data = &data[size + 2..];
    }
}

/// Split an SSE body into (event, data) pairs, checking the framing.
fn parse_sse(body: &str) -> Vec<(String, Value)> {
    assert!(body.ends_with("\n\n"), "SSE body ends with a blank line");
    body.split("\n\n")
        .filter(|frame| !frame.is_empty())
        .map(|frame| {
            let mut lines = frame.split('\n');
            let event = lines
                .next()
                .and_then(|l| l.strip_prefix("event: "))
                .expect("event line");
            let data = lines
                .next()
                .and_then(|l| l.strip_prefix("data: "))
                .expect("data line");
            assert!(
                lines.next().is_none(),
                "one event and one data line per frame"
            );
            let data: Value = serde_json::from_str(data).expect("data is JSON");
            assert_eq!(data["type"], event, "data.type matches the event name");
            (event.to_owned(), data)
        })
        .collect()
}

fn main_body(model: &str) -> Value {
    json!({
        "model": model,
        "max_tokens": 32000,
        "stream": true,
        "system": [{"type": "text", "text": "You are a test."}],
        "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    })
}

#[tokio::test]
async fn text_reply_is_framed_as_real_sse() {
    let fake = FakeAnthropic::start().await.expect("start");
    let text = "Hello from the fake Anthropic API, cut into several deltas.";
    fake.push(Reply::text(text).usage(Usage {
        input_tokens: 42,
        output_tokens: 7,
        cache_read_input_tokens: 3,
        cache_creation_input_tokens: 5,
    }));
    let resp = raw_request(
        &fake,
        "POST",
        "/v1/messages?beta=true",
        &main_body("claude-test-1"),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let events = parse_sse(&resp.body);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        &names[..3],
        ["message_start", "ping", "content_block_start"]
    );
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|(e, _)| e == "content_block_delta")
        .map(|(_, d)| d)
        .collect();
    assert!(deltas.len() >= 2, "text is split into several deltas");
    let joined: String = deltas
        .iter()
        .map(|d| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().expect("text")
        })
        .collect();
    assert_eq!(joined, text);
    let start = &events[0].1["message"];
    assert_eq!(start["model"], "claude-test-1", "model echoes the request");
    assert!(start["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(start["usage"]["input_tokens"], 42);
    assert_eq!(start["usage"]["cache_read_input_tokens"], 3);
    assert_eq!(start["usage"]["cache_creation_input_tokens"], 5);
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 7);

    assert_eq!(fake.request_count(), 1);
    let recorded = &fake.requests()[0];
    assert_eq!(recorded.kind, RequestKind::Main);
    assert_eq!(recorded.path, "/v1/messages?beta=true");
    assert_eq!(recorded.header("X-Api-Key"), Some("test-key"));
    assert_eq!(recorded.model(), Some("claude-test-1"));
    assert_eq!(recorded.tool_names(), ["Bash"]);
}

#[tokio::test]
async fn tool_use_input_arrives_as_partial_json() {
    let fake = FakeAnthropic::start().await.expect("start");
    let input = json!({"command": "echo hi > out.txt", "description": "write a file"});
    fake.push(
        Reply::tool_use("Bash", input.clone())
            .with_text_before("Running it.")
            .model("claude-sonnet-4-5-20250929"),
    );
    let resp = raw_request(&fake, "POST", "/v1/messages", &main_body("claude-x")).await;
    assert_eq!(resp.status, 200);
    let events = parse_sse(&resp.body);
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(e, _)| e == "content_block_start")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0]["content_block"]["type"], "text");
    let tool = &starts[1]["content_block"];
    assert_eq!(tool["type"], "tool_use");
    assert_eq!(tool["name"], "Bash");
    assert_eq!(tool["input"], json!({}));
    assert!(tool["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("toolu_")));
    let partials: Vec<&str> = events
        .iter()
        .filter(|(e, d)| e == "content_block_delta" && d["index"] == 1)
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().expect("partial_json")
        })
        .collect();
    assert!(partials.iter().filter(|p| !p.is_empty()).count() >= 2);
    let rebuilt: Value = serde_json::from_str(&partials.concat()).expect("pieces join to JSON");
    assert_eq!(rebuilt, input);
    assert_eq!(
        events[0].1["message"]["model"],
        "claude-sonnet-4-5-20250929"
    );
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn error_reply_uses_status_and_error_shape() {
    let fake = FakeAnthropic::start().await.expect("start");
    fake.push(Reply::error(529, "overloaded_error", "Overloaded").header("retry-after", "2"));
    fake.push(Reply::error(429, "rate_limit_error", "Slow down"));
    let first = raw_request(&fake, "POST", "/v1/messages", &main_body("m")).await;
    assert_eq!(first.status, 529);
    assert_eq!(first.header("retry-after"), Some("2"));
    assert_eq!(
        first.json(),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    let second = raw_request(&fake, "POST", "/v1/messages", &main_body("m")).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.json()["error"]["type"], "rate_limit_error");
    // Queue empty again: the default text reply.
    let third = raw_request(&fake, "POST", "/v1/messages", &main_body("m")).await;
    assert_eq!(third.status, 200);
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn side_requests_leave_the_script_alone() {
    let fake = FakeAnthropic::start().await.expect("start");
    fake.push(Reply::text("scripted answer"));

    let side = json!({"model": "claude-haiku-4-5", "max_tokens": 512,
        "messages": [{"role": "user", "content": "Pick a title"}]});
    let resp = raw_request(&fake, "POST", "/v1/messages?beta=true", &side).await;
    assert_eq!(resp.status, 200);
    let msg = resp.json();
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["content"][0]["text"], "ok");
    assert_eq!(msg["model"], "claude-haiku-4-5");

    let mut probe = main_body("m");
    probe["max_tokens"] = json!(1);
    let resp = raw_request(&fake, "POST", "/v1/messages", &probe).await;
    assert_eq!(resp.status, 200);

    let resp = raw_request(
        &fake,
        "POST",
        "/v1/messages/count_tokens?beta=true",
        &main_body("m"),
    )
    .await;
    assert!(resp.json()["input_tokens"].as_u64().is_some_and(|n| n > 0));

    let resp = raw_request(&fake, "GET", "/v1/models", &Value::Null).await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json()["error"]["type"], "not_found_error");

    let resp = raw_request(&fake, "HEAD", "/api/hello", &Value::Null).await;
    assert_eq!(resp.status, 200);

    assert_eq!(fake.pending(), 1);
    assert_eq!(fake.request_count(), 0);
    let resp = raw_request(&fake, "POST", "/v1/messages", &main_body("m")).await;
    assert!(resp.body.contains("scripted answer"));
    assert_eq!(fake.pending(), 0);

    let kinds: Vec<RequestKind> = fake.all_requests().iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RequestKind::Side,
            RequestKind::Side,
            RequestKind::CountTokens,
            RequestKind::Other,
            RequestKind::Head,
            RequestKind::Main
        ]
    );
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn stalled_reply_holds_the_request_open() {
    let fake = FakeAnthropic::start().await.expect("start");
    fake.push(Reply::stalled());
    let mut stream = TcpStream::connect(fake.addr()).await.expect("connect");
    let payload = main_body("m").to_string();
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    assert!(fake.wait_for_requests(1, Duration::from_secs(5)).await);
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    assert!(read.is_err(), "no bytes while stalled");
    assert!(!fake.wait_for_requests(2, Duration::from_millis(50)).await);
}

async fn wait_idle(fake: &FakeAnthropic) -> bool {
    for _ in 0..100 {
        if fake.in_flight() == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn client_disconnect_ends_stalled_replies() {
    let fake = FakeAnthropic::start().await.expect("start");
    fake.push(Reply::stalled());
    fake.push(Reply::text("never finished").stall_mid_stream());
    for expected_requests in [1, 2] {
        let mut stream = TcpStream::connect(fake.addr()).await.expect("connect");
        let payload = main_body("m").to_string();
        let request = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        assert!(
            fake.wait_for_requests(expected_requests, Duration::from_secs(5))
                .await
        );
        let mut buf = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
        if expected_requests == 2 {
            let n = read
                .expect("mid-stream stall sends a first part")
                .expect("read");
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        assert_eq!(fake.in_flight(), 1);
        drop(stream);
        assert!(
            wait_idle(&fake).await,
            "reply dropped after the client left"
        );
    }
}

#[tokio::test]
async fn delay_and_chunk_delay_slow_the_reply() {
    let fake = FakeAnthropic::start().await.expect("start");
    fake.set_default(
        Reply::text("slow")
            .delay(Duration::from_millis(100))
            .chunk_delay(Duration::from_millis(20)),
    );
    let started = std::time::Instant::now();
    let resp = raw_request(&fake, "POST", "/v1/messages", &main_body("m")).await;
    assert_eq!(resp.status, 200);
    // 100 ms before headers + 20 ms between each of the 7 events.
    assert!(started.elapsed() >= Duration::from_millis(220));
    assert_eq!(parse_sse(&resp.body).len(), 7);
}

#[tokio::test]
async fn script_json_round_trip() {
    let fake = FakeAnthropic::start().await.expect("start");
    let script = r#"[
        {"text": "hi", "usage": {"input_tokens": 10, "output_tokens": 2}},
        {"tool_use": {"name": "Bash", "input": {"command": "ls"}}, "text": "Listing."},
        {"tool_use": [{"name": "Read", "input": {}}, {"name": "Write", "id": "toolu_fixed"}]},
        {"error": {"status": 529, "type": "overloaded_error", "message": "Overloaded"}},
        {"thinking": "hmm", "text": "x", "delay_ms": 5, "chunk_delay_ms": 1, "model": "m"},
        {"stall": "mid_stream", "text": "partial"},
        {"default": {"text": "fallback"}}
    ]"#;
    assert_eq!(fake.load_script(script).expect("valid script"), 6);
    assert_eq!(fake.pending(), 6);
    let queued = fake.shared.lock().queue.clone();
    assert_eq!(queued[0], Reply::text("hi").usage(Usage::new(10, 2)));
    assert_eq!(
        queued[1],
        Reply::tool_use("Bash", json!({"command": "ls"})).with_text_before("Listing.")
    );
    assert!(queued[3].is_error());
    assert_eq!(fake.shared.lock().default, Reply::text("fallback"));

    for bad in [
        r#"[{}]"#,
        r#"[{"text": "x", "error": {"status": 500, "type": "api_error", "message": "m"}}]"#,
        r#"[{"txt": "typo"}]"#,
        r#"[{"stall": "sometimes"}]"#,
    ] {
        assert!(fake.load_script(bad).is_err(), "{bad} must be rejected");
    }
}

#[test]
fn cost_matches_cli_prices() {
    let usage = Usage {
        input_tokens: 2500,
        output_tokens: 52,
        cache_read_input_tokens: 1000,
        cache_creation_input_tokens: 400,
    };
    let cost = expected_cost_usd("claude-opus-5-5", &usage).expect("known model");
    assert!((cost - (0.01 + 0.00104 + 0.0002 + 0.002)).abs() < 1e-12);
    assert!(expected_cost_usd("claude-unknown", &usage).is_none());
}

#[test]
fn classification_rule() {
    let mut body = main_body("m");
    assert_eq!(classify(&body), RequestKind::Main);
    body["tools"] = json!([]);
    assert_eq!(
        classify(&body),
        RequestKind::Main,
        "streaming turn without tools"
    );
    body["stream"] = json!(false);
    assert_eq!(
        classify(&body),
        RequestKind::Side,
        "non-streaming, no tools"
    );
    body["tools"] = json!([{"name": "Bash"}]);
    assert_eq!(
        classify(&body),
        RequestKind::Main,
        "non-streaming fallback of a turn"
    );
    body["max_tokens"] = json!(1);
    assert_eq!(classify(&body), RequestKind::Side, "probe");
    let mut compact = main_body("m");
    compact["messages"] = json!([{"role": "user", "content": [
        {"type": "text", "text": "CRITICAL: Respond with TEXT ONLY. Do NOT call any tools."}
    ]}]);
    assert_eq!(classify(&compact), RequestKind::Compaction);
}
