//! What only the JetStream bus has: a nats-server that restarts under it, redelivery backoff,
//! setup by several processes at once, and bytes on the wire that are not ours.

use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::{
    Bus, BusError, ControlMessage, EventBatch, EventKind, EventOrigin, JetStreamBus,
    JetStreamConfig, NewRunEvent, RunId, WorkerId, WorkerReply, WorkerRequest,
};
use autopilot_tests::components;
use autopilot_tests::nats::NatsServer;
use futures::StreamExt;

use crate::bus::{fast_jetstream_config, next, one_at_a_time, request};

/// The bus's logs, shown for a failing test (or with `--nocapture`).
fn show_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("autopilot_proto=debug")
        .try_init();
}

fn event_batch(run_id: RunId, origin_seq: u64) -> EventBatch {
    EventBatch {
        events: vec![NewRunEvent {
            run_id,
            attempt: 1,
            origin: EventOrigin::Worker,
            origin_seq,
            at: chrono::Utc::now(),
            kind: EventKind::Output,
            data: serde_json::json!({ "n": origin_seq }),
        }],
    }
}

/// Retries `attempt` until it succeeds (the client is reconnecting) or `within` passes.
async fn eventually<T, F, Fut>(within: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BusError>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(err) if tokio::time::Instant::now() < deadline => {
                eprintln!("not yet: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("still failing after {within:?}: {err}"),
        }
    }
}

