//! Webhook ingestion on the embedded default (SQLite, one process):
//!
//! - throughput: wrk on loopback (2 threads, 64 connections, a fixed time) sends GitHub-style
//!   deliveries (signed with `X-Hub-Signature-256`, each with its own `X-GitHub-Delivery`) as
//!   fast as they are answered; then the server is killed with SIGKILL at once and the runs in its
//!   database are counted: every delivery answered `202` must be there;
//! - latency: an open-loop generator sends 1,000 deliveries a second, each at its due time
//!   whether or not earlier ones were answered, and measures due time → answer.
//!
//! Each is measured twice ([`Runs`]): with the webhook's runs going to a worker pool nobody
//! serves, so that what is measured is ingestion alone (the run stored, durable, and queued),
//! and with them executing meanwhile as the shortest runs there are (a shell job `true`, run by
//! the embedded worker), whose run-state writes share the one SQLite writer with the
//! deliveries.

use std::time::{Duration, Instant};

use anyhow::Context;
use autopilot_tests::harness::ADMIN_TOKEN;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::Connection;

use super::{percentile, process_cpu_ms, sorted, spawn_serve, CpuTimes, Row, Serve};

pub(crate) const SECRET: &str = "bench-signing-secret-0123456789";

fn signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What happens to the runs the deliveries make while the load goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// Queued for a pool nobody serves: ingestion alone.
    Queued,
    /// Executed at once by the embedded worker: a shell job `true`, ending as fast as a run can.
    Executing,
}

impl Runs {
    fn describe(self) -> &'static str {
        match self {
            Runs::Queued => "runs queued, none executing",
            Runs::Executing => "each run executing meanwhile (shell `true`, 4 at a time)",
        }
    }
}

/// Creates the benchmark's webhook; returns its URL.
async fn create_webhook(serve: &Serve, runs: Runs) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let mut webhook = json!({
        "name": "bench",
        "signature": { "scheme": "github", "secret": SECRET },
        "rate_limit": { "per_second": 1_000_000, "burst": 1_000_000 },
    });
    match runs {
        Runs::Queued => {
            webhook["prompt_template"] = json!("Triage GitHub issue #{{payload.issue.number}} ({{headers.x-github-event}}): {{payload.issue.title}} by {{payload.issue.user.login}}");
            webhook["pool"] = json!("bench-unserved");
        }
        Runs::Executing => {
            let job = client
                .post(format!("{}/api/v1/jobs", serve.base_url))
                .bearer_auth(ADMIN_TOKEN)
                .json(
                    &json!({ "name": "bench-fast", "command": "true", "overlap_policy": "allow" }),
                )
                .send()
                .await?;
            anyhow::ensure!(
                job.status() == reqwest::StatusCode::CREATED,
                "creating the job: {}",
                job.text().await?
            );
            webhook["job"] = json!("bench-fast");
        }
    }
    let response = client
        .post(format!("{}/api/v1/webhooks", serve.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&webhook)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == reqwest::StatusCode::CREATED,
        "creating the webhook: {}",
        response.text().await?
    );
    let created: Value = response.json().await?;
    created["url"]
        .as_str()
        .map(str::to_owned)
        .context("no url in the answer")
}

/// How many different bodies wrk sends, in turn.
const BODIES: usize = 64;

/// GitHub-style `issues` deliveries whose titles run from 8 to 120 characters, as real ones
/// vary. One body sent again and again would give every run's row the same size, and where
/// that size falls against SQLite's 4 KiB pages would decide much of a figure: at the old
/// fixed body, 17 more bytes a row (a longer title, or a trace context) meant three rows a
/// page instead of four, and a third more pages written for the runs table.
fn payloads() -> Vec<String> {
    const WORDS: [&str; 16] = [
        "crash", "when", "saving", "settings", "on", "windows", "after", "upgrade", "login",
        "page", "times", "out", "null", "pointer", "in", "parser",
    ];
    (0..BODIES)
        .map(|i| {
            let length = 8 + i * 112 / (BODIES - 1);
            let mut title = String::new();
            for word in WORDS.iter().cycle().skip(i * 5) {
                if title.len() >= length {
                    break;
                }
                title.push_str(word);
                title.push(' ');
            }
            title.truncate(length);
            let title = title.trim_end();
            format!(
                r#"{{"action":"opened","issue":{{"number":{},"title":"{title}","user":{{"login":"octocat"}},"labels":[{{"name":"bug"}}]}}}}"#,
                1300 + i
            )
        })
        .collect()
}

