//! The webhook half of the `Store` conformance suite, on SQLite and on a real PostgreSQL: webhooks
//! by id, name and token (with a rotation's grace), and batches of deliveries with dedup.

use std::sync::Arc;

use autopilot_control_plane::domain::webhook::{
    DeliveryOutcome, NewDelivery, PreviousToken, RateLimit, SignatureConfig, SignatureSchemeName,
    StoredPayload, Webhook, WebhookConfig,
};
use autopilot_control_plane::domain::{OverlapPolicy, RetryPolicy, Run, RunSettings, RunSnapshot};
use autopilot_control_plane::store::{connect, Store, StoreError};
use autopilot_proto::{
    ClaudeSpec, EventKind, EventOrigin, NewRunEvent, RunKind, RunStatus, Trigger, WebhookId,
};
use autopilot_tests::components;
use chrono::{Duration, TimeZone, Utc};
use serde_json::json;

fn now_ms() -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(Utc::now().timestamp_millis())
        .unwrap()
}

pub(crate) fn webhook(name: &str, token_hash: &str) -> Webhook {
    Webhook {
        id: WebhookId::new(),
        name: name.to_owned(),
        enabled: true,
        token_hash: token_hash.to_owned(),
        previous_token: None,
        job_id: None,
        config: WebhookConfig {
            description: Some("für Tests ✓".into()),
            prompt_template: Some("{{payload.title}}".into()),
            run: RunSettings {
                model: None,
                allowed_tools: vec!["Read".into()],
                disallowed_tools: vec![],
                max_turns: Some(3),
                timeout_secs: 60,
                max_cost_usd: None,
                pool: "nowhere".into(),
                retry: RetryPolicy::default(),
                sandbox: autopilot_proto::Sandbox::defaults(true),
                // Stored and read back in the webhook's settings.
                trace_content: true,
                servers: vec![autopilot_control_plane::domain::tools::ToolGrant {
                    server: "crm".into(),
                    access: autopilot_control_plane::domain::tools::AccessLevel::Write,
                    allow: vec![],
                    deny: vec!["delete_*".into()],
                }],
                bundles: vec!["triage".into()],
                image: None,
            },
            signature: SignatureConfig {
                scheme: SignatureSchemeName::Github,
                header: None,
                tolerance_secs: 300,
            },
            idempotency_header: None,
            dedup_window_secs: 60,
            max_body_bytes: 1024,
            rate_limit: RateLimit {
                per_second: 10.0,
                burst: 20,
            },
            token_hint: "wh_abcde".into(),
            // Stored in the webhook's JSON and read back.
            concurrency: Some(autopilot_control_plane::domain::webhook::Concurrency {
                key: "{{payload.repo}}".into(),
                limit: 2,
                newest_wins: false,
            }),
        },
        signing_secret: Some("v1.sealed".into()),
        created_at: now_ms(),
        updated_at: now_ms(),
    }
}

/// A delivery to `webhook`, with a delivery id remembered until `dedup_until`.
fn delivery(
    webhook: &Webhook,
    delivery_id: Option<&str>,
    dedup_until: Option<chrono::DateTime<Utc>>,
    body: &[u8],
) -> NewDelivery {
    let settings = RunSnapshot {
        kind: RunKind::Claude(ClaudeSpec {
            prompt: "Triage <webhook-data source=\"payload.title\">x</webhook-data>".into(),
            model: None,
            allowed_tools: vec![],
            disallowed_tools: vec![],
            max_turns: None,
            max_cost_usd: None,
            trace_content: false,
            mcp_servers: Vec::new(),
            approval: None,
        }),
        timeout_secs: 60,
        workspace: webhook.workspace(),
        retry: RetryPolicy::default(),
        pool: "nowhere".into(),
        overlap: OverlapPolicy::Allow,
        sandbox: None,
        grants: Vec::new(),
        bundles: Vec::new(),
        image: None,
        concurrency: None,
        outcome_files: Vec::new(),
    };
    let mut run = Run::queued(Trigger::Webhook, None, settings, None);
    run.created_at = now_ms();
    run.webhook_id = Some(webhook.id);
    run.delivery_id = delivery_id.map(str::to_owned);
    let queued_event = run.control_event(json!({ "step": "queued" }));
    NewDelivery {
        payload: StoredPayload {
            run_id: run.id,
            content_type: "application/octet-stream".into(),
            headers: vec![("x-github-event".into(), "issues".into())],
            query: vec![("source".into(), "gh".into())],
            body: body.to_vec(),
            body_bytes: body.len() as u64,
            truncated: false,
        },
        run,
        queued_event,
        dedup_until,
    }
}

