//! What traces cost: the webhook throughput (embedded, wrk) and the fleet pipeline (3 control
//! planes, 3 workers) with traces off and on, in one sitting. "On" exports every span (the
//! default sampler: 100 %) over OTLP/HTTP to a real receiver — the tests' one, checking each
//! request's protobuf and counting its spans on the wire, running in this benchmark's process on
//! the same two cores, so its work is charged to the "on" figures too (its CPU a delivery is
//! printed) — and pushes metrics over OTLP.
//!
//! The webhook intake starts one server of each side for each half of the sitting (in the
//! other order for the second half: the one started second ran up to 4 % slower in A/A
//! sittings) and loads them in turns, 12 pairs back to back; the fleet pipeline starts a fleet
//! for each measurement, 6 pairs. Pairs alternate which goes first, and the disk is synced
//! before each turn (whichever ran second used to pay for the first one's writeback). The
//! change reported is the median of the pairs' own changes, so that the machine's drift over a
//! sitting falls on both sides alike, beside the medians of each side. Each also prints the CPU
//! time Autopilot's own processes spent per delivery or run.
//! `BENCH_TRACING_ON_ENV` adds variables to the "on" side (`NAME=value`, comma separated): with
//! `OTEL_SDK_DISABLED=true` both sides are alike, which shows what the method itself leans by.

use std::future::Future;

use autopilot_tests::otlp::OtlpReceiver;

use super::webhooks::{self, Runs};
use super::{fleet, sorted, Row};

/// Rounds of the fleet pipeline, each an (off, on) pair, half of them on first; each figure is
/// their median.
const ROUNDS: usize = 6;

/// Turns of the webhook intake, each an (off, on) pair, half of them on first.
const WEBHOOK_PAIRS: usize = 12;

/// The median: for an even count, the mean of the middle two (not one of them, which would
/// lean to one side).
fn median(values: &[f64]) -> f64 {
    let values = sorted(values.to_vec());
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn change(off: f64, on: f64) -> String {
    format!("{:+.1} %", (on - off) * 100.0 / off)
}

/// The median of the rounds' own changes from `off` to `on`, in percent.
fn paired_change(off: &[f64], on: &[f64]) -> String {
    let changes: Vec<f64> = off
        .iter()
        .zip(on)
        .map(|(off, on)| (on - off) * 100.0 / off)
        .collect();
    format!("{:+.1} %", median(&changes))
}

/// Flushes what earlier runs left in the page cache, so it is not written during the next one.
fn settle_disk() {
    let _ = std::process::Command::new("sync").status();
}

/// One measurement with traces off and one with them on, in the order the round asks for.
async fn pair<T, F, Fut>(round: usize, measure: F) -> anyhow::Result<(T, T)>
where
    F: Fn(bool) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let on_first = round % 2 == 1;
    settle_disk();
    let first = measure(on_first).await?;
    settle_disk();
    let second = measure(!on_first).await?;
    Ok(if on_first {
        (second, first)
    } else {
        (first, second)
    })
}

pub async fn cost(webhook_seconds: u64, pipeline_seconds: u64) -> anyhow::Result<Vec<Row>> {
    let receiver = OtlpReceiver::start_counting().await;
    let mut on: Vec<(String, String)> = vec![(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        receiver.http_endpoint(),
    )];
    // More variables for the "on" side (`NAME=value` pairs, comma separated), to take it apart:
    // `OTEL_METRICS_EXPORTER=none`, `OTEL_TRACES_SAMPLER=always_off`, …
    if let Ok(extra) = std::env::var("BENCH_TRACING_ON_ENV") {
        on.extend(extra.split(',').filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            Some((name.to_owned(), value.to_owned()))
        }));
    }
    let on_refs: Vec<(&str, &str)> = on.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let mut rows = Vec::new();
    if webhook_seconds > 0 {
        rows.push(webhook_cost(&receiver, &on_refs, webhook_seconds).await?);
    }
    if pipeline_seconds > 0 {
        let (mut runs, mut cpu) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for round in 0..ROUNDS {
            eprintln!("fleet pipeline, round {} of {ROUNDS}…", round + 1);
            let (off, on_run) = pair(round, |traced| {
                let env = if traced { on.as_slice() } else { &[] };
                fleet::pipeline_with(600, pipeline_seconds, env)
            })
            .await?;
            eprintln!(
                "  off {:.0} runs/s, {:.2} ms autopilot CPU a run; on {:.0} runs/s, {:.2} ms",
                off.runs_per_second,
                off.autopilot_cpu_ms_per_run,
                on_run.runs_per_second,
                on_run.autopilot_cpu_ms_per_run
            );
            runs.0.push(off.runs_per_second);
            runs.1.push(on_run.runs_per_second);
            cpu.0.push(off.autopilot_cpu_ms_per_run);
            cpu.1.push(on_run.autopilot_cpu_ms_per_run);
        }
        let (runs_off, runs_on) = (median(&runs.0), median(&runs.1));
        let (cpu_off, cpu_on) = (median(&cpu.0), median(&cpu.1));
        rows.push(Row {
            name: format!(
                "fleet pipeline, shell runs offered at 600/s for {pipeline_seconds}s, traces off → on \
                 (median of {ROUNDS} rounds; 4 spans a run)"
            ),
            value: format!(
                "median change of a round **{}** (medians {runs_off:.0} → {runs_on:.0} runs/s, \
                 {}); autopilot CPU a run {} ({cpu_off:.2} → {cpu_on:.2} ms)",
                paired_change(&runs.0, &runs.1),
                change(runs_off, runs_on),
                paired_change(&cpu.0, &cpu.1),
            ),
            target: "≤ 5 % slower".into(),
        });
    }
    Ok(rows)
}

