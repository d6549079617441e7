//! `autopilot mcp`: the tools over stdin / stdout, for local clients such as Claude Desktop.
//! Either served by an Autopilot embedded in this process, or forwarded to a running one's
//! `/mcp` endpoint so a single scheduler owns the data directory. Stdout carries protocol
//! messages only; logs go to stderr.

use std::sync::Arc;

use anyhow::Context;
use rmcp::ServiceExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Mutex};

use super::AutopilotMcp;
use crate::app::App;
use crate::domain::auth::Caller;

/// Serves the tools of the Autopilot in this process until the client closes stdin.
pub async fn serve_embedded(app: Arc<App>) -> anyhow::Result<()> {
    let server = AutopilotMcp::for_stdio(app, Caller::stdio());
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the MCP session on stdio")?;
    running.waiting().await.context("serving MCP on stdio")?;
    Ok(())
}

/// Forwards JSON-RPC messages from stdin to `<api_url>/mcp` (one POST each, concurrently) and
/// writes every message of the answers (plain JSON or an event stream) to stdout.
pub async fn forward(api_url: &str, token: Option<&str>) -> anyhow::Result<()> {
    let api_url = api_url.trim().trim_end_matches('/');
    if !api_url.starts_with("http://") {
        anyhow::bail!(
            "AUTOPILOT_API_URL must be an http:// URL of the running Autopilot (e.g. \
             http://127.0.0.1:8080; this forwarder speaks plain HTTP to a local listener), got `{api_url}`"
        );
    }
    let endpoint = format!("{api_url}/mcp");
    let client = reqwest::Client::builder()
        .build()
        .context("building the HTTP client")?;
    let forwarder = Arc::new(Forwarder {
        client,
        endpoint,
        authorization: token.map(|token| format!("Bearer {}", token.trim())),
        protocol_version: Mutex::new(None),
    });
    let (out_tx, mut out_rx) = mpsc::channel::<String>(64);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = out_rx.recv().await {
            stdout.write_all(line.as_bytes()).await?;
            stdout.write_all(b"\n").await?;
            stdout.flush().await?;
        }
        anyhow::Ok(())
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        if line.trim().is_empty() {
            continue;
        }
        let forwarder = Arc::clone(&forwarder);
        let out = out_tx.clone();
        in_flight.spawn(async move { forwarder.relay(line, out).await });
    }
    // Stdin closed: let the answers already asked for arrive, then stop.
    while in_flight.join_next().await.is_some() {}
    drop(out_tx);
    writer.await.context("stdout writer")??;
    Ok(())
}

struct Forwarder {
    client: reqwest::Client,
    endpoint: String,
    authorization: Option<String>,
    /// Learnt from the `initialize` answer; sent on later requests as `MCP-Protocol-Version`.
    protocol_version: Mutex<Option<String>>,
}

impl Forwarder {
    async fn relay(&self, line: String, out: mpsc::Sender<String>) {
        let message: Value = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(err) => {
                let _ = out
                    .send(error_line(
                        Value::Null,
                        -32700,
                        &format!("parse error: {err}"),
                    ))
                    .await;
                return;
            }
        };
        // Requests have an id and a method; notifications and responses get no answer.
        let request_id = match (message.get("id"), message.get("method")) {
            (Some(id), Some(_)) => Some(id.clone()),
            _ => None,
        };
        if let Err(err) = self.post(&message, &out).await {
            tracing::warn!(error = %format!("{err:#}"), "forwarding an MCP message failed");
            if let Some(id) = request_id {
                let _ = out
                    .send(error_line(
                        id,
                        -32603,
                        &format!(
                            "could not reach Autopilot at {} (AUTOPILOT_API_URL): {err:#}",
                            self.endpoint
                        ),
                    ))
                    .await;
            }
        }
    }

    async fn post(&self, message: &Value, out: &mpsc::Sender<String>) -> anyhow::Result<()> {
        let mut request = self
            .client
            .post(&self.endpoint)
            .header("accept", "application/json, text/event-stream")
            .json(message);
        if let Some(authorization) = &self.authorization {
            request = request.header("authorization", authorization);
        }
        if message.get("method").and_then(Value::as_str) != Some("initialize") {
            if let Some(version) = self.protocol_version.lock().await.clone() {
                request = request.header("mcp-protocol-version", version);
            }
        }
        let response = request.send().await?;
        let status = response.status();
        if status == reqwest::StatusCode::ACCEPTED || status == reqwest::StatusCode::NO_CONTENT {
            return Ok(());
        }
        let is_stream = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("HTTP {status}: {}", body.trim());
        }
        if is_stream {
            let mut response = response;
            let mut buffer = String::new();
            while let Some(chunk) = response.chunk().await? {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find('\n') {
                    let line: String = buffer.drain(..=end).collect();
                    if let Some(data) = line.trim_end().strip_prefix("data:") {
                        self.emit(data.trim(), out).await;
                    }
                }
            }
            if let Some(data) = buffer.trim_end().strip_prefix("data:") {
                self.emit(data.trim(), out).await;
            }
        } else {
            let body = response.text().await?;
            self.emit(body.trim(), out).await;
        }
        Ok(())
    }

    /// Writes one message out, remembering the negotiated protocol version on the way.
    async fn emit(&self, data: &str, out: &mpsc::Sender<String>) {
        if data.is_empty() {
            return;
        }
        let Ok(message) = serde_json::from_str::<Value>(data) else {
            tracing::warn!("dropping a non-JSON message from /mcp");
            return;
        };
        if let Some(version) = message
            .pointer("/result/protocolVersion")
            .and_then(Value::as_str)
        {
            *self.protocol_version.lock().await = Some(version.to_owned());
        }
        let _ = out.send(message.to_string()).await;
    }
}

fn error_line(id: Value, code: i64, message: &str) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }).to_string()
}
