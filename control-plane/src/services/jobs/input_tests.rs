//! Tests of `input.rs`.

use super::*;

fn input() -> JobInput {
    JobInput {
        name: "digest".into(),
        prompt: Some("summarise".into()),
        schedule: Some("0 9 * * 1-5".into()),
        ..Default::default()
    }
}

fn with_run(run: RunSettingsInput) -> JobInput {
    JobInput { run, ..input() }
}

#[test]
fn defaults_follow_the_issue() {
    let job = validate(input(), None, Utc::now()).unwrap();
    assert_eq!(job.kind, JobKind::Claude);
    assert_eq!(job.timezone, "UTC");
    assert_eq!(job.settings.timeout_secs, 1800);
    assert_eq!(job.misfire_policy, MisfirePolicy::RunOnce);
    assert_eq!(job.overlap_policy, OverlapPolicy::Skip);
    assert!(job.enabled);
}

#[test]
fn invalid_fields_are_named() {
    let cases: Vec<(JobInput, &str)> = vec![
        (
            JobInput {
                schedule: Some("0 99 * * *".into()),
                ..input()
            },
            "schedule",
        ),
        (
            JobInput {
                timezone: Some("Mars/Base".into()),
                ..input()
            },
            "timezone",
        ),
        (
            JobInput {
                prompt: None,
                ..input()
            },
            "prompt",
        ),
        (
            JobInput {
                at: Some(Utc::now()),
                ..input()
            },
            "at",
        ),
        (
            with_run(RunSettingsInput {
                max_cost_usd: Some(-1.0),
                ..Default::default()
            }),
            "max_cost_usd",
        ),
        (
            with_run(RunSettingsInput {
                allowed_tools: Some(vec!["mcp__*".into()]),
                ..Default::default()
            }),
            "allowed_tools.0",
        ),
        (
            JobInput {
                kind: Some(JobKind::Shell),
                prompt: None,
                command: Some("ls".into()),
                run: RunSettingsInput {
                    model: Some("x".into()),
                    ..Default::default()
                },
                ..input()
            },
            "model",
        ),
    ];
    for (case, field) in cases {
        match validate(case, None, Utc::now()) {
            Err(ServiceError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("expected an error on {field}, got {other:?}"),
        }
    }
}

#[test]
fn tools_are_normalised_and_deduplicated() {
    let job = validate(
        with_run(RunSettingsInput {
            allowed_tools: Some(vec![
                "github:create_issue".into(),
                "Bash".into(),
                "Bash".into(),
            ]),
            ..Default::default()
        }),
        None,
        Utc::now(),
    )
    .unwrap();
    assert_eq!(
        job.settings.allowed_tools,
        ["mcp__github__create_issue", "Bash"]
    );
}

#[test]
fn patch_keeps_what_it_does_not_name_and_clears_nulls() {
    let job = validate(
        with_run(RunSettingsInput {
            model: Some("claude-sonnet-4-5".into()),
            ..Default::default()
        }),
        None,
        Utc::now(),
    )
    .unwrap();
    let patch: JobPatch = serde_json::from_str(r#"{"model": null, "timeout_secs": 60}"#).unwrap();
    let updated = validate(apply(&job, patch), Some(&job), Utc::now()).unwrap();
    assert_eq!(updated.settings.model, None);
    assert_eq!(updated.settings.timeout_secs, 60);
    assert_eq!(updated.schedule, job.schedule);
    assert_eq!(
        updated.fire_cursor, job.fire_cursor,
        "an unchanged schedule keeps its cursor"
    );
}

#[test]
fn a_patch_of_a_shell_job_is_checked_as_a_shell_job() {
    let job = validate(
        JobInput {
            prompt: None,
            command: Some("true".into()),
            ..input()
        },
        None,
        Utc::now(),
    )
    .unwrap();
    let patch: JobPatch = serde_json::from_str(r#"{"timeout_secs": 5}"#).unwrap();
    let updated = validate(apply(&job, patch), Some(&job), Utc::now()).unwrap();
    assert_eq!(updated.settings.timeout_secs, 5);
    let patch: JobPatch = serde_json::from_str(r#"{"max_turns": 3}"#).unwrap();
    let refused = validate(apply(&job, patch), Some(&job), Utc::now());
    assert!(matches!(refused, Err(ServiceError::Invalid { field, .. }) if field == "max_turns"));
}
