//! Benchmarks, printed as a table (copy the figures into BENCHMARKS.md):
//!
//! - `cron`: fire lateness of N per-second jobs over S seconds, and dispatch latency (due time
//!   to the run's process being spawned);
//! - `overhead`: a `claude -p` run through Autopilot against the same run started directly, both
//!   against the fake Anthropic API;
//! - `memory`: resident memory of an idle `autopilot serve`;
//! - `webhooks`: accepted deliveries per second on the embedded default (wrk on loopback), and
//!   latency at a fixed 1,000 deliveries per second (see `webhooks.rs`).
//!
//! - `metrics-scrape`: a `/metrics` scrape with many jobs and webhooks (see `scrape.rs`);
//! - `tracing-cost`: webhook throughput and the fleet pipeline with traces off and on (see
//!   `tracing.rs`);
//! - `docker-start`: run start overhead of the Docker executor against the local one, due time
//!   to the CLI's first output line (see `docker.rs`);
//! - `tools`: time to the CLI's init line with 0, 1 and 5 granted MCP servers (Python under the
//!   guard, fixed), local and Docker; the guard's added latency per tool call (see `tools.rs`);
//! - `fleet`: pipeline throughput, dispatch latency, leader failover and worker memory on a
//!   cluster of real processes (see `fleet.rs`; each also alone: `fleet-pipeline [RATE SECONDS]`,
//!   `fleet-dispatch [JOBS SECONDS]`, `fleet-failover [KILLS]`, `fleet-memory`).
//!
//! - `dashboard`: the run page's server render with 5,000 events, a live event's way to the open
//!   page's DOM (in Chromium), the overview with 10,000 jobs and 1,000,000 runs (see
//!   `dashboard.rs`; each also alone: `dashboard-render [EVENTS]`, `dashboard-live [LINES]`,
//!   `dashboard-overview [JOBS RUNS]`).
//!
//! - `triggers`: fire lateness of 10,000 interval jobs, a chain's hop from the parent's end to the
//!   child's run, and a file change to its run's start (see `triggers.rs`; each also alone:
//!   `intervals [JOBS EVERY_SECS SECONDS]`, `chain-hop [HOPS]`, `file-change [CHANGES
//!   DEBOUNCE_MS]`).
//!
//! - `chaos`: failures injected under load, the table of RELIABILITY.md (see `chaos.rs`; not
//!   part of `all`).
//!
//! `cargo run --release -p autopilot-tests --bin bench -- all` runs everything but `chaos`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply};
use autopilot_tests::harness::{is_terminal, TestServer, ADMIN_TOKEN};
use serde_json::json;
use sqlx::Connection;

mod chaos;
mod dashboard;
mod docker;
mod fleet;
mod fleet_webhooks;
mod scrape;
mod tools;
mod tracing;
mod triggers;
mod webhooks;

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `p50 …, p99 …, max …` of sorted milliseconds.
pub fn p50_p99_max(sorted: &[f64]) -> String {
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(sorted, 50.0),
        percentile(sorted, 99.0),
        sorted.last().copied().unwrap_or(f64::NAN)
    )
}

pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    values
}

/// Clock ticks a second, the unit of `/proc/stat` and `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64
}

/// The machine's CPU time stolen by the hypervisor, from `/proc/stat`: a window with steal
/// shows stalls that are not the program's. Take one reading before and one after.
#[derive(Clone, Copy)]
pub struct CpuTimes {
    steal: u64,
    /// Neither idle nor waiting for I/O nor stolen.
    busy: u64,
    total: u64,
}

impl CpuTimes {
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|field| field.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal, in clock ticks.
        let (idle, iowait, steal) = (*fields.get(3)?, *fields.get(4)?, *fields.get(7)?);
        let total: u64 = fields.iter().take(8).sum();
        Some(CpuTimes {
            steal,
            busy: total - idle - iowait - steal,
            total,
        })
    }

    /// The machine's busy CPU time between two readings, in milliseconds (all cores).
    pub fn busy_ms_since(before: Option<Self>) -> Option<f64> {
        let (before, after) = (before?, Self::now()?);
        let ticks = clock_ticks();
        Some((after.busy - before.busy) as f64 * 1000.0 / ticks)
    }

    /// The share of CPU time stolen between two readings, as text (`"CPU steal 0.1%"`).
    pub fn steal_since(before: Option<Self>) -> String {
        match (before, Self::now()) {
            (Some(before), Some(after)) if after.total > before.total => format!(
                "CPU steal {:.1}%",
                (after.steal - before.steal) as f64 * 100.0 / (after.total - before.total) as f64
            ),
            _ => "CPU steal unknown".into(),
        }
    }
}