/// Stops a pair of servers once the "on" one's last spans had time to leave.
async fn stop(off: webhooks::Intake, on: webhooks::Intake) -> anyhow::Result<()> {
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    off.kill_and_check().await?;
    on.kill_and_check().await?;
    Ok(())
}

/// The webhook intake, traces off and on: one server of each for each half of the sitting
/// (started in the other order for the second half), loaded in turns of `seconds`
/// ([`WEBHOOK_PAIRS`] pairs back to back, half of them "on" first), so that the machine's
/// drift, which moves a whole sitting by up to 25 % here, falls on both sides of each pair alike.
async fn webhook_cost(
    receiver: &OtlpReceiver,
    on_env: &[(&str, &str)],
    seconds: u64,
) -> anyhow::Result<Row> {
    let (mut rates, mut cpu) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    let mut receiver_cpu = Vec::new();
    let mut accepted_on = 0;
    let mut servers = None;
    for pair in 0..WEBHOOK_PAIRS {
        // Each half of the pairs on servers of its own, started in the other order: the one
        // started second ran up to a few percent slower in A/A sittings.
        if pair % (WEBHOOK_PAIRS / 2) == 0 {
            if let Some((off, on)) = servers.take() {
                stop(off, on).await?;
            }
            let on_started_first = pair > 0;
            let no_env: &[(&str, &str)] = &[];
            let (first_env, second_env) = if on_started_first {
                (on_env, no_env)
            } else {
                (no_env, on_env)
            };
            let first = webhooks::Intake::start(first_env, Runs::Queued).await?;
            let second = webhooks::Intake::start(second_env, Runs::Queued).await?;
            let (mut off, mut on) = if on_started_first {
                (second, first)
            } else {
                (first, second)
            };
            // A first turn each, not counted: pages, caches and the allocator settle.
            accepted_on += on.burst(2).await?.summary.accepted;
            off.burst(2).await?;
            servers = Some((off, on));
        }
        let (off, on) = servers.as_mut().expect("started above");
        // As in `pair`: the round says which goes first.
        let on_first = pair % 2 == 1;
        let (goes_first, goes_second) = if on_first { (on, off) } else { (off, on) };
        settle_disk();
        let first = goes_first.burst(seconds).await?;
        settle_disk();
        let second = goes_second.burst(seconds).await?;
        let (off_turn, on_turn) = if on_first {
            (&second, &first)
        } else {
            (&first, &second)
        };
        eprintln!(
            "  pair {} of {WEBHOOK_PAIRS}: off {:.0}/s, {:.1} µs server CPU a delivery; on {:.0}/s, \
             {:.1} µs, the receiver {:.1} µs ({}, {})",
            pair + 1,
            off_turn.per_second,
            off_turn.server_cpu_us,
            on_turn.per_second,
            on_turn.server_cpu_us,
            on_turn.bench_cpu_us - off_turn.bench_cpu_us,
            off_turn.steal,
            on_turn.steal,
        );
        receiver_cpu.push(on_turn.bench_cpu_us - off_turn.bench_cpu_us);
        accepted_on += on_turn.summary.accepted;
        rates.0.push(off_turn.per_second);
        rates.1.push(on_turn.per_second);
        cpu.0.push(off_turn.server_cpu_us);
        cpu.1.push(on_turn.server_cpu_us);
    }
    if let Some((off, on)) = servers {
        stop(off, on).await?;
    }
    let received = receiver.span_count();
    let (rate_off, rate_on) = (median(&rates.0), median(&rates.1));
    let (cpu_off, cpu_on) = (median(&cpu.0), median(&cpu.1));
    Ok(Row {
        name: format!(
            "webhook deliveries accepted per second, embedded, traces off → on (wrk -t2 -c64, \
             {WEBHOOK_PAIRS} pairs of {seconds}s turns, two servers of each started in both \
             orders, {:.2} spans received a delivery)",
            received as f64 / accepted_on.max(1) as f64
        ),
        value: format!(
            "median change of a pair **{}** (medians {rate_off:.0}/s → {rate_on:.0}/s, {}); server \
             CPU a delivery {} ({cpu_off:.1} → {cpu_on:.1} µs); the receiver's CPU a delivery \
             {:.1} µs",
            paired_change(&rates.0, &rates.1),
            change(rate_off, rate_on),
            paired_change(&cpu.0, &cpu.1),
            median(&receiver_cpu),
        ),
        target: "≤ 5 % slower".into(),
    })
}
