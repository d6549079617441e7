//! The `Bus` conformance suite, run on the in-memory bus and on the JetStream bus (against the
//! nats-server of `TEST_NATS_URL`). Both must pass the same assertions.

use std::sync::Arc;
use std::time::Duration;

use autopilot_proto::{
    Bus, BusError, ControlMessage, Delivery, EventBatch, EventKind, EventOrigin, InMemoryBus,
    InMemoryBusConfig, JetStreamBus, JetStreamConfig, NewRunEvent, Notice, NoticeKind, RunId,
    RunRequest, TaskReply, TaskServer, WorkerId, WorkerReply, WorkerRequest, WorkerTask,
};
use autopilot_tests::components;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::Semaphore;

pub(crate) fn request(run_id: RunId, dedup: &str) -> RunRequest {
    RunRequest {
        run_id,
        attempt: 1,
        pool: "default".into(),
        dedup_id: dedup.into(),
        // Carried beside the body (a message header on NATS); the conformance checks compare
        // whole requests, so a bus that drops it fails them.
        trace_parent: Some(format!(
            "00-{}-00f067aa0ba902b7-01",
            run_id.to_string().replace('-', "")
        )),
    }
}

/// Run requests of `pool` one at a time, the old way: the slot goes back as the delivery is
/// taken, so the next poll may pull again.
pub(crate) async fn one_at_a_time(
    bus: &dyn Bus,
    pool: &str,
) -> Result<BoxStream<'static, Delivery<RunRequest>>, BusError> {
    let runs = bus.pull_runs(pool, Arc::new(Semaphore::new(1)), 1).await?;
    Ok(runs.map(|run| run.delivery).boxed())
}

pub(crate) async fn next<T>(
    stream: &mut futures::stream::BoxStream<'static, T>,
    within: Duration,
) -> Option<T> {
    tokio::time::timeout(within, stream.next())
        .await
        .ok()
        .flatten()
}

/// A bus with short timers so redelivery can be observed quickly.
fn fast_in_memory_bus() -> Arc<dyn Bus> {
    Arc::new(InMemoryBus::new(InMemoryBusConfig {
        ack_wait: Duration::from_millis(300),
        max_deliver: 3,
        dedup_window: Duration::from_secs(5),
        request_timeout: Duration::from_secs(2),
        event_capacity: 16,
    }))
}

/// The JetStream settings matching [`fast_in_memory_bus`], under a prefix of the test's own.
pub(crate) fn fast_jetstream_config() -> JetStreamConfig {
    JetStreamConfig {
        prefix: unique_prefix(),
        ack_wait: Duration::from_millis(300),
        max_deliver: 3,
        backoff: Vec::new(),
        dedup_window: Duration::from_secs(5),
        request_timeout: Duration::from_secs(2),
    }
}

/// A prefix no other test uses, so tests can share one server.
pub(crate) fn unique_prefix() -> String {
    // The tail of a v7 uuid is random; its head is the clock, shared by tests started together.
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("test-{}", &id[20..])
}

