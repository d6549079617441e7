//! The chart's dashboards and alert rules against a real Prometheus: a small fleet (one control
//! plane, one worker serving `/metrics`) runs a workload that touches every metric (shell runs
//! that succeed and fail, a Claude run with tokens and cost, scheduled fires on time and missed,
//! webhook deliveries accepted and refused, a run stuck in a pool nobody serves, a NATS outage),
//! Debian's `prometheus` scrapes both every second with the chart's rules loaded, and every
//! Prometheus query of every dashboard in `charts/autopilot/files/dashboards/` and every alert
//! expression of `charts/autopilot/files/alerts.yaml` is evaluated through the HTTP API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autopilot_tests::cluster::{claude_worker_env, Cluster, ClusterOptions};
use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply, Usage};
use reqwest::Method;
use serde_json::{json, Value};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/autopilot");
const WAIT: Duration = Duration::from_secs(60);

/// Debian's `prometheus` (2.42): `AUTOPILOT_TEST_PROMETHEUS`, else `prometheus` on the PATH.
fn prometheus_bin() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("AUTOPILOT_TEST_PROMETHEUS").map(PathBuf::from) {
        return explicit.is_file().then_some(explicit).or_else(|| {
            components::missing("Prometheus", "AUTOPILOT_TEST_PROMETHEUS is not a file")
        });
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("prometheus"))
        .find(|path| path.is_file());
    on_path.or_else(|| {
        components::missing(
            "Prometheus",
            "`apt-get install prometheus` (Debian's, with promtool), or set \
             AUTOPILOT_TEST_PROMETHEUS to a prometheus binary",
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A Prometheus on loopback with a temporary TSDB, scraping `targets` every second with
/// `honor_labels` (as the chart's ServiceMonitors do) and evaluating the rules in `rules`.
struct Prometheus {
    base_url: String,
    client: reqwest::Client,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(bin: &Path, targets: &[(&str, String)], rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("prometheus dir");
        std::fs::write(dir.path().join("rules.yaml"), rules).expect("rules file");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yaml\nscrape_configs:\n",
        );
        for (job, address) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    honor_labels: true\n    static_configs:\n      - targets: [\"{address}\"]\n"
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config file");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(bin)
            .current_dir(dir.path())
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut prometheus = Prometheus {
            base_url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = prometheus
                .client
                .get(format!("{}/-/ready", prometheus.base_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return prometheus;
            }
            let exited = prometheus.child.try_wait().ok().flatten().is_some();
            assert!(
                !exited && Instant::now() < deadline,
                "prometheus did not start (the chart's rules may not load); its log:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.base_url))
            .query(query)
            .send()
            .await
            .expect("prometheus answers");
        response.json().await.expect("prometheus JSON")
    }

    /// The series an instant query returns, or Prometheus's error.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let body = self.api("/api/v1/query", &[("query", promql)]).await;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every Prometheus query of the shipped dashboards, with its dashboard and panel, the Grafana
/// variables replaced: intervals by short windows, selections by "everything" (`.*`). A
/// `label_values(metric, label)` variable becomes `count by (label) (metric)`.
fn dashboard_queries() -> Vec<(String, String)> {
    let dir = Path::new(CHART).join("files/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the chart's dashboards")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "dashboards in {}: {files:?}",
        dir.display()
    );
    let mut queries = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let board: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|err| panic!("{name} is not JSON: {err}"));
        for variable in board["templating"]["list"].as_array().into_iter().flatten() {
            let Some(query) = variable["query"]["query"].as_str() else {
                continue;
            };
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{name}: variable query {query}"));
            let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
            queries.push((
                format!("{name} variable {}", variable["name"]),
                format!("count by ({}) ({})", label.trim(), metric.trim()),
            ));
        }
        let panels = board["panels"].as_array().cloned().unwrap_or_default();
        let nested = panels
            .iter()
            .flat_map(|panel| panel["panels"].as_array().cloned().unwrap_or_default());
        for panel in panels.iter().cloned().chain(nested) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    queries.push((
                        format!("{name} panel {:?}", panel["title"].as_str().unwrap_or("")),
                        grafana_variables_replaced(expr),
                    ));
                }
            }
        }
    }
    queries
}

fn grafana_variables_replaced(expr: &str) -> String {
    let mut text = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "5m");
    for variable in ["job", "pool", "model", "webhook"] {
        text = text
            .replace(&format!("${{{variable}:regex}}"), ".*")
            .replace(&format!("${variable}"), ".*");
    }
    assert!(!text.contains('$'), "a Grafana variable left in {text}");
    text
}

