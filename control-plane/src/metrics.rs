//! What a control plane counts and measures, read out in the Prometheus text format at
//! `/metrics`. Instruments are made through the OpenTelemetry metrics API on a meter provider of
//! this process's own (no global), so two Autopilots in one process (the tests) never mix.
//!
//! Labels are bounded: a job's or a webhook's name (as many as there are jobs and webhooks), a
//! trigger, a status, a model, an outcome; never a run id or free text.

use std::collections::BTreeSet;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use autopilot_proto::{RunStatus, TokenUsage, Trigger};
use autopilot_worker::Slots;
use chrono::{DateTime, Utc};
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider};
use opentelemetry::KeyValue;
use opentelemetry_otlp::MetricExporter;
use opentelemetry_prometheus_text_exporter::PrometheusExporter;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{Instrument, MeterProviderBuilder, SdkMeterProvider, Stream};
use opentelemetry_sdk::Resource;

use crate::otlp::{self, Protocol, Signal};

use crate::domain::PoolQueue;

/// Bucket bounds, in seconds, of the latency histograms: milliseconds to a minute.
const LATENCY_BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];
/// Bucket bounds, in seconds, of run durations: a second to a day.
const DURATION_BOUNDS: [f64; 12] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14_400.0, 86_400.0,
];

/// Series an instrument labelled by job or webhook name keeps apart; past it, new ones are
/// added up in one series marked `otel_metric_overflow="true"`. The SDK's default (2,000) is
/// below what an installation with thousands of jobs needs.
const NAMED_SERIES_LIMIT: usize = 50_000;
/// The instruments labelled by job or webhook name.
const NAMED_INSTRUMENTS: [&str; 6] = [
    "autopilot.runs.finished",
    "autopilot.job.run.duration",
    "autopilot.fires.missed",
    "autopilot.tokens",
    "autopilot.cost.usd",
    "autopilot.webhook.deliveries",
];

/// The label value of a run without a job (quick runs, webhooks with their own settings).
pub const NO_JOB: &str = "";

pub struct Metrics {
    exporter: PrometheusExporter,
    /// Pushes the same figures over OTLP, when configured. Declared (so dropped, with a last
    /// push) before the provider.
    pusher: Option<Pusher>,
    /// Keeps the instruments' pipeline alive.
    _provider: SdkMeterProvider,
    /// Makes the instruments that are observed when read out (a worker's slots).
    meter: Meter,
    runs_created: Counter<u64>,
    runs_finished: Counter<u64>,
    run_duration: Histogram<f64>,
    job_run_duration: Histogram<f64>,
    fire_lateness: Histogram<f64>,
    fires_missed: Counter<u64>,
    dispatch_latency: Histogram<f64>,
    tokens: Counter<u64>,
    cost: Counter<f64>,
    webhook_deliveries: Counter<u64>,
    scheduler_leader: Gauge<u64>,
    publish_errors: Counter<u64>,
    errors: Counter<u64>,
    queued_runs: Gauge<u64>,
    oldest_queued_age: Gauge<f64>,
    /// Pools seen queued at an earlier read-out: an emptied one reads 0, not its last depth.
    queued_pools: Mutex<BTreeSet<String>>,
}

/// `OTEL_METRIC_EXPORT_INTERVAL`, in milliseconds; 60 s when unset.
fn export_interval() -> anyhow::Result<Duration> {
    parse_export_interval(std::env::var("OTEL_METRIC_EXPORT_INTERVAL").ok().as_deref())
}

fn parse_export_interval(value: Option<&str>) -> anyhow::Result<Duration> {
    let Some(value) = value.map(str::trim).filter(|value| !value.is_empty()) else {
        return Ok(Duration::from_secs(60));
    };
    value
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .with_context(|| {
            format!(
                "OTEL_METRIC_EXPORT_INTERVAL is {value:?}: give the time between pushes in \
                 milliseconds, for example 60000"
            )
        })
}

/// Sends what the `/metrics` reader holds over OTLP, every interval and once more when
/// dropped, from a thread of its own (the OTLP exporters block). The figures come out of the
/// one pipeline `/metrics` reads: a second reader in the SDK would record every measurement
/// twice, a cost on every webhook delivery. Pushed cumulative, as Prometheus reads them.
struct Pusher {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pusher {
    fn start(
        reader: PrometheusExporter,
        exporter: MetricExporter,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let push = move || {
            let mut figures = ResourceMetrics::default();
            let result = reader
                .collect(&mut figures)
                .and_then(|()| futures::executor::block_on(exporter.export(&figures)));
            if let Err(err) = result {
                tracing::warn!(error = %err, "pushing the metrics over OTLP failed");
            }
        };
        let thread = std::thread::Builder::new()
            .name("otlp-metrics".into())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => push(),
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                        push();
                        break;
                    }
                }
            })
            .context("starting the thread that pushes metrics over OTLP")?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What a process's telemetry says about where it comes from: its service name (unless
/// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` name it) and version, and the other
/// `OTEL_RESOURCE_ATTRIBUTES`.
pub fn resource(service: &'static str) -> Resource {
    let named_in_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|attributes| attributes.contains("service.name="));
    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !named_in_env {
        resource = resource.with_service_name(service);
    }
    resource.build()
}

impl Metrics {
    /// Metrics read out at `/metrics` only.
    pub fn new() -> Self {
        Self::with_provider(SdkMeterProvider::builder())
    }

    /// Metrics read out at `/metrics` and, when the OTEL_* variables ask for it, also pushed
    /// over OTLP (every `OTEL_METRIC_EXPORT_INTERVAL`, 60 s by default) as `service`.
    pub fn from_env(service: &'static str) -> anyhow::Result<Self> {
        let Some(protocol) = otlp::export_from_env(Signal::Metrics)? else {
            return Ok(Self::new());
        };
        let exporter = match protocol {
            Protocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .build(),
            Protocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build(),
        }
        .context("setting up the OTLP metric exporter (OTEL_EXPORTER_OTLP_*)")?;
        let mut metrics =
            Self::with_provider(SdkMeterProvider::builder().with_resource(resource(service)));
        metrics.pusher = Some(Pusher::start(
            metrics.exporter.clone(),
            exporter,
            export_interval()?,
        )?);
        Ok(metrics)
    }

