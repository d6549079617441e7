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
    approvals(store.as_ref()).await;
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

/// Approvals: stored whole, listed by state and run newest first, decided once (a second
/// decision, a timeout racing an approver, writes nothing), found when past their deadline.
async fn approvals(store: &dyn Store) {
    use autopilot_control_plane::domain::approval::{Approval, ApprovalStatus};
    let run = autopilot_proto::RunId::new();
    let at = millis(Utc::now());
    let approval = |id: &str, minutes: i64| Approval {
        id: id.to_owned(),
        run_id: run,
        attempt: 1,
        job_id: Some(JobId::new()),
        tool: "Bash".into(),
        input: serde_json::json!({ "command": "rm -rf build" }),
        tool_use_id: Some("toolu_1".into()),
        approvers: vec!["operator".into(), "claude-ai".into()],
        status: ApprovalStatus::Pending,
        requested_at: at + Duration::minutes(minutes),
        expires_at: at + Duration::minutes(minutes + 10),
        decided_at: None,
        decided_by: None,
        reason: None,
    };
    let (first, second) = (approval("apr_1", 0), approval("apr_2", 1));
    store.insert_approval(&first).await.unwrap();
    store.insert_approval(&second).await.unwrap();
    assert_eq!(
        store.get_approval("apr_1").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.get_approval("apr_none").await.unwrap(), None);
    let pending = store
        .list_approvals(Some(ApprovalStatus::Pending), Some(run), 10)
        .await
        .unwrap();
    let ids: Vec<&str> = pending.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["apr_2", "apr_1"], "newest first");
    let decided_at = at + Duration::minutes(2);
    assert!(store
        .decide_approval(
            "apr_1",
            ApprovalStatus::Denied,
            "operator",
            Some("no"),
            decided_at
        )
        .await
        .unwrap());
    assert!(
        !store
            .decide_approval(
                "apr_1",
                ApprovalStatus::Approved,
                "claude-ai",
                None,
                decided_at
            )
            .await
            .unwrap(),
        "decided once"
    );
    let denied = store.get_approval("apr_1").await.unwrap().unwrap();
    assert_eq!(denied.status, ApprovalStatus::Denied);
    assert_eq!(denied.decided_by.as_deref(), Some("operator"));
    assert_eq!(denied.reason.as_deref(), Some("no"));
    assert_eq!(denied.decided_at, Some(decided_at));
    let other_run = store
        .list_approvals(None, Some(autopilot_proto::RunId::new()), 10)
        .await
        .unwrap();
    assert!(other_run.is_empty());
    let expired = store
        .expired_approvals(at + Duration::minutes(11), 10)
        .await
        .unwrap();
    let ids: Vec<&str> = expired.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["apr_2"], "only pending ones past their deadline");
    assert!(store
        .expired_approvals(at + Duration::minutes(5), 10)
        .await
        .unwrap()
        .is_empty());
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