async fn conformance(bus: Arc<dyn Bus>) {
    let short = Duration::from_millis(150);
    let mut runs = one_at_a_time(&*bus, "default").await.unwrap();

    // Delivered once, then gone after ack.
    let first = RunId::new();
    assert!(bus.publish_run(request(first, "one")).await.unwrap());
    let delivery = next(&mut runs, Duration::from_secs(1))
        .await
        .expect("delivered");
    assert_eq!(
        (delivery.message.run_id, delivery.delivery_count),
        (first, 1)
    );
    assert_eq!(
        delivery.message,
        request(first, "one"),
        "the request arrives whole, its trace context included"
    );
    delivery.acker.ack().await.unwrap();
    assert!(
        next(&mut runs, Duration::from_millis(600)).await.is_none(),
        "acked messages are never redelivered"
    );

    // The same dedup id within the window publishes nothing.
    assert!(!bus.publish_run(request(first, "one")).await.unwrap());
    assert!(next(&mut runs, short).await.is_none());

    // Other pools do not see it.
    let mut other_pool = one_at_a_time(&*bus, "gpu").await.unwrap();
    assert!(bus.publish_run(request(RunId::new(), "two")).await.unwrap());
    assert!(next(&mut other_pool, short).await.is_none());
    next(&mut runs, Duration::from_secs(1))
        .await
        .expect("default pool gets it")
        .acker
        .ack()
        .await
        .unwrap();

    // nak: delivered again after the delay, with the count raised.
    let third = RunId::new();
    bus.publish_run(request(third, "three")).await.unwrap();
    let delivery = next(&mut runs, Duration::from_secs(1)).await.unwrap();
    delivery
        .acker
        .nak(Duration::from_millis(200))
        .await
        .unwrap();
    assert!(
        next(&mut runs, Duration::from_millis(100)).await.is_none(),
        "not before the nak delay"
    );
    let again = next(&mut runs, Duration::from_secs(1))
        .await
        .expect("redelivered after nak");
    assert_eq!((again.message.run_id, again.delivery_count), (third, 2));

    // in_progress keeps it from being redelivered past the ack wait.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        again.acker.in_progress().await.unwrap();
    }
    assert!(
        next(&mut runs, Duration::from_millis(100)).await.is_none(),
        "kept alive by in_progress"
    );
    // Then silence: redelivered after the ack wait, up to max_deliver in all.
    let redelivered = next(&mut runs, Duration::from_secs(2))
        .await
        .expect("redelivered after the ack wait");
    assert_eq!(redelivered.delivery_count, 3);
    assert!(
        next(&mut runs, Duration::from_millis(800)).await.is_none(),
        "dropped after max_deliver"
    );

    // Competing consumers: every message exactly once across them.
    let mut second_consumer = one_at_a_time(&*bus, "default").await.unwrap();
    let ids: Vec<RunId> = (0..20).map(|_| RunId::new()).collect();
    for (i, id) in ids.iter().enumerate() {
        bus.publish_run(request(*id, &format!("many-{i}")))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    loop {
        let delivery = tokio::select! {
            d = next(&mut runs, short) => d,
            d = next(&mut second_consumer, short) => d,
        };
        let Some(delivery) = delivery else { break };
        seen.push(delivery.message.run_id);
        delivery.acker.ack().await.unwrap();
    }
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected);

    // Into slots: no more deliveries than free slots, so a full consumer leaves the rest to
    // one with room; a slot given back takes the next. (Within the 300 ms ack wait; in a pool
    // of their own, where no earlier consumer has a pull request waiting.)
    let in_slots_pool = |run_id, dedup: &str| RunRequest {
        pool: "slots".into(),
        ..request(run_id, dedup)
    };
    let slots = Arc::new(Semaphore::new(2));
    let mut slotted = bus.pull_runs("slots", Arc::clone(&slots), 8).await.unwrap();
    let mut roomy = one_at_a_time(&*bus, "slots").await.unwrap();
    for i in 0..3 {
        bus.publish_run(in_slots_pool(RunId::new(), &format!("slot-{i}")))
            .await
            .unwrap();
    }
    let a = next(&mut slotted, Duration::from_secs(1))
        .await
        .expect("first into a slot");
    let b = next(&mut slotted, Duration::from_secs(1))
        .await
        .expect("second into a slot");
    assert_eq!(slots.available_permits(), 0, "each delivery holds its slot");
    assert!(
        next(&mut slotted, Duration::from_millis(150))
            .await
            .is_none(),
        "no free slot, no delivery"
    );
    b.delivery.acker.in_progress().await.unwrap();
    let third = next(&mut roomy, Duration::from_secs(1))
        .await
        .expect("the third goes to the consumer with room");
    assert!(![a.delivery.message.run_id, b.delivery.message.run_id].contains(&third.message.run_id));
    third.acker.ack().await.unwrap();
    let fourth = RunId::new();
    bus.publish_run(in_slots_pool(fourth, "slot-3"))
        .await
        .unwrap();
    a.delivery.acker.ack().await.unwrap();
    drop(a);
    let d = next(&mut slotted, Duration::from_secs(1))
        .await
        .expect("the freed slot takes the next");
    assert_eq!(d.delivery.message.run_id, fourth);
    for done in [b, d] {
        done.delivery.acker.ack().await.unwrap();
    }
    assert_eq!(
        slots.available_permits(),
        2,
        "slots come back with their deliveries"
    );
    drop(slotted);

    // Events: in order, and a nak'd batch comes back.
    let mut events = bus.pull_events().await.unwrap();
    let run_id = RunId::new();
    let batch = |n: u64| EventBatch {
        events: vec![NewRunEvent {
            run_id,
            attempt: 1,
            origin: EventOrigin::Worker,
            origin_seq: n,
            at: chrono::Utc::now(),
            kind: EventKind::Output,
            data: serde_json::json!({ "n": n }),
        }],
    };
    for n in 1..=3 {
        bus.publish_events(batch(n)).await.unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..3 {
        let delivery = next(&mut events, Duration::from_secs(1)).await.unwrap();
        order.push(delivery.message.events[0].origin_seq);
        if order.len() == 1 {
            delivery.acker.nak(Duration::from_millis(10)).await.unwrap();
        } else {
            delivery.acker.ack().await.unwrap();
        }
    }
    assert_eq!(order, [1, 2, 3]);
    let redelivered = next(&mut events, Duration::from_secs(1))
        .await
        .expect("nak'd batch redelivered");
    assert_eq!(redelivered.message.events[0].origin_seq, 1);

    // Control messages reach every subscriber.
    let mut control_a = bus.subscribe_control().await.unwrap();
    let mut control_b = bus.subscribe_control().await.unwrap();
    bus.publish_control(ControlMessage::Cancel { run_id })
        .await
        .unwrap();
    assert_eq!(
        next(&mut control_a, Duration::from_secs(1)).await,
        Some(ControlMessage::Cancel { run_id })
    );
    assert_eq!(
        next(&mut control_b, Duration::from_secs(1)).await,
        Some(ControlMessage::Cancel { run_id })
    );

    // Notices reach every subscriber, the sender's own included.
    let mut notices_a = bus.subscribe_notices().await.unwrap();
    let mut notices_b = bus.subscribe_notices().await.unwrap();
    for what in [
        NoticeKind::RunsUpdated {
            run_ids: vec![run_id, RunId::new()],
        },
        NoticeKind::JobsChanged,
    ] {
        let notice = Notice {
            origin: "control-plane-a".into(),
            what,
        };
        bus.publish_notice(notice.clone()).await.unwrap();
        for notices in [&mut notices_a, &mut notices_b] {
            assert_eq!(
                next(notices, Duration::from_secs(1)).await,
                Some(notice.clone())
            );
        }
    }

    // Request / reply.
    let mut requests = bus.serve_requests().await.unwrap();
    let server = tokio::spawn(async move {
        let incoming = requests.next().await.unwrap();
        let reply = match incoming.request {
            WorkerRequest::Heartbeat { .. } => WorkerReply::Cancel,
            _ => WorkerReply::Ok,
        };
        incoming.reply.send(reply).unwrap();
        requests
    });
    let reply = bus
        .request(WorkerRequest::Heartbeat {
            run_id,
            attempt: 1,
            worker_id: WorkerId::new("w"),
        })
        .await
        .unwrap();
    assert_eq!(reply, WorkerReply::Cancel);
    let mut requests = server.await.unwrap();
    // A control plane that drops the request without answering (a store failure) is an error
    // for the worker at once, not a wait until its timeout.
    let server = tokio::spawn(async move {
        let incoming = requests.next().await.unwrap();
        drop(incoming.reply);
        requests
    });
    let dropped = bus
        .request(WorkerRequest::Heartbeat {
            run_id,
            attempt: 1,
            worker_id: WorkerId::new("w"),
        })
        .await;
    assert!(
        matches!(dropped, Err(BusError::Unavailable(_))),
        "{dropped:?}"
    );
    drop(server.await.unwrap());
    // Nobody answering is a timeout, not a hang.
    let unanswered = bus
        .request(WorkerRequest::Heartbeat {
            run_id,
            attempt: 1,
            worker_id: WorkerId::new("w"),
        })
        .await;
    assert!(unanswered.is_err());

    tasks(bus.as_ref()).await;
}