    fn with_provider(builder: MeterProviderBuilder) -> Self {
        let exporter = PrometheusExporter::builder()
            .without_scope_info()
            .without_target_info()
            .build();
        let provider = builder
            .with_reader(exporter.clone())
            .with_view(|instrument: &Instrument| {
                NAMED_INSTRUMENTS
                    .contains(&instrument.name())
                    .then(|| {
                        Stream::builder()
                            .with_cardinality_limit(NAMED_SERIES_LIMIT)
                            .build()
                            .ok()
                    })
                    .flatten()
            })
            .build();
        let meter = provider.meter("autopilot");
        let latency = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BOUNDS.to_vec())
                .build()
        };
        Metrics {
            runs_created: meter
                .u64_counter("autopilot.runs.created")
                .with_description("Runs created, by what started them.")
                .build(),
            runs_finished: meter
                .u64_counter("autopilot.runs.finished")
                .with_description("Runs that reached a final state, by job, trigger and status.")
                .build(),
            run_duration: meter
                .f64_histogram("autopilot.run.duration")
                .with_unit("s")
                .with_description("From a run's start to its end, by final status.")
                .with_boundaries(DURATION_BOUNDS.to_vec())
                .build(),
            job_run_duration: meter
                .f64_histogram("autopilot.job.run.duration")
                .with_unit("s")
                .with_description(
                    "From a run's start to its end, by job: only its sum and count (a job's mean \
                     duration), so each job adds three series.",
                )
                .with_boundaries(Vec::new())
                .build(),
            fire_lateness: latency(
                "autopilot.fire.lateness",
                "How late the scheduler fired a job: from the fire's time to the run's creation.",
            ),
            fires_missed: meter
                .u64_counter("autopilot.fires.missed")
                .with_description(
                    "Fires later than the misfire grace (AUTOPILOT_MISFIRE_GRACE_SECS), by job; the \
                     job's misfire policy decided whether they ran.",
                )
                .build(),
            dispatch_latency: latency(
                "autopilot.dispatch.latency",
                "From the moment a run was due to its claim by a worker.",
            ),
            tokens: meter
                .u64_counter("autopilot.tokens")
                .with_description("Model tokens of ended runs, by job, model and kind.")
                .build(),
            cost: meter
                .f64_counter("autopilot.cost.usd")
                .with_description("Cost of ended runs in US dollars, by job and model.")
                .build(),
            webhook_deliveries: meter
                .u64_counter("autopilot.webhook.deliveries")
                .with_description("Webhook deliveries, by webhook and outcome.")
                .build(),
            scheduler_leader: meter
                .u64_gauge("autopilot.scheduler.leader")
                .with_description("1 while this control plane holds the scheduler lease.")
                .build(),
            publish_errors: meter
                .u64_counter("autopilot.bus.publish.errors")
                .with_description("Run requests the bus refused (they are sent again).")
                .build(),
            errors: meter
                .u64_counter("autopilot.errors")
                .with_description(
                    "Failures of the store or the bus that a background task met and retries, by task.",
                )
                .build(),
            queued_runs: meter
                .u64_gauge("autopilot.queue.runs")
                .with_description("Runs waiting in the queue, by worker pool.")
                .build(),
            oldest_queued_age: meter
                .f64_gauge("autopilot.queue.oldest.age")
                .with_unit("s")
                .with_description("Age of the oldest run waiting in the queue, by worker pool.")
                .build(),
            queued_pools: Mutex::new(BTreeSet::new()),
            exporter,
            _provider: provider,
            pusher: None,
            meter: meter.clone(),
        }
    }

    /// Reads a worker's slots at every read-out: `autopilot_worker_slots{state="total"|"busy"}`.
    pub fn observe_worker_slots(&self, slots: Slots) {
        self.meter
            .u64_observable_gauge("autopilot.worker.slots")
            .with_description("Runs a worker executes at once (total) and executes now (busy).")
            .with_callback(move |observer| {
                observer.observe(slots.total() as u64, &[KeyValue::new("state", "total")]);
                observer.observe(slots.busy() as u64, &[KeyValue::new("state", "busy")]);
            })
            .build();
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut text = Vec::with_capacity(16 * 1024);
        if let Err(err) = self.exporter.export(&mut text) {
            tracing::warn!(error = %err, "reading the metrics out failed");
        }
        String::from_utf8(text).unwrap_or_default()
    }

    pub fn run_created(&self, trigger: Trigger, count: u64) {
        self.runs_created
            .add(count, &[KeyValue::new("trigger", trigger.as_str())]);
    }

    /// A run reached its final state.
    pub fn run_finished(
        &self,
        job: &str,
        trigger: Trigger,
        status: RunStatus,
        duration: Option<Duration>,
    ) {
        self.runs_finished.add(
            1,
            &[
                KeyValue::new("job", job.to_owned()),
                KeyValue::new("trigger", trigger.as_str()),
                KeyValue::new("status", status.as_str()),
            ],
        );
        if let Some(duration) = duration {
            self.run_duration.record(
                duration.as_secs_f64(),
                &[KeyValue::new("status", status.as_str())],
            );
            self.job_run_duration.record(
                duration.as_secs_f64(),
                &[KeyValue::new("job", job.to_owned())],
            );
        }
    }

    /// What an attempt used of the model.
    pub fn usage(&self, job: &str, model: &str, usage: &TokenUsage, cost_usd: Option<f64>) {
        let labels = |kind: &'static str| {
            [
                KeyValue::new("job", job.to_owned()),
                KeyValue::new("model", model.to_owned()),
                KeyValue::new("kind", kind),
            ]
        };
        for (kind, count) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ] {
            if count > 0 {
                self.tokens.add(count, &labels(kind));
            }
        }
        if let Some(cost) = cost_usd.filter(|cost| *cost > 0.0) {
            self.cost.add(
                cost,
                &[
                    KeyValue::new("job", job.to_owned()),
                    KeyValue::new("model", model.to_owned()),
                ],
            );
        }
    }

    pub fn fire_lateness(&self, lateness: Duration) {
        self.fire_lateness.record(lateness.as_secs_f64(), &[]);
    }

    /// `count` fires of `job` came later than the misfire grace.
    pub fn fires_missed(&self, job: &str, count: u64) {
        self.fires_missed
            .add(count, &[KeyValue::new("job", job.to_owned())]);
    }

    pub fn dispatch_latency(&self, latency: Duration) {
        self.dispatch_latency.record(latency.as_secs_f64(), &[]);
    }

    /// A delivery to `webhook` (empty when the URL named none) and what became of it:
    /// `accepted`, `duplicate`, or the HTTP status of a refusal.
    pub fn webhook_delivery(&self, webhook: &str, outcome: &str) {
        self.webhook_deliveries.add(
            1,
            &[
                KeyValue::new("webhook", webhook.to_owned()),
                KeyValue::new("outcome", outcome.to_owned()),
            ],
        );
    }

    pub fn scheduler_leader(&self, leading: bool) {
        self.scheduler_leader.record(u64::from(leading), &[]);
    }

    pub fn publish_error(&self) {
        self.publish_errors.add(1, &[]);
    }

    /// A background task met a failure of the store or the bus (and will try again). `task` is
    /// one of a fixed few names.
    pub fn error(&self, task: &'static str) {
        self.errors.add(1, &[KeyValue::new("task", task)]);
    }

    /// The queue as just read: depth and oldest age by pool (pools no longer queued read 0).
    pub fn queue(&self, pools: &[PoolQueue], now: DateTime<Utc>) {
        let mut known = self
            .queued_pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for pool in known.iter() {
            if !pools.iter().any(|queue| queue.pool == *pool) {
                let label = [KeyValue::new("pool", pool.clone())];
                self.queued_runs.record(0, &label);
                self.oldest_queued_age.record(0.0, &label);
            }
        }
        for queue in pools {
            let label = [KeyValue::new("pool", queue.pool.clone())];
            self.queued_runs.record(queue.queued, &label);
            let age = (now - queue.oldest_created_at).to_std().unwrap_or_default();
            self.oldest_queued_age.record(age.as_secs_f64(), &label);
            known.insert(queue.pool.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_interval_is_read_in_milliseconds_and_a_bad_one_is_named() {
        assert_eq!(
            parse_export_interval(None).unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            parse_export_interval(Some(" ")).unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            parse_export_interval(Some("1500")).unwrap(),
            Duration::from_millis(1500)
        );
        for bad in ["0", "-1", "60s", "1.5"] {
            let err = parse_export_interval(Some(bad)).unwrap_err().to_string();
            assert!(
                err.contains("OTEL_METRIC_EXPORT_INTERVAL") && err.contains("milliseconds"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn what_is_recorded_is_read_out_with_its_labels() {
        let metrics = Metrics::new();
        metrics.run_created(Trigger::Webhook, 3);
        metrics.run_finished(
            "digest",
            Trigger::Schedule,
            RunStatus::Succeeded,
            Some(Duration::from_secs(2)),
        );
        metrics.usage(
            "digest",
            "claude-sonnet-4-5",
            &TokenUsage {
                input_tokens: 900,
                output_tokens: 21,
                ..Default::default()
            },
            Some(0.25),
        );
        metrics.webhook_delivery("issues", "429");
        metrics.scheduler_leader(true);
        metrics.fire_lateness(Duration::from_millis(2));
        let text = metrics.render();
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);
        let cases: [Case; 7] = [
            (
                "autopilot_runs_created_total",
                &[("trigger", "webhook")],
                3.0,
            ),
            (
                "autopilot_runs_finished_total",
                &[
                    ("job", "digest"),
                    ("trigger", "schedule"),
                    ("status", "succeeded"),
                ],
                1.0,
            ),
            (
                "autopilot_tokens_total",
                &[
                    ("job", "digest"),
                    ("model", "claude-sonnet-4-5"),
                    ("kind", "input"),
                ],
                900.0,
            ),
            (
                "autopilot_cost_usd_total",
                &[("job", "digest"), ("model", "claude-sonnet-4-5")],
                0.25,
            ),
            (
                "autopilot_webhook_deliveries_total",
                &[("webhook", "issues"), ("outcome", "429")],
                1.0,
            ),
            ("autopilot_scheduler_leader", &[], 1.0),
            (
                "autopilot_fire_lateness_seconds_bucket",
                &[("le", "0.0025")],
                1.0,
            ),
        ];
        for (name, labels, value) in cases {
            assert_eq!(
                sample(&text, name, labels),
                Some(value),
                "{name} {labels:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn thousands_of_jobs_keep_a_series_each() {
        let metrics = Metrics::new();
        for job in 0..2_500 {
            metrics.run_finished(
                &format!("job-{job}"),
                Trigger::Manual,
                RunStatus::Succeeded,
                None,
            );
        }
        let text = metrics.render();
        assert!(!text.contains("overflow"), "series were folded together");
        assert_eq!(
            text.lines()
                .filter(|line| line.starts_with("autopilot_runs_finished_total{"))
                .count(),
            2_500
        );
    }

    /// The value of the sample of `name` whose labels include `labels`.
    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let all = labels
                .iter()
                .all(|(key, val)| label_text.contains(&format!("{key}=\"{val}\"")));
            all.then(|| value.trim().parse().ok()).flatten()
        })
    }
}
