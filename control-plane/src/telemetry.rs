//! Logs and traces of the process: the `tracing` subscriber with its log format and, when an
//! OTLP endpoint is configured, an OpenTelemetry exporter for spans.
//!
//! Traces follow the standard OpenTelemetry variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns them on; `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`http/protobuf`, the default, or `grpc`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` and
//! `OTEL_SDK_DISABLED` / `OTEL_TRACES_EXPORTER=none` work as everywhere else. Without an
//! endpoint nothing is set up: no span reaches an exporter and run requests carry no trace
//! context. JSON log lines carry `trace_id` and `span_id` when tracing is on, so a log line
//! leads to its trace.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::filter::{filter_fn, FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::http::trace::RequestRecorder;
use crate::otlp::http::{HttpSettings, HttpSpanExporter};
use crate::otlp::{self, Protocol, Signal};

/// What was set up; dropping it (or [`Telemetry::shutdown`]) sends the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered, waiting at most the exporter's timeout.
    pub fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(err) = provider.shutdown() {
                eprintln!("warning: sending the last spans failed: {err}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Sets up logging in `format` and, when configured, trace export for a process whose service
/// name is `service` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say otherwise.
pub fn init(format: LogFormat, service: &'static str) -> anyhow::Result<Telemetry> {
    let exporting = otlp::export_from_env(Signal::Traces)?
        .map(|protocol| tracer_provider(protocol, service))
        .transpose()?;
    let provider = exporting.as_ref().map(|(provider, _)| provider.clone());
    let filter = EnvFilter::try_from_env("AUTOPILOT_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    subscriber(format, filter, provider.as_ref())
        .try_init()
        .context("setting up logging")?;
    if let Some((provider, processor)) = exporting {
        opentelemetry::global::set_tracer_provider(provider);
        // The provider's own settings, read again: its sampler is not to be had from it.
        let sampler = opentelemetry_sdk::trace::Config::default().sampler;
        RequestRecorder::new(processor, sampler).install();
        autopilot_worker::trace::set_enabled(true);
    }
    Ok(Telemetry { provider })
}

/// The log layer, filtered by `filter`, and the span layer when traces are exported.
fn subscriber(
    format: LogFormat,
    filter: EnvFilter,
    provider: Option<&SdkTracerProvider>,
) -> Dispatch {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs
            .json()
            .event_format(WithTraceIds(Format::default().json()))
            .boxed(),
    }
    // Spans made for traces only are no business of the logs (formatting their fields would be
    // work for nothing).
    .with_filter(filter.and(filter_fn(|metadata| {
        metadata.target() != autopilot_worker::trace::SPAN_TARGET
    })));
    let registry = tracing_subscriber::registry().with(logs);
    // Not `.with(spans)` on an `Option`: an absent layer counts as interested in every
    // callsite, which would make every `debug!` and `trace!` of every crate (each made, then
    // refused by the log filter) whenever traces are off.
    let Some(provider) = provider else {
        return registry.into();
    };
    // Spans are exported whatever the log filter says: Autopilot's own, at info and above.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(autopilot_worker::trace::TRACER_NAME))
        .with_level(false)
        // Each of these costs allocations or clock reads on every span or every poll.
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(
            Targets::new()
                .with_target(autopilot_worker::trace::SPAN_TARGET, LevelFilter::INFO)
                .with_target("autopilot", LevelFilter::INFO)
                .with_target("autopilot_control_plane", LevelFilter::INFO)
                .with_target("autopilot_worker", LevelFilter::INFO)
                .with_target("autopilot_proto", LevelFilter::INFO),
        );
    registry.with(spans).into()
}

/// The trace provider, and its span processor for the spans recorded without it (requests).
fn tracer_provider(
    protocol: Protocol,
    service: &'static str,
) -> anyhow::Result<(SdkTracerProvider, Arc<dyn SpanProcessor>)> {
    let resource = crate::metrics::resource(service);
    let processor: Arc<dyn SpanProcessor> = match protocol {
        Protocol::HttpProtobuf => {
            let settings = HttpSettings::traces(|name| std::env::var(name).ok())?;
            batch(HttpSpanExporter::new(settings)?, &resource)
        }
        Protocol::Grpc => batch(
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .context("setting up the OTLP trace exporter (OTEL_EXPORTER_OTLP_*)")?,
            &resource,
        ),
    };
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(Shared(Arc::clone(&processor)))
        .build();
    Ok((provider, processor))
}

/// A batch processor for `exporter`, which gets the resource now: the processor is shared (see
/// `Shared`), and a shared one cannot be handed it later.
fn batch(mut exporter: impl SpanExporter + 'static, resource: &Resource) -> Arc<dyn SpanProcessor> {
    exporter.set_resource(resource);
    Arc::new(BatchSpanProcessor::builder(exporter).build())
}

/// A span processor the provider shares with the request spans.
#[derive(Debug)]
struct Shared(Arc<dyn SpanProcessor>);

impl SpanProcessor for Shared {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    /// The exporter was given the resource when it was made.
    fn set_resource(&mut self, _resource: &Resource) {}
}

/// The JSON log format with the ids of the current span's trace beside the fields.
struct WithTraceIds(Format<Json>);

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let ids = autopilot_worker::trace::enabled()
            .then(|| {
                let context = autopilot_worker::trace::current_context();
                let span = context.span();
                let span_context = span.span_context();
                span_context
                    .is_valid()
                    .then(|| (span_context.trace_id(), span_context.span_id()))
            })
            .flatten();
        let Some((trace_id, span_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The line is one JSON object and a newline: the ids go in before its closing brace.
        match line.trim_end().strip_suffix('}') {
            Some(object) => writeln!(
                writer,
                "{object},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            ),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    /// Whether `dispatch` would make a `debug!` event of a library (as `tower_http` makes one
    /// for every request).
    fn makes_library_debug_events(dispatch: &Dispatch) -> bool {
        tracing::dispatcher::with_default(
            dispatch,
            || tracing::enabled!(target: "tower_http::trace", Level::DEBUG),
        )
    }

    #[test]
    fn events_the_logs_leave_out_are_not_made() {
        let provider = SdkTracerProvider::builder().build();
        for (name, provider) in [("traces off", None), ("traces on", Some(&provider))] {
            let quiet = subscriber(LogFormat::Text, EnvFilter::new("warn"), provider);
            assert!(!makes_library_debug_events(&quiet), "{name}");
            let verbose = subscriber(LogFormat::Json, EnvFilter::new("debug"), provider);
            assert!(makes_library_debug_events(&verbose), "{name}");
        }
    }
}
