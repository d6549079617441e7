//! Schedules: cron expressions and time zones as users write them, one-shot `at` times, and the
//! fire times computed from them.
//!
//! Input: `CRON \0 TIME-ZONE \0 AFTER \0 AT`: a cron expression or alias, an IANA zone name
//! (`UTC` when empty), the Unix second to compute fires after (kept within 1970–2200, where a
//! scheduler's cursor lives), and an `at` time as a client sends it (RFC 3339, read the way the
//! API and MCP tools read it).
//!
//! Properties: parsing never panics and a refusal says why; the fires of a schedule that parses
//! fall on whole seconds, strictly after the cursor and strictly increasing, and asking from any
//! second before the first fire finds that same fire (none is skipped); a one-shot time fires
//! once, and only while it is ahead.
#![no_main]

use autopilot_control_plane::domain::schedule::{parse_cron, parse_timezone, Compiled};
use autopilot_control_plane::domain::Schedule;
use autopilot_fuzz::{number, parts};
use chrono::{DateTime, Duration, Timelike, Utc};
use libfuzzer_sys::fuzz_target;

/// 2200-01-01T00:00:00Z, the latest cursor tried.
const LATEST_CURSOR: i64 = 7_258_118_400;

fuzz_target!(|data: &[u8]| {
    let [expression, zone, after, at] = parts::<4>(data);
    let expression = String::from_utf8_lossy(expression).into_owned();
    let zone = String::from_utf8_lossy(zone);
    let zone = match zone.trim() {
        "" => "UTC",
        name => name,
    };
    let after = number::<i64>(after)
        .unwrap_or(1_767_225_600)
        .rem_euclid(LATEST_CURSOR);
    let after = DateTime::<Utc>::from_timestamp(after, 0).expect("in range");

    if let Err(error) = parse_cron(&expression) {
        assert!(!error.message.is_empty());
    }
    let zone_ok = parse_timezone(zone).is_ok();
    match Compiled::new(&Schedule::Cron(expression.clone()), zone) {
        Err(message) => assert!(!message.is_empty()),
        Ok(compiled) => {
            assert!(zone_ok && parse_cron(&expression).is_ok());
            check_cron_fires(&compiled, after, &expression, zone);
        }
    }

    let at = serde_json::Value::String(String::from_utf8_lossy(at).into_owned());
    if let Ok(at) = serde_json::from_value::<DateTime<Utc>>(at) {
        let compiled = Compiled::new(&Schedule::At(at), zone).expect("a time needs no parsing");
        let expected = (at > after).then_some(at);
        assert_eq!(compiled.next_after(after), expected);
        assert_eq!(
            compiled.next_fires(after, 3),
            expected.into_iter().collect::<Vec<_>>()
        );
    }
});

fn check_cron_fires(compiled: &Compiled, after: DateTime<Utc>, expression: &str, zone: &str) {
    let fires = compiled.next_fires(after, 4);
    let mut cursor = after;
    for fire in &fires {
        assert!(
            *fire > cursor,
            "`{expression}` in {zone}: {fire} after {cursor}"
        );
        assert_eq!(fire.nanosecond(), 0, "`{expression}` in {zone}: {fire}");
        cursor = *fire;
    }
    let Some(first) = fires.first() else {
        return;
    };
    // From any second between the cursor and the first fire, the first fire is next.
    let gap = (*first - after).num_seconds();
    for back in [1, 2, gap / 2, gap - 1] {
        if back < 1 || back >= gap {
            continue;
        }
        let from = *first - Duration::seconds(back);
        assert_eq!(
            compiled.next_after(from),
            Some(*first),
            "`{expression}` in {zone}: from {from}, after {after}"
        );
    }
}
