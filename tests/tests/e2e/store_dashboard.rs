//! The dashboard's part of the `Store` (sessions, usage totals, counts by status, the run
//! filters it adds), on SQLite and on a real PostgreSQL.

use std::sync::Arc;

use autopilot_control_plane::domain::dashboard::{DashboardSession, UsageGroup};
use autopilot_control_plane::domain::settings::RetryPolicy;
use autopilot_control_plane::domain::{OverlapPolicy, Run, RunFilter, RunSnapshot};
use autopilot_control_plane::store::{connect, Store};
use autopilot_proto::{RunKind, RunStatus, TokenUsage, Trigger};
use autopilot_tests::components;
use chrono::{Duration, TimeZone, Utc};

fn millis(time: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(time.timestamp_millis()).unwrap()
}

pub(crate) fn shell_run(
    trigger: Trigger,
    created_days_ago: i64,
    cost: Option<f64>,
    model: &str,
) -> Run {
    let snapshot = RunSnapshot {
        kind: RunKind::Shell {
            command: "true".into(),
            stdin: None,
        },
        timeout_secs: 60,
        workspace: "w".into(),
        retry: RetryPolicy::NONE,
        pool: "default".into(),
        overlap: OverlapPolicy::Allow,
        sandbox: None,
        grants: Vec::new(),
        bundles: Vec::new(),
        image: None,
        concurrency: None,
        outcome_files: Vec::new(),
    };
    let mut run = Run::queued(trigger, None, snapshot, None);
    run.created_at = millis(Utc::now() - Duration::days(created_days_ago));
    run.id = autopilot_proto::RunId::first_at(run.created_at);
    // Distinct ids within one millisecond: the first-at id plus a counter in its random bits.
    run.id = uuid_after(run.id);
    run.cost_usd = cost;
    run.usage = TokenUsage {
        input_tokens: 100,
        output_tokens: 10,
        cache_read_tokens: 300,
        cache_write_tokens: 0,
    };
    if !model.is_empty() {
        run.models = vec![model.into()];
    }
    run
}

fn uuid_after(id: autopilot_proto::RunId) -> autopilot_proto::RunId {
    let mut bytes = *id.as_uuid().as_bytes();
    let tail: [u8; 8] = rand_bytes();
    bytes[8..].copy_from_slice(&tail);
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    autopilot_proto::RunId::from(uuid::Uuid::from_bytes(bytes))
}

fn rand_bytes() -> [u8; 8] {
    uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap()
}

async fn conformance(store: Arc<dyn Store>) {
    // Sessions: kept by digest, touched, deleted, purged when expired.
    let now = millis(Utc::now());
    let session = DashboardSession {
        id_hash: "a".repeat(64),
        csrf_token: "token".into(),
        created_at: now,
        seen_at: now,
        expires_at: now + Duration::hours(12),
    };
    store.insert_session(&session).await.unwrap();
    assert_eq!(
        store.get_session(&session.id_hash).await.unwrap(),
        Some(session.clone())
    );
    let later = now + Duration::minutes(5);
    store
        .touch_session(&session.id_hash, later, later + Duration::hours(12))
        .await
        .unwrap();
    let touched = store.get_session(&session.id_hash).await.unwrap().unwrap();
    assert_eq!(
        (touched.seen_at, touched.expires_at),
        (later, later + Duration::hours(12))
    );
    let old = DashboardSession {
        id_hash: "b".repeat(64),
        expires_at: now - Duration::minutes(1),
        ..session.clone()
    };
    store.insert_session(&old).await.unwrap();
    assert_eq!(store.purge_sessions(now).await.unwrap(), 1);
    assert!(store.get_session(&old.id_hash).await.unwrap().is_none());
    store.delete_session(&session.id_hash).await.unwrap();
    assert!(store.get_session(&session.id_hash).await.unwrap().is_none());

    // Usage: by day, by job, by model; spend since; the costliest runs; counts by status.
    let runs = [
        shell_run(Trigger::Manual, 0, Some(0.5), "claude-sonnet-4-5"),
        shell_run(Trigger::Manual, 0, Some(0.25), "claude-sonnet-4-5"),
        shell_run(Trigger::Webhook, 1, Some(1.0), "claude-opus-5-5"),
        shell_run(Trigger::Schedule, 3, None, ""),
        shell_run(Trigger::Manual, 40, Some(9.0), "claude-sonnet-4-5"),
    ];
    for run in &runs {
        store.insert_run(run, &[]).await.unwrap();
    }
    let mut failed = runs[1].clone();
    failed.status = RunStatus::Failed;
    assert!(store
        .update_run(&failed, RunStatus::Queued, 1, &[])
        .await
        .unwrap());

    let week = Utc::now() - Duration::days(7);
    let by_day = store.usage(UsageGroup::Day, week).await.unwrap();
    assert_eq!(by_day.len(), 3, "{by_day:?}");
    assert_eq!(
        by_day.last().unwrap().label,
        runs[0].created_at.format("%Y-%m-%d").to_string()
    );
    assert_eq!(by_day.last().unwrap().runs, 2);
    assert!((by_day.last().unwrap().cost_usd - 0.75).abs() < 1e-9);
    assert_eq!(by_day.last().unwrap().cache_read_tokens, 600);
    let by_model = store.usage(UsageGroup::Model, week).await.unwrap();
    assert_eq!(
        by_model[0].label, r#"["claude-opus-5-5"]"#,
        "costliest first: {by_model:?}"
    );
    assert_eq!(by_model.len(), 3);
    let by_job = store.usage(UsageGroup::Job, week).await.unwrap();
    assert_eq!(
        by_job.len(),
        1,
        "runs without a job share one group: {by_job:?}"
    );
    assert_eq!(by_job[0].runs, 4);
    let spent = store
        .spend_since(Utc::now() - Duration::hours(30))
        .await
        .unwrap();
    assert!((spent - 1.75).abs() < 1e-9, "{spent}");
    let costliest = store.costliest_runs(week, 2).await.unwrap();
    assert_eq!(
        costliest.iter().map(|r| r.id).collect::<Vec<_>>(),
        [runs[2].id, runs[0].id]
    );

    let counts = store
        .count_runs_by_status(&RunFilter::default())
        .await
        .unwrap();
    assert_eq!(counts, [(RunStatus::Failed, 1), (RunStatus::Queued, 4)]);
    let manual_this_week = RunFilter {
        trigger: Some(Trigger::Manual),
        since: Some(week),
        limit: 10,
        ..Default::default()
    };
    let counts = store.count_runs_by_status(&manual_this_week).await.unwrap();
    assert_eq!(counts, [(RunStatus::Failed, 1), (RunStatus::Queued, 1)]);
    let listed = store.list_runs(&manual_this_week).await.unwrap();
    let mut expected = vec![runs[0].id, runs[1].id];
    expected.sort();
    expected.reverse();
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn store_dashboard_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/autopilot.db", dir.path().display());
    conformance(connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn store_dashboard_postgres() {
    let Some(url) = components::fresh_postgres_database().await else {
        return;
    };
    conformance(connect(&url).await.unwrap()).await;
}
