//! Runs in Docker containers (a real Docker Engine, the runtime image built by
//! `docker/build-images.sh`): the real Claude Code CLI inside the container against the fake API
//! through the model proxy, escape attempts, and containers never left behind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{expected_cost_usd, FakeAnthropic, Reply, Usage};
use autopilot_tests::harness::{steps, TestServer};
use serde_json::{json, Value};

const DEFAULT_MODEL: &str = "claude-opus-5-5";
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
const FAKE_KEY: &str = "sk-ant-test-not-a-real-key";

/// The Docker Engine, and a server whose runs execute in it (through `fake` when given).
async fn server(fake: Option<&FakeAnthropic>) -> Option<(bollard::Docker, TestServer)> {
    let docker = components::docker_engine().await?;
    // Also checks that the runtime image is there.
    components::docker_executor("docker-e2e-probe").await?;
    let mut builder = TestServer::builder()
        .docker()
        .kill_grace(Duration::from_secs(1));
    if let Some(fake) = fake {
        builder = builder.model_api(&fake.base_url());
    }
    Some((docker, builder.start().await))
}

/// The host's address on a Docker network, as containers on it see it.
async fn gateway(docker: &bollard::Docker, network: &str) -> String {
    autopilot_worker::docker::gateway(docker, network)
        .await
        .expect("a gateway")
        .to_string()
}