/// wrk's script: [`payloads`] in turn, each signed, a new delivery id each request (starting
/// with `prefix`, for several wrk processes or bursts against one server), and the counts as
/// JSON.
pub(crate) fn wrk_script_for(prefix: &str) -> String {
    let bodies: String = payloads()
        .iter()
        .map(|body| {
            format!(
                "  {{[==[{body}]==], \"{}\"}},\n",
                signature(body.as_bytes())
            )
        })
        .collect();
    format!(
        r#"
-- `thread_id` is set in each thread's own state by setup(); it must stay a global there.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end
local bodies = {{
{bodies}}}
local counter = 0
function request()
  counter = counter + 1
  local body = bodies[counter % #bodies + 1]
  return wrk.format("POST", nil, {{
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "issues",
    ["X-Hub-Signature-256"] = body[2],
    ["X-GitHub-Delivery"] = "{prefix}" .. thread_id .. "-" .. counter,
  }}, body[1])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {{"requests":%d,"non2xx":%d,"socket_errors":%d,"seconds":%f,"p50_us":%d,"p99_us":%d}}\n',
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99)))
end
"#
    )
}

/// What wrk said, from the `WRK {…}` line of [`wrk_script_for`]'s `done`.
pub(crate) struct WrkSummary {
    /// Answered 2xx.
    pub accepted: i64,
    /// Answered otherwise.
    pub refused: i64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub(crate) fn wrk_summary(text: &str) -> anyhow::Result<WrkSummary> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("WRK "))
        .with_context(|| format!("no summary from wrk: {text}"))?;
    let summary: Value = serde_json::from_str(line)?;
    let requests = summary["requests"].as_i64().unwrap_or(0);
    let refused = summary["non2xx"].as_i64().unwrap_or(0);
    Ok(WrkSummary {
        accepted: requests - refused,
        refused,
        seconds: summary["seconds"].as_f64().unwrap_or(1.0).max(0.001),
        p50_ms: summary["p50_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        p99_ms: summary["p99_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
    })
}

/// The server's log filter: warnings only, unless `AUTOPILOT_LOG` says otherwise.
fn log_filter() -> String {
    std::env::var("AUTOPILOT_LOG").unwrap_or_else(|_| "warn".to_owned())
}

async fn runs_in_database(serve: &Serve) -> anyhow::Result<i64> {
    let path = serve.dir.path().join("autopilot.db");
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM runs WHERE webhook_id IS NOT NULL")
        .fetch_one(&mut db)
        .await?;
    Ok(count)
}

/// Webhook runs that ran to their end (the embedded pipeline's output while the load ran).
async fn runs_ended(serve: &Serve) -> anyhow::Result<i64> {
    let path = serve.dir.path().join("autopilot.db");
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
    let (count,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM runs WHERE webhook_id IS NOT NULL AND status IN ('succeeded', 'failed')",
    )
    .fetch_one(&mut db)
    .await?;
    Ok(count)
}

async fn throughput(seconds: u64, runs: Runs) -> anyhow::Result<Vec<Row>> {
    throughput_of(seconds, runs).await
}

/// A server taking signed deliveries for one webhook, loaded by wrk in as many bursts as asked
/// (each with delivery ids of its own).
pub struct Intake {
    serve: Serve,
    url: String,
    bursts: usize,
    accepted: i64,
}

/// What one burst measured.
pub struct Burst {
    pub summary: WrkSummary,
    /// Deliveries accepted a second.
    pub per_second: f64,
    /// CPU time of the server per accepted delivery, in microseconds.
    pub server_cpu_us: f64,
    /// CPU time of this benchmark's own process per accepted delivery, in microseconds (wrk
    /// is a process of its own): what an OTLP receiver in it spent, when one is.
    pub bench_cpu_us: f64,
    /// The machine's CPU steal meanwhile, as text.
    pub steal: String,
}

