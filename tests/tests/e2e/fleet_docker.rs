//! The fleet with the Docker executor: separate `autopilot worker` processes running each run in
//! a container, a job's workspace following it from one worker to the next through NATS, and a
//! worker killed mid-run leaving no container once it is back.

use std::time::{Duration, Instant};

use autopilot_tests::cluster::{Cluster, ClusterOptions};
use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply};
use autopilot_tests::harness::{is_terminal, steps};
use serde_json::json;

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A fleet of one control plane and `workers` Docker workers; `None` (a failure in CI) without
/// the engine, the image, NATS or PostgreSQL.
async fn docker_fleet(workers: usize, fake: &FakeAnthropic) -> Option<(Cluster, bollard::Docker)> {
    components::docker_executor("fleet-docker-probe").await?;
    let docker = components::docker_engine().await?;
    let options = ClusterOptions {
        control_planes: 1,
        workers,
        lost_after_secs: 15,
        worker_env: vec![
            ("AUTOPILOT_EXECUTOR".into(), "docker".into()),
            ("ANTHROPIC_BASE_URL".into(), fake.base_url()),
            (
                "ANTHROPIC_API_KEY".into(),
                "sk-ant-test-not-a-real-key".into(),
            ),
            ("CLAUDE_CODE_MAX_RETRIES".into(), "0".into()),
        ],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options).await?;
    Some((cluster, docker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_s_workspace_follows_it_to_a_container_on_another_worker() {
    let fake = FakeAnthropic::start().await.expect("fake API");
    let Some((mut cluster, _docker)) = docker_fleet(2, &fake).await else {
        return;
    };
    // Only worker0 serves the first run.
    assert!(cluster.workers[1].terminate(Duration::from_secs(20)).await);
    let api = cluster.api(0).clone();
    let job = api
        .create_job(json!({
            "name": "travelling notes",
            "prompt": "Keep notes in the workspace.",
            "allowed_tools": ["Bash", "Write"],
        }))
        .await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    fake.push_all([
        Reply::tool_use(
            "Write",
            json!({ "file_path": "/workspace/notes/day1.md", "content": "written on the first worker\n" }),
        ),
        Reply::text("Noted."),
    ]);
    let first = api.trigger(&job_id).await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    let first = api.wait_until_finished(&first_id, RUN_TIMEOUT).await;
    let first_events = api.events(&first_id).await;
    assert_eq!(
        first["status"],
        "succeeded",
        "{first}\n{first_events:#?}\n{}",
        cluster.logs()
    );
    assert_eq!(first["worker_id"], "worker0", "{first}");
    assert!(
        steps(&first_events).contains(&"workspace_saved".to_owned()),
        "{:?}",
        steps(&first_events)
    );

    // worker0 goes away; the next run lands on worker1, whose disk never saw the job.
    assert!(cluster.workers[0].terminate(Duration::from_secs(20)).await);
    cluster.start_worker(1);
    fake.push_all([
        Reply::tool_use(
            "Bash",
            json!({ "command": "cat /workspace/notes/day1.md && echo more >> /workspace/notes/day1.md", "description": "read the notes" }),
        ),
        Reply::text("Read them."),
    ]);
    let second = api.trigger(&job_id).await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    let second = api.wait_until_finished(&second_id, RUN_TIMEOUT).await;
    let second_events = api.events(&second_id).await;
    assert_eq!(
        second["status"],
        "succeeded",
        "{second}\n{}",
        cluster.logs()
    );
    assert_eq!(second["worker_id"], "worker1", "{second}");
    assert!(
        steps(&second_events).contains(&"workspace_restored".to_owned()),
        "{:?}",
        steps(&second_events)
    );
    let read = fake
        .requests()
        .iter()
        .flat_map(|r| r.tool_results())
        .map(|r| r.to_string())
        .find(|r| r.contains("first worker"));
    assert!(
        read.is_some(),
        "the second run did not see the first run's file"
    );
    assert!(
        !cluster
            .dir()
            .join("worker1/workspaces")
            .join(format!("job-{job_id}"))
            .exists(),
        "worker1 works in per-attempt directories, not a shared job directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_leaves_no_container_once_it_restarts() {
    let fake = FakeAnthropic::start().await.expect("fake API");
    let Some((mut cluster, docker)) = docker_fleet(1, &fake).await else {
        return;
    };
    let api = cluster.api(0).clone();
    let job = api
        .create_job(json!({ "name": "long sleeper", "command": "echo up; sleep 300" }))
        .await;
    let run = api.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    api.wait_for_run(&run_id, Duration::from_secs(30), |run| {
        run["status"] == "running"
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while components::containers_of_run(&docker, &run_id).await == 0 {
        assert!(Instant::now() < deadline, "no container for the run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SIGKILL gives the worker no chance to remove the container. (Any Docker worker starting
    // on this host meanwhile may sweep it: its worker process is gone.)
    cluster.workers[0].kill();
    cluster.start_worker(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while components::containers_of_run(&docker, &run_id).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the restarted worker did not remove the container\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = api
        .wait_for_run(&run_id, Duration::from_secs(60), is_terminal)
        .await;
    assert_eq!(run["status"], "lost", "{run}");
}