fn output_text(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["kind"] == "output" || e["kind"] == "stderr")
        .filter_map(|e| e["data"]["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Creates a shell job, runs it once and returns the finished run and its events, having
/// checked that the run's container is gone.
async fn run_shell(
    server: &TestServer,
    docker: &bollard::Docker,
    name: &str,
    job: Value,
) -> (Value, Vec<Value>) {
    let mut body = json!({ "name": name, "timeout_secs": 60 });
    body.as_object_mut()
        .unwrap()
        .extend(job.as_object().unwrap().clone());
    let job = server.create_job(body).await;
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    let run = server.wait_until_finished(&run_id, RUN_TIMEOUT).await;
    let events = server.events(&run_id).await;
    assert_eq!(
        components::containers_of_run(docker, &run_id).await,
        0,
        "the run left its container behind"
    );
    (run, events)
}

#[tokio::test]
async fn claude_runs_in_a_container_without_ever_seeing_the_api_key() {
    let fake = FakeAnthropic::start().await.expect("fake API");
    let Some((docker, server)) = server(Some(&fake)).await else {
        return;
    };
    let job = server
        .create_job(json!({
            "name": "contained writer",
            "prompt": "Write a note into the workspace.",
            "allowed_tools": ["Bash", "Write"],
        }))
        .await;
    assert_eq!(job["sandbox"]["network"], "model-only", "{job}");
    let usages = [
        Usage::new(900, 30),
        Usage::new(1000, 20),
        Usage::new(1100, 10),
    ];
    fake.push(
        Reply::tool_use(
            "Bash",
            json!({
                "command": "echo \"uid=$(id -u) key=${ANTHROPIC_API_KEY} base=${ANTHROPIC_BASE_URL}\"; touch /etc/escape 2>&1 || echo root-read-only",
                "description": "look around",
            }),
        )
        .usage(usages[0]),
    );
    fake.push(
        Reply::tool_use(
            "Write",
            json!({ "file_path": "/workspace/note.md", "content": "# Written in a container\n" }),
        )
        .usage(usages[1]),
    );
    fake.push(Reply::text("Done.").usage(usages[2]));
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    let run = server.wait_until_finished(&run_id, RUN_TIMEOUT).await;
    let events = server.events(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}\n{events:#?}");

    // What the Bash tool saw inside the container went back to the model as its result.
    let results: Vec<String> = fake
        .requests()
        .iter()
        .flat_map(|r| r.tool_results())
        .map(|r| r.to_string())
        .collect();
    let bash = results
        .iter()
        .find(|r| r.contains("uid="))
        .unwrap_or_else(|| panic!("no Bash result in {results:?}"));
    assert!(bash.contains("uid=10001"), "{bash}");
    assert!(
        bash.contains("key=autopilot-run-"),
        "the run sees its own token: {bash}"
    );
    assert!(
        !bash.contains(FAKE_KEY),
        "the API key reached the container: {bash}"
    );
    assert!(bash.contains("root-read-only"), "{bash}");
    // The proxy put the real key back on every request to the API.
    for request in fake.requests() {
        assert_eq!(
            request.header("x-api-key"),
            Some(FAKE_KEY),
            "{:?}",
            request.path
        );
    }

    // Events, tokens and cost, as for a local run.
    let started = events
        .iter()
        .find(|e| e["kind"] == "lifecycle" && e["data"]["step"] == "started")
        .expect("started");
    assert_eq!(started["data"]["executor"], "docker");
    let mut total = Usage::new(0, 0);
    for usage in &usages {
        total.input_tokens += usage.input_tokens;
        total.output_tokens += usage.output_tokens;
    }
    assert_eq!(run["input_tokens"], total.input_tokens, "{run}");
    assert_eq!(run["output_tokens"], total.output_tokens, "{run}");
    let cost = run["cost_usd"].as_f64().expect("cost");
    let expected: f64 = usages
        .iter()
        .map(|u| expected_cost_usd(DEFAULT_MODEL, u).unwrap())
        .sum();
    assert!((cost - expected).abs() < 1e-6, "{cost} vs {expected}");
    // The model proxy metered the same tokens from the answers it passed on.
    let exited = events
        .iter()
        .find(|e| e["kind"] == "lifecycle" && e["data"]["step"] == "exited")
        .expect("exited");
    let metered = &exited["data"]["model_proxy"];
    assert_eq!(metered["requests"], fake.requests().len(), "{exited}");
    assert_eq!(metered["input_tokens"], run["input_tokens"], "{exited}");
    assert_eq!(metered["output_tokens"], run["output_tokens"], "{exited}");
    assert_eq!(
        metered["cache_read_tokens"], run["cache_read_tokens"],
        "{exited}"
    );
    assert_eq!(
        metered["cache_write_tokens"], run["cache_write_tokens"],
        "{exited}"
    );
    assert!(
        events.iter().any(|e| e["kind"] == "tool_use"),
        "{:?}",
        steps(&events)
    );

    // The file is in the job's workspace on the host, and no container is left.
    let note = server.workspace_of(&job).join("note.md");
    assert_eq!(
        std::fs::read_to_string(&note).unwrap(),
        "# Written in a container\n"
    );
    assert_eq!(components::containers_of_run(&docker, &run_id).await, 0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn writing_outside_the_workspace_and_reading_host_files_fail() {
    let Some((docker, server)) = server(None).await else {
        return;
    };
    let secret = server.data_dir.path().join("host-secret.txt");
    std::fs::write(&secret, "host secret").unwrap();
    let script = format!(
        "echo inside > /workspace/ok.txt; \
         for target in /etc/escape /usr/escape /escape; do touch $target 2>&1 || echo refused $target; done; \
         cat {} 2>&1 || echo no-host-file; \
         test -e /var/run/docker.sock && echo socket-present || echo no-docker-socket; \
         cat /proc/1/cmdline | tr '\\0' ' '; echo; \
         exit 7",
        secret.display()
    );
    let (run, events) = run_shell(&server, &docker, "escape", json!({ "command": script })).await;
    let text = output_text(&events);
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["exit_code"], 7, "{run}");
    for target in ["/etc/escape", "/usr/escape", "/escape"] {
        assert!(text.contains(&format!("refused {target}")), "{text}");
    }
    assert!(text.contains("Read-only file system"), "{text}");
    assert!(
        text.contains("no-host-file") && !text.contains("host secret"),
        "{text}"
    );
    assert!(text.contains("no-docker-socket"), "{text}");
    let job = &server.get("/api/v1/jobs/escape").await;
    assert_eq!(
        std::fs::read_to_string(server.workspace_of(job).join("ok.txt")).unwrap(),
        "inside\n"
    );
    server.stop().await.unwrap();
}

/// Defence in depth: what a run would need to escalate or look around is not there.
#[tokio::test]
async fn a_run_finds_no_setuid_programs_a_private_cgroup_namespace_and_a_bounded_shm() {
    let Some((docker, server)) = server(None).await else {
        return;
    };
    let script = "echo setuid: $(find / -xdev -type f -perm /6000 2>/dev/null | wc -l); \
                  echo shm: $(df -k /dev/shm | tail -n 1 | tr -s ' ' | cut -d ' ' -f 2); \
                  sed 's/^/cgroup /' /proc/self/cgroup";
    let (run, events) = run_shell(&server, &docker, "depth", json!({ "command": script })).await;
    let text = output_text(&events);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(text.contains("setuid: 0"), "{text}");
    assert!(text.contains(&format!("shm: {}", 64 * 1024)), "{text}");
    let cgroups: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("cgroup "))
        .collect();
    assert!(!cgroups.is_empty(), "{text}");
    assert!(
        cgroups.iter().all(|line| line.ends_with(":/")),
        "the run's cgroups are the root of its own namespace: {cgroups:?}"
    );
    server.stop().await.unwrap();
}

/// The one thing a run learns of the host's layout: the workspace mount's root in
/// `/proc/self/mountinfo` is the workspace's path within the filesystem that holds it. A bind
/// mount cannot hide it (SECURITY.md, "The workspace's host path", says why); this pins that it
/// is all: no other mount comes from the data directory, whose secret key and database stay out.
#[tokio::test]
async fn the_only_host_path_a_run_sees_is_its_workspace_within_its_filesystem() {
    let Some((docker, server)) = server(None).await else {
        return;
    };
    let (run, events) = run_shell(
        &server,
        &docker,
        "mounts",
        json!({ "command": "sed 's/^/mount /' /proc/self/mountinfo" }),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let text = output_text(&events);
    // Fields: id, parent, device, root, mount point, options, …
    let mounts: Vec<Vec<&str>> = text
        .lines()
        .filter_map(|line| line.strip_prefix("mount "))
        .map(|line| line.split(' ').collect())
        .collect();
    let workspace = std::fs::canonicalize(
        server
            .workspaces()
            .join(format!("job-{}", run["job_id"].as_str().unwrap())),
    )
    .unwrap();
    let expected_root = path_within_its_filesystem(&workspace);
    let workspace_mount = mounts
        .iter()
        .find(|fields| fields.get(4) == Some(&"/workspace"))
        .unwrap_or_else(|| panic!("no /workspace mount: {text}"));
    assert_eq!(workspace_mount[3], expected_root, "{text}");

    let data_dir =
        path_within_its_filesystem(&std::fs::canonicalize(server.data_dir.path()).unwrap());
    let from_data_dir: Vec<&str> = mounts
        .iter()
        .filter(|fields| {
            fields
                .get(3)
                .is_some_and(|root| root.starts_with(&data_dir))
        })
        .map(|fields| fields[4])
        .collect();
    assert_eq!(from_data_dir, ["/workspace"], "{text}");
    for kept_out in ["secret.key", "autopilot.db"] {
        assert!(!text.contains(kept_out), "{kept_out} shows: {text}");
    }
    server.stop().await.unwrap();
}

/// How the kernel names `path` as a mount's root: its path within the filesystem holding it,
/// from this process's own mount table (the engine here shares the host's mount namespace).
fn path_within_its_filesystem(path: &std::path::Path) -> String {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    // The deepest mount point holding `path`.
    let (root, mount_point) = table
        .lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .map(|fields| (fields[3].to_owned(), fields[4].to_owned()))
        .filter(|(_, mount_point)| {
            mount_point == "/"
                || path == mount_point
                || path.starts_with(&format!("{mount_point}/"))
        })
        .max_by_key(|(_, mount_point)| mount_point.len())
        .expect("a mount holds every path");
    let within = path
        .strip_prefix(mount_point.as_str())
        .unwrap()
        .trim_start_matches('/');
    let root = root.trim_end_matches('/');
    format!("{root}/{within}")
}

#[tokio::test]
async fn a_fork_bomb_hits_the_process_limit() {
    let Some((docker, server)) = server(None).await else {
        return;
    };
    // A classic fork bomb, stopped by the job's timeout; the pids limit keeps it in its box.
    // The shell then waits with `exec`, which needs no fork: a fork the full box refuses would
    // end the script early with code 2 instead of leaving it to the timeout.
    let (run, events) = run_shell(
        &server,
        &docker,
        "fork bomb",
        json!({
            "command": "bomb() { bomb | bomb & }; bomb; exec sleep 30",
            "timeout_secs": 6,
            "sandbox": { "pids": 64 },
        }),
    )
    .await;
    let text = output_text(&events);
    // Usually the timeout ends it; but when the box is full at the moment the script's own shell
    // forks, that shell stops with code 2 ("Cannot fork") and the run fails first. Either way
    // the run ended and the limit is what stopped the bomb.
    assert!(
        run["status"] == "timed_out" || (run["status"] == "failed" && run["exit_code"] == 2),
        "{run}"
    );
    assert!(
        text.contains("Cannot fork") || text.contains("Resource temporarily unavailable"),
        "the limit never bit: {text}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_memory_hog_is_killed_and_reported_out_of_memory() {
    let Some((docker, server)) = server(None).await else {
        return;
    };
    let (run, events) = run_shell(
        &server,
        &docker,
        "memory hog",
        json!({
            "command": "echo start; python3 -c \"b = b'x' * (512 * 1024 * 1024); print(len(b))\"; echo survived",
            "sandbox": { "memory_mb": 96 },
        }),
    )
    .await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap_or_default()
            .contains("out of memory"),
        "{run}"
    );
    let exited = events
        .iter()
        .find(|e| e["kind"] == "lifecycle" && e["data"]["step"] == "exited")
        .expect("exited");
    assert_eq!(exited["data"]["out_of_memory"], true, "{exited}");
    assert!(!output_text(&events).contains("536870912"));
    server.stop().await.unwrap();
}

/// A TCP listener on every host address that counts the connections it gets.
async fn host_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, count)
}

#[tokio::test]
async fn networks_none_and_model_only_reach_nothing_but_open_does() {
    let fake = FakeAnthropic::start().await.expect("fake API");
    let Some((docker, server)) = server(Some(&fake)).await else {
        return;
    };
    let (port, connections) = host_listener().await;
    let bridge = gateway(&docker, "bridge").await;
    let probe = format!(
        "for target in {bridge} 127.0.0.1 1.1.1.1; do \
           if timeout 3 bash -c \"echo > /dev/tcp/$target/{port}\" 2>/dev/null; then echo reached $target; else echo blocked $target; fi; \
         done"
    );
    for network in ["none", "model-only"] {
        let (run, events) = run_shell(
            &server,
            &docker,
            &format!("probe {network}"),
            json!({ "command": probe, "sandbox": { "network": network } }),
        )
        .await;
        let text = output_text(&events);
        assert_eq!(run["status"], "succeeded", "{run}");
        for target in [bridge.as_str(), "127.0.0.1", "1.1.1.1"] {
            assert!(
                text.contains(&format!("blocked {target}")),
                "{network}: {text}"
            );
        }
        assert_eq!(connections.load(Ordering::SeqCst), 0, "{network}: {text}");
    }
    // The same probe with an open network reaches the host: the listener works.
    let (run, events) = run_shell(
        &server,
        &docker,
        "probe open",
        json!({ "command": probe, "sandbox": { "network": "open" } }),
    )
    .await;
    let text = output_text(&events);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(text.contains(&format!("reached {bridge}")), "{text}");
    assert!(connections.load(Ordering::SeqCst) >= 1);

    // A claude job refuses `none`: it could not reach the model.
    let response = server
        .call(
            reqwest::Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "cut off", "prompt": "hi", "sandbox": { "network": "none" } })),
        )
        .await;
    assert_eq!(
        response.0,
        reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        "{response:?}"
    );
    assert!(
        response.1.to_string().contains("sandbox.network"),
        "{response:?}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn kill_and_timeout_leave_no_container() {
    let Some((docker, server)) = server(None).await else {
        return;
    };
    let job = server
        .create_job(
            json!({ "name": "sleeper", "command": "echo up; sleep 120", "timeout_secs": 300 }),
        )
        .await;
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    server
        .wait_for_run(&run_id, Duration::from_secs(30), |run| {
            run["status"] == "running"
        })
        .await;
    // The container exists while the run does.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while components::containers_of_run(&docker, &run_id).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no container for the run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = server
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/runs/{run_id}/kill"),
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    let run = server
        .wait_until_finished(&run_id, Duration::from_secs(20))
        .await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(components::containers_of_run(&docker, &run_id).await, 0);

    let (run, _) = run_shell(
        &server,
        &docker,
        "too slow",
        json!({ "command": "sleep 120", "timeout_secs": 2 }),
    )
    .await;
    assert_eq!(run["status"], "timed_out", "{run}");
    server.stop().await.unwrap();
}

