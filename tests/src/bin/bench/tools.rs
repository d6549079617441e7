//! `tools [RUNS]`: what MCP servers add to a run and to a tool call.
//!
//! - Time to the CLI's `system/init` line (from the run's creation) with 0, 1 and 5 granted
//!   servers, Python ones (the `mcp` SDK, under `autopilot-mcp-guard`) and fixed ones
//!   (`autopilot-servers email`), on the local executor and, when a Docker Engine with the run
//!   image is here, the Docker executor; the median of RUNS runs each, after one run not counted.
//!   The CLI starts every granted server and waits for it before that line.
//! - The guard's added latency per tool call: the same Python server called over stdio directly
//!   and under the guard (credential redaction on), one call at a time.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::Context;
use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply};
use autopilot_tests::harness::TestServer;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::{percentile, sorted, Row};

const SERVER: &str = r#"
import os
from mcp.server.mcpserver import MCPServer

server = MCPServer("notes")

@server.tool()
def lookup_note(topic: str) -> str:
    """Looks a note up."""
    return f"note on {topic} ({len(os.environ.get('NOTES_TOKEN', ''))} token bytes)"

server.run()
"#;

const TOKEN: &str = "bench-token-0123456789";

use crate::docker::first_output_ms as init_ms;

async fn post(server: &TestServer, path: &str, body: Value) -> anyhow::Result<Value> {
    let (status, body) = server.call(Method::POST, path, Some(body)).await;
    anyhow::ensure!(status.is_success(), "{path}: {status} {body}");
    Ok(body)
}

/// Registers `count` Python servers and `count` fixed ones on `server`, and a job granting each
/// set; returns (the Python job, the fixed job), or none when `count` is 0.
async fn jobs_with(
    server: &TestServer,
    count: usize,
    python: (&str, &str),
    workspace_of: impl Fn(&Value) -> std::path::PathBuf,
) -> anyhow::Result<Vec<(String, String)>> {
    let (command, script) = python;
    if count == 0 {
        let job = server
            .create_job(json!({ "name": "none", "prompt": "hello" }))
            .await;
        return Ok(vec![(
            "no servers".into(),
            job["id"].as_str().unwrap().into(),
        )]);
    }
    let (mut py_grants, mut fixed_grants) = (Vec::new(), Vec::new());
    for index in 1..=count {
        let py = format!("py-{count}-{index}");
        post(
            server,
            "/api/v1/servers",
            json!({ "name": py, "transport": { "type": "stdio", "command": command, "args": [script], "env": { "NOTES_TOKEN": "${NOTES_TOKEN}" } }, "tools": [{ "name": "lookup_note" }] }),
        )
        .await?;
        py_grants.push(json!({ "server": py }));
        let fixed = format!("mail-{count}-{index}");
        post(
            server,
            "/api/v1/servers",
            json!({ "name": fixed, "transport": { "type": "fixed", "server": "email", "env": {
                "EMAIL_SMTP_URL": "smtp://127.0.0.1:9", "EMAIL_FROM": "bench@example.com",
                "EMAIL_ALLOWED_RECIPIENTS": "*@example.com" } } }),
        )
        .await?;
        fixed_grants.push(json!({ "server": fixed, "access": "write" }));
    }
    let mut jobs = Vec::new();
    for (kind, grants) in [("Python", py_grants), ("fixed", fixed_grants)] {
        let job = server
            .create_job(
                json!({ "name": format!("{kind} {count}"), "prompt": "hello", "servers": grants }),
            )
            .await;
        std::fs::create_dir_all(workspace_of(&job))?;
        std::fs::write(workspace_of(&job).join("notes_server.py"), SERVER)?;
        jobs.push((
            format!("{count} {kind} server{}", if count == 1 { "" } else { "s" }),
            job["id"].as_str().unwrap().to_owned(),
        ));
    }
    Ok(jobs)
}

async fn init_rows(
    server: &TestServer,
    executor: &str,
    python: (&str, &str),
    runs: usize,
) -> anyhow::Result<Vec<Row>> {
    let (status, body) = server
        .call(
            Method::PUT,
            "/api/v1/credentials/NOTES_TOKEN",
            Some(json!({ "value": TOKEN })),
        )
        .await;
    anyhow::ensure!(status.is_success(), "{body}");
    let mut rows = Vec::new();
    let mut baseline = None;
    for count in [0, 1, 5] {
        let jobs = jobs_with(server, count, python, |job| server.workspace_of(job)).await?;
        for (label, job_id) in jobs {
            // The first run of each warms the page cache (the CLI, Python, the server's
            // modules): not counted.
            init_ms(server, &job_id).await?;
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                times.push(init_ms(server, &job_id).await?);
            }
            let times = sorted(times);
            let median = percentile(&times, 50.0);
            let base = *baseline.get_or_insert(median);
            rows.push(Row {
                name: format!(
                    "time to the CLI's init line, {executor} executor, {label} (median of {runs})"
                ),
                value: format!(
                    "{median:.0} ms (min {:.0}, max {:.0}; {:+.0} ms against no server)",
                    times[0],
                    times[times.len() - 1],
                    median - base
                ),
                target: "measured".into(),
            });
        }
    }
    Ok(rows)
}