async fn conformance(store: Arc<dyn Store>) {
    // Webhooks: round trip, unique names, lookups by token and by a rotated-out token.
    let mut first = webhook("first", "hash-1");
    store.insert_webhook(&first).await.unwrap();
    assert_eq!(
        store.get_webhook(first.id).await.unwrap().as_ref(),
        Some(&first)
    );
    assert_eq!(
        store
            .get_webhook_by_name("first")
            .await
            .unwrap()
            .map(|w| w.id),
        Some(first.id)
    );
    match store.insert_webhook(&webhook("first", "hash-x")).await {
        Err(StoreError::Conflict(message)) => assert!(message.contains("first"), "{message}"),
        other => panic!("expected a name conflict, got {other:?}"),
    }
    let now = now_ms();
    assert_eq!(
        store
            .webhook_by_token("hash-1", now)
            .await
            .unwrap()
            .map(|w| w.id),
        Some(first.id)
    );
    assert!(store
        .webhook_by_token("hash-2", now)
        .await
        .unwrap()
        .is_none());
    first.previous_token = Some(PreviousToken {
        token_hash: "hash-1".into(),
        expires_at: now + Duration::seconds(30),
    });
    first.token_hash = "hash-2".into();
    store.update_webhook(&first).await.unwrap();
    for (hash, at, found) in [
        ("hash-2", now, true),
        ("hash-1", now, true),
        ("hash-1", now + Duration::seconds(31), false),
    ] {
        assert_eq!(
            store.webhook_by_token(hash, at).await.unwrap().is_some(),
            found,
            "{hash} at +{}s",
            (at - now).num_seconds()
        );
    }
    let second = webhook("second", "hash-3");
    store.insert_webhook(&second).await.unwrap();
    let names: Vec<String> = store
        .list_webhooks()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["first", "second"]);
    assert!(matches!(
        store.update_webhook(&webhook("ghost", "hash-9")).await,
        Err(StoreError::NotFound)
    ));

    // Deliveries: a repeated id within the batch and a new one.
    let queued_before = store.count_queued_runs().await.unwrap();
    let later = now + Duration::seconds(60);
    let binary = [0u8, 159, 146, 150, 255];
    let first_batch = vec![
        delivery(&first, Some("d-1"), Some(later), b"{\"title\":\"one\"}"),
        delivery(&first, None, None, &binary),
        delivery(&first, Some("d-1"), Some(later), b"again"),
        delivery(&first, Some("d-2"), Some(later), b"two"),
        // The same id on another webhook is another delivery.
        delivery(&second, Some("d-1"), Some(later), b"other"),
    ];
    let batch = &first_batch;
    let outcomes = store.record_deliveries(batch, now).await.unwrap();
    assert_eq!(
        outcomes,
        [
            DeliveryOutcome::Created,
            DeliveryOutcome::Created,
            DeliveryOutcome::Duplicate(batch[0].run.id),
            DeliveryOutcome::Created,
            DeliveryOutcome::Created,
        ]
    );
    assert_eq!(store.count_queued_runs().await.unwrap(), queued_before + 4);
    assert!(store.get_run(batch[2].run.id).await.unwrap().is_none());
    let stored = store.get_run(batch[0].run.id).await.unwrap().unwrap();
    assert_eq!(stored, batch[0].run);
    assert_eq!(stored.status, RunStatus::Queued);
    let payload = store.get_payload(batch[1].run.id).await.unwrap().unwrap();
    assert_eq!(
        payload, batch[1].payload,
        "binary bodies come back byte for byte"
    );

    // The queued event is the run's first; later events follow it.
    let later_event = NewRunEvent {
        run_id: stored.id,
        attempt: 1,
        origin: EventOrigin::Worker,
        origin_seq: 1,
        at: Utc::now(),
        kind: EventKind::Output,
        data: json!({ "line": "hi" }),
    };
    store.append_events(&[later_event]).await.unwrap();
    let events = store.list_events(stored.id, 0, 10).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(events[0].data["step"], "queued");

    // A later batch: a known id returns the first run (a claim that loses leaves nothing
    // behind); an id whose window ended starts a new run.
    let expired = vec![delivery(
        &second,
        Some("d-9"),
        Some(now - Duration::seconds(1)),
        b"",
    )];
    assert_eq!(
        store.record_deliveries(&expired, now).await.unwrap(),
        [DeliveryOutcome::Created]
    );
    let batch = vec![
        delivery(&first, Some("d-2"), Some(later), b"two again"),
        delivery(&second, Some("d-9"), Some(later), b"nine again"),
    ];
    assert_eq!(
        store.record_deliveries(&batch, now).await.unwrap(),
        [
            DeliveryOutcome::Duplicate(first_batch[3].run.id),
            DeliveryOutcome::Created,
        ]
    );
    assert!(store.get_run(batch[0].run.id).await.unwrap().is_none());
    assert!(store.get_payload(batch[0].run.id).await.unwrap().is_none());
    let events = store.list_events(batch[0].run.id, 0, 10).await.unwrap();
    assert!(events.is_empty(), "the losing run's event went with it");

    // Expired ids are forgotten; deleting a webhook keeps its runs.
    assert!(
        store
            .purge_expired_deliveries(later + Duration::seconds(1))
            .await
            .unwrap()
            >= 3
    );
    assert!(store.delete_webhook(first.id).await.unwrap());
    assert!(!store.delete_webhook(first.id).await.unwrap());
    assert!(store.get_run(stored.id).await.unwrap().is_some());
}

#[tokio::test]
async fn webhook_store_conformance_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/autopilot.db", dir.path().display());
    conformance(connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn webhook_store_conformance_postgres() {
    let Some(url) = components::fresh_postgres_database().await else {
        return;
    };
    conformance(connect(&url).await.unwrap()).await;
}
