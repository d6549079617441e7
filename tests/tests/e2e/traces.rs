//! Traces end to end, received by a real OTLP receiver (`autopilot_tests::otlp`): one trace per
//! run from its cause (a webhook request, an API call) through the store, the bus and the worker
//! to each model turn and tool call of the Claude run, in the fleet and embedded, over OTLP/HTTP
//! and OTLP/gRPC; the CLI's own spans join the same trace; JSON logs carry the trace's id.

use std::collections::HashMap;
use std::time::Duration;

use autopilot_tests::cluster::{claude_worker_env, Cluster, ClusterOptions};
use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply};
use autopilot_tests::otlp::{OtlpReceiver, ReceivedSpan};
use serde_json::{json, Value};

use crate::process;

/// Spans leave the processes in batches this often (milliseconds) instead of every 5 s.
const BATCH_DELAY_MS: &str = "100";

const SPAN_WAIT: Duration = Duration::from_secs(30);

fn by_id(spans: &[ReceivedSpan]) -> HashMap<&str, &ReceivedSpan> {
    spans
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect()
}

/// The names of `span`'s ancestors, nearest first, up to the trace's root.
fn ancestors<'a>(spans: &'a [ReceivedSpan], span: &ReceivedSpan) -> Vec<&'a str> {
    let index = by_id(spans);
    let mut names = Vec::new();
    let mut parent = span.parent_span_id.as_str();
    while let Some(up) = index.get(parent) {
        names.push(up.name.as_str());
        parent = up.parent_span_id.as_str();
    }
    names
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.name == name).collect()
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found = named(spans, name);
    assert_eq!(
        found.len(),
        1,
        "expected one `{name}` span; the trace has: {:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

/// The model turns and the tool call of a run that used Bash once, under `invoke_agent`, with
/// what the GenAI conventions ask for; and nothing of the prompt or the tool's input.
fn check_agent_spans(trace: &[ReceivedSpan], run: &Value, prompt_word: &str) {
    let agent = one(trace, "invoke_agent claude-code");
    assert_eq!(
        agent.str_attribute("gen_ai.operation.name"),
        Some("invoke_agent")
    );
    let turns: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|span| span.str_attribute("gen_ai.operation.name") == Some("chat"))
        .collect();
    assert_eq!(turns.len(), 2, "two model turns (tool call, answer)");
    let mut input_tokens = 0;
    let mut output_tokens = 0;
    for turn in &turns {
        assert_eq!(
            turn.parent_span_id, agent.span_id,
            "a turn is a child of invoke_agent"
        );
        assert_eq!(turn.kind, 3, "a turn is a client span");
        assert!(turn.name.starts_with("chat "), "{}", turn.name);
        assert_eq!(
            turn.str_attribute("gen_ai.provider.name"),
            Some("anthropic")
        );
        assert!(turn.str_attribute("gen_ai.request.model").is_some());
        assert!(turn
            .attribute("autopilot.cost_usd")
            .and_then(Value::as_f64)
            .is_some());
        input_tokens += turn
            .attribute("gen_ai.usage.input_tokens")
            .and_then(Value::as_i64)
            .unwrap();
        output_tokens += turn
            .attribute("gen_ai.usage.output_tokens")
            .and_then(Value::as_i64)
            .unwrap();
        assert!(turn.start_unix_nanos <= turn.end_unix_nanos);
    }
    // What the turns say adds up to what the run recorded.
    assert_eq!(input_tokens, run["input_tokens"].as_i64().unwrap(), "{run}");
    assert_eq!(
        output_tokens,
        run["output_tokens"].as_i64().unwrap(),
        "{run}"
    );
    let finish: Vec<&Value> = turns
        .iter()
        .filter_map(|turn| turn.attribute("gen_ai.response.finish_reasons"))
        .collect();
    assert!(
        finish.contains(&&json!(["tool_use"])),
        "the first turn stopped for its tool call: {finish:?}"
    );
    let tool = one(trace, "execute_tool Bash");
    assert_eq!(tool.parent_span_id, agent.span_id);
    assert_eq!(tool.str_attribute("gen_ai.tool.name"), Some("Bash"));
    assert_eq!(tool.str_attribute("gen_ai.tool.type"), Some("function"));
    assert_eq!(tool.status_code, 0, "the tool succeeded");
    // The tool ran between the turn that asked for it and the turn that read its result.
    let mut by_start = turns.clone();
    by_start.sort_by_key(|turn| turn.start_unix_nanos);
    assert!(by_start[0].end_unix_nanos <= tool.start_unix_nanos);
    assert!(tool.end_unix_nanos <= by_start[1].end_unix_nanos);
    // No prompt, no tool input on any span.
    for span in trace {
        for (key, value) in &span.attributes {
            let text = value.to_string();
            assert!(
                !text.contains(prompt_word) && !text.contains("echo traced"),
                "span `{}` attribute `{key}` holds run content: {text}",
                span.name
            );
        }
    }
}

