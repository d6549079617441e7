//! Credentials in the fleet: a claim reply carries a run's credentials sealed to the claiming
//! worker process, only for a run that is granted a server using them, and nothing on NATS ever
//! holds a credential in plaintext; a run's memory is answered over the bus only for the worker
//! running it.

use std::time::Duration;

use autopilot_proto::{
    Bus, JetStreamBus, JetStreamConfig, RunAttempt, RunId, RunKind, WorkerId, WorkerKey,
    WorkerReply, WorkerRequest,
};
use autopilot_tests::cluster::{Cluster, ClusterOptions};
use base64::Engine;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;

use super::SECRET;

/// A fleet of one control plane and no worker, and the bus a test speaks on as a worker.
async fn control_plane_only() -> Option<(Cluster, JetStreamBus)> {
    let options = ClusterOptions {
        control_planes: 1,
        workers: 0,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options).await?;
    let bus = JetStreamBus::connect(&cluster.nats.url(), JetStreamConfig::default())
        .await
        .expect("the fleet's bus");
    Some((cluster, bus))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_cross_the_bus_sealed_and_only_for_runs_granted_them() {
    let Some((cluster, bus)) = control_plane_only().await else {
        return;
    };
    let api = cluster.api(0).clone();
    // Everything published on NATS from here on, whatever the subject.
    let nats = async_nats::connect(cluster.nats.url())
        .await
        .expect("connect to NATS");
    let mut everything = nats.subscribe(">").await.expect("subscribe to everything");

    let (status, body) = api
        .call(
            Method::PUT,
            "/api/v1/credentials/NOTES_TOKEN",
            Some(json!({ "value": SECRET })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({
                "name": "notes",
                "transport": { "type": "stdio", "command": "notes-server", "env": { "NOTES_TOKEN": "${NOTES_TOKEN}" } },
                "tools": [{ "name": "lookup_note" }],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut runs = Vec::new();
    for (name, servers) in [
        ("granted", json!([{ "server": "notes" }])),
        ("plain", json!([])),
    ] {
        let job = api
            .create_job(json!({ "name": name, "prompt": "Look a note up.", "servers": servers }))
            .await;
        let (status, run) = api
            .call(
                Method::POST,
                &format!("/api/v1/jobs/{}/trigger", job["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{run}");
        runs.push(run["id"].as_str().unwrap().parse::<RunId>().unwrap());
    }

    // Claimed as a worker would, with this process's key.
    let key = WorkerKey::generate();
    let claim = WorkerRequest::Claim {
        worker_id: WorkerId::new("by-hand"),
        runs: runs
            .iter()
            .map(|&run_id| RunAttempt { run_id, attempt: 1 })
            .collect(),
        claim_token: Some("process-1".to_owned()),
        sealing_key: Some(key.public_key()),
    };
    let replies = bus.request(claim).await.unwrap().into_each(2).unwrap();
    let WorkerReply::Claimed {
        spec,
        secrets: Some(sealed),
        cannot_start: None,
    } = &replies[0]
    else {
        panic!(
            "the granted run comes with its credential: {:?}",
            replies[0]
        );
    };
    let opened = key.open(sealed, spec.run_id, spec.attempt).unwrap();
    assert_eq!(opened.get("NOTES_TOKEN").map(String::as_str), Some(SECRET));
    assert!(
        WorkerKey::generate()
            .open(sealed, spec.run_id, spec.attempt)
            .is_err(),
        "another worker process cannot open it"
    );
    let RunKind::Claude(claude) = &spec.kind else {
        panic!("{spec:?}");
    };
    assert_eq!(claude.mcp_servers[0].name, "notes");
    assert!(claude
        .allowed_tools
        .contains(&"mcp__notes__lookup_note".to_owned()));
    match &replies[1] {
        WorkerReply::Claimed { secrets: None, .. } => {}
        other => panic!("a run granted nothing gets no credential: {other:?}"),
    }

    // Nothing that crossed NATS, requests and replies included, held the value or its base64.
    let forms = [
        SECRET.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(SECRET),
    ];
    let mut seen = 0;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), everything.next()).await
    {
        seen += 1;
        let payload = String::from_utf8_lossy(&message.payload);
        for form in &forms {
            assert!(
                !payload.contains(form.as_str()),
                "{} carried the credential: {payload}",
                message.subject
            );
        }
    }
    assert!(seen > 0, "the subscription saw the claim's traffic");
}

/// A run's memory operations cross NATS from its worker, and are answered only for the attempt
/// running on that worker: another worker, or an attempt that is over, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_answered_over_the_bus_only_for_the_worker_running_the_run() {
    let Some((cluster, bus)) = control_plane_only().await else {
        return;
    };
    let api = cluster.api(0).clone();
    let job = api
        .create_job(json!({ "name": "remembers", "prompt": "Remember." }))
        .await;
    let (status, run) = api
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{}/trigger", job["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let run_id: RunId = run["id"].as_str().unwrap().parse().unwrap();
    let worker_id = WorkerId::new("by-hand");
    let claim = WorkerRequest::Claim {
        worker_id: worker_id.clone(),
        runs: vec![RunAttempt { run_id, attempt: 1 }],
        claim_token: None,
        sealing_key: None,
    };
    let replies = bus.request(claim).await.unwrap().into_each(1).unwrap();
    assert!(
        matches!(replies[0], WorkerReply::Claimed { .. }),
        "{replies:?}"
    );

    let memory = |worker: &WorkerId, attempt: u32, op: serde_json::Value| WorkerRequest::Memory {
        run_id,
        attempt,
        worker_id: worker.clone(),
        op,
    };
    let put = json!({ "op": "put", "key": "seen", "value": "the fleet" });
    match bus.request(memory(&worker_id, 1, put)).await.unwrap() {
        WorkerReply::Memory { answer } => {
            assert_eq!(answer["answer"], "stored", "{answer}");
            assert_eq!(answer["created"], true, "{answer}");
        }
        other => panic!("{other:?}"),
    }
    let get = json!({ "op": "get", "key": "seen" });
    match bus
        .request(memory(&worker_id, 1, get.clone()))
        .await
        .unwrap()
    {
        WorkerReply::Memory { answer } => {
            assert_eq!(answer["entry"]["value"], "the fleet", "{answer}")
        }
        other => panic!("{other:?}"),
    }
    for (worker, attempt) in [(WorkerId::new("another"), 1), (worker_id.clone(), 2)] {
        let reply = bus
            .request(memory(&worker, attempt, get.clone()))
            .await
            .unwrap();
        assert!(
            matches!(&reply, WorkerReply::Rejected { reason } if reason.contains("not running on this worker")),
            "{worker:?} attempt {attempt}: {reply:?}"
        );
    }
    let entry = api
        .get(&format!(
            "/api/v1/jobs/{}/memory/seen",
            job["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(entry["run_id"], run["id"], "{entry:#}");
}

/// In the fleet a dynamic server is validated and its tool invoked by a worker process, over
/// JetStream's task subjects: the control plane never starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_worker_validates_and_invokes_a_dynamic_server() {
    let (Some(fixed_servers), Some(python)) = (
        autopilot_tests::components::fixed_servers_bin(),
        autopilot_tests::components::mcp_python(),
    ) else {
        return;
    };
    let options = ClusterOptions {
        control_planes: 1,
        workers: 1,
        worker_env: vec![
            (
                "AUTOPILOT_FIXED_SERVERS_BIN".into(),
                fixed_servers.display().to_string(),
            ),
            ("AUTOPILOT_PYTHON".into(), python.display().to_string()),
        ],
        ..ClusterOptions::default()
    };
    let Some(cluster) = Cluster::start(options).await else {
        return;
    };
    let api = cluster.api(0).clone();
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/dynamic-servers",
            Some(json!({ "name": "dice", "code": super::dynamic::dice(3) })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "valid", "{body}");
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/servers/dice/invoke",
            Some(json!({ "tool": "roll_die" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["result"]["content"][0]["text"], "rolled 3 with token none",
        "{body}"
    );
}
