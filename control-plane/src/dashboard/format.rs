//! How values read on a page: times (in UTC, in a job's zone, and relative), durations, money,
//! token counts, and text cut to a length.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// `2026-12-07 09:00:00 UTC`.
pub fn utc(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `2026-12-07T09:00:00Z`: what the page's script turns into the viewer's own time zone.
pub fn iso(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The time in an IANA zone: `Mon 2026-12-07 10:00 CET`.
pub fn in_zone(time: DateTime<Utc>, zone: &str) -> String {
    match zone.parse::<Tz>() {
        Ok(tz) => time
            .with_timezone(&tz)
            .format("%a %Y-%m-%d %H:%M %Z")
            .to_string(),
        Err(_) => utc(time),
    }
}

/// `in 3 min`, `2 h ago`.
pub fn relative(time: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (time - now).num_seconds();
    let span = duration_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// `45 s`, `3 min`, `2 h 5 min`, `3 d`.
pub fn duration_secs(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86_400 => match (seconds % 3600) / 60 {
            0 => format!("{} h", seconds / 3600),
            minutes => format!("{} h {minutes} min", seconds / 3600),
        },
        _ => format!("{} d", seconds / 86_400),
    }
}

/// A run's duration: from start to end, or to now while it goes.
pub fn run_duration(
    started: Option<DateTime<Utc>>,
    finished: Option<DateTime<Utc>>,
) -> Option<String> {
    let started = started?;
    let end = finished.unwrap_or_else(Utc::now);
    let millis = (end - started).num_milliseconds().max(0) as u64;
    Some(if millis < 10_000 {
        format!("{:.1} s", millis as f64 / 1000.0)
    } else {
        duration_secs(millis / 1000)
    })
}

/// `$0.0123`, `$12.50`.
pub fn usd(amount: f64) -> String {
    if amount == 0.0 {
        "$0".to_owned()
    } else if amount.abs() < 1.0 {
        format!("${amount:.4}")
    } else {
        format!("${amount:.2}")
    }
}

/// `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The name a value has in the API's JSON (an enum's serde name: `write`, `hmac_sha256`).
pub fn wire_name(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A run id short enough for a list: its last 8 hex digits (the first ones are its creation
/// time, alike for runs made together).
pub fn short_id(id: impl std::fmt::Display) -> String {
    let id = id.to_string();
    id[id.len().saturating_sub(8)..].to_owned()
}

/// At most `max` bytes of `text` (cut at a character boundary), and whether it was cut.
pub fn cut(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

/// Text made safe for HTML content and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    escape_into(&mut out, text);
    out
}

/// [`escape`], appending to `out`.
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_the_way_people_write_them() {
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(999), "999");
        assert_eq!(usd(0.01234), "$0.0123");
        assert_eq!(usd(12.5), "$12.50");
        assert_eq!(duration_secs(3_900), "1 h 5 min");
        assert_eq!(cut("héllo", 2), ("h", true));
        let now = Utc::now();
        assert_eq!(
            relative(now + chrono::Duration::seconds(180), now),
            "in 3 min"
        );
    }
}
