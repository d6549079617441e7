//! The guard in front of a remote (streamable HTTP) server: it speaks stdio to the CLI and HTTP
//! to the server, adding the server's headers (credentials filled in) itself, so they are never
//! in the run's MCP configuration, and filtering and redacting like it does for a local server.
//!
//! Each message from the CLI is one POST; the answer, plain JSON or a stream of server-sent
//! events, is passed back message by message. Requests are sent one at a time. A request the
//! server or the network fails is answered with a JSON-RPC error, so the CLI never waits for an
//! answer that will not come. (Messages a server would push on its own GET stream, which tool
//! calls do not need, are not fetched.)

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Filter, FromClient, GuardSettings};

/// How long one request to the server may take (a tool call included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// The JSON-RPC messages in an answer's body: one JSON value (or an array of them), or the
/// `data:` lines of a server-sent event stream.
pub(super) fn messages_in(body: &str) -> Vec<Value> {
    let parse = |text: &str| match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => items,
        Ok(value) => vec![value],
        Err(_) => Vec::new(),
    };
    let trimmed = body.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return parse(trimmed);
    }
    // Events are separated by blank lines; an event's data may span several `data:` lines.
    let mut messages = Vec::new();
    let mut data = String::new();
    for line in body.lines().chain(std::iter::once("")) {
        if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        } else if line.is_empty() && !data.is_empty() {
            messages.extend(parse(&data));
            data.clear();
        }
    }
    messages
}

fn rpc_error(id: &Value, message: String) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32000, "message": message } })
}

/// Relays between the CLI on stdio and the server at `url` until the CLI goes away.
pub async fn run(settings: GuardSettings, url: String) -> anyhow::Result<i32> {
    let mut headers = HeaderMap::new();
    for (name, value) in &settings.env {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| anyhow::anyhow!("`{name}` is not a header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| anyhow::anyhow!("the value of header `{name}` is not valid"))?;
        headers.insert(name, value);
    }
    headers.insert(
        ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .default_headers(headers)
        .build()?;
    let mut filter = Filter::new(&settings);
    drop(settings);
    let mut session: Option<String> = None;
    let mut version: Option<String> = None;
    let mut client_in = BufReader::new(tokio::io::stdin()).lines();
    let mut client_out = tokio::io::stdout();
    while let Some(line) = client_in.next_line().await? {
        let answers = match filter.from_client(&line) {
            FromClient::Answer(answer) => vec![answer],
            FromClient::Forward => {
                let message: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                let id = message.get("id").cloned();
                let mut request = client
                    .post(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(line);
                if let Some(session) = &session {
                    request = request.header(SESSION_HEADER, session);
                }
                if let Some(version) = &version {
                    request = request.header(VERSION_HEADER, version);
                }
                let answered = match request.send().await {
                    Ok(response) => {
                        if let Some(id) = response
                            .headers()
                            .get(SESSION_HEADER)
                            .and_then(|v| v.to_str().ok())
                        {
                            session = Some(id.to_owned());
                        }
                        let status = response.status();
                        match response.text().await {
                            Ok(body) if status.is_success() => Ok(messages_in(&body)),
                            Ok(_) => Err(format!("the remote MCP server answered HTTP {status}")),
                            Err(err) => {
                                Err(format!("reading the remote MCP server's answer: {err}"))
                            }
                        }
                    }
                    Err(err) => Err(format!("the remote MCP server could not be reached: {err}")),
                };
                let messages = match (answered, &id) {
                    (Ok(messages), _) => messages,
                    (Err(error), Some(id)) => vec![rpc_error(id, error)],
                    // A notification that failed: nothing to answer.
                    (Err(error), None) => {
                        eprintln!("autopilot-mcp-guard: {error}");
                        Vec::new()
                    }
                };
                for message in &messages {
                    // Later requests carry the protocol version the server agreed to.
                    if let Some(agreed) = message
                        .pointer("/result/protocolVersion")
                        .and_then(Value::as_str)
                    {
                        version = Some(agreed.to_owned());
                    }
                }
                messages
                    .into_iter()
                    .map(|message| filter.from_server(&message.to_string()))
                    .collect()
            }
        };
        for answer in answers {
            client_out.write_all(answer.as_bytes()).await?;
            client_out.write_all(b"\n").await?;
        }
        client_out.flush().await?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_from_json_and_from_event_streams() {
        assert_eq!(messages_in("{\"id\":1}"), vec![json!({ "id": 1 })]);
        assert_eq!(messages_in("[{\"id\":1},{\"id\":2}]").len(), 2);
        let stream = "event: message\ndata: {\"id\":1,\ndata: \"result\":{}}\n\n: ping\n\ndata: {\"id\":2}\n";
        assert_eq!(
            messages_in(stream),
            vec![json!({ "id": 1, "result": {} }), json!({ "id": 2 })]
        );
        assert!(messages_in("").is_empty());
        assert!(messages_in("not json").is_empty());
    }
}
