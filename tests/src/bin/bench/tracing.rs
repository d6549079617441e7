//! What traces cost: the webhook throughput (embedded, wrk) and the fleet pipeline (3 control
//! planes, 3 workers) with traces off and on, in one sitting. "On" exports every span (the
//! default sampler: 100 %) over OTLP/HTTP to a real receiver — the tests' one, checking each
//! request's protobuf and counting its spans on the wire (decoding them all cost it about 4 % of
//! the machine), running in this benchmark's process on the same two cores, so its work is
//! charged to the "on" figures too — and pushes metrics over OTLP.
//!
//! Rounds alternate which goes first (off then on, then on then off), and the disk is synced
//! before each measurement: whichever ran second used to pay for the first one's writeback, a
//! bias of about 4 % on this machine. The change reported is the median of each round's own
//! change (off and on measured back to back, so the machine's drift over the sitting cancels
//! out), beside the medians of each side. Besides throughput, each prints the CPU time
//! Autopilot's own processes spent per delivery or run, which the machine's noise moves less.

use std::future::Future;

use autopilot_tests::otlp::OtlpReceiver;

use super::{fleet, percentile, sorted, webhooks, Row};

/// Rounds of each (off, on) pair, half of them on first; each figure is their median.
const ROUNDS: usize = 6;

fn median(values: &[f64]) -> f64 {
    percentile(&sorted(values.to_vec()), 50.0)
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
    let on: Vec<(String, String)> = vec![(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        receiver.http_endpoint(),
    )];
    let on_refs: Vec<(&str, &str)> = on.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let mut rows = Vec::new();
    if webhook_seconds > 0 {
        let (mut rates, mut cpu) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        let mut spans_per_delivery = Vec::new();
        for round in 0..ROUNDS {
            eprintln!("webhooks, round {} of {ROUNDS}…", round + 1);
            let (receiver, on_refs) = (&receiver, &on_refs);
            let (off, (on_run, received)) = pair(round, |traced| async move {
                if !traced {
                    let run = webhooks::throughput_with(webhook_seconds, &[]).await?;
                    return Ok((run, 0));
                }
                let before = receiver.span_count();
                let run = webhooks::throughput_with(webhook_seconds, on_refs).await?;
                // Let the last batches arrive before counting them.
                tokio::time::sleep(std::time::Duration::from_secs(6)).await;
                Ok((run, receiver.span_count() - before))
            })
            .await
            .map(|(off, on)| (off.0, on))?;
            let deliveries = on_run.per_second * webhook_seconds as f64;
            eprintln!(
                "  off {:.0}/s, {:.1} µs server CPU a delivery; on {:.0}/s, {:.1} µs; {received} \
                 spans received for ~{deliveries:.0} deliveries",
                off.per_second, off.server_cpu_us, on_run.per_second, on_run.server_cpu_us,
            );
            rates.0.push(off.per_second);
            rates.1.push(on_run.per_second);
            cpu.0.push(off.server_cpu_us);
            cpu.1.push(on_run.server_cpu_us);
            spans_per_delivery.push(received as f64 / deliveries);
        }
        let (rate_off, rate_on) = (median(&rates.0), median(&rates.1));
        let (cpu_off, cpu_on) = (median(&cpu.0), median(&cpu.1));
        rows.push(Row {
            name: format!(
                "webhook deliveries accepted per second, embedded, traces off → on (wrk -t2 -c64 \
                 {webhook_seconds}s, median of {ROUNDS} rounds, {:.1} spans received a delivery)",
                median(&spans_per_delivery)
            ),
            value: format!(
                "median change of a round **{}** (medians {rate_off:.0}/s → {rate_on:.0}/s, {}); \
                 server CPU a delivery {} ({cpu_off:.1} → {cpu_on:.1} µs)",
                paired_change(&rates.0, &rates.1),
                change(rate_off, rate_on),
                paired_change(&cpu.0, &cpu.1),
            ),
            target: "≤ 5 % slower".into(),
        });
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
