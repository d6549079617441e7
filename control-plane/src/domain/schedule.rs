//! Cron expressions, intervals and one-shot times: parsing with errors that point at the wrong field, and
//! the fire times of a schedule in its time zone.

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use super::job::Schedule;

const FIELD_NAMES: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day of month",
    "month",
    "day of week",
];
const FIELD_RANGES: [&str; 6] = [
    "0-59",
    "0-59",
    "0-23",
    "1-31",
    "1-12 or JAN-DEC",
    "0-7 or SUN-SAT",
];

/// A cron expression that failed to parse, with what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronSyntaxError {
    pub message: String,
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Parses a 5-field (minute precision) or 6-field (second precision) cron expression, or an
/// alias such as `@hourly`. The error names the failing field, shows where it is and gives an
/// example.
pub fn parse_cron(expr: &str) -> Result<Cron, CronSyntaxError> {
    let trimmed = expr.trim();
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    if trimmed.is_empty() {
        return Err(CronSyntaxError {
            message: format!("the cron expression is empty; {EXAMPLES}"),
        });
    }
    let is_alias = trimmed.starts_with('@');
    if !is_alias && !(5..=6).contains(&fields.len()) {
        return Err(CronSyntaxError {
            message: format!(
                "`{trimmed}` has {} field(s); a cron expression has 5 (minute hour day-of-month month day-of-week) \
                 or 6 (with seconds first); {EXAMPLES}",
                fields.len()
            ),
        });
    }
    // croner skips the empty items of a list, so a field such as `,` or `5,` would parse and
    // allow no value at all: the expression would never fire, and every search for its next fire
    // would run to croner's last year (seconds of CPU, in the scheduler's loop too).
    let empty_item = fields
        .iter()
        .position(|field| field.split(',').any(str::is_empty));
    if let Some(index) = empty_item.filter(|_| !is_alias) {
        return Err(field_error(
            trimmed,
            &fields,
            index,
            "a list has an empty item",
        ));
    }
    let whole_error = match parser().parse(trimmed) {
        Ok(cron) if is_alias || has_a_day(&fields) => return Ok(cron),
        Ok(_) => {
            return Err(CronSyntaxError {
                message: format!(
                    "`{trimmed}` never fires: no date has that day of the month in those months{}; {EXAMPLES}",
                    if fields[fields.len() - 1] == "*" { "" } else { " on that day of the week" }
                ),
            })
        }
        Err(err) => err.to_string(),
    };
    if is_alias {
        return Err(CronSyntaxError {
            message: format!("`{trimmed}` is not a known alias (@yearly, @monthly, @weekly, @daily, @hourly): {whole_error}"),
        });
    }
    // Find the culprit: test each field alone, with every other field a wildcard.
    for index in 0..fields.len() {
        let probe: Vec<&str> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| if i == index { *f } else { "*" })
            .collect();
        if let Err(err) = parser().parse(&probe.join(" ")) {
            return Err(field_error(trimmed, &fields, index, &err.to_string()));
        }
    }
    Err(CronSyntaxError {
        message: format!("invalid cron expression `{trimmed}`: {whole_error}; {EXAMPLES}"),
    })
}

/// Whether the date fields (day of month, month, day of week; the last three) of a parsed
/// expression match any day. Only they can make a valid expression impossible (`0 0 31 2 *`,
/// the 31st of February): each time field allows some value. Looks at every day of 28 years,
/// 2001 to 2028, which hold every calendar a year of 1901–2099 can have (seven weekdays to
/// start on, leap or not): a few milliseconds, where croner's own search for a next fire would
/// go on to its last year (most of a second, at every look at the schedule).
fn has_a_day(fields: &[&str]) -> bool {
    let [dom, month, dow] = fields[fields.len() - 3..] else {
        return true;
    };
    let Ok(days) = parser().parse(&format!("0 0 0 {dom} {month} {dow}")) else {
        return true;
    };
    let first = chrono::NaiveDate::from_ymd_opt(2001, 1, 1).expect("a date");
    first
        .iter_days()
        .take_while(|day| day.year() < 2029)
        .filter_map(|day| day.and_hms_opt(0, 0, 0))
        .any(|midnight| days.is_time_matching(&midnight.and_utc()).unwrap_or(true))
}

