//! The `autopilot` binary as users run it: first start, restart after a crash, help text.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply};
use serde_json::{json, Value};

pub(crate) struct Process {
    child: Child,
    pub(crate) base_url: String,
    stderr_lines: std::sync::mpsc::Receiver<String>,
}

impl Process {
    /// Sends SIGTERM, as a rolling update does.
    pub(crate) fn terminate(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    /// Waits for the process to exit; panics with its log if it still runs at `deadline`.
    pub(crate) async fn exit_by(
        &mut self,
        deadline: std::time::Instant,
    ) -> std::process::ExitStatus {
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running at its deadline: {}",
                drain(self)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes whose parent is `pid` (from `/proc`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            stat_fields(*child).is_some_and(|fields| fields.get(1) == Some(&pid.to_string()))
        })
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name: state, parent, …
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Whether `pid` runs (a zombie waiting to be reaped does not).
fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().map(String::as_str) != Some("Z"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `autopilot serve` and waits until it answers.
pub(crate) async fn spawn(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Option<Process> {
    let bin = components::autopilot_bin()?;
    let port = free_port();
    let mut command = Command::new(bin);
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUTOPILOT_DATA_DIR", data_dir)
        .env("AUTOPILOT_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn autopilot");
    let stderr = child.stderr.take().unwrap();
    let (tx, stderr_lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let process = Process {
        child,
        base_url: format!("http://127.0.0.1:{port}"),
        stderr_lines,
    };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{}/readyz", process.base_url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Some(process);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("autopilot did not start");
}

pub(crate) fn drain(process: &Process) -> String {
    let mut text = String::new();
    while let Ok(line) = process
        .stderr_lines
        .recv_timeout(Duration::from_millis(200))
    {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

pub(crate) async fn api(
    process: &Process,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", process.base_url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Creates `job` and triggers it once; the run as the trigger answered.
pub(crate) async fn create_and_trigger(process: &Process, token: &str, job: Value) -> Value {
    let (status, job) = api(
        process,
        token,
        reqwest::Method::POST,
        "/api/v1/jobs",
        Some(job),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let path = format!("/api/v1/jobs/{}/trigger", job["id"].as_str().unwrap());
    let (status, run) = api(process, token, reqwest::Method::POST, &path, None).await;
    assert_eq!(status, 202, "{run}");
    run
}

#[tokio::test]
async fn the_first_start_prints_an_admin_token_once_and_it_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let Some(first) = spawn(dir.path(), &[]).await else {
        return;
    };
    let output = drain(&first);
    let token = output
        .split_whitespace()
        .find(|word| word.starts_with("ap_") && word.len() == "ap_".len() + 43)
        .unwrap_or_else(|| panic!("no token printed: {output}"))
        .to_owned();
    assert!(output.contains("mode=\"embedded\""), "{output}");
    assert_eq!(
        api(&first, &token, reqwest::Method::GET, "/api/v1/jobs", None)
            .await
            .0,
        200
    );
    assert_eq!(
        api(
            &first,
            "ap_wrong",
            reqwest::Method::GET,
            "/api/v1/jobs",
            None
        )
        .await
        .0,
        401
    );
    drop(first);

    let second = spawn(dir.path(), &[]).await.unwrap();
    let output = drain(&second);
    assert!(!output.contains(&token), "the token is shown only once");
    assert_eq!(
        api(&second, &token, reqwest::Method::GET, "/api/v1/jobs", None)
            .await
            .0,
        200
    );
    // The database holds only its hash.
    let database = std::fs::read(dir.path().join("autopilot.db")).unwrap();
    assert!(!database.windows(token.len()).any(|w| w == token.as_bytes()));
}

#[tokio::test]
async fn runs_left_running_by_a_crashed_process_are_marked_lost_at_start() {
    let Some(claude) = components::claude_bin() else {
        return;
    };
    let fake = FakeAnthropic::start().await.unwrap();
    fake.push(Reply::stalled());
    let dir = tempfile::tempdir().unwrap();
    let token = "process-test-token-0123456789";
    let base_url = fake.base_url();
    let env = [
        ("AUTOPILOT_ADMIN_TOKEN", token),
        ("AUTOPILOT_CLAUDE_BIN", claude.to_str().unwrap()),
        ("ANTHROPIC_BASE_URL", base_url.as_str()),
        ("ANTHROPIC_API_KEY", "sk-ant-test"),
        ("CLAUDE_CODE_MAX_RETRIES", "0"),
    ];
    let Some(mut first) = spawn(dir.path(), &env).await else {
        return;
    };
    let (status, run) = api(
        &first,
        token,
        reqwest::Method::POST,
        "/api/v1/quick-run",
        Some(json!({ "prompt": "hang" })),
    )
    .await;
    assert_eq!(status, 202, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    assert!(fake.wait_for_requests(1, Duration::from_secs(30)).await);
    // The CLI's first line is stored before the crash (it is checked for afterwards).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, events) = api(
            &first,
            token,
            reqwest::Method::GET,
            &format!("/api/v1/runs/{run_id}/events"),
            None,
        )
        .await;
        let stored = events["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["kind"] == "system_init"));
        if stored {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no system_init event: {events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = children_of(first.child.id());
    assert!(
        !started.is_empty(),
        "the run's CLI is a child of autopilot serve"
    );
    first.child.kill().unwrap(); // SIGKILL: no chance to clean up
    first.child.wait().unwrap();
    // The CLI it started dies with it instead of running on.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while started.iter().any(|pid| alive(*pid)) {
        assert!(
            std::time::Instant::now() < deadline,
            "still running after autopilot was killed: {started:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let second = spawn(dir.path(), &env).await.unwrap();
    let (_, run) = api(
        &second,
        token,
        reqwest::Method::GET,
        &format!("/api/v1/runs/{run_id}"),
        None,
    )
    .await;
    assert_eq!(run["status"], "lost", "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("autopilot stopped while this run was executing"),
        "{run:#}"
    );
    let (_, events) = api(
        &second,
        token,
        reqwest::Method::GET,
        &format!("/api/v1/runs/{run_id}/events"),
        None,
    )
    .await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"system_init"),
        "events from before the crash are kept: {kinds:?}"
    );
    // Nothing is left running.
    let (_, running) = api(
        &second,
        token,
        reqwest::Method::GET,
        "/api/v1/runs?status=running,cancelling,queued",
        None,
    )
    .await;
    assert_eq!(running["runs"].as_array().unwrap().len(), 0);
    drop(fake); // the orphaned CLI's request fails and, without retries, it exits
}

/// `kill -9` of `autopilot serve` leaves nothing its runs started: not the run's process, not
/// what that started in its process group, not what it detached into a session of its own.
#[tokio::test]
async fn nothing_a_run_started_outlives_a_kill_9_of_autopilot() {
    let dir = tempfile::tempdir().unwrap();
    let token = "process-test-token-0123456789";
    let env = [("AUTOPILOT_ADMIN_TOKEN", token)];
    let Some(mut serve) = spawn(dir.path(), &env).await else {
        return;
    };
    let pids = dir.path().join("pids");
    let command = format!(
        "echo $$ >> {p}; sleep 300 & echo $! >> {p}; \
         setsid sh -c 'echo $$ >> {p}; exec sleep 300' >/dev/null 2>&1 & wait",
        p = pids.display()
    );
    create_and_trigger(
        &serve,
        token,
        json!({ "name": "leaves-things-running", "command": command }),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let started: Vec<u32> = loop {
        let listed = std::fs::read_to_string(&pids).unwrap_or_default();
        let started: Vec<u32> = listed.lines().filter_map(|pid| pid.parse().ok()).collect();
        if started.len() == 3 {
            break started;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not start: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(started.iter().all(|pid| alive(*pid)), "{started:?}");
    serve.child.kill().unwrap(); // SIGKILL: no chance to clean up
    serve.child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while started.iter().any(|pid| alive(*pid)) {
        let living: Vec<_> = started.iter().filter(|pid| alive(**pid)).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "still running after autopilot was killed: {living:?} of {started:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_second_process_on_the_same_data_directory_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_first) = spawn(
        dir.path(),
        &[("AUTOPILOT_ADMIN_TOKEN", "lock-test-token-0123456789")],
    )
    .await
    else {
        return;
    };
    let output = Command::new(components::autopilot_bin().unwrap())
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("AUTOPILOT_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another autopilot process is using the data directory"),
        "{stderr}"
    );
}

#[test]
fn serve_help_documents_each_setting_with_its_variable() {
    let Some(bin) = components::autopilot_bin() else {
        return;
    };
    let help = Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for variable in [
        "AUTOPILOT_BIND",
        "AUTOPILOT_DATA_DIR",
        "AUTOPILOT_DATABASE_URL",
        "AUTOPILOT_ADMIN_TOKEN",
        "AUTOPILOT_CLAUDE_BIN",
        "AUTOPILOT_PUBLIC_URL",
    ] {
        assert!(
            help.contains(variable),
            "`serve --help` must document {variable}:\n{help}"
        );
    }
}

#[test]
fn bad_configuration_is_refused_with_the_variable_to_fix() {
    let Some(bin) = components::autopilot_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(bin)
        .arg("serve")
        .env("AUTOPILOT_DATA_DIR", dir.path())
        .env("AUTOPILOT_DATABASE_URL", "mysql://nope")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AUTOPILOT_DATABASE_URL"), "{stderr}");
}

/// Asking for the Docker executor without an engine is a start-up error that says what to do.
#[test]
fn the_docker_executor_without_an_engine_is_refused_at_start() {
    let Some(bin) = components::autopilot_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(&bin)
        .arg("serve")
        .env("AUTOPILOT_DATA_DIR", dir.path())
        .env("AUTOPILOT_BIND", "127.0.0.1:0")
        .env("AUTOPILOT_EXECUTOR", "docker")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AUTOPILOT_EXECUTOR=docker"), "{stderr}");
    assert!(stderr.contains("/nonexistent/docker.sock"), "{stderr}");
    assert!(stderr.contains("dockerd"), "{stderr}");

    let output = Command::new(&bin)
        .arg("serve")
        .env("AUTOPILOT_DATA_DIR", dir.path())
        .env("AUTOPILOT_EXECUTOR", "podman")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("AUTOPILOT_EXECUTOR") && stderr.contains("`local` or `docker`"),
        "{stderr}"
    );
}

/// The fleet settings that cannot work are refused at start, each naming what to set.
#[test]
fn fleet_settings_that_cannot_work_are_refused_with_what_to_set() {
    let Some(bin) = components::autopilot_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let refused = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(&bin);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AUTOPILOT_DATA_DIR", dir.path())
            .env("AUTOPILOT_BIND", "127.0.0.1:0");
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        assert!(!output.status.success(), "{args:?} {env:?} started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    // NATS without PostgreSQL.
    let stderr = refused(&["serve"], &[("AUTOPILOT_NATS_URL", "nats://127.0.0.1:1")]);
    assert!(
        stderr.contains("AUTOPILOT_DATABASE_URL") && stderr.contains("postgres"),
        "{stderr}"
    );
    // A fleet without a shared sealing key.
    let stderr = refused(
        &["serve"],
        &[
            ("AUTOPILOT_NATS_URL", "nats://127.0.0.1:1"),
            (
                "AUTOPILOT_DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/none",
            ),
        ],
    );
    assert!(stderr.contains("AUTOPILOT_SECRET_KEY"), "{stderr}");
    // A worker without NATS, and a worker given database credentials.
    let stderr = refused(&["worker"], &[]);
    assert!(stderr.contains("AUTOPILOT_NATS_URL"), "{stderr}");
    let stderr = refused(
        &["worker"],
        &[
            ("AUTOPILOT_NATS_URL", "nats://127.0.0.1:1"),
            (
                "AUTOPILOT_DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/none",
            ),
        ],
    );
    assert!(stderr.contains("must not hold"), "{stderr}");
    // A worker whose NATS is not running says what to start.
    let stderr = refused(&["worker"], &[("AUTOPILOT_NATS_URL", "nats://127.0.0.1:1")]);
    assert!(
        stderr.contains("nats://127.0.0.1:1") && stderr.contains("nats-server"),
        "{stderr}"
    );
    // A pool name that cannot be a subject.
    let stderr = refused(
        &["worker"],
        &[
            ("AUTOPILOT_NATS_URL", "nats://127.0.0.1:1"),
            ("AUTOPILOT_WORKER_POOLS", "default,bad pool"),
        ],
    );
    assert!(stderr.contains("AUTOPILOT_WORKER_POOLS"), "{stderr}");
}

#[tokio::test]
async fn every_webhook_delivery_answered_202_survives_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let token = "process-test-token-0123456789";
    let env = [("AUTOPILOT_ADMIN_TOKEN", token)];
    let Some(mut first) = spawn(dir.path(), &env).await else {
        return;
    };
    let (status, created) = api(
        &first,
        token,
        reqwest::Method::POST,
        "/api/v1/webhooks",
        Some(json!({
            "name": "durable",
            "prompt_template": "{{payload.n}}",
            "pool": "nowhere",
            "rate_limit": { "per_second": 100000 },
        })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let url = created["url"].as_str().unwrap().to_owned();

    // Senders keep delivering while the process is killed under them.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for sender in 0..8 {
        let url = url.clone();
        let acknowledged = std::sync::Arc::clone(&acknowledged);
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in 0.. {
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("{sender}-{n}"))
                    .body(json!({ "n": n }).to_string())
                    .send()
                    .await;
                let Ok(response) = sent else { return };
                if response.status() != reqwest::StatusCode::ACCEPTED {
                    return;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                acknowledged
                    .lock()
                    .unwrap()
                    .push(body["run_id"].as_str().unwrap().to_owned());
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.child.kill().unwrap(); // SIGKILL, with requests in flight
    first.child.wait().unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 50,
        "only {} deliveries before the kill",
        acknowledged.len()
    );

    let second = spawn(dir.path(), &env).await.unwrap();
    for run_id in &acknowledged {
        let (status, run) = api(
            &second,
            token,
            reqwest::Method::GET,
            &format!("/api/v1/runs/{run_id}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "acknowledged run {run_id} was lost");
        assert_eq!(run["status"], "queued", "{run:#}");
        assert_eq!(run["trigger"], "webhook");
    }
}

#[tokio::test]
async fn a_lost_run_runs_again_when_its_job_asks_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = "process-test-token-0123456789";
    let env = [("AUTOPILOT_ADMIN_TOKEN", token)];
    let Some(mut first) = spawn(dir.path(), &env).await else {
        return;
    };
    // The first attempt hangs; the one after a restart finds its marker and finishes.
    let (status, job) = api(
        &first,
        token,
        reqwest::Method::POST,
        "/api/v1/jobs",
        Some(json!({
            "name": "resumable",
            "command": "if [ -f started ]; then echo second; else touch started; sleep 120; fi",
            "retry": { "count": 1, "backoff_secs": 1, "lost": true },
        })),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["retry"]["lost"], true);
    let (status, run) = api(
        &first,
        token,
        reqwest::Method::POST,
        "/api/v1/jobs/resumable/trigger",
        None,
    )
    .await;
    assert_eq!(status, 202, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let marker = dir
        .path()
        .join("workspaces")
        .join(format!("job-{}", job["id"].as_str().unwrap()))
        .join("started");
    for _ in 0..200 {
        if marker.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(marker.exists(), "the first attempt started");
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let second = spawn(dir.path(), &env).await.unwrap();
    let mut run = Value::Null;
    for _ in 0..200 {
        run = api(
            &second,
            token,
            reqwest::Method::GET,
            &format!("/api/v1/runs/{run_id}"),
            None,
        )
        .await
        .1;
        if run["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["attempt"], 2);
    let (_, events) = api(
        &second,
        token,
        reqwest::Method::GET,
        &format!("/api/v1/runs/{run_id}/events"),
        None,
    )
    .await;
    let lost = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["data"]["step"] == "lost")
        .expect("a lost step");
    assert_eq!(lost["attempt"], 1);
    assert_eq!(lost["data"]["retry"]["next_attempt"], 2);
}