impl Intake {
    /// Starts a server with `env` added to its environment and its webhook's runs as `runs`
    /// says.
    pub async fn start(env: &[(&str, &str)], runs: Runs) -> anyhow::Result<Self> {
        anyhow::ensure!(
            std::process::Command::new("wrk")
                .arg("--version")
                .output()
                .is_ok(),
            "the webhook benchmark needs wrk: apt-get install wrk"
        );
        let log = log_filter();
        let mut server_env = vec![
            ("AUTOPILOT_MAX_QUEUED_RUNS", "100000000"),
            ("AUTOPILOT_LOG", log.as_str()),
        ];
        server_env.extend_from_slice(env);
        let serve = spawn_serve(&server_env).await?;
        let url = create_webhook(&serve, runs).await?;
        Ok(Self {
            serve,
            url,
            bursts: 0,
            accepted: 0,
        })
    }

    /// `wrk -t2 -c64` for `seconds`.
    pub async fn burst(&mut self, seconds: u64) -> anyhow::Result<Burst> {
        let script = self.serve.dir.path().join("deliveries.lua");
        std::fs::write(&script, wrk_script_for(&format!("b{}-", self.bursts)))?;
        self.bursts += 1;
        let cpu = CpuTimes::now();
        let server_cpu = self.serve.cpu_ms();
        let bench_cpu = process_cpu_ms(std::process::id());
        let output = tokio::process::Command::new("wrk")
            .args(["-t2", "-c64", &format!("-d{seconds}s"), "-s"])
            .arg(&script)
            .arg(&self.url)
            .output()
            .await?;
        let steal = CpuTimes::steal_since(cpu);
        let bench_cpu_ms = process_cpu_ms(std::process::id())
            .zip(bench_cpu)
            .map_or(f64::NAN, |(after, before)| after - before);
        let server_cpu_ms = self
            .serve
            .cpu_ms()
            .zip(server_cpu)
            .map_or(f64::NAN, |(after, before)| after - before);
        let summary = wrk_summary(&String::from_utf8_lossy(&output.stdout))?;
        self.accepted += summary.accepted;
        let per_delivery = |ms: f64| ms * 1000.0 / summary.accepted.max(1) as f64;
        Ok(Burst {
            per_second: summary.accepted as f64 / summary.seconds,
            server_cpu_us: per_delivery(server_cpu_ms),
            bench_cpu_us: per_delivery(bench_cpu_ms),
            summary,
            steal,
        })
    }

    /// Kills the server at once (what was answered must already be on disk) and checks that
    /// every accepted delivery's run is in its database; the server (its files stay for a
    /// look) and how many runs were stored.
    pub async fn kill_and_check(mut self) -> anyhow::Result<(Serve, i64)> {
        self.serve.child.kill()?;
        self.serve.child.wait()?;
        let stored = runs_in_database(&self.serve).await?;
        anyhow::ensure!(
            stored >= self.accepted,
            "only {stored} runs were stored for {} accepted deliveries",
            self.accepted
        );
        Ok((self.serve, stored))
    }
}

/// The throughput run, its runs as `runs` says.
async fn throughput_of(seconds: u64, runs: Runs) -> anyhow::Result<Vec<Row>> {
    let mut intake = Intake::start(&[], runs).await?;
    eprintln!(
        "wrk: 2 threads, 64 connections, {seconds}s against {}…",
        intake.url
    );
    let Burst {
        summary,
        per_second,
        steal,
        ..
    } = intake.burst(seconds).await?;
    let (serve, stored) = intake.kill_and_check().await?;
    let (accepted, refused) = (summary.accepted, summary.refused);
    let mut rows = vec![
        Row {
            name: format!(
                "webhook deliveries accepted per second, durable, embedded SQLite, {} (wrk -t2 \
                 -c64 {seconds}s, signed, unique delivery ids; {accepted} accepted, {refused} \
                 refused)",
                runs.describe()
            ),
            value: format!(
                "**{per_second:.0}/s** (wrk latency p50 {:.1} ms, p99 {:.1} ms; {steal})",
                summary.p50_ms, summary.p99_ms
            ),
            target: "≥ 10,000/s".into(),
        },
        Row {
            name: "runs in the database after `kill -9` right after the load".into(),
            value: format!("{stored} for {accepted} answered `202` (none lost)"),
            target: "every accepted delivery".into(),
        },
    ];
    if runs == Runs::Executing {
        let ended = runs_ended(&serve).await?;
        rows.push(Row {
            name: "embedded pipeline: webhook runs (shell `true`) that ran to their end during \
                   that load"
                .into(),
            value: format!(
                "{ended} runs, **{:.0} runs/s**",
                ended as f64 / summary.seconds
            ),
            target: "(reported)".into(),
        });
    }
    Ok(rows)
}