const EXAMPLES: &str =
    "examples: `0 9 * * 1-5` (09:00 on weekdays), `*/10 * * * * *` (every 10 seconds)";

/// The error for field `index` of a 5- or 6-field expression: its name, what it takes, and a
/// caret under it.
fn field_error(trimmed: &str, fields: &[&str], index: usize, why: &str) -> CronSyntaxError {
    let offset = 6 - fields.len();
    let name = FIELD_NAMES[index + offset];
    let range = FIELD_RANGES[index + offset];
    let column = fields[..index].iter().map(|f| f.len() + 1).sum::<usize>();
    CronSyntaxError {
        message: format!(
            "invalid cron expression: field {} ({name}) `{}` is not valid ({why}); {name} takes {range}, \
             `*`, lists `a,b`, ranges `a-b` and steps `*/n`\n  {trimmed}\n  {}^\n{EXAMPLES}",
            index + 1,
            fields[index],
            " ".repeat(column)
        ),
    }
}

/// Parses an IANA time zone name.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown time zone `{name}`: use an IANA name such as `UTC`, `Europe/Paris` or `America/New_York`")
    })
}

/// Shortest and longest interval between fires.
pub const MIN_INTERVAL_SECS: u64 = 1;
pub const MAX_INTERVAL_SECS: u64 = 366 * 86_400;

/// Parses an interval such as `90s`, `15m`, `2h`, `1d` or `1h30m` (a bare number is seconds)
/// into seconds, between [`MIN_INTERVAL_SECS`] and [`MAX_INTERVAL_SECS`].
pub fn parse_interval(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let explain = |why: &str| {
        format!(
            "`{trimmed}` is not an interval ({why}): write a number with a unit, s, m, h or d, \
             such as `30s`, `15m`, `2h`, `1d` or `1h30m`"
        )
    };
    if trimmed.is_empty() {
        return Err(explain("it is empty"));
    }
    if let Ok(secs) = trimmed.parse::<u64>() {
        return check_interval(trimmed, secs);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in trimmed.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            ' ' if digits.is_empty() => continue,
            other => return Err(explain(&format!("`{other}` is not a unit"))),
        };
        if digits.is_empty() {
            return Err(explain(&format!("a number must come before `{c}`")));
        }
        let amount: u64 = digits.parse().map_err(|_| explain("it is far too long"))?;
        digits.clear();
        total = amount
            .checked_mul(unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| explain("it is far too long"))?;
    }
    if !digits.is_empty() {
        return Err(explain(&format!("`{digits}` has no unit")));
    }
    check_interval(trimmed, total)
}

fn check_interval(text: &str, secs: u64) -> Result<u64, String> {
    if (MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!(
            "the interval `{text}` is {secs} s; it must be from {MIN_INTERVAL_SECS} s to 366 days"
        ))
    }
}

