//! The `Store` conformance suite, run on SQLite and on a real PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use autopilot_control_plane::domain::settings::DEFAULT_POOL;
use autopilot_control_plane::domain::{
    FireRecord, Job, JobKind, MisfirePolicy, OverlapPolicy, RetryPolicy, Run, RunFilter,
    RunSettings, Schedule,
};
use autopilot_control_plane::store::{connect, RunUpdate, Store, StoreError};
use autopilot_proto::{
    EventKind, EventOrigin, JobId, NewRunEvent, RunAttempt, RunId, RunStatus, Trigger,
};
use autopilot_tests::components;
use chrono::{TimeZone, Utc};
use serde_json::json;

pub(crate) fn job(name: &str) -> Job {
    let now = Utc::now();
    Job {
        id: JobId::new(),
        name: name.to_owned(),
        description: Some("a test job".into()),
        kind: JobKind::Claude,
        prompt: "do things".into(),
        schedule: Schedule::Cron("*/5 * * * * *".into()),
        timezone: "Europe/Paris".into(),
        enabled: true,
        settings: RunSettings {
            model: Some("claude-sonnet-4-5".into()),
            allowed_tools: vec!["Bash".into(), "mcp__github__create_issue".into()],
            disallowed_tools: vec![],
            max_turns: Some(4),
            timeout_secs: 60,
            max_cost_usd: Some(0.25),
            retry: RetryPolicy {
                count: 1,
                backoff_secs: 5,
                lost: true,
            },
            pool: DEFAULT_POOL.into(),
            sandbox: autopilot_proto::Sandbox {
                network: autopilot_proto::NetworkMode::Open,
                memory_mb: 512,
                cpus: 0.5,
                pids: 64,
            },
            // Stored and read back (a column of its own for jobs).
            trace_content: true,
            servers: vec![autopilot_control_plane::domain::tools::ToolGrant {
                server: "email".into(),
                access: autopilot_control_plane::domain::tools::AccessLevel::Write,
                allow: vec!["send*".into()],
                deny: vec![],
            }],
            bundles: vec!["reporting".into()],
            image: Some("autopilot-runtime-team:1".into()),
        },
        // Stored as JSON and read back whole.
        rules: autopilot_control_plane::domain::rules::JobRules {
            chain: Some(autopilot_control_plane::domain::rules::Chain {
                after: vec![JobId::new()],
                on: autopilot_control_plane::domain::rules::ChainOn::Failure,
                require_all: true,
            }),
            on_hook: Some(autopilot_control_plane::domain::rules::HookSubscription {
                events: vec!["PostToolUse".into()],
                matcher: Some("Edit|Write".into()),
                cwd: None,
                debounce_secs: 30,
            }),
            on_end: vec![
                autopilot_control_plane::domain::handlers::EndHandler {
                    post: Some("https://example.com/outcome".into()),
                    write: None,
                    notify: None,
                    trigger: None,
                    on: Some(autopilot_control_plane::domain::rules::ChainOn::Any),
                    sign_with: Some("HANDLER_KEY".into()),
                    allow_private: false,
                },
                autopilot_control_plane::domain::handlers::EndHandler {
                    post: None,
                    write: None,
                    notify: Some(autopilot_control_plane::domain::handlers::NotifyTarget {
                        server: "team".into(),
                        channel: "ops".into(),
                    }),
                    trigger: Some(JobId::new().to_string()),
                    on: None,
                    sign_with: None,
                    allow_private: false,
                },
            ],
            on_file: Some(autopilot_control_plane::domain::rules::FileSubscription {
                pool: "default".into(),
                paths: vec!["/data/inbox/*.csv".into()],
                events: vec!["create".into()],
                recursive: true,
                debounce_ms: 250,
            }),
            paused_until: Some(Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()),
            conditions: autopilot_control_plane::domain::rules::Conditions {
                windows: vec![autopilot_control_plane::domain::rules::TimeWindow {
                    days: vec!["weekdays".into()],
                    from: "09:00".into(),
                    to: "17:00".into(),
                }],
                max_runs_per_day: Some(3),
                max_runs_per_week: None,
            },
            budget: autopilot_control_plane::domain::rules::Budget {
                daily_usd: Some(1.5),
                monthly_usd: None,
                alert: None,
            },
            approval: Some(autopilot_control_plane::domain::approval::ApprovalRule {
                tools: vec!["Bash".into()],
                levels: vec![autopilot_control_plane::domain::tools::AccessLevel::Dangerous],
                approvers: vec!["operator".into()],
                timeout_secs: Some(300),
                notify: Some(autopilot_control_plane::domain::handlers::NotifyTarget {
                    server: "team".into(),
                    channel: "approvers".into(),
                }),
            }),
            concurrency: Some(autopilot_control_plane::domain::rules::JobConcurrency {
                key: "{{ file.path }}".into(),
                limit: 2,
            }),
        },
        misfire_policy: MisfirePolicy::RunAll,
        misfire_cap: 3,
        overlap_policy: OverlapPolicy::Queue,
        fire_cursor: Utc.timestamp_millis_opt(now.timestamp_millis()).unwrap(),
        missed_fires: 0,
        overlap_skipped: 0,
        created_at: Utc.timestamp_millis_opt(now.timestamp_millis()).unwrap(),
        updated_at: Utc.timestamp_millis_opt(now.timestamp_millis()).unwrap(),
    }
}

