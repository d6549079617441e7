//! The fleet as `docker/compose.yaml` starts it on one machine: two control planes, two workers,
//! PostgreSQL and NATS with JetStream, each in a hardened container of an image that
//! `docker/build-images.sh all` made from local material, on the project's own Docker network.
//! A signed webhook delivery to one control plane becomes a real Claude run on a worker
//! container (the local executor: the CLI is in the worker image), against the fake Anthropic
//! API listening on the host's address on the Docker bridge; the other control plane reports it.
//!
//! Needs a Docker Engine and Debian's `docker-compose` (1.29; `tests/run.sh` installs it); with
//! `CI=true` a missing one fails the test. Images whose inputs did not change are reused, so
//! only the first run pays for building them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply, Usage};
use autopilot_tests::harness::{ApiClient, ADMIN_TOKEN};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Tag of the control-plane and worker images built from the test's `autopilot` binary, so the
/// `latest` images (release builds) are left alone.
const IMAGE_TAG: &str = "e2e";
const API_KEY: &str = "sk-ant-test-not-a-real-key";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Debian's `docker-compose` (the v1 client), or `None` (a failure in CI) without it.
fn docker_compose() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("docker-compose"))
        .find(|path| path.is_file());
    match found {
        Some(path) => Some(path),
        None => components::missing(
            "docker-compose",
            "install Debian's `docker-compose` package (`apt-get install docker-compose`) or run \
             `bash tests/run.sh`",
        ),
    }
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Builds (or finds up to date) every image the Compose file uses; the control plane and worker
/// carry `autopilot`, the binary the other end-to-end tests run.
async fn build_images(autopilot: &Path) {
    let started = Instant::now();
    let output = tokio::process::Command::new("bash")
        .arg(repo_dir().join("docker/build-images.sh"))
        .arg("all")
        .env("AUTOPILOT_IMAGE_BIN", autopilot)
        .env("AUTOPILOT_IMAGE_TAG", IMAGE_TAG)
        .output()
        .await
        .expect("run docker/build-images.sh");
    assert!(
        output.status.success(),
        "docker/build-images.sh all failed:\n{}",
        output_text(&output)
    );
    eprintln!(
        "images ready in {:.1} s:\n{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&output.stdout)
    );
}

/// A Compose project running `docker/compose.yaml`; taken down with its volumes when dropped,
/// whether the test passed or not.
struct ComposeFleet {
    compose: PathBuf,
    project: String,
    env: Vec<(&'static str, String)>,
    /// An empty env file: keeps a developer's `docker/.env` out.
    empty_env_file: tempfile::NamedTempFile,
}

impl ComposeFleet {
    /// `docker-compose -p PROJECT -f docker/compose.yaml` with the fleet's variables.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.compose);
        command
            .arg("--project-name")
            .arg(&self.project)
            .arg("--file")
            .arg(repo_dir().join("docker/compose.yaml"))
            .arg("--env-file")
            .arg(self.empty_env_file.path())
            .envs(self.env.iter().map(|(name, value)| (name, value)));
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command();
        command.args(args);
        tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("run docker-compose")
    }

    /// Every container's log, for failure messages.
    async fn logs(&self) -> String {
        output_text(&self.run(&["logs", "--no-color", "--tail=200"]).await)
    }

    /// `http://HOST:PORT` of a control plane's API on the host.
    async fn api_url(&self, service: &str) -> String {
        let output = self.run(&["port", service, "8080"]).await;
        let address = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            output.status.success() && !address.is_empty(),
            "no published port for {service}: {}",
            output_text(&output)
        );
        format!("http://{address}")
    }
}

impl Drop for ComposeFleet {
    fn drop(&mut self) {
        let output = self
            .command()
            .args(["down", "--volumes", "--remove-orphans", "--timeout", "5"])
            .output();
        match output {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "docker-compose down of {} failed:\n{}",
                self.project,
                output_text(&output)
            ),
            Err(err) => eprintln!("docker-compose down of {} failed: {err}", self.project),
        }
    }
}