/// Tasks: to one worker of the pool named, refused at once for a pool nobody serves, an error
/// when the worker drops one.
async fn tasks(bus: &dyn Bus) {
    let list = |command: &str| WorkerTask::ListTools {
        server: TaskServer::Command {
            command: command.into(),
            args: vec![],
        },
        env: Default::default(),
    };
    let wait = Duration::from_secs(5);
    let nobody = bus.request_task("tasks-nobody", list("x"), wait).await;
    assert!(
        matches!(&nobody, Err(BusError::Unavailable(reason)) if reason.contains("worker")),
        "{nobody:?}"
    );
    let mut served = bus.serve_tasks("tasks-a").await.unwrap();
    let worker = tokio::spawn(async move {
        for _ in 0..2 {
            let incoming = served.next().await.unwrap();
            let WorkerTask::ListTools {
                server: TaskServer::Command { command, .. },
                ..
            } = incoming.request
            else {
                panic!("a listing by command was sent");
            };
            if command == "drop" {
                drop(incoming.reply);
                continue;
            }
            let reply = TaskReply::Tools {
                worker_id: WorkerId::new("w-a"),
                tools: vec![serde_json::json!({ "name": command })],
            };
            incoming.reply.send(reply).unwrap();
        }
        served
    });
    let reply = bus.request_task("tasks-a", list("lookup"), wait).await;
    assert_eq!(
        reply.unwrap(),
        TaskReply::Tools {
            worker_id: WorkerId::new("w-a"),
            tools: vec![serde_json::json!({ "name": "lookup" })],
        }
    );
    let dropped = bus.request_task("tasks-a", list("drop"), wait).await;
    assert!(
        matches!(dropped, Err(BusError::Unavailable(_))),
        "{dropped:?}"
    );
    let other = bus.request_task("tasks-b", list("x"), wait).await;
    assert!(
        other.is_err(),
        "another pool's tasks do not reach it: {other:?}"
    );
    drop(worker.await.unwrap());
}

#[tokio::test]
async fn bus_conformance_in_memory() {
    conformance(fast_in_memory_bus()).await;
}

#[tokio::test]
async fn bus_conformance_jetstream() {
    let Some(url) = components::nats_url() else {
        return;
    };
    let bus = JetStreamBus::connect(&url, fast_jetstream_config())
        .await
        .expect("connect to TEST_NATS_URL");
    conformance(Arc::new(bus)).await;
}