/// The chart's alert rules as Prometheus reads them: `files/alerts.yaml` with Helm's parts done
/// by hand (thresholds from `values.yaml`'s `alerts`, backquoted Prometheus templates unwrapped),
/// and each rule's name and expression.
fn alert_rules() -> (String, Vec<(String, String)>) {
    let values = std::fs::read_to_string(Path::new(CHART).join("values.yaml")).unwrap();
    let thresholds: Vec<(String, String)> = values
        .lines()
        .skip_while(|line| *line != "alerts:")
        .skip(1)
        .take_while(|line| line.is_empty() || line.starts_with(' '))
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.trim().split_once(": "))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    assert!(!thresholds.is_empty(), "no `alerts:` in values.yaml");
    let mut text = std::fs::read_to_string(Path::new(CHART).join("files/alerts.yaml"))
        .unwrap()
        .replace("{{`", "")
        .replace("`}}", "");
    for (key, value) in &thresholds {
        text = text.replace(&format!("{{{{ .Values.alerts.{key} }}}}"), value);
    }
    assert!(
        !text.contains("{{ .Values"),
        "a Helm value in alerts.yaml that is not in values.yaml's alerts:\n{text}"
    );
    let mut rules = Vec::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(alert) = line.strip_prefix("- alert: ") {
            name = Some(alert.to_owned());
        } else if let Some(expr) = line.strip_prefix("expr: ") {
            assert!(
                !matches!(expr, "|" | "|-" | ">" | ">-"),
                "keep each alert expression on one line"
            );
            rules.push((name.take().expect("expr after alert"), expr.to_owned()));
        }
    }
    assert!(rules.len() >= 8, "alert rules: {rules:?}");
    (text, rules)
}

/// What an alert expression is made of, each to be evaluated on its own: the operands of a
/// top-level `and` / `or` / `unless`, each without its final comparison with a number, and
/// `absent(x)` as `x`. Conditions that are not met here (no leader lost, spend under the
/// threshold) still show that each part reads series.
fn parts_of(expr: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    let bytes = expr.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'"' => quoted = !quoted,
            b'(' | b'{' | b'[' if !quoted => depth += 1,
            b')' | b'}' | b']' if !quoted => depth -= 1,
            b' ' if !quoted && depth == 0 => {
                let rest = &expr[index..];
                if let Some(op) = [" and ", " or ", " unless "]
                    .into_iter()
                    .find(|op| rest.starts_with(op))
                {
                    parts.push(expr[start..index].to_owned());
                    start = index + op.len();
                    index = start;
                    continue;
                }
            }
            _ => {}
        }
        index += 1;
    }
    parts.push(expr[start..].to_owned());
    parts
        .into_iter()
        .map(|part| {
            let part = part.trim();
            let part = match part.rsplit_once(' ') {
                Some((left, number)) if number.parse::<f64>().is_ok() => {
                    let left = left.trim_end().trim_end_matches(" bool");
                    left.trim_end_matches(['=', '!', '>', '<']).trim_end()
                }
                _ => part,
            };
            match part.strip_prefix("absent(") {
                Some(inner) => inner.strip_suffix(')').expect("absent(…)").to_owned(),
                None => part.to_owned(),
            }
        })
        .collect()
}

#[test]
fn alert_expressions_split_into_their_parts() {
    assert_eq!(
        parts_of("sum by (pool) (x{a=\"b and c\"}) > 0.9 and max(y) > 0"),
        ["sum by (pool) (x{a=\"b and c\"})", "max(y)"]
    );
    assert_eq!(
        parts_of("absent(autopilot_scheduler_leader)"),
        ["autopilot_scheduler_leader"]
    );
    assert_eq!(parts_of("sum(a) / sum(b) >= 25"), ["sum(a) / sum(b)"]);
    assert_eq!(parts_of("sum(z) == 0"), ["sum(z)"]);
}