fn script_bash_then_answer(fake: &FakeAnthropic) {
    fake.push(Reply::tool_use("Bash", json!({ "command": "echo traced" })));
    fake.push(Reply::text("all done"));
}

/// A webhook delivery to a fleet (control plane and worker as separate processes, NATS and
/// PostgreSQL between them) is one trace over OTLP/HTTP: the request, the run's creation and
/// store write, the publish on NATS, the worker's run and claim, and the Claude run's turns and
/// tool call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_delivery_is_one_trace_from_the_request_to_each_tool_call_in_the_fleet() {
    let Some(claude) = components::claude_bin() else {
        return;
    };
    let receiver = OtlpReceiver::start().await;
    let fake = FakeAnthropic::start().await.expect("fake API");
    let otel = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            receiver.http_endpoint(),
        ),
        (
            "OTEL_BSP_SCHEDULE_DELAY".to_owned(),
            BATCH_DELAY_MS.to_owned(),
        ),
        (
            "OTEL_METRIC_EXPORT_INTERVAL".to_owned(),
            BATCH_DELAY_MS.to_owned(),
        ),
    ];
    let mut worker_env = otel.clone();
    worker_env.extend(claude_worker_env(&claude, &fake.base_url()));
    let Some(cluster) = Cluster::start(ClusterOptions {
        control_planes: 1,
        workers: 1,
        worker_env,
        control_plane_env: otel,
        ..ClusterOptions::default()
    })
    .await
    else {
        return;
    };
    let api = cluster.api(0).clone();
    script_bash_then_answer(&fake);
    let webhook = api
        .create_webhook(json!({
            "name": "traced",
            "prompt_template": "Say zebracorn about {{payload.title}}",
            "allowed_tools": ["Bash"],
        }))
        .await;
    let run_id = api
        .deliver_json(webhook["url"].as_str().unwrap(), &json!({ "title": "x" }))
        .await;
    let run = api
        .wait_until_finished(&run_id, Duration::from_secs(60))
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let trace_id = run["trace_id"]
        .as_str()
        .expect("the run names its trace")
        .to_owned();
    assert_eq!(trace_id.len(), 32);

    let spans = receiver
        .wait_for(SPAN_WAIT, |spans| {
            let trace: Vec<&ReceivedSpan> =
                spans.iter().filter(|s| s.trace_id == trace_id).collect();
            trace.iter().any(|s| s.name == "execute_tool Bash")
                && trace.iter().filter(|s| s.name.starts_with("chat ")).count() == 2
                && trace.iter().any(|s| s.name == "POST /hooks/{token}")
                && trace.iter().any(|s| s.name == "autopilot.run")
        })
        .await;
    let trace: Vec<ReceivedSpan> = spans
        .into_iter()
        .filter(|s| s.trace_id == trace_id)
        .collect();

    let request = one(&trace, "POST /hooks/{token}");
    assert_eq!(request.service, "autopilot");
    assert_eq!(request.kind, 2, "the request is a server span");
    assert_eq!(request.parent_span_id, "", "the delivery starts the trace");
    assert_eq!(
        request.attribute("http.response.status_code"),
        Some(&json!(202))
    );
    // The run joined the request's span: the request names it, and its steps are children.
    assert_eq!(
        request.str_attribute("autopilot.run.id"),
        Some(run_id.as_str())
    );
    assert_eq!(request.str_attribute("autopilot.trigger"), Some("webhook"));
    assert_eq!(
        request.str_attribute("autopilot.webhook.id"),
        webhook["id"].as_str()
    );
    // The request waited for the run's store write: an attribute of its span.
    assert!(
        request
            .attribute("autopilot.store.duration_ms")
            .is_some_and(Value::is_f64),
        "{:?}",
        request.attributes
    );
    assert!(named(&trace, "store run").is_empty());
    let published = one(&trace, "publish default");
    assert_eq!(published.parent_span_id, request.span_id);
    assert_eq!(published.kind, 4, "the publish is a producer span");

    let executed = one(&trace, "autopilot.run");
    assert_eq!(executed.service, "autopilot-worker");
    assert_eq!(executed.kind, 5, "the worker's run is a consumer span");
    assert_eq!(
        executed.parent_span_id, published.span_id,
        "the trace crossed NATS"
    );
    assert_eq!(
        executed.str_attribute("autopilot.run.id"),
        Some(run_id.as_str())
    );
    let claim = one(&trace, "autopilot.claim");
    assert_eq!(claim.parent_span_id, executed.span_id);
    let agent = one(&trace, "invoke_agent claude-code");
    assert_eq!(
        ancestors(&trace, agent),
        ["autopilot.run", "publish default", "POST /hooks/{token}"]
    );
    check_agent_spans(&trace, &run, "zebracorn");

    // The same endpoint gets the metrics, pushed over OTLP by the control plane and the worker.
    let deadline = std::time::Instant::now() + SPAN_WAIT;
    loop {
        let names = receiver.metric_names();
        let has = |service: &str, metric: &str| {
            names
                .iter()
                .any(|(from, name)| from == service && name == metric)
        };
        if has("autopilot", "autopilot.runs.finished")
            && has("autopilot", "autopilot.webhook.deliveries")
            && has("autopilot-worker", "autopilot.worker.slots")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics received: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An embedded `autopilot serve` exporting to `receiver` (its own spans over `protocol`), whose
/// Claude runs talk to `fake` and export the CLI's own spans over HTTP; `env` adds settings.
async fn embedded(
    dir: &std::path::Path,
    receiver: &OtlpReceiver,
    fake: &FakeAnthropic,
    protocol: &str,
    env: &[(&str, &str)],
) -> Option<process::Process> {
    let claude = components::claude_bin()?;
    let config = dir.join("autopilot.toml");
    std::fs::write(
        &config,
        format!(
            "[run_env]\nCLAUDE_CODE_ENABLE_TELEMETRY = \"1\"\nCLAUDE_CODE_ENHANCED_TELEMETRY_BETA = \"1\"\n\
             OTEL_TRACES_EXPORTER = \"otlp\"\nOTEL_EXPORTER_OTLP_PROTOCOL = \"http/protobuf\"\n\
             OTEL_EXPORTER_OTLP_ENDPOINT = \"{}\"\n\
             ANTHROPIC_BASE_URL = \"{}\"\nANTHROPIC_API_KEY = \"sk-ant-test-not-a-real-key\"\n\
             CLAUDE_CODE_MAX_RETRIES = \"0\"\n",
            receiver.http_endpoint(),
            fake.base_url()
        ),
    )
    .unwrap();
    let endpoint = match protocol {
        "grpc" => receiver.grpc_endpoint(),
        _ => receiver.http_endpoint(),
    };
    let claude_bin = claude.display().to_string();
    let config_path = config.display().to_string();
    let mut all: Vec<(&str, &str)> = vec![
        ("AUTOPILOT_CONFIG", &config_path),
        ("AUTOPILOT_ADMIN_TOKEN", TOKEN),
        ("AUTOPILOT_CLAUDE_BIN", &claude_bin),
        ("AUTOPILOT_LOG_FORMAT", "json"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", BATCH_DELAY_MS),
    ];
    all.extend_from_slice(env);
    process::spawn(dir, &all).await
}

const TOKEN: &str = "embedded-traces-admin-token-0123456789";

/// Creates a job, runs it through the API and waits for its end.
async fn run_job(process: &process::Process, job: Value) -> Value {
    let (status, job) = process::api(
        process,
        TOKEN,
        reqwest::Method::POST,
        "/api/v1/jobs",
        Some(job),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let (status, run) = process::api(
        process,
        TOKEN,
        reqwest::Method::POST,
        &format!("/api/v1/jobs/{}/trigger", job["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 202, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    for _ in 0..900 {
        let (_, current) = process::api(
            process,
            TOKEN,
            reqwest::Method::GET,
            &format!("/api/v1/runs/{run_id}"),
            None,
        )
        .await;
        if !["queued", "running", "cancelling"].contains(&current["status"].as_str().unwrap_or(""))
        {
            return current;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("run {run_id} did not finish");
}

/// The spans of the run's trace, once `done` holds for them.
async fn trace_of(
    receiver: &OtlpReceiver,
    run: &Value,
    done: impl Fn(&[&ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    let trace_id = run["trace_id"]
        .as_str()
        .expect("the run names its trace")
        .to_owned();
    receiver
        .wait_for(SPAN_WAIT, |spans| {
            let trace: Vec<&ReceivedSpan> =
                spans.iter().filter(|s| s.trace_id == trace_id).collect();
            done(&trace)
        })
        .await;
    receiver.trace(&trace_id)
}

/// Embedded (one `autopilot serve`): an API-triggered run is one trace sent over OTLP/gRPC; a
/// job that turns the CLI's own telemetry on gets its `claude_code.*` spans in the same trace
/// (through `TRACEPARENT`); JSON log lines name the trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_runs_are_traced_over_grpc_and_claude_code_s_own_spans_join_the_trace() {
    let receiver = OtlpReceiver::start().await;
    let fake = FakeAnthropic::start().await.expect("fake API");
    let dir = tempfile::tempdir().unwrap();
    let Some(process) = embedded(
        dir.path(),
        &receiver,
        &fake,
        "grpc",
        &[("OTEL_SERVICE_NAME", "autopilot-embedded")],
    )
    .await
    else {
        return;
    };
    script_bash_then_answer(&fake);
    let finished = run_job(
        &process,
        json!({ "name": "traced", "prompt": "Say quokkafish", "allowed_tools": ["Bash"] }),
    )
    .await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    let trace = trace_of(&receiver, &finished, |trace| {
        trace.iter().any(|s| s.name == "execute_tool Bash")
            && trace.iter().filter(|s| s.name.starts_with("chat ")).count() == 2
            && trace.iter().any(|s| s.name.starts_with("claude_code."))
            && trace.iter().any(|s| s.name == "autopilot.run")
    })
    .await;
    let request = one(&trace, "POST /api/v1/jobs/{id}/trigger");
    assert_eq!(
        request.service, "autopilot-embedded",
        "OTEL_SERVICE_NAME names the service"
    );
    assert_eq!(request.str_attribute("autopilot.trigger"), Some("manual"));
    assert!(request.attribute("autopilot.store.duration_ms").is_some());
    assert_eq!(request.str_attribute("autopilot.job.name"), Some("traced"));
    // Embedded, the publish is a push onto an in-process queue: no span, the worker's run is a
    // child of the request.
    let executed = one(&trace, "autopilot.run");
    assert_eq!(
        ancestors(&trace, executed),
        ["POST /api/v1/jobs/{id}/trigger"]
    );
    assert!(named(&trace, "publish default").is_empty());
    check_agent_spans(&trace, &finished, "quokkafish");

    // The CLI's own spans hang under the run's `invoke_agent` span.
    let agent = one(&trace, "invoke_agent claude-code");
    let cli_spans: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| s.name.starts_with("claude_code."))
        .collect();
    assert!(
        cli_spans
            .iter()
            .any(|span| span.parent_span_id == agent.span_id),
        "a claude_code span is a child of invoke_agent: {cli_spans:#?}"
    );

    // A scheduled fire is the root of its own trace: from when it was due, with the store write
    // and the run under it.
    let (status, ticking) = process::api(
        &process,
        TOKEN,
        reqwest::Method::POST,
        "/api/v1/jobs",
        Some(json!({ "name": "ticking", "command": "true", "schedule": "* * * * * *" })),
    )
    .await;
    assert_eq!(status, 201, "{ticking}");
    let fired = loop {
        let (_, page) = process::api(
            &process,
            TOKEN,
            reqwest::Method::GET,
            &format!("/api/v1/runs?job_id={}", ticking["id"].as_str().unwrap()),
            None,
        )
        .await;
        if let Some(run) = page["runs"]
            .as_array()
            .and_then(|runs| runs.iter().find(|run| run["trace_id"].is_string()))
        {
            break run.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let fire_trace = trace_of(&receiver, &fired, |trace| {
        trace.iter().any(|s| s.name == "autopilot.run")
            && trace.iter().any(|s| s.name == "store run")
    })
    .await;
    let fire = one(&fire_trace, "fire ticking");
    assert_eq!(fire.parent_span_id, "", "a fire starts its trace");
    assert_eq!(fire.str_attribute("autopilot.trigger"), Some("schedule"));
    assert_eq!(one(&fire_trace, "store run").parent_span_id, fire.span_id);
    assert_eq!(
        one(&fire_trace, "autopilot.run").parent_span_id,
        fire.span_id
    );

    // A log line written inside the request names the trace.
    let trace_id = finished["trace_id"].as_str().unwrap();
    let logs = process::drain(&process);
    let joined = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .any(|line| line["trace_id"] == trace_id && line["span_id"].is_string());
    assert!(joined, "no JSON log line carries trace {trace_id}:\n{logs}");
}

/// With the Docker executor: the container's start is a span of the run, and each model request
/// through the model proxy is one too (status, usage), passed upstream as the parent of the
/// model API's own work (`traceparent`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_run_traces_its_container_start_and_each_model_request_through_the_proxy() {
    if components::docker_executor("traces-probe").await.is_none() {
        return;
    }
    let receiver = OtlpReceiver::start().await;
    let fake = FakeAnthropic::start().await.expect("fake API");
    let dir = tempfile::tempdir().unwrap();
    let Some(process) = embedded(
        dir.path(),
        &receiver,
        &fake,
        "http/protobuf",
        &[
            ("AUTOPILOT_EXECUTOR", "docker"),
            ("AUTOPILOT_KILL_GRACE_SECS", "1"),
        ],
    )
    .await
    else {
        return;
    };
    script_bash_then_answer(&fake);
    let finished = run_job(
        &process,
        json!({ "name": "contained", "prompt": "Say narwhalnut", "allowed_tools": ["Bash"] }),
    )
    .await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    let trace = trace_of(&receiver, &finished, |trace| {
        trace.iter().any(|s| s.name == "execute_tool Bash")
            && trace
                .iter()
                .filter(|s| s.name.starts_with("POST /v1/messages"))
                .count()
                >= 2
            && trace.iter().any(|s| s.name == "autopilot.run")
    })
    .await;
    let executed = one(&trace, "autopilot.run");
    let container = one(&trace, "container.start");
    assert_eq!(
        ancestors(&trace, container)[..2],
        ["invoke_agent claude-code", "autopilot.run"]
    );
    assert_eq!(
        container.str_attribute("container.image.name"),
        Some("autopilot-runtime:latest")
    );
    assert!(executed.start_unix_nanos <= container.start_unix_nanos);
    let agent = one(&trace, "invoke_agent claude-code");
    let proxied: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| s.name == "POST /v1/messages")
        .collect();
    assert_eq!(
        proxied.len(),
        fake.requests().len(),
        "one span per model request"
    );
    let mut input_tokens = 0;
    for request in &proxied {
        assert_eq!(request.parent_span_id, agent.span_id);
        assert_eq!(request.kind, 3, "a proxied request is a client span");
        assert_eq!(
            request.attribute("http.response.status_code"),
            Some(&json!(200))
        );
        assert_eq!(
            request.attribute("http.request.resend_count"),
            Some(&json!(0))
        );
        input_tokens += request
            .attribute("gen_ai.usage.input_tokens")
            .and_then(Value::as_i64)
            .unwrap();
    }
    assert_eq!(input_tokens, finished["input_tokens"].as_i64().unwrap());
    // The model API was told each request's span as its parent.
    for recorded in fake.requests() {
        let traceparent = recorded
            .header("traceparent")
            .expect("a traceparent upstream");
        let span_id = traceparent.split('-').nth(2).unwrap();
        assert!(
            proxied.iter().any(|span| span.span_id == span_id),
            "{traceparent} names no proxy span"
        );
    }
    check_agent_spans(&trace, &finished, "narwhalnut");
}

/// A job that sets `trace_content` has its prompt, the assistant's text and its tool's input
/// and result on its spans; the model API key its run could print is redacted everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_asks_for_it_has_its_content_on_its_spans_with_secrets_redacted() {
    const KEY: &str = "sk-ant-test-not-a-real-key";
    let receiver = OtlpReceiver::start().await;
    let fake = FakeAnthropic::start().await.expect("fake API");
    let dir = tempfile::tempdir().unwrap();
    let Some(process) = embedded(dir.path(), &receiver, &fake, "http/protobuf", &[]).await else {
        return;
    };
    fake.push(Reply::tool_use(
        "Bash",
        json!({ "command": "echo printed-$ANTHROPIC_API_KEY" }),
    ));
    fake.push(Reply::text("all done, wombatberry"));
    let finished = run_job(
        &process,
        json!({
            "name": "open-book",
            "prompt": "Say platypie",
            "allowed_tools": ["Bash"],
            "trace_content": true,
        }),
    )
    .await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    let trace = trace_of(&receiver, &finished, |trace| {
        trace.iter().any(|s| s.name == "execute_tool Bash")
            && trace.iter().filter(|s| s.name.starts_with("chat ")).count() == 2
            && trace.iter().any(|s| s.name == "invoke_agent claude-code")
    })
    .await;
    let agent = one(&trace, "invoke_agent claude-code");
    let input = agent.str_attribute("gen_ai.input.messages").unwrap_or("");
    let input: Value = serde_json::from_str(input).expect("input messages are JSON");
    assert_eq!(input[0]["role"], "user");
    assert!(
        input[0]["parts"][0]["content"]
            .as_str()
            .is_some_and(|prompt| prompt.contains("Say platypie")),
        "{input}"
    );
    let tool = one(&trace, "execute_tool Bash");
    assert!(
        tool.str_attribute("gen_ai.tool.call.arguments")
            .is_some_and(|input| input.contains("echo printed-$ANTHROPIC_API_KEY")),
        "{:?}",
        tool.attributes
    );
    assert!(
        tool.str_attribute("gen_ai.tool.call.result")
            .is_some_and(|result| result.contains("printed-[redacted]")),
        "the tool printed the key; its result on the span must not hold it: {:?}",
        tool.attributes
    );
    let said = trace
        .iter()
        .filter_map(|span| span.str_attribute("gen_ai.output.messages"))
        .any(|messages| messages.contains("all done, wombatberry"));
    assert!(said, "a turn span holds the assistant's text");
    for span in &trace {
        for (key, value) in &span.attributes {
            assert!(
                !value.to_string().contains(KEY),
                "span `{}` attribute `{key}` holds the model API key",
                span.name
            );
        }
    }
    // The setting is part of the job, and claude jobs only take it.
    let (status, job) = process::api(
        &process,
        TOKEN,
        reqwest::Method::GET,
        "/api/v1/jobs/open-book",
        None,
    )
    .await;
    assert_eq!(
        (status, &job["trace_content"]),
        (200, &json!(true)),
        "{job}"
    );
    let (status, refused) = process::api(
        &process,
        TOKEN,
        reqwest::Method::POST,
        "/api/v1/jobs",
        Some(json!({ "name": "shell-book", "command": "true", "trace_content": true })),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert!(refused.to_string().contains("trace_content"), "{refused}");
}