/// An interval in seconds written back the way people write it (`1h30m`, `45s`, `1d`).
pub fn format_interval(secs: u64) -> String {
    let mut out = String::new();
    let mut rest = secs;
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// A schedule ready to compute fire times.
#[derive(Debug, Clone)]
pub enum Compiled {
    Cron { cron: Box<Cron>, tz: Tz },
    At(DateTime<Utc>),
    Every { every_ms: i64, start_ms: i64 },
    None,
}

impl Compiled {
    pub fn new(schedule: &Schedule, timezone: &str) -> Result<Self, String> {
        Ok(match schedule {
            Schedule::Cron(expr) => Compiled::Cron {
                cron: Box::new(parse_cron(expr).map_err(|err| err.message)?),
                tz: parse_timezone(timezone)?,
            },
            Schedule::At(at) => Compiled::At(*at),
            Schedule::Every { every_secs, start } => Compiled::Every {
                every_ms: i64::try_from(*every_secs)
                    .ok()
                    .and_then(|secs| secs.checked_mul(1000))
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| format!("interval of {every_secs} s is out of range"))?,
                start_ms: start.timestamp_millis(),
            },
            Schedule::None => Compiled::None,
        })
    }

    /// The first fire strictly after `after`, if there is one.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            // Cron has whole seconds: search from the start of `after`'s second, or a cursor
            // with a fraction would carry it into every fire.
            Compiled::Cron { cron, tz } => cron
                .find_next_occurrence(
                    &after.with_nanosecond(0).unwrap_or(after).with_timezone(tz),
                    false,
                )
                .ok()
                .map(|next| next.with_timezone(&Utc)),
            Compiled::At(at) => (*at > after).then_some(*at),
            Compiled::Every { every_ms, start_ms } => {
                let after_ms = after.timestamp_millis();
                let next_ms = if after_ms < *start_ms {
                    *start_ms
                } else {
                    // The first beat strictly after `after`.
                    let beats = (after_ms - start_ms) / every_ms + 1;
                    start_ms.checked_add(beats.checked_mul(*every_ms)?)?
                };
                DateTime::<Utc>::from_timestamp_millis(next_ms)
            }
            Compiled::None => None,
        }
    }

    /// Up to `limit` fires strictly after `after`.
    pub fn next_fires(&self, after: DateTime<Utc>, limit: usize) -> Vec<DateTime<Utc>> {
        let mut fires = Vec::with_capacity(limit.min(1024));
        let mut cursor = after;
        while fires.len() < limit {
            let Some(next) = self.next_after(cursor) else {
                break;
            };
            fires.push(next);
            cursor = next;
        }
        fires
    }
}

/// A daylight-saving change that touches a schedule: on `date`, the local times from `from` to
/// `to` do not exist (`gap`: fires there move past the gap) or happen twice (a fire there runs
/// once, at the first of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaylightSavingNote {
    pub date: chrono::NaiveDate,
    pub from: chrono::NaiveTime,
    pub to: chrono::NaiveTime,
    pub gap: bool,
}