/// One stdio MCP session, a line per message.
struct Session {
    child: tokio::process::Child,
    input: tokio::process::ChildStdin,
    output: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    next_id: u64,
}

impl Session {
    async fn start(mut command: tokio::process::Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let input = child.stdin.take().context("stdin")?;
        let output = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut session = Self {
            child,
            input,
            output,
            next_id: 0,
        };
        session
            .request("initialize", json!({ "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "bench", "version": "0" } }))
            .await?;
        session
            .send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))
            .await?;
        Ok(session)
    }

    async fn send(&mut self, message: &Value) -> anyhow::Result<()> {
        self.input.write_all(message.to_string().as_bytes()).await?;
        self.input.write_all(b"\n").await?;
        self.input.flush().await?;
        Ok(())
    }

    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))
            .await?;
        loop {
            let line = self
                .output
                .next_line()
                .await?
                .context("the server closed")?;
            let message: Value = serde_json::from_str(&line)?;
            if message["id"] == json!(id) {
                anyhow::ensure!(message.get("error").is_none(), "{message}");
                return Ok(message);
            }
        }
    }

    /// Round trips of `calls` tool calls, in milliseconds.
    async fn calls(&mut self, calls: usize) -> anyhow::Result<Vec<f64>> {
        let mut times = Vec::with_capacity(calls);
        for index in 0..calls {
            let started = Instant::now();
            let answer = self
                .request(
                    "tools/call",
                    json!({ "name": "lookup_note", "arguments": { "topic": format!("t{index}") } }),
                )
                .await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(answer.to_string().contains("note on"), "{answer}");
        }
        Ok(times)
    }
}

async fn guard_rows(python: &Path, script: &Path, calls: usize) -> anyhow::Result<Vec<Row>> {
    let servers = components::fixed_servers_bin().context(
        "autopilot-servers and autopilot-mcp-guard are needed: cargo build --release -p \
         autopilot-fixed-servers --features servers --bins",
    )?;
    let guard = servers.with_file_name("autopilot-mcp-guard");
    let settings_dir = tempfile::tempdir()?;
    let mut results = Vec::new();
    for guarded in [false, true, false, true] {
        let mut command;
        if guarded {
            let file = settings_dir.path().join("notes.guard.json");
            std::fs::write(
                &file,
                json!({ "env": { "NOTES_TOKEN": TOKEN }, "allow": ["lookup_note"], "secrets": { "NOTES_TOKEN": TOKEN } })
                    .to_string(),
            )?;
            command = tokio::process::Command::new(&guard);
            command
                .env("AUTOPILOT_SETTINGS_FILE", &file)
                .arg("--")
                .arg(python)
                .arg(script);
        } else {
            command = tokio::process::Command::new(python);
            command.arg(script).env("NOTES_TOKEN", TOKEN);
        }
        let mut session = Session::start(command).await?;
        session.calls(50).await?; // warm-up
        let times = session.calls(calls).await?;
        let _ = session.child.kill().await;
        results.push((guarded, times));
    }
    let merge = |guarded: bool| {
        sorted(
            results
                .iter()
                .filter(|(g, _)| *g == guarded)
                .flat_map(|(_, times)| times.iter().copied())
                .collect(),
        )
    };
    let (direct, guarded) = (merge(false), merge(true));
    let (d50, g50) = (percentile(&direct, 50.0), percentile(&guarded, 50.0));
    Ok(vec![Row {
        name: format!(
            "a tool call's round trip to a Python MCP server over stdio, direct → under \
             autopilot-mcp-guard ({} calls each, alternating sessions)",
            direct.len()
        ),
        value: format!(
            "p50 {d50:.3} → {g50:.3} ms (**{:+.3} ms**); p99 {:.3} → {:.3} ms",
            g50 - d50,
            percentile(&direct, 99.0),
            percentile(&guarded, 99.0)
        ),
        target: "guard adds < 2 ms p50".into(),
    }])
}

pub async fn tools(runs: usize) -> anyhow::Result<Vec<Row>> {
    let claude = components::claude_bin().context("the Claude Code CLI is needed")?;
    let python = components::mcp_python().context("a Python with the mcp SDK is needed")?;
    let fixed = components::fixed_servers_bin().context("autopilot-servers is needed")?;
    let fake = FakeAnthropic::start().await?;
    fake.set_default(Reply::text("hello"));
    let mut rows = Vec::new();

    let scratch = tempfile::tempdir()?;
    let script = scratch.path().join("notes_server.py");
    std::fs::write(&script, SERVER)?;
    rows.extend(guard_rows(&python, &script, 500).await?);

    let local = TestServer::builder()
        .sqlite()
        .claude_bin(&claude)
        .fixed_servers_bin(&fixed)
        .model_api(&fake.base_url())
        .start()
        .await;
    let python_text = python.display().to_string();
    let script_text = script.display().to_string();
    rows.extend(init_rows(&local, "local", (&python_text, &script_text), runs).await?);

    if components::docker_executor("bench-tools-probe")
        .await
        .is_some()
    {
        let docker = TestServer::builder()
            .sqlite()
            .docker()
            .model_api(&fake.base_url())
            .start()
            .await;
        rows.extend(
            init_rows(
                &docker,
                "Docker",
                ("python3", "/workspace/notes_server.py"),
                runs,
            )
            .await?,
        );
    }
    Ok(rows)
}
