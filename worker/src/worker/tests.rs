//! The run loop against a scripted control plane on the in-memory bus.

use std::time::Duration;

use autopilot_proto::{
    Bus, InMemoryBus, InMemoryBusConfig, IncomingRequest, RunKind, RunRequest, RunSpec, Sandbox,
};
use futures::StreamExt;

use super::*;
use crate::local::LocalExecutor;

fn config(root: &std::path::Path) -> WorkerConfig {
    WorkerConfig {
        worker_id: WorkerId::new("w1"),
        pools: vec!["default".into()],
        concurrency: 2,
        workspaces_root: root.join("workspaces"),
        command_env: CommandEnv {
            claude_bin: "claude".into(),
            fixed_servers_bin: "autopilot-servers".into(),
            python: "python3".into(),
            home: root.join("home"),
            base: vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
            model_api: Vec::new(),
        },
        kill_grace: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(1),
        heartbeat_interval: Duration::from_millis(100),
        event_batch_max: 64,
        event_linger: Duration::from_millis(10),
    }
}

/// The first claim is taken but its reply never comes back (the control plane's reply was lost
/// on the way), and the run is delivered a second time while it executes. The worker repeats
/// the claim under the same token, ignores the duplicate delivery (the control plane would
/// answer its claim too: same process), and executes the run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_reply_was_lost_is_repeated_and_the_run_executes_once() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("executions");
    let bus = Arc::new(InMemoryBus::new(InMemoryBusConfig::default()));
    let run_id = RunId::new();
    let request = |dedup_id: &str| RunRequest {
        run_id,
        attempt: 1,
        pool: "default".into(),
        dedup_id: dedup_id.into(),
        trace_parent: None,
    };
    let spec = RunSpec {
        run_id,
        attempt: 1,
        job_id: None,
        workspace: "job".into(),
        kind: RunKind::Shell {
            command: format!("echo once >> '{}'; sleep 0.5", count.display()),
            stdin: None,
        },
        timeout_secs: 30,
        sandbox: Sandbox::default(),
        image: None,
        outcome_files: Vec::new(),
    };
    let mut requests = bus.serve_requests().await.unwrap();
    bus.publish_run(request("first")).await.unwrap();
    let worker = Worker::new(
        config(dir.path()),
        bus.clone(),
        Arc::new(LocalExecutor::default()),
    );
    let cancel = CancellationToken::new();
    let running = tokio::spawn(worker.run(cancel.clone()));

    let mut tokens = Vec::new();
    let mut ended = Vec::new();
    while ended.is_empty() {
        let IncomingRequest {
            request: asked,
            reply,
        } = tokio::time::timeout(Duration::from_secs(20), requests.next())
            .await
            .expect("the worker keeps talking to the control plane")
            .expect("requests go on");
        let answer = match asked {
            WorkerRequest::Claim {
                runs, claim_token, ..
            } => {
                assert_eq!(runs, vec![RunAttempt { run_id, attempt: 1 }]);
                tokens.push(claim_token);
                if tokens.len() == 1 {
                    drop(reply);
                    continue;
                }
                // Delivered again while the worker holds the run.
                bus.publish_run(request("second")).await.unwrap();
                WorkerReply::Each {
                    replies: vec![WorkerReply::Claimed {
                        spec: Box::new(spec.clone()),
                        secrets: None,
                        cannot_start: None,
                    }],
                }
            }
            WorkerRequest::Complete { ended: ends, .. } => {
                let replies = vec![WorkerReply::Ok; ends.len()];
                ended = ends;
                WorkerReply::Each { replies }
            }
            _ => WorkerReply::Ok,
        };
        let _ = reply.send(answer);
    }
    // The worker's last announcement at its stop is answered too.
    tokio::spawn(async move {
        while let Some(IncomingRequest { reply, .. }) = requests.next().await {
            let _ = reply.send(WorkerReply::Ok);
        }
    });
    cancel.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(tokens.len(), 2, "claimed once, then once again: {tokens:?}");
    assert!(tokens[0].is_some(), "claims carry the process's token");
    assert_eq!(tokens[0], tokens[1], "the repeat carries the same token");
    assert_eq!(
        (ended.len(), ended[0].outcome.exit_code),
        (1, Some(0)),
        "{ended:?}"
    );
    let executions = std::fs::read_to_string(&count).unwrap();
    assert_eq!(
        executions.lines().count(),
        1,
        "executed once: {executions:?}"
    );
}
