//! `/mcp` against the official MCP conformance suite (`@modelcontextprotocol/conformance`,
//! pinned by `tests/run.sh`), run with Node 22 as its own process.
//!
//! The suite's `server` command connects with a bare SDK client: it has no way to pass a header
//! or to run an OAuth flow. `/mcp` requires a bearer token, so the suite talks to a small proxy
//! in this test that adds `Authorization: Bearer <ADMIN_TOKEN>` and forwards everything else
//! unchanged (Host and Origin included, so the DNS-rebinding scenario still tests the server's
//! own checks). The server's auth is untouched: the test first checks `/mcp` refuses a request
//! without the token.
//!
//! Every authorization scenario of the suite (`auth/*`) is a *client* scenario: the suite plays
//! the MCP server and authorization server and judges the client's OAuth behaviour. None tests
//! a server, so none runs here; `mcp_clients.rs` drives Autopilot's authorization server with
//! real OAuth clients instead.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use autopilot_tests::components::{self, Conformance};
use autopilot_tests::harness::{TestServer, ADMIN_TOKEN};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::Response;
use tokio::process::Command;

const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

/// Server scenarios Autopilot must pass: the protocol itself, independent of what a server
/// chooses to offer.
const APPLICABLE: &[&str] = &[
    "server-initialize",
    "ping",
    "tools-list",
    "dns-rebinding-protection",
];

/// Server scenarios that do not apply to Autopilot, each with the reason.
const EXCLUDED: &[(&str, &str)] = &[
    // Autopilot declares only the `tools` capability (control-plane/src/mcp/mod.rs).
    (
        "logging-set-level",
        "no `logging` capability: logging/setLevel is rightly -32601",
    ),
    (
        "completion-complete",
        "no `completions` capability (it passes only because rmcp answers an empty completion)",
    ),
    (
        "resources-list",
        "no `resources` capability (rmcp's default answers an empty list)",
    ),
    ("resources-read-text", "no `resources` capability"),
    ("resources-read-binary", "no `resources` capability"),
    ("resources-templates-read", "no `resources` capability"),
    ("resources-subscribe", "no `resources` capability"),
    ("resources-unsubscribe", "no `resources` capability"),
    (
        "prompts-list",
        "no `prompts` capability (rmcp's default answers an empty list)",
    ),
    ("prompts-get-simple", "no `prompts` capability"),
    ("prompts-get-with-args", "no `prompts` capability"),
    ("prompts-get-embedded-resource", "no `prompts` capability"),
    ("prompts-get-with-image", "no `prompts` capability"),
    // These call fixture tools of the suite's reference server (`test_simple_text`,
    // `test_image_content`, …, `json_schema_2020_12_tool`); Autopilot's tools are its job API
    // and it ships no test tools. Sampling and elicitation also need server-to-client requests,
    // which a stateless server with JSON responses cannot make.
    (
        "tools-call-simple-text",
        "needs the fixture tool test_simple_text",
    ),
    (
        "tools-call-image",
        "needs the fixture tool test_image_content",
    ),
    (
        "tools-call-audio",
        "needs the fixture tool test_audio_content",
    ),
    (
        "tools-call-embedded-resource",
        "needs the fixture tool test_embedded_resource",
    ),
    (
        "tools-call-mixed-content",
        "needs the fixture tool test_multiple_content_types",
    ),
    (
        "tools-call-with-logging",
        "needs the fixture tool test_tool_with_logging",
    ),
    (
        "tools-call-error",
        "needs the fixture tool test_error_handling",
    ),
    (
        "tools-call-with-progress",
        "needs the fixture tool test_tool_with_progress",
    ),
    (
        "tools-call-sampling",
        "needs the fixture tool test_sampling and server-to-client requests",
    ),
    (
        "tools-call-elicitation",
        "needs the fixture tool test_elicitation and server-to-client requests",
    ),
    (
        "json-schema-2020-12",
        "needs the fixture tool json_schema_2020_12_tool",
    ),
    (
        "elicitation-sep1034-defaults",
        "needs a fixture elicitation tool and server-to-client requests",
    ),
    (
        "elicitation-sep1330-enums",
        "needs a fixture elicitation tool and server-to-client requests",
    ),
    // Autopilot's `/mcp` is stateless (no session id, no SSE streams, JSON responses); these
    // need sessions and the fixture tool test_reconnection, and pass vacuously (0 checks).
    (
        "server-sse-polling",
        "needs sessions and SSE streams; /mcp is stateless JSON",
    ),
    (
        "server-sse-multiple-streams",
        "needs sessions and SSE streams; /mcp is stateless JSON",
    ),
];