/// CPU time of every process on the machine (its own and its reaped children's), by pid, in
/// clock ticks, with its program name: two readings tell what each program spent between them.
pub struct ProcessTimes(std::collections::HashMap<u32, (String, u64)>);

impl ProcessTimes {
    pub fn now() -> Self {
        let mut times = std::collections::HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ... : fields 14-17 after the comm are utime stime cutime cstime.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let mut comm = stat[open + 1..close].to_owned();
            if comm == "autopilot" {
                // `autopilot serve` and `autopilot worker` apart.
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if let Some(sub) = cmdline.split(|b| *b == 0).nth(1) {
                    comm = format!("autopilot {}", String::from_utf8_lossy(sub));
                }
            }
            let fields: Vec<u64> = stat[close + 2..]
                .split_whitespace()
                .skip(11)
                .take(4)
                .filter_map(|field| field.parse().ok())
                .collect();
            times.insert(pid, (comm, fields.iter().sum()));
        }
        ProcessTimes(times)
    }

    /// Milliseconds each program spent since `before`, largest first.
    pub fn spent_since(&self, before: &ProcessTimes) -> Vec<(String, f64)> {
        let ticks = clock_ticks();
        let mut by_program: std::collections::HashMap<String, u64> = Default::default();
        for (pid, (comm, now)) in &self.0 {
            let earlier = before
                .0
                .get(pid)
                .filter(|(c, _)| c == comm)
                .map_or(0, |(_, t)| *t);
            *by_program.entry(comm.clone()).or_default() += now.saturating_sub(earlier);
        }
        let mut spent: Vec<(String, f64)> = by_program
            .into_iter()
            .filter(|(_, t)| *t > 0)
            .map(|(comm, t)| (comm, t as f64 * 1000.0 / ticks))
            .collect();
        spent.sort_by(|a, b| b.1.total_cmp(&a.1));
        spent
    }
}

pub struct Row {
    pub name: String,
    pub value: String,
    pub target: String,
}

fn print_table(rows: &[Row]) {
    println!("\n| benchmark | result | target |\n| --- | --- | --- |");
    for row in rows {
        println!("| {} | {} | {} |", row.name, row.value, row.target);
    }
}

/// The fires due between `$1` and `$2` (ms): due time, creation, the worker's `started` event
/// (just before the spawn) and the final status. Same SQL on SQLite and PostgreSQL.
pub const FIRES_IN_WINDOW: &str = "SELECT r.scheduled_for_ms, r.created_at_ms, \
       (SELECT e.at_ms FROM run_events e WHERE e.run_id = r.id AND e.kind = 'lifecycle' \
        AND e.data LIKE '%\"step\":\"started\"%' ORDER BY e.seq LIMIT 1), r.status \
     FROM runs r WHERE r.scheduled_for_ms BETWEEN $1 AND $2";

/// A row of [`FIRES_IN_WINDOW`].
pub type FireRow = (i64, i64, Option<i64>, String);

/// The fires of an embedded (SQLite) server due between `start` and `end` (ms).
pub async fn fires_in_window(
    server: &TestServer,
    start: i64,
    end: i64,
) -> anyhow::Result<Vec<FireRow>> {
    let database = server.data_dir.path().join("autopilot.db");
    let mut db =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", database.display())).await?;
    Ok(sqlx::query_as(FIRES_IN_WINDOW)
        .bind(start)
        .bind(end)
        .fetch_all(&mut db)
        .await?)
}

