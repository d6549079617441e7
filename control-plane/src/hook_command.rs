//! `autopilot hook`: the command Claude Code's `hooks` settings call. It reads the event Claude
//! Code gives a hook on standard input and sends it to Autopilot (`POST /hook-events`, with a
//! hook token), where the jobs that answer it start. It prints nothing and always exits 0, within
//! its timeout: a slow, absent or refusing Autopilot never holds the session up or changes what
//! Claude does (set `AUTOPILOT_HOOK_DEBUG=1` to see why an event was not taken on stderr).

use std::time::Duration;

use clap::Args;
use tokio::io::AsyncReadExt;

use crate::services::hook_events::MAX_EVENT_BYTES;

#[derive(Args, Debug)]
pub struct HookArgs {
    /// Autopilot's URL, e.g. https://autopilot.example.com (events go to its `/hook-events`).
    #[arg(long, env = "AUTOPILOT_HOOK_URL", value_name = "URL")]
    pub url: Option<String>,
    /// A hook token (`aph_…`, from POST /api/v1/hook-tokens): it admits hook events only.
    #[arg(
        long,
        env = "AUTOPILOT_HOOK_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Give up after this many milliseconds, reading the event and sending it together.
    #[arg(
        long,
        env = "AUTOPILOT_HOOK_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 2000
    )]
    pub timeout_ms: u64,
}

/// Sends the event; whatever happens, the session goes on.
pub async fn run(args: HookArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms.clamp(100, 60_000));
    let outcome = match tokio::time::timeout(timeout, send(&args, timeout)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("gave up after {} ms", timeout.as_millis())),
    };
    if let Err(why) = outcome {
        if std::env::var_os("AUTOPILOT_HOOK_DEBUG").is_some() {
            eprintln!("autopilot hook: the event was not sent: {why}");
        }
    }
    Ok(())
}

async fn send(args: &HookArgs, timeout: Duration) -> Result<(), String> {
    let url = args
        .url
        .as_deref()
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .ok_or("no URL: set AUTOPILOT_HOOK_URL (or --url) to Autopilot's address")?;
    let token = args
        .token
        .as_deref()
        .filter(|token| !token.is_empty())
        .ok_or("no token: set AUTOPILOT_HOOK_TOKEN (or --token) to a hook token")?;
    let mut event = Vec::new();
    tokio::io::stdin()
        .take(MAX_EVENT_BYTES as u64 + 1)
        .read_to_end(&mut event)
        .await
        .map_err(|err| format!("reading standard input: {err}"))?;
    if event.len() > MAX_EVENT_BYTES {
        return Err(format!("the event is over {MAX_EVENT_BYTES} bytes"));
    }
    let endpoint = if url.ends_with("/hook-events") {
        url.to_owned()
    } else {
        format!("{}/hook-events", url.trim_end_matches('/'))
    };
    let answer = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|err| err.to_string())?
        .post(&endpoint)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(event)
        .send()
        .await
        .map_err(|err| format!("POST {endpoint}: {err}"))?;
    let status = answer.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = answer.text().await.unwrap_or_default();
        Err(format!("POST {endpoint}: {status} {body}"))
    }
}
