//! Tests of `rules.rs`.

use super::*;
use chrono::TimeZone;

fn window(days: &[&str], from: &str, to: &str) -> TimeWindow {
    TimeWindow {
        days: days.iter().map(|d| (*d).to_owned()).collect(),
        from: from.into(),
        to: to.into(),
    }
}

#[test]
fn windows_are_read_in_the_job_zone_and_may_span_midnight() {
    let paris: Tz = "Europe/Paris".parse().unwrap();
    let office = Conditions {
        windows: vec![window(&["weekdays"], "09:00", "17:00")],
        ..Conditions::default()
    };
    // Monday 2026-12-07 08:30 UTC is 09:30 in Paris: inside.
    let monday = Utc.with_ymd_and_hms(2026, 12, 7, 8, 30, 0).unwrap();
    assert_eq!(office.outside_windows(monday, paris), None);
    // 07:30 UTC is 08:30 in Paris: outside, and the reason says so.
    let early = Utc.with_ymd_and_hms(2026, 12, 7, 7, 30, 0).unwrap();
    let why = office.outside_windows(early, paris).unwrap();
    assert!(
        why.contains("weekdays 09:00–17:00") && why.contains("Mon 08:30"),
        "{why}"
    );
    // Saturday: outside.
    let saturday = Utc.with_ymd_and_hms(2026, 12, 12, 10, 0, 0).unwrap();
    assert!(office.outside_windows(saturday, paris).is_some());
    // 22:00–06:00 on Fridays covers Saturday 03:00, not Saturday 23:00.
    let night = Conditions {
        windows: vec![window(&["fri"], "22:00", "06:00")],
        ..Conditions::default()
    };
    let early_saturday = Utc.with_ymd_and_hms(2026, 12, 12, 3, 0, 0).unwrap();
    assert_eq!(night.outside_windows(early_saturday, Tz::UTC), None);
    let late_saturday = Utc.with_ymd_and_hms(2026, 12, 12, 23, 0, 0).unwrap();
    assert!(night.outside_windows(late_saturday, Tz::UTC).is_some());
}

#[test]
fn bad_conditions_and_budgets_name_the_field() {
    let bad_time = Conditions {
        windows: vec![window(&[], "9am", "17:00")],
        ..Conditions::default()
    };
    let (field, message) = bad_time.validate().unwrap_err();
    assert_eq!(field, "conditions.windows");
    assert!(
        message.contains("`9am`") && message.contains("HH:MM"),
        "{message}"
    );
    let bad_day = Conditions {
        windows: vec![window(&["monday"], "09:00", "17:00")],
        ..Conditions::default()
    };
    assert!(bad_day
        .validate()
        .unwrap_err()
        .1
        .contains("`monday` is not a day"));
    let zero = Conditions {
        max_runs_per_day: Some(0),
        ..Conditions::default()
    };
    assert_eq!(
        zero.validate().unwrap_err().0,
        "conditions.max_runs_per_day"
    );
    let negative = Budget {
        daily_usd: Some(-1.0),
        monthly_usd: None,
        alert: None,
    };
    assert_eq!(negative.validate().unwrap_err().0, "budget.daily_usd");
}

#[test]
fn chain_ends_match_as_documented() {
    assert!(ChainOn::Success.matches(RunStatus::Succeeded));
    assert!(!ChainOn::Success.matches(RunStatus::Failed));
    assert!(ChainOn::Failure.matches(RunStatus::Lost));
    assert!(!ChainOn::Failure.matches(RunStatus::Cancelled));
    assert!(ChainOn::Any.matches(RunStatus::Cancelled));
    assert!(!ChainOn::Any.matches(RunStatus::Running));
    assert_eq!(
        chain_key(&[RunId::new(), RunId::new()])
            .matches(',')
            .count(),
        1
    );
}

#[test]
fn hook_subscriptions_match_events_tools_and_directories() {
    let subscription = HookSubscription {
        events: vec!["PostToolUse".into(), "Stop".into()],
        matcher: Some("Edit|Write|mcp__github__.*".into()),
        cwd: Some("/work/app".into()),
        debounce_secs: 10,
    };
    assert!(subscription.validate().is_ok());
    let event = |name: &str, tool: &str, cwd: &str| json!({ "hook_event_name": name, "tool_name": tool, "cwd": cwd });
    assert!(subscription.matches(&event("PostToolUse", "Write", "/work/app")));
    assert!(subscription.matches(&event(
        "PostToolUse",
        "mcp__github__create_issue",
        "/work/app/src"
    )));
    assert!(!subscription.matches(&event("PostToolUse", "Bash", "/work/app")));
    assert!(!subscription.matches(&event("PreToolUse", "Write", "/work/app")));
    assert!(!subscription.matches(&event("PostToolUse", "Write", "/work/application")));
    // The matcher is for tool events only.
    assert!(subscription.matches(&event("Stop", "", "/work/app")));
    let bad = HookSubscription {
        events: vec!["AfterTool".into()],
        ..subscription.clone()
    };
    assert!(bad.validate().unwrap_err().1.contains("`AfterTool`"));
    let bad = HookSubscription {
        matcher: Some("Bash(rm:*)".into()),
        ..subscription
    };
    assert_eq!(bad.validate().unwrap_err().0, "on_hook.matcher");
}

#[test]
fn file_watches_match_their_directory_and_pattern() {
    assert!(watch_matches(
        "/data/inbox/*.csv",
        "/data/inbox/a.csv",
        false
    ));
    assert!(!watch_matches(
        "/data/inbox/*.csv",
        "/data/inbox/a.txt",
        false
    ));
    assert!(!watch_matches(
        "/data/inbox/*.csv",
        "/data/inbox/sub/a.csv",
        false
    ));
    assert!(watch_matches(
        "/data/inbox/*.csv",
        "/data/inbox/sub/a.csv",
        true
    ));
    assert!(!watch_matches(
        "/data/inbox/*.csv",
        "/data/inboxes/a.csv",
        true
    ));
    assert!(watch_matches(
        "/data/report-??.md",
        "/data/report-07.md",
        false
    ));
    assert!(!watch_matches(
        "/data/report-??.md",
        "/data/report-7.md",
        false
    ));
    assert!(watch_matches("/tmp/x", "/tmp/x", false));
    let subscription = FileSubscription {
        pool: "default".into(),
        paths: vec!["/data/*/x.csv".into()],
        events: default_file_events(),
        recursive: false,
        debounce_ms: 500,
    };
    assert!(subscription
        .validate()
        .unwrap_err()
        .1
        .contains("only the last part"));
    let relative = FileSubscription {
        paths: vec!["inbox/*.csv".into()],
        ..subscription
    };
    assert!(relative.validate().unwrap_err().1.contains("absolute"));
}

#[test]
fn job_prompts_may_use_run_values_but_not_delivery_values() {
    assert!(check_prompt_values("plain text").is_ok());
    assert!(check_prompt_values("on {{ date }} for {{ job.name }}: {{ parent.result }}").is_ok());
    let err = check_prompt_values("{{ payload.x }}").unwrap_err();
    assert!(err.contains("webhook"), "{err}");
    let err = check_prompt_values("{{ dat }}").unwrap_err();
    assert!(err.contains("did you mean `date`"), "{err}");
}