/// A job may name the image its runs start from (a team's own, built FROM the runtime image); one
/// the worker does not have fails the run with what to build, and the local executor, which has
/// no images, says so instead of ignoring it.
#[tokio::test]
async fn a_job_names_its_image_and_a_missing_one_fails_with_what_to_build() {
    let Some((docker, server)) = server(None).await else {
        return;
    };
    // The base image (git in it) stands in for a team's image.
    let (run, events) = run_shell(
        &server,
        &docker,
        "own image",
        json!({ "command": "git --version", "image": "autopilot-base:latest" }),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert!(output_text(&events).contains("git version"), "{events:#?}");
    let (run, _) = run_shell(
        &server,
        &docker,
        "missing image",
        json!({ "command": "true", "image": "autopilot-runtime-nope:latest" }),
    )
    .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("autopilot-runtime-nope:latest") && error.contains("FROM autopilot-runtime"),
        "{error}"
    );
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/api/v1/jobs",
            Some(json!({ "name": "bad", "command": "true", "image": "-rm" })),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "image", "{body}");

    let local = TestServer::builder().start().await;
    let job = local
        .create_job(json!({ "name": "local", "command": "true", "image": "autopilot-base:latest" }))
        .await;
    let run = local.trigger(job["id"].as_str().unwrap()).await;
    let run = local
        .wait_until_finished(run["id"].as_str().unwrap(), RUN_TIMEOUT)
        .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("only the Docker executor"),
        "{run:#}"
    );
}