/// The daylight-saving changes of `tz` within `days` after `after` whose skipped or repeated
/// local times the cron expression matches.
pub fn daylight_saving_notes(
    cron: &Cron,
    tz: Tz,
    after: DateTime<Utc>,
    days: i64,
) -> Vec<DaylightSavingNote> {
    use chrono::{Duration, Offset, TimeZone};
    let offset_at = |time: DateTime<Utc>| time.with_timezone(&tz).offset().fix().local_minus_utc();
    let end = after + Duration::days(days);
    let mut notes = Vec::new();
    let mut time = after;
    let mut offset = offset_at(time);
    while time < end {
        let next = time + Duration::hours(1);
        let next_offset = offset_at(next);
        if next_offset != offset {
            // The exact instant of the change, to the second.
            let (mut low, mut high) = (time, next);
            while high - low > Duration::seconds(1) {
                let middle = low + (high - low) / 2;
                if offset_at(middle) == offset {
                    low = middle;
                } else {
                    high = middle;
                }
            }
            let change = i64::from(next_offset - offset);
            // The wall clock at the change, read with the offset before it.
            let wall = (high + Duration::seconds(i64::from(offset))).naive_utc();
            let (start, length) = if change > 0 {
                (wall, change)
            } else {
                (wall + Duration::seconds(change), -change)
            };
            // Whole minutes are enough unless the expression names seconds other than 0.
            let on_the_minute = (1..60).all(|s| !cron.pattern.second_match(s).unwrap_or(false));
            let step = if on_the_minute { 60 } else { 1 };
            let touched = (0..length).step_by(step).any(|second| {
                let local = Utc.from_utc_datetime(&(start + Duration::seconds(second)));
                cron.is_time_matching(&local).unwrap_or(false)
            });
            if touched {
                notes.push(DaylightSavingNote {
                    date: start.date(),
                    from: start.time(),
                    to: (start + Duration::seconds(length)).time(),
                    gap: change > 0,
                });
            }
        }
        time = next;
        offset = next_offset;
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn five_and_six_field_expressions_parse() {
        assert!(parse_cron("0 9 * * 1-5").is_ok());
        assert!(parse_cron("*/5 * * * * *").is_ok());
        assert!(parse_cron("@hourly").is_ok());
    }

    #[test]
    fn errors_name_the_field_and_point_at_it() {
        let err = parse_cron("0 61 * * *").unwrap_err().message;
        assert!(
            err.contains("field 2 (hour)") || err.contains("field 2 (minute)"),
            "{err}"
        );
        assert!(err.contains("`61`"), "{err}");
        assert!(err.contains("  ^"), "{err}");
        let err = parse_cron("* * *").unwrap_err().message;
        assert!(err.contains("3 field(s)"), "{err}");
        let err = parse_cron("0 0 9 * * MON-XYZ").unwrap_err().message;
        assert!(err.contains("day of week"), "{err}");
    }

    /// Found by fuzzing (`fuzz/`, target `schedule`): `* , * * * 0` parsed (croner skips empty
    /// list items, so the minute allowed no value) and each search for its next fire took 11 s.
    #[test]
    fn an_expression_that_can_never_fire_is_refused() {
        for never in [
            "0 0 31 2 *",
            "* * * 31 4,6,9,11 *",
            "0 0 30,31 FEB *",
            "0 0 30 2 *",
        ] {
            let err = parse_cron(never).unwrap_err().message;
            assert!(err.contains("never fires"), "{never}: {err}");
        }
        // Rare is not never: the 29th of February, the fifth Friday of a February, the 31st
        // of any month with 31 days, a weekday with the day of the month as well.
        for rare in [
            "0 0 29 2 *",
            "0 0 * 2 5#5",
            "0 0 31 * *",
            "0 0 L 2 *",
            "0 0 31 2 1",
            "@yearly",
        ] {
            let cron = parse_cron(rare).unwrap_or_else(|err| panic!("{rare}: {err}"));
            let next = cron.find_next_occurrence(&utc(2026, 1, 1, 0, 0, 0), false);
            assert!(next.is_ok(), "{rare} fires: {next:?}");
        }
    }

    #[test]
    fn a_list_with_an_empty_item_is_refused_at_once() {
        for (expression, field) in [
            ("* , * * * 0", "field 2 (minute) `,`"),
            ("0 , * * *", "field 2 (hour) `,`"),
            ("0 9 1,,15 * *", "field 3 (day of month) `1,,15`"),
            ("0 9 * * 1,", "field 5 (day of week) `1,`"),
        ] {
            let err = parse_cron(expression).unwrap_err().message;
            assert!(err.contains(field), "{expression}: {err}");
            assert!(err.contains("empty item"), "{expression}: {err}");
        }
        assert!(parse_cron("0 9 1,15 * MON,FRI").is_ok());
    }

    #[test]
    fn five_fields_are_minute_hour_dom_month_dow() {
        let err = parse_cron("0 25 * * *").unwrap_err().message;
        assert!(err.contains("field 2 (hour)"), "{err}");
    }

    #[test]
    fn next_fires_follow_the_time_zone() {
        let compiled = Compiled::new(&Schedule::Cron("0 9 * * *".into()), "Europe/Paris").unwrap();
        // 09:00 in Paris in winter is 08:00 UTC.
        assert_eq!(
            compiled.next_after(utc(2026, 1, 10, 12, 0, 0)),
            Some(utc(2026, 1, 11, 8, 0, 0))
        );
        // and 07:00 UTC in summer.
        assert_eq!(
            compiled.next_after(utc(2026, 7, 10, 12, 0, 0)),
            Some(utc(2026, 7, 11, 7, 0, 0))
        );
    }

    fn local_fires(expr: &str, tz: &str, from: DateTime<Utc>, count: usize) -> Vec<String> {
        let compiled = Compiled::new(&Schedule::Cron(expr.into()), tz).unwrap();
        let zone: Tz = tz.parse().unwrap();
        compiled
            .next_fires(from, count)
            .iter()
            .map(|f| f.with_timezone(&zone).format("%m-%d %H:%M %Z").to_string())
            .collect()
    }

    #[test]
    fn a_daily_time_in_the_spring_forward_gap_still_fires_that_day() {
        // America/New_York, 2026-03-08: 02:00 EST jumps to 03:00 EDT, so 02:30 does not exist.
        let fires = local_fires(
            "30 2 * * *",
            "America/New_York",
            utc(2026, 3, 7, 12, 0, 0),
            3,
        );
        assert_eq!(fires[1..], ["03-09 02:30 EDT", "03-10 02:30 EDT"]);
        assert!(
            fires[0].starts_with("03-08 03:"),
            "the gap's fire moves past the gap, it is not lost: {fires:?}"
        );
    }

    #[test]
    fn daylight_saving_changes_that_touch_a_schedule_are_named() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let from = utc(2026, 1, 1, 0, 0, 0);
        let notes = |expr: &str| daylight_saving_notes(&parse_cron(expr).unwrap(), tz, from, 366);
        let gap = notes("30 2 * * *");
        assert_eq!(gap.len(), 1, "{gap:?}");
        assert!(gap[0].gap);
        assert_eq!(gap[0].date.to_string(), "2026-03-08");
        let repeat = notes("30 1 * * *");
        assert_eq!(repeat.len(), 1, "{repeat:?}");
        assert!(!repeat[0].gap);
        assert_eq!(repeat[0].date.to_string(), "2026-11-01");
        assert!(notes("0 9 * * *").is_empty());
        assert!(
            daylight_saving_notes(&parse_cron("30 2 * * *").unwrap(), Tz::UTC, from, 366)
                .is_empty()
        );
    }

    #[test]
    fn a_daily_time_in_the_fall_back_repeat_fires_once() {
        // America/New_York, 2026-11-01: 02:00 EDT falls back to 01:00 EST, so 01:30 happens twice.
        let fires = local_fires(
            "30 1 * * *",
            "America/New_York",
            utc(2026, 10, 31, 12, 0, 0),
            3,
        );
        assert_eq!(
            fires,
            ["11-01 01:30 EDT", "11-02 01:30 EST", "11-03 01:30 EST"]
        );
    }

    #[test]
    fn hourly_jobs_keep_their_pace_across_the_change() {
        // Every hour at :00 across the spring-forward night: 01:00 EST, then 03:00 EDT (one
        // real hour later), with no double and no lost hour of real time.
        let fires = local_fires(
            "0 * * * *",
            "America/New_York",
            utc(2026, 3, 8, 5, 30, 0),
            3,
        );
        assert_eq!(
            fires,
            ["03-08 01:00 EST", "03-08 03:00 EDT", "03-08 04:00 EDT"]
        );
    }

    #[test]
    fn fires_fall_on_whole_seconds_whatever_the_cursor() {
        let compiled = Compiled::new(&Schedule::Cron("* * * * * *".into()), "UTC").unwrap();
        let cursor = utc(2026, 1, 1, 0, 0, 7) + chrono::Duration::milliseconds(176);
        assert_eq!(compiled.next_after(cursor), Some(utc(2026, 1, 1, 0, 0, 8)));
        assert_eq!(
            compiled.next_after(utc(2026, 1, 1, 0, 0, 8)),
            Some(utc(2026, 1, 1, 0, 0, 9))
        );
    }

    #[test]
    fn one_shot_fires_once() {
        let at = utc(2026, 5, 1, 10, 0, 0);
        let compiled = Compiled::new(&Schedule::At(at), "UTC").unwrap();
        assert_eq!(compiled.next_fires(utc(2026, 1, 1, 0, 0, 0), 5), vec![at]);
        assert_eq!(compiled.next_after(at), None);
    }

    #[test]
    fn intervals_beat_from_their_start_not_from_the_cursor() {
        let start = utc(2026, 1, 1, 0, 0, 0);
        let every = Schedule::Every {
            every_secs: 900,
            start,
        };
        let compiled = Compiled::new(&every, "Europe/Paris").unwrap();
        // Before the start: the start itself.
        assert_eq!(
            compiled.next_after(utc(2025, 12, 31, 23, 0, 0)),
            Some(start)
        );
        // A cursor between beats (a restart at 00:20:07.5) lands on the next beat, 00:30.
        let cursor = utc(2026, 1, 1, 0, 20, 7) + chrono::Duration::milliseconds(500);
        assert_eq!(compiled.next_after(cursor), Some(utc(2026, 1, 1, 0, 30, 0)));
        // Strictly after: a cursor on a beat moves to the next one.
        assert_eq!(
            compiled.next_after(utc(2026, 1, 1, 0, 30, 0)),
            Some(utc(2026, 1, 1, 0, 45, 0))
        );
        // Real time: the spring-forward night in Paris changes nothing.
        let daily = Compiled::new(
            &Schedule::Every {
                every_secs: 86_400,
                start,
            },
            "Europe/Paris",
        )
        .unwrap();
        assert_eq!(
            daily.next_after(utc(2026, 3, 29, 0, 0, 0)),
            Some(utc(2026, 3, 30, 0, 0, 0))
        );
    }

    #[test]
    fn intervals_parse_with_units_and_explain_mistakes() {
        assert_eq!(parse_interval("30s"), Ok(30));
        assert_eq!(parse_interval("15m"), Ok(900));
        assert_eq!(parse_interval("1h30m"), Ok(5400));
        assert_eq!(parse_interval("2d"), Ok(172_800));
        assert_eq!(parse_interval("45"), Ok(45));
        assert_eq!(format_interval(5400), "1h30m");
        assert_eq!(format_interval(86_400), "1d");
        for (bad, says) in [
            ("", "empty"),
            ("10x", "`x` is not a unit"),
            ("10", ""),
            ("m", "a number must come before"),
            ("5m3", "`3` has no unit"),
            ("0s", "from 1 s"),
            ("400d", "366 days"),
            ("99999999999999999999d", "far too long"),
        ] {
            match parse_interval(bad) {
                Ok(secs) => assert_eq!((bad, secs), ("10", 10)),
                Err(message) => assert!(message.contains(says), "{bad}: {message}"),
            }
        }
    }

    #[test]
    fn unknown_time_zone_is_explained() {
        assert!(parse_timezone("Europe/Pariss")
            .unwrap_err()
            .contains("IANA"));
    }

    /// Bad input: any expression built from cron's alphabet either parses or is refused with a
    /// message, and a parsed one yields fires strictly after the cursor and increasing, in
    /// zones with daylight-saving jumps too. Bounded to a few hundred cases in the test command.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn arb_expression() -> impl Strategy<Value = String> {
            let field = prop_oneof![
                Just("*".to_owned()),
                Just("?".to_owned()),
                "[0-9]{1,3}",
                "[0-9]{1,2}-[0-9]{1,2}",
                "\\*/[0-9]{1,3}",
                "[0-9]{1,2}(,[0-9]{1,2}){1,3}",
                "(MON|TUE|JAN|DEC|SUN|L|W|[0-9]L|[0-9]#[0-9])",
                "[-*/,0-9A-Z#?@ ]{0,6}",
            ];
            prop_oneof![
                proptest::collection::vec(field, 0..8).prop_map(|fields| fields.join(" ")),
                "@[a-z]{0,9}",
                "\\PC{0,30}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]
            #[test]
            fn cron_parsing_never_panics_and_fires_move_forward(
                expression in arb_expression(),
                zone in prop_oneof![Just("UTC"), Just("Europe/Paris"), Just("America/New_York"), Just("Australia/Lord_Howe")],
                start in 0i64..4_102_444_800,
            ) {
                let schedule = Schedule::Cron(expression.clone());
                match Compiled::new(&schedule, zone) {
                    Err(message) => prop_assert!(!message.is_empty()),
                    Ok(compiled) => {
                        let after = DateTime::<Utc>::from_timestamp(start, 0).unwrap();
                        let fires = compiled.next_fires(after, 5);
                        let mut cursor = after;
                        for fire in fires {
                            prop_assert!(fire > cursor, "{expression} in {zone}: {fire} after {cursor}");
                            cursor = fire;
                        }
                    }
                }
            }
        }
    }
}