async fn fixed_rate(seconds: u64, runs: Runs) -> anyhow::Result<Vec<Row>> {
    const RATE: u64 = 1000;
    let serve = spawn_serve(&[
        ("AUTOPILOT_MAX_QUEUED_RUNS", "100000000"),
        ("AUTOPILOT_LOG", &log_filter()),
    ])
    .await?;
    let url = create_webhook(&serve, runs).await?;
    let total = RATE * seconds;
    // Bodies and signatures are made before the clock starts; the generator runs on a thread of
    // its own so its scheduling does not mix with anything else in this process.
    let requests: Vec<(String, String)> = (0..total)
        .map(|i| {
            let body = format!(
                r#"{{"action":"opened","issue":{{"number":{i},"title":"Found a bug","user":{{"login":"octocat"}}}}}}"#
            );
            let signature = signature(body.as_bytes());
            (body, signature)
        })
        .collect();
    eprintln!("{RATE} deliveries/s for {seconds}s, open loop…");
    let cpu = CpuTimes::now();
    let generator = std::thread::spawn(move || -> anyhow::Result<(Vec<f64>, u64)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(open_loop(url, requests, RATE))
    });
    let (latencies, accepted) = generator
        .join()
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))??;
    let steal = CpuTimes::steal_since(cpu);
    let latencies = sorted(latencies);
    Ok(vec![Row {
        name: format!(
            "webhook latency at a fixed {RATE} deliveries/s for {seconds}s, {}, due time → \
             answer (open loop; {accepted} of {total} accepted)",
            runs.describe()
        ),
        value: format!(
            "p50 {:.2} ms, **p99 {:.2} ms**, max {:.1} ms ({steal})",
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            latencies.last().copied().unwrap_or(f64::NAN)
        ),
        target: "p99 < 10 ms".into(),
    }])
}

/// Sends each request at its due time (`rate` a second) whether or not earlier ones were
/// answered, and measures due time → answer, so a stall of the server counts for every request
/// it delays (no coordinated omission).
async fn open_loop(
    url: String,
    requests: Vec<(String, String)>,
    rate: u64,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    // Warm connections so connection set-up is not measured.
    let warm = (0..16).map(|_| client.get(&url).send());
    futures::future::join_all(warm).await;
    let count = requests.len();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, f64, bool)>();
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    for (i, (body, signature)) in requests.into_iter().enumerate() {
        let due = start + Duration::from_micros(i as u64 * 1_000_000 / rate);
        tokio::time::sleep_until(due).await;
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-github-event", "issues")
            .header("x-github-delivery", format!("fixed-{i}"))
            .header("x-hub-signature-256", signature)
            .body(body);
        let tx = tx.clone();
        tokio::spawn(async move {
            let answer = request.send().await;
            let accepted = answer.is_ok_and(|r| r.status() == reqwest::StatusCode::ACCEPTED);
            let latency = Instant::now()
                .saturating_duration_since(due.into_std())
                .as_secs_f64()
                * 1000.0;
            let _ = tx.send((i, latency, accepted));
        });
    }
    drop(tx);
    let mut latencies = vec![f64::NAN; count];
    let mut accepted = 0;
    while let Some((i, latency, ok)) = rx.recv().await {
        latencies[i] = latency;
        accepted += u64::from(ok);
    }
    // BENCH_LATENCIES=PATH writes each request's due offset and latency (ms), to find stalls.
    if let Some(path) = std::env::var_os("BENCH_LATENCIES") {
        let lines: String = latencies
            .iter()
            .enumerate()
            .map(|(i, latency)| format!("{} {latency:.3}\n", i as u64 * 1000 / rate))
            .collect();
        std::fs::write(path, lines)?;
    }
    Ok((latencies, accepted))
}

pub async fn webhooks(load_seconds: u64, fixed_seconds: u64) -> anyhow::Result<Vec<Row>> {
    // Zero seconds of load skips the throughput half.
    let mut rows = Vec::new();
    for runs in [Runs::Queued, Runs::Executing] {
        if load_seconds > 0 {
            rows.extend(throughput(load_seconds, runs).await?);
        }
        if fixed_seconds > 0 {
            rows.extend(fixed_rate(fixed_seconds, runs).await?);
        }
    }
    Ok(rows)
}