/// A nats-server killed and started again (same port, same store) under a connected bus: what
/// was stored survives, and publishing, pulling, control messages and requests work again on
/// the streams and subscriptions opened before the restart.
#[tokio::test]
async fn jetstream_bus_survives_a_nats_server_restart() {
    show_logs();
    let Some(mut server) = NatsServer::start().await else {
        return;
    };
    let bus = JetStreamBus::connect(&server.url(), fast_jetstream_config())
        .await
        .expect("connect to the throwaway nats-server");
    let mut runs = one_at_a_time(&bus, "default").await.unwrap();
    let mut gpu_runs = one_at_a_time(&bus, "gpu").await.unwrap();
    let mut events = bus.pull_events().await.unwrap();
    let mut control = bus.subscribe_control().await.unwrap();
    let mut requests = bus.serve_requests().await.unwrap();

    let before = RunId::new();
    assert!(bus.publish_run(request(before, "before")).await.unwrap());
    let delivery = next(&mut runs, Duration::from_secs(2)).await.unwrap();
    assert_eq!(delivery.message.run_id, before);
    delivery.acker.ack().await.unwrap();
    // Stored but not yet delivered when the server dies.
    let stored = RunId::new();
    let mut gpu_request = request(stored, "stored");
    gpu_request.pool = "gpu".into();
    assert!(bus.publish_run(gpu_request).await.unwrap());
    bus.publish_events(event_batch(stored, 1)).await.unwrap();
    // A worker waiting for work when the server dies: its pull request dies with the server.
    assert!(next(&mut runs, Duration::from_millis(200)).await.is_none());

    server.restart().await.expect("restart nats-server");

    let after = RunId::new();
    let published = eventually(Duration::from_secs(20), || {
        bus.publish_run(request(after, "after"))
    })
    .await;
    assert!(published, "a fresh dedup id is not a duplicate");
    // Sooner than the pull request's expiry (10 s, then 5 s of grace): the waiting pull is
    // renewed on reconnect.
    let delivery = next(&mut runs, Duration::from_secs(5))
        .await
        .expect("the waiting pull is sent again after the reconnect");
    assert_eq!(
        (delivery.message.run_id, delivery.delivery_count),
        (after, 1)
    );
    delivery.acker.ack().await.unwrap();
    let delivery = next(&mut gpu_runs, Duration::from_secs(5))
        .await
        .expect("the request stored before the restart survives it");
    assert_eq!(
        (delivery.message.run_id, delivery.delivery_count),
        (stored, 1)
    );
    delivery.acker.ack().await.unwrap();
    // The dedup window survives too.
    assert!(!bus.publish_run(request(after, "after")).await.unwrap());

    eventually(Duration::from_secs(10), || {
        bus.publish_events(event_batch(stored, 2))
    })
    .await;
    for expected in [1, 2] {
        let delivery = next(&mut events, Duration::from_secs(30))
            .await
            .expect("event batches flow again");
        assert_eq!(delivery.message.events[0].origin_seq, expected);
        delivery.acker.ack().await.unwrap();
    }

    // Core subscriptions are renewed by the client on reconnect.
    bus.publish_control(ControlMessage::Cancel { run_id: after })
        .await
        .unwrap();
    assert_eq!(
        next(&mut control, Duration::from_secs(5)).await,
        Some(ControlMessage::Cancel { run_id: after })
    );
    let answering = tokio::spawn(async move {
        let incoming = requests.next().await.unwrap();
        incoming.reply.send(WorkerReply::Ok).unwrap();
    });
    let reply = eventually(Duration::from_secs(5), || {
        bus.request(WorkerRequest::Heartbeat {
            run_id: after,
            attempt: 1,
            worker_id: WorkerId::new("w"),
        })
    })
    .await;
    assert_eq!(reply, WorkerReply::Ok);
    answering.await.unwrap();

    // While the server is down, calls fail with a message that says what to start.
    server.kill();
    match bus.publish_run(request(RunId::new(), "down")).await {
        Err(BusError::Unavailable(message)) => {
            assert!(message.contains("nats-server"), "{message}")
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

/// A server that comes back without its store (no persistent volume) has no streams or
/// consumers: publishing sets the stream up again and the pull streams set up their consumer
/// again. What the lost store held is gone; the database still knows every run.
#[tokio::test]
async fn jetstream_bus_recovers_from_a_server_that_lost_its_store() {
    show_logs();
    let Some(mut server) = NatsServer::start().await else {
        return;
    };
    let bus = JetStreamBus::connect(&server.url(), fast_jetstream_config())
        .await
        .expect("connect to the throwaway nats-server");
    let mut runs = one_at_a_time(&bus, "default").await.unwrap();
    let mut events = bus.pull_events().await.unwrap();

    server
        .restart_without_store()
        .await
        .expect("restart nats-server");

    let run_id = RunId::new();
    let published = eventually(Duration::from_secs(20), || {
        bus.publish_run(request(run_id, "after-loss"))
    })
    .await;
    assert!(published);
    let delivery = next(&mut runs, Duration::from_secs(40))
        .await
        .expect("the pull stream sets its consumer up again");
    assert_eq!(
        (delivery.message.run_id, delivery.delivery_count),
        (run_id, 1)
    );
    delivery.acker.ack().await.unwrap();

    eventually(Duration::from_secs(10), || {
        bus.publish_events(event_batch(run_id, 1))
    })
    .await;
    let delivery = next(&mut events, Duration::from_secs(40))
        .await
        .expect("the event pull sets its consumer up again");
    assert_eq!(delivery.message.events[0].origin_seq, 1);
}

/// With `backoff`, redeliveries of an unacknowledged request follow its delays.
#[tokio::test]
async fn jetstream_backoff_spaces_redeliveries() {
    show_logs();
    let Some(url) = components::nats_url() else {
        return;
    };
    let config = JetStreamConfig {
        backoff: vec![Duration::from_millis(300), Duration::from_millis(1500)],
        max_deliver: 4,
        ..fast_jetstream_config()
    };
    let bus = JetStreamBus::connect(&url, config).await.unwrap();
    let mut runs = one_at_a_time(&bus, "default").await.unwrap();
    let run_id = RunId::new();
    bus.publish_run(request(run_id, "backoff")).await.unwrap();
    let first = next(&mut runs, Duration::from_secs(2)).await.unwrap();
    assert_eq!(first.delivery_count, 1);
    let second = next(&mut runs, Duration::from_secs(2))
        .await
        .expect("redelivered after the first delay");
    assert_eq!(second.delivery_count, 2);
    assert!(
        next(&mut runs, Duration::from_millis(900)).await.is_none(),
        "the second delay is longer than the first"
    );
    let third = next(&mut runs, Duration::from_secs(3))
        .await
        .expect("redelivered after the second delay");
    assert_eq!((third.message.run_id, third.delivery_count), (run_id, 3));
    third.acker.ack().await.unwrap();
}

/// After `max_deliver` unacknowledged deliveries a run request is given up: never delivered
/// again, logged, and deleted from the stream so a consumer created again cannot resurrect it.
#[tokio::test]
async fn jetstream_gives_up_a_run_request_after_max_deliver() {
    show_logs();
    let Some(url) = components::nats_url() else {
        return;
    };
    let config = fast_jetstream_config();
    let runs_stream = format!("{}-runs", config.prefix);
    let bus = JetStreamBus::connect(&url, config).await.unwrap();
    let mut runs = one_at_a_time(&bus, "default").await.unwrap();
    let run_id = RunId::new();
    bus.publish_run(request(run_id, "doomed")).await.unwrap();
    for expected in 1..=3 {
        let delivery = next(&mut runs, Duration::from_secs(2))
            .await
            .expect("delivered again after the ack wait");
        assert_eq!(
            (delivery.message.run_id, delivery.delivery_count),
            (run_id, expected)
        );
    }
    assert!(next(&mut runs, Duration::from_millis(800)).await.is_none());

    let raw = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut stream = raw.get_stream(&runs_stream).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = stream.info().await.unwrap().state.messages;
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} message(s) still in {runs_stream}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two processes starting at once both set up the same streams and consumers.
#[tokio::test]
async fn jetstream_setup_is_idempotent_and_concurrent() {
    let Some(url) = components::nats_url() else {
        return;
    };
    let config = fast_jetstream_config();
    let (a, b) = tokio::join!(
        JetStreamBus::connect(&url, config.clone()),
        JetStreamBus::connect(&url, config.clone())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let (runs_a, runs_b, events_a, events_b) = tokio::join!(
        one_at_a_time(&a, "default"),
        one_at_a_time(&b, "default"),
        a.pull_events(),
        b.pull_events()
    );
    let (mut runs_a, mut runs_b) = (runs_a.unwrap(), runs_b.unwrap());
    let (_events_a, _events_b) = (events_a.unwrap(), events_b.unwrap());
    // A changed setting is applied to the existing consumer on the next start.
    let changed = JetStreamBus::connect(
        &url,
        JetStreamConfig {
            max_deliver: 7,
            ..config.clone()
        },
    )
    .await
    .unwrap();
    let _runs_changed = one_at_a_time(&changed, "default").await.unwrap();

    // And the processes compete for one queue.
    let run_id = RunId::new();
    a.publish_run(request(run_id, "shared")).await.unwrap();
    let delivery = tokio::select! {
        d = next(&mut runs_a, Duration::from_secs(2)) => d,
        d = next(&mut runs_b, Duration::from_secs(2)) => d,
    };
    assert_eq!(
        delivery.expect("delivered to one of them").message.run_id,
        run_id
    );

    // Bad settings are refused before anything is sent, naming the setting.
    for (bad, field) in [
        (
            JetStreamConfig {
                prefix: "has.dot".into(),
                ..config.clone()
            },
            "prefix",
        ),
        (
            JetStreamConfig {
                backoff: vec![config.ack_wait; 3],
                ..config.clone()
            },
            "backoff must have fewer delays",
        ),
        (
            JetStreamConfig {
                backoff: vec![Duration::from_secs(1)],
                ..config.clone()
            },
            "backoff must start with ack_wait",
        ),
    ] {
        match JetStreamBus::connect(&url, bad).await {
            Err(BusError::InvalidConfig(message)) => {
                assert!(message.starts_with(field), "{message}")
            }
            other => panic!("expected invalid config, got {:?}", other.err()),
        }
    }
}

/// No server: the error says what to start.
#[tokio::test]
async fn jetstream_connect_without_a_server_says_what_to_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    match JetStreamBus::connect(&url, fast_jetstream_config()).await {
        Err(BusError::Unavailable(message)) => {
            assert!(message.contains("nats-server"), "{message}");
            assert!(message.contains(&url), "{message}");
        }
        other => panic!("expected unavailable, got {:?}", other.err()),
    }
}

/// A server without JetStream: the error says to start it with `-js`.
#[tokio::test]
async fn jetstream_connect_to_a_server_without_jetstream_says_to_enable_it() {
    let Some(server) = NatsServer::start_without_jetstream().await else {
        return;
    };
    match JetStreamBus::connect(&server.url(), fast_jetstream_config()).await {
        Err(BusError::Unavailable(message)) => {
            assert!(message.contains("-js"), "{message}");
            assert!(message.contains(&server.url()), "{message}");
        }
        other => panic!("expected unavailable, got {:?}", other.err()),
    }
}

/// Bytes that are not ours on the bus's subjects are logged and skipped, never a panic; a bad
/// pool or dedup id is refused before publishing.
#[tokio::test]
async fn jetstream_bus_skips_malformed_messages() {
    show_logs();
    let Some(url) = components::nats_url() else {
        return;
    };
    let config = fast_jetstream_config();
    let prefix = config.prefix.clone();
    let bus = Arc::new(JetStreamBus::connect(&url, config).await.unwrap());
    let raw = async_nats::connect(&url).await.unwrap();
    let raw_jetstream = async_nats::jetstream::new(raw.clone());

    let mut runs = one_at_a_time(&*bus, "default").await.unwrap();
    raw_jetstream
        .publish(format!("{prefix}.runs.default"), "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let run_id = RunId::new();
    bus.publish_run(request(run_id, "valid")).await.unwrap();
    let delivery = next(&mut runs, Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        (delivery.message.run_id, delivery.delivery_count),
        (run_id, 1)
    );
    delivery.acker.ack().await.unwrap();
    assert!(
        next(&mut runs, Duration::from_millis(800)).await.is_none(),
        "the malformed request is terminated, not redelivered"
    );

    let mut control = bus.subscribe_control().await.unwrap();
    raw.publish(format!("{prefix}.control"), "{\"type\":\"reboot\"}".into())
        .await
        .unwrap();
    bus.publish_control(ControlMessage::Cancel { run_id })
        .await
        .unwrap();
    assert_eq!(
        next(&mut control, Duration::from_secs(2)).await,
        Some(ControlMessage::Cancel { run_id })
    );

    let mut requests = bus.serve_requests().await.unwrap();
    let malformed = tokio::spawn({
        let raw = raw.clone();
        let subject = format!("{prefix}.worker.requests");
        async move { raw.request(subject, "[1, 2".into()).await }
    });
    // Serving (polling the stream) answers the malformed request; it never reaches the handler.
    assert!(next(&mut requests, Duration::from_millis(500))
        .await
        .is_none());
    let reply = malformed
        .await
        .unwrap()
        .expect("an error reply, not silence");
    let headers = reply.headers.expect("an error reply carries headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("400")
    );

    let mut bad_pool = request(RunId::new(), "bad-pool");
    bad_pool.pool = "a.b".into();
    assert!(matches!(
        bus.publish_run(bad_pool).await,
        Err(BusError::Malformed(_))
    ));
    assert!(matches!(
        one_at_a_time(&*bus, "gpu.*").await.err(),
        Some(BusError::Malformed(_))
    ));
    assert!(matches!(
        bus.publish_run(request(RunId::new(), "line\r\nbreak"))
            .await,
        Err(BusError::Malformed(_))
    ));
}
