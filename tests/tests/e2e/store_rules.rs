//! The rules' part of the `Store` (skipped fires, chained fires made once, ended runs, spend),
//! on SQLite and on a real PostgreSQL.

use std::sync::Arc;

use autopilot_control_plane::domain::Run;
use autopilot_control_plane::store::{connect, Store};
use autopilot_proto::{JobId, RunStatus, Trigger};
use autopilot_tests::components;
use chrono::{Duration, TimeZone, Utc};

fn millis(time: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(time.timestamp_millis()).unwrap()
}

/// A shell run made by a chain, now.
fn run() -> Run {
    crate::store_dashboard::shell_run(Trigger::Chain, 0, None, "")
}

async fn conformance(store: Arc<dyn Store>) {
    // Skipped fires: repeats of one reason from one trigger count on one record; a new reason
    // (or trigger) starts another; newest first.
    let job = JobId::new();
    let at = millis(Utc::now());
    for second in 0..3 {
        store
            .record_skipped_fire(
                job,
                Trigger::Schedule,
                "outside the window",
                at + Duration::seconds(second),
            )
            .await
            .unwrap();
    }
    store
        .record_skipped_fire(
            job,
            Trigger::Chain,
            "over its daily budget",
            at + Duration::seconds(3),
        )
        .await
        .unwrap();
    store
        .record_skipped_fire(
            job,
            Trigger::Chain,
            "over its daily budget",
            at + Duration::seconds(4),
        )
        .await
        .unwrap();
    let skips = store.skipped_fires(job, 10).await.unwrap();
    assert_eq!(skips.len(), 2, "{skips:#?}");
    assert_eq!((skips[0].trigger, skips[0].fires), (Trigger::Chain, 2));
    assert_eq!(skips[0].first_at, at + Duration::seconds(3));
    assert_eq!(skips[0].last_at, at + Duration::seconds(4));
    assert_eq!(
        (skips[1].reason.as_str(), skips[1].fires),
        ("outside the window", 3)
    );
    assert_eq!(skips[1].last_at, at + Duration::seconds(2));
    assert_eq!(store.skipped_fires(job, 1).await.unwrap().len(), 1);
    assert!(store
        .skipped_fires(JobId::new(), 10)
        .await
        .unwrap()
        .is_empty());

    // A chained fire is made once per (job, parent runs), with its run and first events.
    let child_job = crate::store::job("child");
    store.insert_job(&child_job).await.unwrap();
    let child = child_job.id;
    let mut first = run();
    first.job_id = Some(child);
    let event = first.control_event(serde_json::json!({ "step": "queued" }));
    assert!(store
        .record_keyed_fire(child, "a,b", Some((&first, std::slice::from_ref(&event))))
        .await
        .unwrap());
    let stored = store
        .get_run(first.id)
        .await
        .unwrap()
        .expect("the chained run");
    assert_eq!(stored.trigger, Trigger::Chain);
    assert_eq!(store.list_events(first.id, 0, 10).await.unwrap().len(), 1);
    let second = run();
    assert!(!store
        .record_keyed_fire(child, "a,b", Some((&second, &[])))
        .await
        .unwrap());
    assert!(
        store.get_run(second.id).await.unwrap().is_none(),
        "no second run"
    );
    // A skipped answer holds the key too.
    assert!(store.record_keyed_fire(child, "c", None).await.unwrap());
    assert!(!store.record_keyed_fire(child, "c", None).await.unwrap());

    // Ended runs, oldest end first, after a time; spend of a job and of all since a time.
    let base = millis(Utc::now() - Duration::minutes(5));
    let spender_job = crate::store::job("spender");
    store.insert_job(&spender_job).await.unwrap();
    let spender = spender_job.id;
    let mut ended = Vec::new();
    for (offset, cost) in [(30, 0.25), (10, 0.5), (20, 1.0)] {
        let mut done = run();
        done.job_id = Some(spender);
        done.status = RunStatus::Succeeded;
        done.finished_at = Some(base + Duration::seconds(offset));
        done.cost_usd = Some(cost);
        store.insert_run(&done, &[]).await.unwrap();
        ended.push(done);
    }
    let after = store
        .runs_finished_after(base + Duration::seconds(10), 10)
        .await
        .unwrap();
    let ends: Vec<_> = after
        .iter()
        .filter(|run| run.job_id == Some(spender))
        .map(|run| run.finished_at.unwrap())
        .collect();
    assert_eq!(
        ends,
        [base + Duration::seconds(20), base + Duration::seconds(30)],
        "strictly after, oldest end first"
    );
    let since = ended[0].created_at - Duration::seconds(1);
    let spent = store.job_spend_since(Some(spender), since).await.unwrap();
    assert!((spent - 1.75).abs() < 1e-9, "{spent}");
    let all = store.job_spend_since(None, since).await.unwrap();
    assert!(all >= 1.75, "{all}");
    assert_eq!(
        store
            .job_spend_since(Some(spender), Utc::now() + Duration::hours(1))
            .await
            .unwrap(),
        0.0
    );
}

#[tokio::test]
async fn store_rules_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/autopilot.db", dir.path().display());
    conformance(connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn store_rules_postgres() {
    let Some(url) = components::fresh_postgres_database().await else {
        return;
    };
    conformance(connect(&url).await.unwrap()).await;
}
