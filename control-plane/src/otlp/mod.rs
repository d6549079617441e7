//! Where OpenTelemetry signals go, read from the standard variables: an OTLP endpoint
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the signal's own `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
//! `..._METRICS_ENDPOINT`) turns a signal's export on; `OTEL_EXPORTER_OTLP_PROTOCOL` (or the
//! signal's own) picks `http/protobuf` (the default) or `grpc`; `OTEL_TRACES_EXPORTER` /
//! `OTEL_METRICS_EXPORTER=none` and `OTEL_SDK_DISABLED=true` turn it off. Headers, timeouts and
//! the endpoint itself are read by the exporter: for traces over HTTP our own ([`http`]), for
//! the rest the OpenTelemetry crate's.

pub mod http;
pub mod spans;

/// A kind of telemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn upper(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// How `signal` is exported over OTLP, given `var` (an environment lookup); `None` when it is
/// not. A value this build cannot honour is an error naming the variable.
pub fn export(
    signal: Signal,
    var: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<Protocol>> {
    let set = |name: &str| set(&var, name);
    if set("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let upper = signal.upper();
    let exporter_var = format!("OTEL_{upper}_EXPORTER");
    match set(&exporter_var).as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        // Prometheus is always served at `/metrics`; it needs no exporter.
        Some("prometheus") if signal == Signal::Metrics => return Ok(None),
        Some(other) => anyhow::bail!(
            "{exporter_var}={other} is not supported: use `otlp` (with OTEL_EXPORTER_OTLP_ENDPOINT) or `none`"
        ),
    }
    if set(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")).is_none()
        && set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    match signal_setting(&var, signal, "PROTOCOL") {
        None => Ok(Some(Protocol::HttpProtobuf)),
        Some((_, protocol)) if protocol == "http/protobuf" => Ok(Some(Protocol::HttpProtobuf)),
        Some((_, protocol)) if protocol == "grpc" => Ok(Some(Protocol::Grpc)),
        Some((name, other)) => anyhow::bail!(
            "{name}={other} is not supported: use `http/protobuf` (the default) or `grpc`"
        ),
    }
}

/// Variable `name` from `var` (an environment lookup), trimmed; `None` when unset or blank.
fn set(var: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    var(name)
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The signal's own `OTEL_EXPORTER_OTLP_<SIGNAL>_<what>`, else the general
/// `OTEL_EXPORTER_OTLP_<what>`: the variable's name and its value.
fn signal_setting(
    var: &impl Fn(&str) -> Option<String>,
    signal: Signal,
    what: &str,
) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_{}_{what}", signal.upper()),
        format!("OTEL_EXPORTER_OTLP_{what}"),
    ]
    .into_iter()
    .find_map(|name| set(var, &name).map(|value| (name, value)))
}

/// [`export`] from the process's environment.
pub fn export_from_env(signal: Signal) -> anyhow::Result<Option<Protocol>> {
    export(signal, |name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export_with(signal: Signal, vars: &[(&str, &str)]) -> anyhow::Result<Option<Protocol>> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        export(signal, |name| {
            vars.iter()
                .find(|(var, _)| var == name)
                .map(|(_, value)| value.clone())
        })
    }

    const ENDPOINT: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        for signal in [Signal::Traces, Signal::Metrics] {
            assert_eq!(export_with(signal, &[]).unwrap(), None);
            assert_eq!(
                export_with(signal, &[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(),
                None
            );
            assert_eq!(
                export_with(signal, &[("OTEL_SERVICE_NAME", "x")]).unwrap(),
                None
            );
        }
    }

    #[test]
    fn an_endpoint_turns_each_signal_on_over_http_unless_grpc_is_asked_for() {
        assert_eq!(
            export_with(Signal::Traces, &[ENDPOINT]).unwrap(),
            Some(Protocol::HttpProtobuf)
        );
        assert_eq!(
            export_with(Signal::Metrics, &[ENDPOINT]).unwrap(),
            Some(Protocol::HttpProtobuf)
        );
        let only_traces = [
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4317",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        assert_eq!(
            export_with(Signal::Traces, &only_traces).unwrap(),
            Some(Protocol::Grpc)
        );
        assert_eq!(export_with(Signal::Metrics, &only_traces).unwrap(), None);
        let own_protocol = [ENDPOINT, ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc")];
        assert_eq!(
            export_with(Signal::Metrics, &own_protocol).unwrap(),
            Some(Protocol::Grpc)
        );
        assert_eq!(
            export_with(Signal::Traces, &own_protocol).unwrap(),
            Some(Protocol::HttpProtobuf)
        );
    }

    #[test]
    fn disabled_or_none_wins_over_an_endpoint() {
        assert_eq!(
            export_with(Signal::Traces, &[ENDPOINT, ("OTEL_SDK_DISABLED", "true")]).unwrap(),
            None
        );
        assert_eq!(
            export_with(
                Signal::Traces,
                &[ENDPOINT, ("OTEL_TRACES_EXPORTER", "none")]
            )
            .unwrap(),
            None
        );
        assert_eq!(
            export_with(
                Signal::Metrics,
                &[ENDPOINT, ("OTEL_METRICS_EXPORTER", "prometheus")]
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn unsupported_settings_are_named() {
        let err = export_with(
            Signal::Traces,
            &[ENDPOINT, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/json"),
            "{err}"
        );
        let err = export_with(
            Signal::Traces,
            &[ENDPOINT, ("OTEL_TRACES_EXPORTER", "zipkin")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("OTEL_TRACES_EXPORTER=zipkin"), "{err}");
    }
}
