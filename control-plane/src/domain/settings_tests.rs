//! Tests of `settings`: defaults, each wrong field named, patches, what shell runs refuse.

use super::*;

fn resolve(input: RunSettingsInput, kind: JobKind) -> ServiceResult<RunSettings> {
    input.resolve(kind, RetryPolicy::default())
}

fn field_of(result: ServiceResult<RunSettings>) -> String {
    match result {
        Err(ServiceError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

/// Found by fuzzing (`fuzz/`, target `mcp_tool_args`): `github:…` of 196 characters passed,
/// was stored as `mcp__github__…` of 202, and every later update of the record was refused
/// for a tool name it did not change.
#[test]
fn tool_names_are_checked_as_they_are_stored() {
    let name = format!("github:{}", "x".repeat(190));
    let input = || RunSettingsInput {
        allowed_tools: Some(vec!["Read".into(), name.clone()]),
        ..Default::default()
    };
    assert_eq!(
        field_of(resolve(input(), JobKind::Claude)),
        "allowed_tools.1"
    );
    let short = format!("github:{}", "x".repeat(180));
    let stored = resolve(
        RunSettingsInput {
            allowed_tools: Some(vec![short]),
            ..Default::default()
        },
        JobKind::Claude,
    )
    .unwrap();
    let again = resolve(RunSettingsInput::from(&stored), JobKind::Claude).unwrap();
    assert_eq!(again.allowed_tools, stored.allowed_tools);
}

#[test]
fn what_is_left_out_takes_the_defaults_of_the_kind() {
    let claude = resolve(RunSettingsInput::default(), JobKind::Claude).unwrap();
    assert_eq!(claude.timeout_secs, DEFAULT_TIMEOUT_SECS);
    assert_eq!(claude.pool, DEFAULT_POOL);
    assert_eq!(claude.retry, RetryPolicy::default());
    assert_eq!(claude.sandbox, Sandbox::defaults(true));
    let shell = resolve(RunSettingsInput::default(), JobKind::Shell).unwrap();
    assert_eq!(shell.sandbox.network, NetworkMode::None);
    let quick = RunSettingsInput::default()
        .resolve(JobKind::Claude, RetryPolicy::NONE)
        .unwrap();
    assert_eq!(quick.retry.count, 0, "the caller's retry default applies");
}

#[test]
fn each_wrong_field_is_named() {
    let cases = [
        (
            RunSettingsInput {
                model: Some(" ".into()),
                ..Default::default()
            },
            "model",
        ),
        (
            RunSettingsInput {
                max_turns: Some(0),
                ..Default::default()
            },
            "max_turns",
        ),
        (
            RunSettingsInput {
                timeout_secs: Some(0),
                ..Default::default()
            },
            "timeout_secs",
        ),
        (
            RunSettingsInput {
                pool: Some("no spaces".into()),
                ..Default::default()
            },
            "pool",
        ),
        (
            RunSettingsInput {
                retry: Some(RetryInput {
                    count: 11,
                    backoff_secs: None,
                    lost: None,
                }),
                ..Default::default()
            },
            "retry.count",
        ),
        (
            RunSettingsInput {
                sandbox: Some(SandboxInput {
                    network: Some(NetworkMode::None),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "sandbox.network",
        ),
        (
            RunSettingsInput {
                disallowed_tools: Some(vec![String::new()]),
                ..Default::default()
            },
            "disallowed_tools.0",
        ),
    ];
    for (input, field) in cases {
        assert_eq!(field_of(resolve(input, JobKind::Claude)), field);
    }
}

#[test]
fn a_shell_run_refuses_what_only_claude_uses_but_takes_the_rest() {
    let shell_with_model = RunSettingsInput {
        model: Some("claude-sonnet-4-5".into()),
        ..Default::default()
    };
    assert_eq!(field_of(resolve(shell_with_model, JobKind::Shell)), "model");
    let shell = RunSettingsInput {
        timeout_secs: Some(5),
        pool: Some("gpu".into()),
        allowed_tools: Some(Vec::new()),
        ..Default::default()
    };
    let settings = resolve(shell, JobKind::Shell).unwrap();
    assert_eq!((settings.timeout_secs, settings.pool.as_str()), (5, "gpu"));
}

#[test]
fn a_patch_replaces_what_it_names_clears_nulls_and_merges_the_sandbox() {
    let current = resolve(
        RunSettingsInput {
            model: Some("claude-sonnet-4-5".into()),
            max_turns: Some(3),
            sandbox: Some(SandboxInput {
                memory_mb: Some(512),
                ..Default::default()
            }),
            ..Default::default()
        },
        JobKind::Claude,
    )
    .unwrap();
    let mut input = RunSettingsInput::from(&current);
    let patch: RunSettingsPatch = serde_json::from_value(serde_json::json!({
        "model": null,
        "timeout_secs": 60,
        "sandbox": { "cpus": 1.0 },
    }))
    .unwrap();
    input.apply(patch);
    let patched = resolve(input, JobKind::Claude).unwrap();
    assert_eq!(patched.model, None);
    assert_eq!(patched.max_turns, Some(3), "not named: kept");
    assert_eq!(patched.timeout_secs, 60);
    assert_eq!(
        (patched.sandbox.memory_mb, patched.sandbox.cpus),
        (512, 1.0)
    );
}

#[test]
fn the_first_given_field_is_found_in_declaration_order() {
    assert_eq!(RunSettingsInput::default().first_given(), None);
    let input = RunSettingsInput {
        allowed_tools: Some(Vec::new()),
        pool: Some("x".into()),
        sandbox: Some(SandboxInput::default()),
        ..Default::default()
    };
    assert_eq!(
        input.first_given(),
        Some("pool"),
        "an empty list is not given"
    );
}

#[test]
fn settings_stored_before_sandboxes_read_with_a_claude_sandbox() {
    let stored = serde_json::json!({
        "model": null, "allowed_tools": [], "disallowed_tools": [], "max_turns": null,
        "timeout_secs": 60, "max_cost_usd": null, "pool": "default",
        "retry": { "count": 2, "backoff_secs": 30 },
    });
    let settings: RunSettings = serde_json::from_value(stored).unwrap();
    assert_eq!(settings.sandbox, Sandbox::defaults(true));
}