/// Hop-by-hop headers a proxy must not forward (RFC 9110 §7.6.1), plus the length, which the
/// forwarding client sets itself.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::CONTENT_LENGTH,
];

#[derive(Clone)]
struct Upstream {
    base_url: String,
    client: reqwest::Client,
}

/// Forwards one request to Autopilot with the admin token added.
async fn forward(State(upstream): State<Upstream>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .expect("read the request body");
    let mut headers = parts.headers.clone();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.insert(
        header::AUTHORIZATION,
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    let forwarded = upstream
        .client
        .request(parts.method, format!("{}{path}", upstream.base_url))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let response = match forwarded {
        Ok(response) => response,
        Err(err) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(format!("proxy: {err}")))
                .unwrap()
        }
    };
    let mut builder = Response::builder().status(response.status());
    for (name, value) in response.headers() {
        if !HOP_BY_HOP.contains(name) {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(Body::from_stream(response.bytes_stream()))
        .unwrap()
}

/// Starts the token-adding proxy in front of `base_url`; returns the proxy's base URL.
async fn start_proxy(base_url: &str) -> String {
    let upstream = Upstream {
        base_url: base_url.to_owned(),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    };
    let app = axum::Router::new().fallback(forward).with_state(upstream);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    proxy_url
}

/// Runs the suite's CLI with `args`; returns whether it exited 0 and its output.
async fn run_suite(suite: &Conformance, work_dir: &Path, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(&suite.node);
    command
        .arg(&suite.cli)
        .args(args)
        .current_dir(work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SCENARIO_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("conformance {args:?} did not finish in time"))
        .expect("start the conformance suite");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), strip_colours(&text))
}

/// Removes the ANSI colour codes the suite always prints (`ESC [ … m`).
fn strip_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The server scenarios the installed suite knows (`conformance list --server`).
async fn server_scenarios(suite: &Conformance, work_dir: &Path) -> Vec<String> {
    let (ok, listing) = run_suite(suite, work_dir, &["list", "--server"]).await;
    assert!(ok, "conformance list failed:\n{listing}");
    listing
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- "))
        .filter_map(|entry| entry.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_server_passes_the_conformance_suite() {
    let Some(suite) = components::conformance() else {
        return;
    };
    let work_dir = tempfile::tempdir().expect("work dir");

    // Every scenario the suite offers is either run or excluded with a reason, so a new suite
    // version cannot add scenarios unnoticed.
    let known = server_scenarios(&suite, work_dir.path()).await;
    let mut classified: Vec<&str> = APPLICABLE
        .iter()
        .copied()
        .chain(EXCLUDED.iter().map(|(name, _)| *name))
        .collect();
    classified.sort_unstable();
    let mut known_sorted: Vec<&str> = known.iter().map(String::as_str).collect();
    known_sorted.sort_unstable();
    assert_eq!(
        known_sorted, classified,
        "the suite's server scenarios changed: classify each as APPLICABLE or EXCLUDED"
    );

    let server = TestServer::builder().start().await;
    // The proxy is the only thing holding a token: `/mcp` itself still refuses anonymous calls.
    let anonymous = reqwest::Client::new()
        .post(format!("{}/mcp", server.base_url))
        .header(header::ACCEPT, "application/json, text/event-stream")
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let mcp_url = format!("{}/mcp", start_proxy(&server.base_url).await);
    let results_dir = work_dir.path().join("results");
    let results_dir = results_dir.to_str().unwrap();
    let mut failures = Vec::new();
    let mut report = String::new();
    for scenario in APPLICABLE {
        let (passed, output) = run_suite(
            &suite,
            work_dir.path(),
            &[
                "server",
                "--url",
                &mcp_url,
                "--scenario",
                scenario,
                "-o",
                results_dir,
            ],
        )
        .await;
        report.push_str(&format!(
            "===== {scenario}: {} =====\n{output}\n",
            if passed { "passed" } else { "FAILED" }
        ));
        if !passed {
            failures.push(*scenario);
        }
    }
    println!("{report}");
    assert!(
        failures.is_empty(),
        "conformance scenarios failed: {failures:?}\n{report}"
    );
    server.stop().await.unwrap();
}
