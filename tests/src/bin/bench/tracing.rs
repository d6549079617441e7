//! What traces cost: the webhook throughput (embedded, wrk) and the fleet pipeline (3 control
//! planes, 3 workers) with traces off and on, in one sitting, alternating so that drift on the
//! machine hits both alike. "On" exports every span (the default sampler: 100 %) over
//! OTLP/HTTP to a real receiver — the tests' one, decoding every request but keeping only the
//! count, running in this benchmark's process on the same two cores, so its work is charged to
//! the "on" figures too. Besides throughput, each prints the CPU time Autopilot's own processes
//! spent per delivery or run, which the machine's noise moves less.

use autopilot_tests::otlp::OtlpReceiver;

use super::{fleet, percentile, sorted, webhooks, Row};

/// Rounds of each (off, on) pair; each figure is the median of its rounds.
const ROUNDS: usize = 5;

fn median(values: &[f64]) -> f64 {
    percentile(&sorted(values.to_vec()), 50.0)
}

fn change(off: f64, on: f64) -> String {
    format!("{:+.1} %", (on - off) * 100.0 / off)
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
        for round in 0..ROUNDS {
            eprintln!(
                "webhooks, round {} of {ROUNDS}: traces off, then on…",
                round + 1
            );
            let off = webhooks::throughput_with(webhook_seconds, &[]).await?;
            let before = receiver.span_count();
            let on_run = webhooks::throughput_with(webhook_seconds, &on_refs).await?;
            // Let the last batches arrive before counting them.
            tokio::time::sleep(std::time::Duration::from_secs(6)).await;
            let received = receiver.span_count() - before;
            eprintln!(
                "  off {:.0}/s, {:.1} µs server CPU a delivery; on {:.0}/s, {:.1} µs; {received} \
                 spans received for ~{:.0} deliveries",
                off.per_second,
                off.server_cpu_us,
                on_run.per_second,
                on_run.server_cpu_us,
                on_run.per_second * webhook_seconds as f64
            );
            rates.0.push(off.per_second);
            rates.1.push(on_run.per_second);
            cpu.0.push(off.server_cpu_us);
            cpu.1.push(on_run.server_cpu_us);
        }
        let (rate_off, rate_on) = (median(&rates.0), median(&rates.1));
        let (cpu_off, cpu_on) = (median(&cpu.0), median(&cpu.1));
        rows.push(Row {
            name: format!(
                "webhook deliveries accepted per second, embedded, traces off → on (wrk -t2 -c64 \
                 {webhook_seconds}s, median of {ROUNDS} alternating rounds; 2 spans a delivery)"
            ),
            value: format!(
                "{rate_off:.0}/s → {rate_on:.0}/s (**{}**); server CPU {cpu_off:.1} → {cpu_on:.1} µs \
                 a delivery ({})",
                change(rate_off, rate_on),
                change(cpu_off, cpu_on)
            ),
            target: "≤ 5 % slower".into(),
        });
    }
    if pipeline_seconds > 0 {
        let (mut runs, mut cpu) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for round in 0..ROUNDS {
            eprintln!(
                "fleet pipeline, round {} of {ROUNDS}: traces off, then on…",
                round + 1
            );
            let off = fleet::pipeline_with(600, pipeline_seconds, &[]).await?;
            let on_run = fleet::pipeline_with(600, pipeline_seconds, &on).await?;
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
                 (median of {ROUNDS} alternating rounds; 4 spans a run)"
            ),
            value: format!(
                "{runs_off:.0} → {runs_on:.0} runs/s (**{}**); autopilot CPU {cpu_off:.2} → \
                 {cpu_on:.2} ms a run ({})",
                change(runs_off, runs_on),
                change(cpu_off, cpu_on)
            ),
            target: "≤ 5 % slower".into(),
        });
    }
    Ok(rows)
}