/// N per-second shell jobs (`true`) for S seconds on the embedded default.
async fn cron(jobs: usize, seconds: u64) -> anyhow::Result<Vec<Row>> {
    // Enough worker slots that no fire waits for one: this measures dispatch, not queueing. On
    // SQLite whatever TEST_DATABASE_URL says: the embedded default is measured, and its file read.
    let server = TestServer::builder()
        .sqlite()
        .concurrency(jobs.max(4) + 8)
        .start()
        .await;
    let mut ids = Vec::new();
    for i in 0..jobs {
        let job = server
            .create_job(json!({ "name": format!("bench-{i}"), "command": "true", "schedule": "* * * * * *", "overlap_policy": "allow" }))
            .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    eprintln!("{jobs} jobs firing every second for {seconds}s…");
    // Only fires while nothing is being created or changed count: edits make the scheduler
    // reload every job, which is not the steady state measured here.
    let window_start = chrono::Utc::now().timestamp_millis() + 1000;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let window_end = chrono::Utc::now().timestamp_millis();
    for id in &ids {
        server.patch_job(id, json!({ "enabled": false })).await;
    }
    // Let the last fires finish.
    loop {
        let active = server
            .get("/api/v1/runs?status=queued,running&limit=1")
            .await;
        if active["runs"].as_array().is_none_or(|runs| runs.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = fires_in_window(&server, window_start, window_end).await?;
    let failed = rows.iter().filter(|row| row.3 != "succeeded").count();
    let lateness = sorted(
        rows.iter()
            .map(|(due, created, _, _)| (created - due) as f64)
            .collect(),
    );
    let dispatch = sorted(
        rows.iter()
            .filter_map(|(due, _, started, _)| started.map(|s| (s - due) as f64))
            .collect(),
    );
    server.stop().await?;
    Ok(vec![
        Row {
            name: format!("cron fire lateness, {jobs} per-second jobs × {seconds}s ({} fires, {failed} not succeeded)", rows.len()),
            value: p50_p99_max(&lateness),
            target: "p99 ≤ 20 ms".into(),
        },
        Row {
            name: if jobs == 1 {
                "dispatch latency, due time → process spawned (one job due at a time)".to_owned()
            } else {
                format!("dispatch latency, due time → process spawned ({jobs} jobs due at once)")
            },
            value: p50_p99_max(&dispatch),
            target: "p50 ≤ 10 ms".into(),
        },
    ])
}

/// Wall time of `claude -p` started directly, from spawn to exit.
fn direct_run(
    claude: &Path,
    fake: &FakeAnthropic,
    home: &Path,
    workspace: &Path,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    // Exactly the flags Autopilot gives a quick run with no settings.
    let args = autopilot_worker::command::claude_args(&autopilot_proto::ClaudeSpec {
        prompt: String::new(),
        model: None,
        allowed_tools: Vec::new(),
        disallowed_tools: Vec::new(),
        max_turns: None,
        max_cost_usd: None,
        trace_content: false,
        mcp_servers: Vec::new(),
        approval: None,
    });
    let mut child = Command::new(claude)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("ANTHROPIC_BASE_URL", fake.base_url())
        .env("ANTHROPIC_API_KEY", "sk-ant-bench")
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .envs(autopilot_worker::command::CLAUDE_FIXED_ENV.iter().copied())
        .current_dir(workspace)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, b"say hello")?;
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "direct claude run failed: {status}");
    Ok(start.elapsed())
}

/// Wall time of the same prompt through Autopilot: from the quick-run request to the run's
/// `end` event on its live stream.
async fn autopilot_run(server: &TestServer) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let run = server.quick_run(json!({ "prompt": "say hello" })).await;
    let run_id = run["id"].as_str().context("run id")?;
    let stream = server.follow_events(run_id, None).await;
    anyhow::ensure!(
        stream.contains("event: end"),
        "the event stream ended early"
    );
    let elapsed = start.elapsed();
    let run = server.run(run_id).await;
    anyhow::ensure!(
        is_terminal(&run) && run["status"] == "succeeded",
        "run through autopilot failed: {run}"
    );
    Ok(elapsed)
}