/// A 429 whose headers say when the limit resets: the model proxy sees it, and the job's retry
/// waits until the reset instead of its hour-long backoff.
#[tokio::test]
async fn a_rate_limit_with_a_reset_time_is_retried_at_the_reset() {
    let fake = FakeAnthropic::start().await.expect("fake API");
    let Some((_docker, server)) = server(Some(&fake)).await else {
        return;
    };
    let reset = chrono::Utc::now() + chrono::Duration::seconds(5);
    fake.push(
        Reply::error(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        )
        .header("anthropic-ratelimit-tokens-reset", reset.to_rfc3339()),
    );
    fake.push(Reply::text("after the reset"));
    let job = server
        .create_job(json!({
            "name": "limited", "prompt": "go", "retry": { "count": 1, "backoff_secs": 3600 },
        }))
        .await;
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run = server
        .wait_until_finished(run["id"].as_str().unwrap(), RUN_TIMEOUT)
        .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["attempt"], 2);
    assert_eq!(run["result"], "after the reset");
    let events = server.events(run["id"].as_str().unwrap()).await;
    let retry = &events
        .iter()
        .find(|e| e["data"]["step"] == "retry_scheduled")
        .expect("retry recorded")["data"];
    assert_eq!(retry["api_error"], "rate_limited", "{retry:#}");
    let retry_at: chrono::DateTime<chrono::Utc> =
        retry["retry_at"].as_str().unwrap().parse().unwrap();
    assert!(
        (retry_at - reset).num_milliseconds().abs() < 1000,
        "{retry_at} vs {reset}"
    );
    assert!(retry["delay_secs"].as_u64().unwrap() <= 5, "{retry:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_call_in_a_container_waits_for_its_approval() {
    let fake = FakeAnthropic::start().await.expect("fake API");
    let Some((_docker, server)) = server(Some(&fake)).await else {
        return;
    };
    fake.push_all([
        Reply::tool_use(
            "Bash",
            json!({ "command": "echo boxed > marker && cat marker" }),
        ),
        Reply::text("done"),
    ]);
    let job = server
        .create_job(json!({
            "name": "gated in a box", "prompt": "go", "approval": { "tools": ["Bash"] },
        }))
        .await;
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    let waiting = server
        .wait_for_run(&run_id, RUN_TIMEOUT, |run| {
            run["status"] == "waiting_for_approval" || autopilot_tests::harness::is_terminal(run)
        })
        .await;
    assert_eq!(waiting["status"], "waiting_for_approval", "{waiting:#}");
    let listed = server
        .get(&format!("/api/v1/approvals?run_id={run_id}"))
        .await;
    let id = listed["approvals"][0]["id"].as_str().unwrap().to_owned();
    let (status, decided) = server
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/approvals/{id}/approve"),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{decided}");
    let ended = server.wait_until_finished(&run_id, RUN_TIMEOUT).await;
    assert_eq!(ended["status"], "succeeded", "{ended:#}");
    let result = fake
        .requests()
        .iter()
        .flat_map(|request| request.tool_results())
        .find(|result| result.to_string().contains("boxed"))
        .expect("the approved call ran in the container");
    assert_ne!(result["is_error"], true, "{result}");
}
