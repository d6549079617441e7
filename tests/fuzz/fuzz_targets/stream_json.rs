//! The worker's reading of the Claude CLI's `--output-format stream-json` output.
//!
//! Input: the CLI's stdout, one line per line (the same text is also read as stderr lines). Each
//! `{{big}}` in it stands for 80 KB of two-byte characters, past the cap on kept strings, which a
//! fuzz input of a few KB could not reach otherwise.
//!
//! Properties: no output makes parsing or the outcome panic; a line that is not a JSON object
//! becomes one `output` event holding the line; no string kept in an event is longer than the cap
//! plus its note; the estimated cost is finite and not negative; and a second parser reading the
//! same lines makes the same events and outcome.
#![no_main]

use autopilot_proto::EventKind;
use autopilot_worker::stream_json::{
    is_transient_api_error, stderr_event, StreamParser, MAX_EVENT_STRING_BYTES,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Room for the note that says how much of a cut string was dropped.
const NOTE_BYTES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).replace("{{big}}", &"é".repeat(40_000));
    let mut parser = StreamParser::new();
    let mut events = Vec::new();
    for line in text.lines() {
        let from_line = parser.parse_stdout(line);
        if !matches!(serde_json::from_str::<Value>(line), Ok(Value::Object(_))) {
            assert_eq!(from_line.len(), 1, "{line:?}");
            let (kind, data) = &from_line[0];
            assert_eq!(*kind, EventKind::Output);
            let kept = data["text"].as_str().expect("the line's text");
            assert!(line.starts_with(kept.split('…').next().unwrap_or_default()));
        }
        for (_, data) in &from_line {
            check_strings(data);
        }
        events.extend(from_line);
        let (kind, data) = stderr_event(line);
        assert_eq!(kind, EventKind::Stderr);
        check_strings(&data);
        let _ = is_transient_api_error(line);
    }
    let outcome = parser.outcome();
    let cost = parser.estimated_cost_usd();
    assert!(cost.is_finite() && cost >= 0.0, "estimated cost {cost}");

    let mut again = StreamParser::new();
    let events_again: Vec<_> = text
        .lines()
        .flat_map(|line| again.parse_stdout(line))
        .collect();
    assert!(events == events_again, "the same lines made other events");
    assert_eq!(outcome, again.outcome());
});

/// Every string in an event is cut to the cap (plus the note saying so).
fn check_strings(value: &Value) {
    match value {
        Value::String(text) => assert!(
            text.len() <= MAX_EVENT_STRING_BYTES + NOTE_BYTES,
            "a string of {} bytes was kept",
            text.len()
        ),
        Value::Array(items) => items.iter().for_each(check_strings),
        Value::Object(map) => map.values().for_each(check_strings),
        _ => {}
    }
}