fn random_hex() -> String {
    let seed = format!(
        "{} {}",
        uuid::Uuid::now_v7().simple(),
        uuid::Uuid::now_v7().simple()
    );
    hex::encode(Sha256::digest(seed.as_bytes()))
}

fn hmac_hex(secret: &[u8], data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// Polls `GET path` until it answers 200, or panics with the fleet's logs.
async fn wait_until_ok(fleet: &ComposeFleet, api: &ApiClient, path: &str) -> Value {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let answer = api
            .client
            .get(format!("{}{path}", api.base_url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await;
        if let Ok(response) = answer {
            if response.status() == StatusCode::OK {
                return response.json().await.expect("JSON");
            }
        }
        if Instant::now() > deadline {
            panic!(
                "{}{path} did not answer 200 within {STARTUP_TIMEOUT:?}\n{}",
                api.base_url,
                fleet.logs().await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every container of the project runs as a non-root user with a read-only root, no
/// capabilities and `no-new-privileges`, as `docker/compose.yaml` promises.
async fn assert_hardened(docker: &bollard::Docker, project: &str) {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("com.docker.compose.project={project}")],
    )]);
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list the project's containers");
    assert_eq!(containers.len(), 6, "{containers:#?}");
    for summary in containers {
        let id = summary.id.expect("a container id");
        let container = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .expect("inspect a container");
        let name = container.name.clone().unwrap_or_default();
        let config = container.config.expect("config");
        let host = container.host_config.expect("host config");
        let user = config.user.unwrap_or_default();
        assert!(
            !user.is_empty() && !user.starts_with("0:") && user != "0" && user != "root",
            "{name} runs as `{user}`"
        );
        assert_eq!(host.readonly_rootfs, Some(true), "{name}: read-only root");
        assert_eq!(
            host.cap_drop,
            Some(vec!["ALL".to_owned()]),
            "{name}: cap_drop"
        );
        assert!(
            host.security_opt
                .unwrap_or_default()
                .iter()
                .any(|option| option.starts_with("no-new-privileges")),
            "{name}: no-new-privileges"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_fleet_runs_a_webhook_delivery_on_a_worker_container() {
    let Some(docker) = components::docker_engine().await else {
        return;
    };
    let Some(compose) = docker_compose() else {
        return;
    };
    let Some(autopilot) = components::autopilot_bin() else {
        return;
    };
    build_images(&autopilot).await;

    // The fake model API on the host's address on the Docker bridge: containers on any bridge
    // network reach it through their gateway.
    let bridge = autopilot_worker::docker::gateway(&docker, "bridge")
        .await
        .expect("the address of the Docker bridge");
    let listener = tokio::net::TcpListener::bind((bridge, 0))
        .await
        .expect("bind the fake API on the Docker bridge");
    let fake = FakeAnthropic::start_on(listener).await.expect("fake API");

    let project = format!("autopilot-e2e-{}", &random_hex()[..12]);
    let fleet = ComposeFleet {
        compose,
        project,
        env: vec![
            ("AUTOPILOT_IMAGE_TAG", IMAGE_TAG.to_owned()),
            // Any free host ports, on the loopback.
            ("AUTOPILOT_PUBLISH_HOST", "127.0.0.1".to_owned()),
            ("AUTOPILOT_PORT_1", String::new()),
            ("AUTOPILOT_PORT_2", String::new()),
            ("AUTOPILOT_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("AUTOPILOT_SECRET_KEY", random_hex()),
            ("AUTOPILOT_POSTGRES_PASSWORD", random_hex()),
            ("AUTOPILOT_WORKER_CONCURRENCY", "2".to_owned()),
            ("ANTHROPIC_API_KEY", API_KEY.to_owned()),
            ("ANTHROPIC_BASE_URL", fake.base_url()),
        ],
        empty_env_file: tempfile::NamedTempFile::new().expect("an empty env file"),
    };
    let started = Instant::now();
    // Waits for PostgreSQL, NATS and the first control plane to be healthy (depends_on).
    let up = fleet.run(&["up", "--detach", "--no-build"]).await;
    assert!(
        up.status.success(),
        "docker-compose up failed:\n{}\n{}",
        output_text(&up),
        fleet.logs().await
    );
    let first = ApiClient::new(fleet.api_url("control-plane-1").await);
    let second = ApiClient::new(fleet.api_url("control-plane-2").await);
    for api in [&first, &second] {
        let ready = wait_until_ok(&fleet, api, "/readyz").await;
        assert_eq!(ready["mode"], "fleet", "{ready}");
        assert_eq!(ready["store"], "postgres", "{ready}");
    }
    // Both workers heartbeat through NATS.
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let workers = wait_until_ok(&fleet, &first, "/api/v1/workers").await;
        let mut ids: Vec<&str> = workers["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|worker| worker["worker_id"].as_str())
            .collect();
        ids.sort_unstable();
        if ids == ["worker-1", "worker-2"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workers did not show up: {workers}\n{}",
            fleet.logs().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("fleet up in {:.1} s", started.elapsed().as_secs_f64());
    assert_hardened(&docker, &fleet.project).await;

    let webhook = first
        .create_webhook(json!({
            "name": "compose triage",
            "prompt_template": "Triage GitHub issue #{{payload.issue.number}}: {{payload.issue.title}}",
            "allowed_tools": ["Read"],
            "max_turns": 2,
            "signature": { "scheme": "github" },
        }))
        .await;
    let secret = webhook["signing_secret"].as_str().expect("signing_secret");
    // The URL names the first control plane's public address; any control plane serves it.
    let url = webhook["url"].as_str().expect("url");
    let path = &url[url.find("/hooks/").expect("a /hooks/ URL")..];
    let usage = Usage::new(1234, 56);
    fake.push(Reply::text("Triaged: a duplicate of #7.").usage(usage));
    let body = json!({ "action": "opened", "issue": { "number": 42, "title": "Compose fleet" } })
        .to_string();
    let signature = format!("sha256={}", hmac_hex(secret.as_bytes(), body.as_bytes()));
    let (status, _, answer) = second
        .deliver(
            &format!("{}{path}", second.base_url),
            &[
                ("content-type", "application/json"),
                ("x-github-event", "issues"),
                ("x-github-delivery", "compose-42"),
                ("x-hub-signature-256", &signature),
            ],
            body,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let run_id = answer["run_id"].as_str().expect("run_id");

    let run = first.wait_until_finished(run_id, RUN_TIMEOUT).await;
    assert_eq!(
        run["status"],
        "succeeded",
        "{run:#}\n{:#?}\n{}",
        first.events(run_id).await,
        fleet.logs().await
    );
    assert_eq!(run["result"], "Triaged: a duplicate of #7.", "{run:#}");
    assert_eq!(run["webhook_id"], webhook["id"], "{run:#}");
    assert_eq!(run["delivery_id"], "compose-42", "{run:#}");
    assert_eq!(run["input_tokens"], usage.input_tokens, "{run:#}");
    assert_eq!(run["output_tokens"], usage.output_tokens, "{run:#}");
    assert!(run["cost_usd"].as_f64().unwrap_or(0.0) > 0.0, "{run:#}");
    let worker = run["worker_id"].as_str().unwrap_or_default();
    assert!(worker == "worker-1" || worker == "worker-2", "{run:#}");

    // The model call came from the worker's container with the key Compose passed on, and
    // carried the payload's values.
    let requests = fake.requests();
    let main = requests.first().expect("a model request");
    assert_eq!(main.header("x-api-key"), Some(API_KEY));
    let sent = serde_json::to_string(main.messages()).expect("JSON");
    assert!(sent.contains("Compose fleet"), "{sent}");
    eprintln!(
        "run {run_id} succeeded on {worker}; {:.1} s after `docker-compose up`",
        started.elapsed().as_secs_f64()
    );
}