async fn overhead(runs: usize) -> anyhow::Result<Vec<Row>> {
    let claude = components::claude_bin().context("the Claude Code CLI is needed")?;
    let fake = FakeAnthropic::start().await?;
    fake.set_default(Reply::text("hello"));
    // The embedded default (SQLite), as the published numbers were measured.
    let server = TestServer::builder()
        .sqlite()
        .claude_bin(&claude)
        .model_api(&fake.base_url())
        .start()
        .await;
    let scratch = tempfile::tempdir()?;
    let (home, workspace) = (scratch.path().join("home"), scratch.path().join("ws"));
    std::fs::create_dir_all(&home)?;
    std::fs::create_dir_all(&workspace)?;
    // Warm both paths once (file caches, the CLI's first-start files).
    direct_run(&claude, &fake, &home, &workspace)?;
    autopilot_run(&server).await?;
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        // Interleaved so drift on the machine affects both alike.
        let claude = claude.clone();
        let fake_for_direct = fake.clone();
        let (home, workspace) = (home.clone(), workspace.clone());
        let elapsed = tokio::task::spawn_blocking(move || {
            direct_run(&claude, &fake_for_direct, &home, &workspace)
        })
        .await??;
        direct.push(elapsed.as_secs_f64() * 1000.0);
        through.push(autopilot_run(&server).await?.as_secs_f64() * 1000.0);
    }
    server.stop().await?;
    let (direct, through) = (sorted(direct), sorted(through));
    let (direct_p50, through_p50) = (percentile(&direct, 50.0), percentile(&through, 50.0));
    Ok(vec![Row {
        name: format!(
            "run overhead, `claude -p` through Autopilot vs direct ({runs} runs each, fake API)"
        ),
        value: format!(
            "direct p50 {direct_p50:.0} ms, through Autopilot p50 {through_p50:.0} ms, ratio {:.3}",
            through_p50 / direct_p50
        ),
        target: "ratio ≤ 1.05".into(),
    }])
}

/// `autopilot serve` as its own process on a free loopback port, with a fresh data directory.
pub struct Serve {
    pub child: std::process::Child,
    pub base_url: String,
    pub dir: tempfile::TempDir,
    pub bin: std::path::PathBuf,
}

impl Serve {
    /// CPU time the server process has used so far (user and system, its threads included), in
    /// milliseconds.
    pub fn cpu_ms(&self) -> Option<f64> {
        process_cpu_ms(self.child.id())
    }
}