/// Runs the workload that makes every exported metric appear, in this order: the NATS outage
/// last, so the runs before it are not held up by it.
async fn run_workload(cluster: &mut Cluster, fake: &FakeAnthropic) {
    let api = cluster.api(0).clone();
    // A run whose worker is killed: `lost` once its heartbeat has been silent long enough. The
    // worker comes back under another id, so nothing heartbeats for the run.
    let sleeper = api
        .create_job(json!({ "name": "sleeper", "command": "sleep 20" }))
        .await;
    let doomed = api.trigger(sleeper["id"].as_str().unwrap()).await;
    let doomed = doomed["id"].as_str().unwrap().to_owned();
    api.wait_for_run(&doomed, WAIT, |run| run["status"] == "running")
        .await;
    cluster.workers[0].kill();
    cluster
        .options
        .worker_env
        .push(("AUTOPILOT_WORKER_ID".into(), "worker0-again".into()));
    cluster.start_worker(0);
    let mut runs = Vec::new();
    for (name, command) in [("ok", "true"), ("bad", "false")] {
        let job = api
            .create_job(json!({ "name": name, "command": command, "overlap_policy": "allow" }))
            .await;
        runs.push(api.trigger(job["id"].as_str().unwrap()).await);
    }
    // A Claude run on the worker: tokens and cost.
    let usage = Usage {
        input_tokens: 1200,
        output_tokens: 40,
        cache_read_input_tokens: 300,
        cache_creation_input_tokens: 100,
    };
    fake.push(Reply::text("Summarised.").usage(usage));
    let writer = api
        .create_job(json!({ "name": "writer", "prompt": "summarise" }))
        .await;
    runs.push(api.trigger(writer["id"].as_str().unwrap()).await);
    // A webhook: one delivery accepted, one to an unknown URL refused (404), one too big (413).
    let hook = api
        .create_webhook(json!({ "name": "hook", "job": "ok", "signature": { "scheme": "none" }, "max_body_bytes": 64 }))
        .await;
    let url = hook["url"].as_str().unwrap();
    let json_body = [("content-type", "application/json")];
    runs.push(json!({ "id": api.deliver_json(url, &json!({ "n": 1 })).await }));
    let unknown = format!("{}/hooks/wh_nothing-here", api.base_url);
    let (status, _, _) = api.deliver(&unknown, &json_body, "{}").await;
    assert_eq!(status.as_u16(), 404);
    let (status, _, _) = api.deliver(url, &json_body, vec![b' '; 1000]).await;
    assert_eq!(status.as_u16(), 413);
    for run in &runs {
        let ended = api
            .wait_until_finished(run["id"].as_str().unwrap(), WAIT)
            .await;
        assert!(
            ["succeeded", "failed"].contains(&ended["status"].as_str().unwrap()),
            "{ended}"
        );
    }
    // Fires every second: with the control plane's misfire grace at 0 every fire is late, so
    // `run_once` gives catch-up runs (fire lateness) and `skip` counts missed fires.
    let mut scheduled = Vec::new();
    for (name, policy) in [("tick", "run_once"), ("skipper", "skip")] {
        let job = api
            .create_job(json!({ "name": name, "command": "true", "schedule": "* * * * * *", "misfire_policy": policy }))
            .await;
        scheduled.push(job["id"].as_str().unwrap().to_owned());
    }
    api.wait_for_runs(&scheduled[0], 2, WAIT).await;
    // A run nobody serves: the queue by pool.
    let stuck = api
        .create_job(json!({ "name": "stuck", "command": "true", "pool": "nowhere" }))
        .await;
    api.trigger(stuck["id"].as_str().unwrap()).await;
    // The bus away for longer than the lease TTL (so a renewal times out): run requests
    // refused, background tasks failing.
    let ok_job = api.get("/api/v1/jobs/ok").await;
    cluster.nats.kill();
    for _ in 0..6 {
        let _ = api
            .call(
                Method::POST,
                &format!("/api/v1/jobs/{}/trigger", ok_job["id"].as_str().unwrap()),
                None,
            )
            .await;
        tokio::time::sleep(Duration::from_millis(750)).await;
    }
    cluster.nats.restart().await.expect("nats-server back");
    cluster.wait_for_leader(WAIT).await;
    for job in &scheduled {
        api.patch_job(job, json!({ "enabled": false })).await;
    }
    let lost = api.wait_until_finished(&doomed, WAIT).await;
    assert_eq!(lost["status"], "lost", "{lost}");
}