fn event(run: &Run, origin_seq: u64, kind: EventKind) -> NewRunEvent {
    NewRunEvent {
        run_id: run.id,
        attempt: run.attempt,
        origin: EventOrigin::Worker,
        origin_seq,
        at: Utc::now(),
        kind,
        data: json!({ "n": origin_seq, "text": "héllo ✓" }),
    }
}

async fn conformance(store: Arc<dyn Store>) {
    // Jobs: round trip, unique names, update, lookups.
    let mut first = job("first");
    store.insert_job(&first).await.unwrap();
    assert_eq!(
        store.get_job(first.id).await.unwrap().as_ref(),
        Some(&first)
    );
    assert_eq!(
        store.get_job_by_name("first").await.unwrap().map(|j| j.id),
        Some(first.id)
    );
    match store
        .insert_job(&Job {
            id: JobId::new(),
            ..job("first")
        })
        .await
    {
        Err(StoreError::Conflict(message)) => assert!(message.contains("first"), "{message}"),
        other => panic!("duplicate name must conflict, got {other:?}"),
    }
    // The rules alone change, nothing else.
    let mut rules = first.rules.clone();
    rules.paused_until = None;
    store.update_job_rules(first.id, &rules).await.unwrap();
    let read = store.get_job(first.id).await.unwrap().unwrap();
    assert_eq!(
        (read.rules.paused_until, read.prompt.as_str()),
        (None, first.prompt.as_str())
    );
    assert!(matches!(
        store.update_job_rules(JobId::new(), &rules).await,
        Err(StoreError::NotFound)
    ));
    first.rules = rules;
    first.prompt = "do other things".into();
    first.schedule = Schedule::At(Utc.with_ymd_and_hms(2030, 1, 1, 9, 0, 0).unwrap());
    store.update_job(&first).await.unwrap();
    assert_eq!(
        store.get_job(first.id).await.unwrap().unwrap().schedule,
        first.schedule
    );
    assert!(matches!(
        store.update_job(&job("ghost")).await,
        Err(StoreError::NotFound)
    ));
    let second = Job {
        schedule: Schedule::None,
        ..job("second")
    };
    store.insert_job(&second).await.unwrap();
    let names: Vec<String> = store
        .list_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.name)
        .collect();
    assert_eq!(names, ["first", "second"]);

    // Fires: one run per (job, scheduled_for), cursor and counters advance atomically. The
    // fire is after the job's cursor (its creation time), as the scheduler's always are.
    let at = Utc
        .timestamp_millis_opt(Utc::now().timestamp_millis() + 86_400_000)
        .unwrap();
    let fire = |job: &Job| {
        let run = Run::queued(Trigger::Schedule, Some(job), job.run_snapshot(), Some(at));
        let queued = NewRunEvent {
            origin: EventOrigin::Control,
            data: json!({ "step": "queued" }),
            ..event(&run, 1, EventKind::Lifecycle)
        };
        FireRecord {
            job_id: job.id,
            job_name: "job".into(),
            cursor: at,
            events: vec![queued],
            runs: vec![run],
            missed: 2,
            overlap_skipped: 1,
            disable: false,
        }
    };
    let created = store.record_fires(&[fire(&first)]).await.unwrap();
    assert_eq!(created.len(), 1);
    let again = store
        .record_fires(&[fire(&first), fire(&second)])
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "the same fire must not create a second run");
    let after = store.get_job(first.id).await.unwrap().unwrap();
    assert_eq!(
        (after.fire_cursor, after.missed_fires, after.overlap_skipped),
        (at, 4, 2)
    );
    // A leader acting on an older plan (woken from a pause) cannot move the cursor back.
    let stale = FireRecord {
        cursor: at - chrono::Duration::hours(1),
        runs: Vec::new(),
        events: Vec::new(),
        missed: 0,
        overlap_skipped: 0,
        ..fire(&first)
    };
    store.record_fires(&[stale]).await.unwrap();
    let after = store.get_job(first.id).await.unwrap().unwrap();
    assert_eq!(after.fire_cursor, at, "the cursor only moves forward");
    let one_shot = FireRecord {
        disable: true,
        runs: vec![],
        ..fire(&second)
    };
    store.record_fires(&[one_shot]).await.unwrap();
    assert!(!store.get_job(second.id).await.unwrap().unwrap().enabled);

    // A fire's first event is stored with it, once.
    let fired_events = store.list_events(created[0], 0, 10).await.unwrap();
    assert_eq!(fired_events.len(), 1, "the duplicate fire added no event");
    assert_eq!(
        (fired_events[0].seq, fired_events[0].kind),
        (1, EventKind::Lifecycle)
    );

    // Runs: compare-and-set on (status, attempt).
    let run = store.get_run(created[0]).await.unwrap().expect("fired run");
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.settings, first.run_snapshot());
    let now = Utc::now();
    let at = |attempt| RunAttempt {
        run_id: run.id,
        attempt,
    };
    assert!(
        store
            .claim_runs(&[at(2)], "w1", Some("t1"), now)
            .await
            .unwrap()
            .is_empty(),
        "wrong attempt must fail"
    );
    // Claims of many runs: the queued one is taken, an unknown one is not.
    let unknown = RunAttempt {
        run_id: RunId::new(),
        attempt: 1,
    };
    let claimed = store
        .claim_runs(&[unknown, at(1)], "w1", Some("t1"), now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    let mut run = claimed.into_iter().next().unwrap();
    assert_eq!(
        (run.id, run.status, run.worker_id.as_deref()),
        (at(1).run_id, RunStatus::Running, Some("w1"))
    );
    // Claimed again only by the process that claimed it (its reply was lost): not by another
    // worker, not by another process of the same worker, not without a token.
    for (worker, token) in [("w2", Some("t1")), ("w1", Some("t2")), ("w1", None)] {
        assert!(
            store
                .claim_runs(&[at(1)], worker, token, now)
                .await
                .unwrap()
                .is_empty(),
            "a claim by {worker} with {token:?} must fail"
        );
    }
    let later = now + chrono::Duration::seconds(3);
    let again = store
        .claim_runs(&[at(1), at(2)], "w1", Some("t1"), later)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        (again[0].status, again[0].started_at, again[0].heartbeat_at),
        (
            RunStatus::Running,
            run.started_at,
            Utc.timestamp_millis_opt(later.timestamp_millis()).single()
        ),
        "a repeated claim keeps the start and renews the heartbeat"
    );
    run.heartbeat_at = again[0].heartbeat_at;
    let read = store.get_runs(&[run.id, unknown.run_id]).await.unwrap();
    assert_eq!(
        read,
        vec![run.clone()],
        "get_runs reads the runs that exist"
    );
    assert_eq!(
        store.heartbeat_run(run.id, 1, "w1", now).await.unwrap(),
        Some(RunStatus::Running)
    );
    assert_eq!(
        store.heartbeat_run(run.id, 1, "w2", now).await.unwrap(),
        None,
        "not its run"
    );
    assert!(
        !store
            .update_run(&run, RunStatus::Queued, 1, &[])
            .await
            .unwrap(),
        "wrong status must fail"
    );
    assert!(
        !store
            .update_run(&run, RunStatus::Running, 2, &[])
            .await
            .unwrap(),
        "wrong attempt must fail"
    );
    run.status = RunStatus::Succeeded;
    run.usage.input_tokens = 1234;
    run.cost_usd = Some(0.5);
    run.models = vec!["claude-opus-5-5".into()];
    let finished = NewRunEvent {
        origin: EventOrigin::Control,
        data: json!({ "step": "finished" }),
        ..event(&run, 2, EventKind::Lifecycle)
    };
    assert!(store
        .update_run(&run, RunStatus::Running, 1, std::slice::from_ref(&finished))
        .await
        .unwrap());
    assert!(!store
        .update_run(&run, RunStatus::Running, 1, &[finished])
        .await
        .unwrap());
    assert_eq!(store.get_run(run.id).await.unwrap().as_ref(), Some(&run));
    assert_eq!(
        store.heartbeat_run(run.id, 1, "w1", now).await.unwrap(),
        None,
        "finished runs take no heartbeat"
    );
    let control_events = store.list_events(run.id, 0, 10).await.unwrap();
    assert_eq!(
        control_events.len(),
        2,
        "the failed compare-and-set stored no event"
    );
    assert!(control_events[0].seq < control_events[1].seq);
    // Events written with the row take the numbers after its last one; one already stored (a
    // redelivery) is skipped.
    let later: Vec<NewRunEvent> = [3, 4]
        .into_iter()
        .map(|seq| NewRunEvent {
            origin: EventOrigin::Control,
            ..event(&run, seq, EventKind::Lifecycle)
        })
        .collect();
    let finished_again = NewRunEvent {
        origin: EventOrigin::Control,
        data: json!({ "step": "finished" }),
        ..event(&run, 2, EventKind::Lifecycle)
    };
    assert!(store
        .update_run(
            &run,
            RunStatus::Succeeded,
            1,
            &[finished_again, later[0].clone(), later[1].clone()]
        )
        .await
        .unwrap());
    let all = store.list_events(run.id, 0, 10).await.unwrap();
    assert_eq!(
        all.len(),
        4,
        "the redelivered event is stored once: {all:?}"
    );
    assert_eq!(
        (all[2].data["n"].as_u64(), all[3].data["n"].as_u64()),
        (Some(3), Some(4))
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "{all:?}");
    let last_control_seq = all[3].seq;

    // Listing: newest first, filters, paging.
    let mut manual_ids = Vec::new();
    for _ in 0..5 {
        let manual = Run::queued(Trigger::Manual, Some(&first), first.run_snapshot(), None);
        store
            .insert_run(&manual, &[event(&manual, 1, EventKind::Lifecycle)])
            .await
            .unwrap();
        assert_eq!(store.list_events(manual.id, 0, 10).await.unwrap().len(), 1);
        manual_ids.push(manual.id);
    }
    let page = store
        .list_runs(&RunFilter {
            job_id: Some(first.id),
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        manual_ids.iter().rev().take(3).copied().collect::<Vec<_>>()
    );
    let rest = store
        .list_runs(&RunFilter {
            job_id: Some(first.id),
            limit: 10,
            before: Some(page[2].id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.len(), 3, "two manual runs and the fired one");
    let done = store
        .list_runs(&RunFilter {
            statuses: vec![RunStatus::Succeeded],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(done.iter().map(|r| r.id).collect::<Vec<_>>(), vec![run.id]);
    assert_eq!(
        store
            .runs_in_status(&[RunStatus::Queued], Some(first.id))
            .await
            .unwrap()
            .len(),
        5
    );
    // Queued runs not yet sent, and those sent long ago, oldest first and bounded.
    let queued = store
        .runs_in_status(&[RunStatus::Queued], None)
        .await
        .unwrap();
    let undispatched: Vec<_> = queued
        .iter()
        .filter(|r| r.dispatched_at.is_none())
        .map(|r| r.id)
        .collect();
    assert!(undispatched.len() >= 2, "{undispatched:?}");
    let listed: Vec<_> = store
        .queued_runs(None, 1000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, undispatched);
    assert_eq!(store.queued_runs(None, 1).await.unwrap().len(), 1);
    let mut sent = store.get_run(undispatched[0]).await.unwrap().unwrap();
    sent.dispatched_at = Some(Utc::now() - chrono::Duration::hours(1));
    assert!(store
        .update_run(&sent, RunStatus::Queued, sent.attempt, &[])
        .await
        .unwrap());
    let stale: Vec<_> = store
        .queued_runs(Some(Utc::now() - chrono::Duration::minutes(30)), 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert!(stale.contains(&sent.id), "{stale:?}");
    assert!(!store
        .queued_runs(None, 1000)
        .await
        .unwrap()
        .iter()
        .any(|r| r.id == sent.id));
    assert!(store
        .queued_runs(Some(Utc::now() - chrono::Duration::hours(2)), 10)
        .await
        .unwrap()
        .iter()
        .all(|r| r.id != sent.id));

    // Events: ordered, idempotent on redelivery, counted per attempt.
    let batch: Vec<_> = (1..=4)
        .map(|n| event(&run, n, EventKind::AssistantText))
        .collect();
    assert_eq!(store.append_events(&batch).await.unwrap(), 4);
    assert_eq!(
        store.append_events(&batch[2..]).await.unwrap(),
        0,
        "a redelivered batch is stored once"
    );
    assert_eq!(
        store
            .append_events(&[event(&run, 5, EventKind::Result)])
            .await
            .unwrap(),
        1
    );
    // After the run's lifecycle events.
    let events = store
        .list_events(run.id, last_control_seq, 100)
        .await
        .unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(
        events
            .iter()
            .map(|e| e.data["n"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(events[0].data["text"], "héllo ✓");
    assert_eq!(events[4].kind, EventKind::Result);
    assert_eq!(
        store.list_events(run.id, seqs[2], 100).await.unwrap().len(),
        2
    );
    assert_eq!(store.count_worker_events(run.id, 1).await.unwrap(), 5);
    let unknown = Run::queued(Trigger::Quick, None, first.run_snapshot(), None);
    assert_eq!(
        store
            .append_events(&[event(&unknown, 1, EventKind::Output)])
            .await
            .unwrap(),
        0
    );

    // Leases: one holder at a time, fencing token raised on every change of holder.
    let ttl = Duration::from_secs(10);
    let now = Utc::now();
    let token_a = store
        .acquire_lease("scheduler", "a", ttl, now)
        .await
        .unwrap()
        .expect("a gets it");
    assert_eq!(
        store
            .acquire_lease("scheduler", "a", ttl, now)
            .await
            .unwrap(),
        Some(token_a),
        "renewal keeps the token"
    );
    assert_eq!(
        store
            .acquire_lease("scheduler", "b", ttl, now)
            .await
            .unwrap(),
        None,
        "b must wait"
    );
    let later = now + chrono::Duration::seconds(11);
    let token_b = store
        .acquire_lease("scheduler", "b", ttl, later)
        .await
        .unwrap()
        .expect("expired lease is taken");
    assert!(token_b > token_a);
    assert_eq!(
        store
            .acquire_lease("scheduler", "a", ttl, later)
            .await
            .unwrap(),
        None,
        "a stepped down"
    );
    store.release_lease("scheduler", "b").await.unwrap();
    assert!(
        store
            .acquire_lease("scheduler", "a", ttl, later)
            .await
            .unwrap()
            .unwrap()
            > token_b
    );

    // Settings.
    assert!(store.put_setting_if_absent("k", "v1").await.unwrap());
    assert!(!store.put_setting_if_absent("k", "v2").await.unwrap());
    assert_eq!(store.get_setting("k").await.unwrap().as_deref(), Some("v1"));
    store.put_setting("k", "v3").await.unwrap();
    assert_eq!(store.get_setting("k").await.unwrap().as_deref(), Some("v3"));
    assert!(
        !store.replace_setting("k", "v1", "v4").await.unwrap(),
        "a stale expected value changes nothing"
    );
    assert!(!store.replace_setting("absent", "", "v").await.unwrap());
    assert_eq!(store.get_setting("absent").await.unwrap(), None);
    assert!(store.replace_setting("k", "v3", "v4").await.unwrap());
    assert_eq!(store.get_setting("k").await.unwrap().as_deref(), Some("v4"));

    // Deleting a job keeps its runs.
    assert!(store.delete_job(first.id).await.unwrap());
    assert!(!store.delete_job(first.id).await.unwrap());
    let kept = store
        .get_run(run.id)
        .await
        .unwrap()
        .expect("run outlives its job");
    assert_eq!(
        (kept.job_id, kept.job_name.as_deref()),
        (None, Some("first"))
    );

    // Several ends in one write, each checked on its own: the stale one is refused, the others
    // are written with their events.
    let snapshot = second.run_snapshot();
    let mut batch = Vec::new();
    for _ in 0..3 {
        let queued = Run::queued(Trigger::Manual, None, snapshot.clone(), None);
        store.insert_run(&queued, &[]).await.unwrap();
        batch.push(queued);
    }
    let attempts: Vec<RunAttempt> = batch
        .iter()
        .map(|run| RunAttempt {
            run_id: run.id,
            attempt: 1,
        })
        .collect();
    let mut claimed = store
        .claim_runs(&attempts, "w9", None, Utc::now())
        .await
        .unwrap();
    claimed.sort_by_key(|run| batch.iter().position(|queued| queued.id == run.id));
    assert_eq!(claimed.len(), 3);
    for run in &mut claimed {
        run.status = RunStatus::Succeeded;
        run.finished_at = Some(Utc::now());
    }
    let ends: Vec<Vec<NewRunEvent>> = claimed
        .iter()
        .map(|run| {
            vec![NewRunEvent {
                origin: EventOrigin::Control,
                data: json!({ "step": "finished" }),
                ..event(run, 1, EventKind::Lifecycle)
            }]
        })
        .collect();
    let updates: Vec<RunUpdate<'_>> = claimed
        .iter()
        .zip(&ends)
        .enumerate()
        .map(|(i, (run, events))| RunUpdate {
            run,
            // The middle one expects a state the run is not in.
            expected_status: if i == 1 {
                RunStatus::Queued
            } else {
                RunStatus::Running
            },
            expected_attempt: 1,
            events,
        })
        .collect();
    assert_eq!(
        store.update_runs(&updates).await.unwrap(),
        [true, false, true]
    );
    for (i, run) in claimed.iter().enumerate() {
        let stored = store.get_run(run.id).await.unwrap().unwrap();
        let events = store.list_events(run.id, 0, 10).await.unwrap();
        if i == 1 {
            assert_eq!(
                stored.status,
                RunStatus::Running,
                "the stale end is refused"
            );
            assert!(events.is_empty(), "{events:?}");
        } else {
            assert_eq!(stored.status, RunStatus::Succeeded);
            assert_eq!(events.len(), 1, "{events:?}");
        }
    }
    assert!(store.update_runs(&[]).await.unwrap().is_empty());

    // A run's trace parent comes back as it was given, whether the store keeps it compact (the
    // W3C form) or as it is (anything else).
    for traceparent in [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "~not-ours",
    ] {
        let mut traced = Run::queued(Trigger::Manual, None, first.run_snapshot(), None);
        traced.trace_parent = Some(traceparent.to_owned());
        store.insert_run(&traced, &[]).await.unwrap();
        let read = store.get_run(traced.id).await.unwrap().unwrap();
        assert_eq!(read.trace_parent.as_deref(), Some(traceparent));
    }
    // One derived from the run's id (as a request that starts a trace makes it) too.
    let mut traced = Run::queued(Trigger::Manual, None, first.run_snapshot(), None);
    traced.trace_parent = autopilot_worker::trace::run_traceparent(traced.id);
    assert!(traced.trace_parent.is_some());
    store.insert_run(&traced, &[]).await.unwrap();
    let read = store.get_run(traced.id).await.unwrap().unwrap();
    assert_eq!(read.trace_parent, traced.trace_parent);
}

#[tokio::test]
async fn store_conformance_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/autopilot.db", dir.path().display());
    conformance(connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn store_conformance_postgres() {
    let Some(url) = components::fresh_postgres_database().await else {
        return;
    };
    conformance(connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn concurrent_fires_of_two_leaders_create_one_run_each() {
    for url in [
        Some(format!(
            "sqlite://{}/a.db",
            tempfile::tempdir().unwrap().keep().display()
        )),
        components::fresh_postgres_database().await,
    ]
    .into_iter()
    .flatten()
    {
        let store = connect(&url).await.unwrap();
        let job = job("contended");
        store.insert_job(&job).await.unwrap();
        let fires: Vec<_> = (0..20)
            .map(|s| Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, s).unwrap())
            .collect();
        let attempt = |store: Arc<dyn Store>| {
            let job = job.clone();
            let fires = fires.clone();
            tokio::spawn(async move {
                let records: Vec<_> = fires
                    .iter()
                    .map(|at| FireRecord {
                        job_id: job.id,
                        job_name: "job".into(),
                        cursor: *at,
                        runs: vec![Run::queued(
                            Trigger::Schedule,
                            Some(&job),
                            job.run_snapshot(),
                            Some(*at),
                        )],
                        events: vec![],
                        missed: 0,
                        overlap_skipped: 0,
                        disable: false,
                    })
                    .collect();
                let mut created = 0;
                for record in records {
                    loop {
                        match store.record_fires(std::slice::from_ref(&record)).await {
                            Ok(ids) => {
                                created += ids.len();
                                break;
                            }
                            Err(StoreError::Retryable(_)) => {
                                tokio::time::sleep(Duration::from_millis(5)).await
                            }
                            Err(other) => panic!("{other:?}"),
                        }
                    }
                }
                created
            })
        };
        let (a, b) = (
            attempt(store.clone()),
            attempt(connect(&url).await.unwrap()),
        );
        let total = a.await.unwrap() + b.await.unwrap();
        assert_eq!(
            total, 20,
            "{url}: every fire exactly once across two leaders"
        );
    }
}