/// CPU time process `pid` has used so far (user and system, its threads included, not its
/// children), in milliseconds.
pub fn process_cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 * 1000.0 / clock_ticks())
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `autopilot serve` with `env` added, and waits until it is ready.
pub async fn spawn_serve(env: &[(&str, &str)]) -> anyhow::Result<Serve> {
    let bin = components::autopilot_bin()
        .context("build the autopilot binary first (cargo build --release --bin autopilot)")?;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut command = Command::new(&bin);
    command
        .arg("serve")
        .env("AUTOPILOT_DATA_DIR", dir.path())
        .env("AUTOPILOT_BIND", format!("127.0.0.1:{port}"))
        .env("AUTOPILOT_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::null())
        // BENCH_SERVER_LOGS=1 shows the server's log (e.g. with AUTOPILOT_LOG=debug).
        .stderr(if std::env::var_os("BENCH_SERVER_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    for (name, value) in env {
        command.env(name, value);
    }
    let serve = Serve {
        child: command.spawn()?,
        base_url: format!("http://127.0.0.1:{port}"),
        dir,
        bin,
    };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{}/readyz", serve.base_url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(serve);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("autopilot did not start")
}

async fn memory() -> anyhow::Result<Vec<Row>> {
    let serve = spawn_serve(&[]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", serve.child.id()))?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(vec![Row {
        name: format!(
            "idle resident memory of `autopilot serve` ({})",
            serve.bin.display()
        ),
        value: format!("{:.1} MB", rss_kb / 1024.0),
        target: "≤ 30 MB".into(),
    }])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    let number = |index: usize, default: u64| {
        args.get(index)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    if which == "chaos" {
        return chaos::run(number(1, 30), args.iter().any(|arg| arg == "--write")).await;
    }
    let mut rows = Vec::new();
    if matches!(which, "cron" | "all") {
        rows.extend(cron(number(1, 100) as usize, number(2, 30)).await?);
    }
    if matches!(which, "dispatch" | "all") {
        // The same measurement without a burst: one job due each second.
        rows.extend(cron(1, number(1, 30)).await?.into_iter().skip(1));
    }
    if matches!(which, "overhead" | "all") {
        rows.extend(overhead(number(1, 10) as usize).await?);
    }
    if matches!(which, "memory" | "all") {
        rows.extend(memory().await?);
    }
    if matches!(which, "webhooks" | "all") {
        rows.extend(webhooks::webhooks(number(1, 10), number(2, 10)).await?);
    }
    if matches!(which, "metrics-scrape" | "all") {
        rows.extend(scrape::scrape(number(1, 10_000) as usize, number(2, 100) as usize).await?);
    }
    if matches!(which, "tracing-cost" | "all") {
        rows.extend(tracing::cost(number(1, 10), number(2, 20)).await?);
    }
    if matches!(which, "docker-start" | "all") {
        rows.extend(docker::start_overhead(number(1, 30) as usize).await?);
    }
    if matches!(which, "tools" | "all") {
        rows.extend(tools::tools(number(1, 5) as usize).await?);
    }
    if matches!(which, "dashboard-render" | "dashboard" | "all") {
        rows.extend(dashboard::render(number(1, 5000) as usize).await?);
    }
    if matches!(which, "dashboard-live" | "dashboard" | "all") {
        rows.extend(dashboard::live(number(1, 200) as usize).await?);
    }
    if matches!(which, "dashboard-overview" | "dashboard" | "all") {
        rows.extend(
            dashboard::overview(number(1, 10_000) as usize, number(2, 1_000_000) as usize).await?,
        );
    }
    if matches!(which, "fleet-pipeline" | "fleet" | "all") {
        rows.extend(fleet::pipeline(number(1, 600), number(2, 60)).await?);
    }
    if matches!(which, "fleet-dispatch" | "fleet" | "all") {
        rows.extend(fleet::dispatch(number(1, 1) as usize, number(2, 30)).await?);
    }
    if matches!(which, "fleet-failover" | "fleet" | "all") {
        rows.extend(fleet::failover(number(1, 10) as usize).await?);
    }
    if matches!(which, "fleet-memory" | "fleet" | "all") {
        rows.extend(fleet::worker_memory().await?);
    }
    if matches!(which, "fleet-webhooks" | "fleet" | "all") {
        rows.extend(fleet_webhooks::fleet_webhooks(number(1, 10)).await?);
    }
    if matches!(which, "intervals" | "triggers" | "all") {
        rows.extend(
            triggers::intervals(number(1, 10_000) as usize, number(2, 60), number(3, 60)).await?,
        );
    }
    if matches!(which, "chain-hop" | "triggers" | "all") {
        rows.extend(triggers::chain_hop(number(1, 50) as usize).await?);
    }
    if matches!(which, "file-change" | "triggers" | "all") {
        rows.extend(triggers::file_change(number(1, 50) as usize, number(2, 100)).await?);
    }
    anyhow::ensure!(
        !rows.is_empty(),
        "usage: bench [cron [JOBS SECONDS] | dispatch [SECONDS] | overhead [RUNS] | memory | \
         webhooks [LOAD_SECONDS FIXED_RATE_SECONDS] | metrics-scrape [JOBS WEBHOOKS] | \
         tracing-cost [WEBHOOK_SECONDS PIPELINE_SECONDS] | docker-start [RUNS] | tools [RUNS] | fleet-pipeline [RATE SECONDS] | \
         fleet-dispatch [JOBS SECONDS] | fleet-failover [KILLS] | fleet-memory | fleet-webhooks [SECONDS] | \
         dashboard-render [EVENTS] | dashboard-live [LINES] | dashboard-overview [JOBS RUNS] | dashboard | \
         intervals [JOBS EVERY_SECS SECONDS] | chain-hop [HOPS] | file-change [CHANGES DEBOUNCE_MS] | triggers | \
         fleet | all | \
         chaos [SECONDS] [--write]]"
    );
    print_table(&rows);
    Ok(())
}