/// Polls each query until it returns a series or `timeout` passes; the ones that never did,
/// with what Prometheus last said.
async fn without_series(
    prometheus: &Prometheus,
    queries: &[(String, String)],
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&(String, String)> = queries.iter().collect();
    loop {
        let mut still = Vec::new();
        let mut last = Vec::new();
        for query in pending {
            match prometheus.query(&query.1).await {
                Ok(series) if !series.is_empty() => {}
                outcome => {
                    still.push(query);
                    last.push(format!("{}: {} → {:?}", query.0, query.1, outcome));
                }
            }
        }
        if still.is_empty() || Instant::now() > deadline {
            return last;
        }
        pending = still;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_rule_reads_series_a_real_prometheus_scraped() {
    let Some(prometheus_bin) = prometheus_bin() else {
        return;
    };
    let Some(claude) = components::claude_bin() else {
        return;
    };
    let (rules_file, rules) = alert_rules();
    let dashboards = dashboard_queries();
    let fake = FakeAnthropic::start().await.expect("fake API");
    let metrics_port = free_port();
    let options = ClusterOptions {
        control_planes: 1,
        workers: 1,
        lease_ttl_secs: 3,
        lost_after_secs: 15,
        control_plane_env: vec![("AUTOPILOT_MISFIRE_GRACE_SECS".into(), "0".into())],
        worker_env: [(
            "AUTOPILOT_METRICS_BIND".into(),
            format!("127.0.0.1:{metrics_port}"),
        )]
        .into_iter()
        .chain(claude_worker_env(&claude, &fake.base_url()))
        .collect(),
        ..ClusterOptions::default()
    };
    let Some(mut cluster) = Cluster::start(options).await else {
        return;
    };
    let control_plane = cluster
        .api(0)
        .base_url
        .trim_start_matches("http://")
        .to_owned();
    let targets = [
        ("autopilot-control-plane", control_plane),
        ("autopilot-worker", format!("127.0.0.1:{metrics_port}")),
    ];
    let prometheus = Prometheus::start(&prometheus_bin, &targets, &rules_file).await;

    run_workload(&mut cluster, &fake).await;

    // Both targets are up, scraped by the real Prometheus.
    let up = without_series(
        &prometheus,
        &[("both targets up".into(), "count(up == 1) == 2".into())],
        WAIT,
    )
    .await;
    assert!(up.is_empty(), "{up:?}\n{}", prometheus.log());

    let missing = without_series(&prometheus, &dashboards, WAIT).await;
    assert!(
        missing.is_empty(),
        "{} of {} dashboard queries return no series:\n{}\n{}",
        missing.len(),
        dashboards.len(),
        missing.join("\n"),
        cluster.logs()
    );

    // Each alert: the whole expression is valid PromQL, and each of its parts reads series.
    let mut alert_queries = Vec::new();
    for (name, expr) in &rules {
        if let Err(err) = prometheus.query(expr).await {
            panic!("alert {name}: {expr} is refused: {err}");
        }
        for part in parts_of(expr) {
            alert_queries.push((format!("alert {name}"), part));
        }
    }
    let missing = without_series(&prometheus, &alert_queries, WAIT).await;
    assert!(
        missing.is_empty(),
        "alert parts without series:\n{}",
        missing.join("\n")
    );

    // Prometheus loaded every rule of the chart and evaluates each without error.
    let deadline = Instant::now() + WAIT;
    loop {
        let body = prometheus.api("/api/v1/rules", &[]).await;
        let loaded: Vec<&Value> = body["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().into_iter().flatten())
            .collect();
        let healthy = loaded.iter().filter(|rule| rule["health"] == "ok").count();
        if loaded.len() == rules.len() && healthy == rules.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{healthy} of {} rules healthy ({} loaded): {loaded:#?}",
            rules.len(),
            loaded.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
