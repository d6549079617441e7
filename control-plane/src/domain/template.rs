//! Prompt templates filled from a webhook delivery and from a run's own values.
//!
//! Contract:
//!
//! * A template is literal text with `{{ PATH }}` substitutions. There are no
//!   expressions, filters or conditionals: a substitution only reads data.
//!   Whitespace inside the braces is ignored. `\{{` produces a literal `{{`
//!   (the backslash is dropped); any other backslash, and a lone `}}`, is
//!   literal text.
//! * `PATH` starts at `payload` (followed by any number of
//!   `.segment`s, at most [`MAX_SEGMENTS`]), `headers` or `query` (each
//!   followed by at most one segment). A trailing `!` (whitespace allowed
//!   before it) marks the path as required. Segments are 1 to
//!   [`MAX_SEGMENT_CHARS`] characters and may not contain whitespace, control
//!   characters or any of `. { } ! " \ < >`. It may also start at one of
//!   [`VALUE_ROOTS`] (`date`, `job`, `parent` …), read from
//!   [`RenderInput::values`] with any number of segments. A segment made only of ASCII
//!   digits indexes an array; on an object it is an ordinary key.
//! * [`Template::parse`] reports the first problem as a [`TemplateError`] with
//!   a 1-based line and column (in characters) and a 0-based byte offset.
//! * [`Template::render`] looks paths up in a [`RenderInput`]: `payload.…`
//!   walks the JSON body, `headers.NAME` takes the first header whose name
//!   matches ASCII-case-insensitively, `query.NAME` the first query pair with
//!   exactly that name; `headers` / `query` alone render every pair as a JSON
//!   object (first value wins; header names are lower-cased).
//! * Values render as: string → its text, number/bool → JSON text,
//!   object/array → pretty JSON, null or missing → nothing. A required path
//!   that is missing or null fails with [`RenderError::MissingRequired`]
//!   (checked for all substitutions before anything is rendered).
//! * A run's own values render as they are, except what another run produced
//!   (`parent.result`, `parent.error`, all of `parent`), which is wrapped as
//!   data like a delivery's; Autopilot's own fields of it (`parent.run_id`,
//!   `.job`, `.job_id`, `.status`, `.cost_usd`) render as they are.
//! * Delivery content is data, never instructions: every non-empty value is
//!   wrapped as `<webhook-data source="PATH">VALUE</webhook-data>` and, inside
//!   `VALUE`, the `<` of every ASCII-case-insensitive `<webhook-data` or
//!   `</webhook-data` becomes `&lt;`, so a payload can neither open nor close
//!   the marker. Nothing else is escaped. Empty values produce no wrapper.
//! * Each value's text is capped at [`MAX_VALUE_BYTES`] (cut at a character
//!   boundary, then `… [truncated N bytes]` is appended) before wrapping.
//!   Large JSON values are serialised through a bounded buffer, so memory per
//!   value stays bounded whatever the payload size.
//! * If the output would exceed the caller's `max_bytes`, rendering stops
//!   with [`RenderError::TooLarge`]; the output buffer never grows past
//!   `max_bytes`.
//! * No input makes this module panic.

use std::fmt;
use std::io;

use serde_json::{Map, Value};

/// Largest rendered size of one substituted value, in bytes, before the
/// truncation notice is appended.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Name of the element that wraps every substituted value.
pub const DATA_TAG: &str = "webhook-data";

/// Largest accepted template source, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;

/// Most segments allowed after the root of a path.
pub const MAX_SEGMENTS: usize = 32;

/// Longest allowed path segment, in characters.
pub const MAX_SEGMENT_CHARS: usize = 200;

const ROOTS: [&str; 3] = ["payload", "headers", "query"];

/// The values every run's prompt may use (see [`RenderInput::values`]), beside a webhook's
/// three roots.
pub const VALUE_ROOTS: [&str; 11] = [
    "date", "time", "datetime", "weekday", "timezone", "job", "run", "trigger", "parent", "event",
    "file",
];

/// Of [`VALUE_ROOTS`], those holding what another run produced: wrapped as data like a
/// delivery's content, never trusted as instructions, except for the fields below.
const UNTRUSTED_VALUE_ROOTS: [&str; 3] = ["parent", "event", "file"];

/// Fields of an untrusted value root that Autopilot itself sets (ids, names, statuses, costs):
/// rendered as they are.
const TRUSTED_FIELDS: [&str; 6] = [
    "run_id",
    "job",
    "job_id",
    "status",
    "cost_usd",
    "hook_event_name",
];

/// A parsed prompt template.
#[derive(Clone, Debug)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
enum Part {
    Text(String),
    Value(Substitution),
}

#[derive(Clone, Debug)]
struct Substitution {
    /// The path as written, without `!`.
    path: String,
    root: Root,
    segments: Vec<String>,
    required: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Root {
    Payload,
    Headers,
    Query,
    /// One of [`VALUE_ROOTS`].
    Value(&'static str),
}

impl Substitution {
    /// Whether the value came from outside (a delivery, what another run produced).
    fn untrusted(&self) -> bool {
        match self.root {
            Root::Value(name) => {
                UNTRUSTED_VALUE_ROOTS.contains(&name)
                    && !(self.segments.len() == 1
                        && TRUSTED_FIELDS.contains(&self.segments[0].as_str()))
            }
            _ => true,
        }
    }
}

/// A problem found while parsing a template, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// 1-based line of the offending place.
    pub line: usize,
    /// 1-based column of the offending place, counted in characters.
    pub column: usize,
    /// 0-based byte offset of the offending place in the source.
    pub offset: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for TemplateError {}

/// Why a parsed template could not be rendered for a delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A path marked with `!` is missing or null in the delivery.
    #[error(
        "required value `{path}` is missing or null in this delivery: check that the \
         sender includes it, or remove the `!` to render it as empty when absent"
    )]
    MissingRequired {
        /// The path as written in the template, without `!`.
        path: String,
    },
    /// The rendered prompt would be larger than allowed.
    #[error(
        "the rendered prompt exceeds the limit of {limit} bytes (rendering stopped at \
         {bytes} bytes): reference smaller parts of the payload instead of whole objects, \
         or raise the limit"
    )]
    TooLarge {
        /// Size the output had reached when the limit was crossed (a lower
        /// bound of the full size).
        bytes: usize,
        /// The limit that was exceeded.
        limit: usize,
    },
}

/// The parts of a webhook delivery a template can read.
#[derive(Clone, Copy, Debug)]
pub struct RenderInput<'a> {
    /// The parsed JSON body.
    pub payload: &'a Value,
    /// Request headers as (name, value) pairs, in arrival order.
    pub headers: &'a [(String, String)],
    /// Query-string pairs, in order.
    pub query: &'a [(String, String)],
    /// The run's own values, an object keyed by the names of [`VALUE_ROOTS`] (`Null` when
    /// there are none): `{{ date }}`, `{{ job.name }}`, `{{ parent.result }}`.
    pub values: &'a Value,
}

impl<'a> RenderInput<'a> {
    /// Only a run's own values: what a job's prompt renders from.
    pub fn values_only(values: &'a Value) -> Self {
        RenderInput {
            payload: &Value::Null,
            headers: &[],
            query: &[],
            values,
        }
    }
}

impl Template {
    /// Parses template source, reporting the first syntax error.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError {
                line: 1,
                column: 1,
                offset: 0,
                message: format!(
                    "the template is {} bytes long, more than the limit of {} bytes: \
                     shorten it",
                    source.len(),
                    MAX_TEMPLATE_BYTES
                ),
            });
        }

        let mut parts = Vec::new();
        let mut text = String::new();
        let mut pos = 0;
        while let Some(rest) = source.get(pos..) {
            let Some(found) = rest.find("{{") else {
                text.push_str(rest);
                break;
            };
            let before = rest.get(..found).unwrap_or_default();
            if let Some(literal) = before.strip_suffix('\\') {
                // `\{{` is an escaped, literal `{{`.
                text.push_str(literal);
                text.push_str("{{");
                pos += found + 2;
                continue;
            }
            text.push_str(before);

            let open = pos + found;
            let inner_start = open + 2;
            let inner = source.get(inner_start..).unwrap_or_default();
            let Some(close) = inner.find("}}") else {
                return Err(match inner.find("{{") {
                    Some(nested) => nested_error(source, open, inner_start + nested),
                    None => error_at(
                        source,
                        open,
                        "unclosed `{{`: end the substitution with `}}`, or write `\\{{` \
                         for a literal `{{`"
                            .to_string(),
                    ),
                });
            };
            let content = inner.get(..close).unwrap_or_default();
            if let Some(nested) = content.find("{{") {
                return Err(nested_error(source, open, inner_start + nested));
            }
            let substitution = parse_substitution(source, content, inner_start, open)?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Value(substitution));
            pos = inner_start + close + 2;
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// Renders the template for one delivery.
    ///
    /// Fails with [`RenderError::MissingRequired`] if any required path is
    /// missing or null, and with [`RenderError::TooLarge`] as soon as the
    /// output would exceed `max_bytes`.
    pub fn render(&self, input: &RenderInput<'_>, max_bytes: usize) -> Result<String, RenderError> {
        self.render_as(input, max_bytes, true)
    }

    /// Renders with every value as it is, none wrapped as data: for keys compared by
    /// Autopilot (a concurrency key), never for text a model reads.
    pub fn render_raw(
        &self,
        input: &RenderInput<'_>,
        max_bytes: usize,
    ) -> Result<String, RenderError> {
        self.render_as(input, max_bytes, false)
    }

    fn render_as(
        &self,
        input: &RenderInput<'_>,
        max_bytes: usize,
        mark_data: bool,
    ) -> Result<String, RenderError> {
        for part in &self.parts {
            if let Part::Value(sub) = part {
                if sub.required && !sub.is_present(input) {
                    return Err(RenderError::MissingRequired {
                        path: sub.path.clone(),
                    });
                }
            }
        }

        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => push_limited(&mut out, text, max_bytes)?,
                Part::Value(sub) => {
                    if let Some(value) = sub.value_text(input) {
                        if mark_data && sub.untrusted() {
                            push_limited(&mut out, &wrap(&sub.path, &value), max_bytes)?;
                        } else {
                            push_limited(&mut out, &value, max_bytes)?;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The roots referenced (`payload`, `date`, `parent` …), each once, in order of appearance.
    pub fn roots(&self) -> Vec<&'static str> {
        let mut roots: Vec<&'static str> = Vec::new();
        for part in &self.parts {
            if let Part::Value(sub) = part {
                let name = match sub.root {
                    Root::Payload => "payload",
                    Root::Headers => "headers",
                    Root::Query => "query",
                    Root::Value(name) => name,
                };
                if !roots.contains(&name) {
                    roots.push(name);
                }
            }
        }
        roots
    }

    /// Paths referenced, as written (e.g. `"payload.issue.title"`,
    /// `"headers.x-github-event"`), in order of appearance, one entry per
    /// substitution (repeats included), without any `!`.
    pub fn references(&self) -> Vec<String> {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Value(sub) => Some(sub.path.clone()),
                Part::Text(_) => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Parsing helpers

/// Builds an error positioned at byte `offset` of `source`.
fn error_at(source: &str, offset: usize, message: String) -> TemplateError {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let column = before.get(line_start..).unwrap_or_default().chars().count() + 1;
    TemplateError {
        line,
        column,
        offset,
        message,
    }
}

fn nested_error(source: &str, open: usize, nested: usize) -> TemplateError {
    let opened = error_at(source, open, String::new());
    error_at(
        source,
        nested,
        format!(
            "`{{{{` inside a substitution (the one opened at line {}, column {}): close \
             that substitution with `}}}}` first, or write `\\{{{{` for a literal `{{{{`",
            opened.line, opened.column
        ),
    )
}

/// A short, printable excerpt of user text for error messages.
fn snippet(text: &str) -> String {
    const MAX_CHARS: usize = 24;
    let mut out: String = text
        .chars()
        .take(MAX_CHARS)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn is_forbidden_in_segment(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c, '.' | '{' | '}' | '!' | '"' | '\\' | '<' | '>')
}

fn describe_char(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("U+{:04X}", u32::from(c))
    } else {
        format!("`{c}`")
    }
}

/// Parses the text between `{{` and `}}`, which starts at byte `base` of
/// `source`; `open` is the position of the `{{`.
fn parse_substitution(
    source: &str,
    content: &str,
    base: usize,
    open: usize,
) -> Result<Substitution, TemplateError> {
    let body = content.trim();
    let body_start = base + (content.len() - content.trim_start().len());
    if body.is_empty() {
        return Err(error_at(
            source,
            open,
            "empty substitution: put a path such as `payload.issue.title` between `{{` and \
             `}}`, or write `\\{{` for a literal `{{`"
                .to_string(),
        ));
    }

    let path_len = body
        .find(|c: char| c.is_whitespace() || c == '!')
        .unwrap_or(body.len());
    let path = body.get(..path_len).unwrap_or_default();
    let after = body.get(path_len..).unwrap_or_default();
    if path.is_empty() {
        return Err(error_at(
            source,
            body_start,
            "missing path before `!`: write the path first, e.g. `{{ payload.issue.title! }}`"
                .to_string(),
        ));
    }

    let after_trimmed = after.trim_start();
    let after_start = body_start + path_len + (after.len() - after_trimmed.len());
    let required = match after_trimmed.strip_prefix('!') {
        Some(extra) => {
            let extra_trimmed = extra.trim_start();
            if !extra_trimmed.is_empty() {
                let extra_start = after_start + 1 + (extra.len() - extra_trimmed.len());
                return Err(error_at(
                    source,
                    extra_start,
                    format!(
                        "unexpected text `{}` after `!`: `!` marks the path as required \
                         and must be the last thing before `}}}}`",
                        snippet(extra_trimmed)
                    ),
                ));
            }
            true
        }
        None if after_trimmed.is_empty() => false,
        None => {
            return Err(error_at(
                source,
                after_start,
                format!(
                    "unexpected text `{}` after the path `{}`: a substitution holds one \
                     path (no spaces), optionally followed by `!`",
                    snippet(after_trimmed),
                    snippet(path)
                ),
            ));
        }
    };

    let mut root = Root::Payload;
    let mut segments = Vec::new();
    let mut seg_start = body_start;
    for (index, segment) in path.split('.').enumerate() {
        if index >= 2 && matches!(root, Root::Headers | Root::Query) {
            let name = if root == Root::Headers {
                "headers"
            } else {
                "query"
            };
            return Err(error_at(
                source,
                seg_start,
                format!(
                    "`{name}` takes at most one segment, the {} name: write e.g. `{}`",
                    if root == Root::Headers {
                        "header"
                    } else {
                        "parameter"
                    },
                    if root == Root::Headers {
                        "headers.x-github-event"
                    } else {
                        "query.ref"
                    }
                ),
            ));
        }
        if index > MAX_SEGMENTS {
            return Err(error_at(
                source,
                seg_start,
                format!(
                    "too many path segments: at most {MAX_SEGMENTS} may follow `payload`; \
                     reference a shallower value"
                ),
            ));
        }
        check_segment(source, segment, seg_start)?;
        if index == 0 {
            root = parse_root(source, segment, seg_start)?;
        } else {
            segments.push(segment.to_string());
        }
        seg_start += segment.len() + 1;
    }

    Ok(Substitution {
        path: path.to_string(),
        root,
        segments,
        required,
    })
}

fn check_segment(source: &str, segment: &str, start: usize) -> Result<(), TemplateError> {
    if segment.is_empty() {
        return Err(error_at(
            source,
            start,
            "empty path segment: remove the extra `.` (paths look like \
             `payload.issue.title`)"
                .to_string(),
        ));
    }
    if let Some((i, c)) = segment
        .char_indices()
        .find(|&(_, c)| is_forbidden_in_segment(c))
    {
        return Err(error_at(
            source,
            start + i,
            format!(
                "invalid character {} in a path segment: segments cannot contain \
                 whitespace, control characters or any of . {{ }} ! \" \\ < >",
                describe_char(c)
            ),
        ));
    }
    if segment.chars().nth(MAX_SEGMENT_CHARS).is_some() {
        return Err(error_at(
            source,
            start,
            format!(
                "path segment too long: segments are at most {MAX_SEGMENT_CHARS} \
                 characters"
            ),
        ));
    }
    Ok(())
}

fn parse_root(source: &str, segment: &str, start: usize) -> Result<Root, TemplateError> {
    match segment {
        "payload" => Ok(Root::Payload),
        "headers" => Ok(Root::Headers),
        "query" => Ok(Root::Query),
        other if VALUE_ROOTS.contains(&other) => Ok(Root::Value(
            VALUE_ROOTS
                .iter()
                .find(|name| **name == other)
                .copied()
                .unwrap_or_default(),
        )),
        other => {
            let suggestion = ROOTS
                .iter()
                .chain(VALUE_ROOTS.iter())
                .map(|root| (edit_distance(other, root), *root))
                .filter(|(distance, _)| *distance <= 2)
                .min_by_key(|(distance, _)| *distance);
            let mut message = format!(
                "unknown root `{}`: paths start with `payload`, `headers` or `query` (a \
                 webhook's delivery) or one of {} (the run's own values)",
                snippet(other),
                VALUE_ROOTS.join(", ")
            );
            if let Some((_, root)) = suggestion {
                message.push_str(&format!("; did you mean `{root}`?"));
            }
            Err(error_at(source, start, message))
        }
    }
}

/// Levenshtein distance in characters, giving up early (returning a value
/// above 2) when the lengths already differ by more than 2.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > 2 {
        return 3;
    }
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = Vec::with_capacity(b.len() + 1);
    for (i, ca) in a.iter().enumerate() {
        current.clear();
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let diagonal = previous.get(j).copied().unwrap_or(usize::MAX);
            let above = previous.get(j + 1).copied().unwrap_or(usize::MAX);
            let left = current.get(j).copied().unwrap_or(usize::MAX);
            let best = diagonal
                .saturating_add(usize::from(ca != cb))
                .min(above.saturating_add(1))
                .min(left.saturating_add(1));
            current.push(best);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous.last().copied().unwrap_or(usize::MAX)
}

// ---------------------------------------------------------------------------
// Rendering helpers

impl Substitution {
    /// Whether the path resolves to something other than missing or null.
    fn is_present(&self, input: &RenderInput<'_>) -> bool {
        match (self.root, self.segments.first()) {
            (Root::Payload, _) => {
                lookup(input.payload, &self.segments).is_some_and(|v| !v.is_null())
            }
            (Root::Headers, None) | (Root::Query, None) => true,
            (Root::Headers, Some(name)) => find_header(input.headers, name).is_some(),
            (Root::Query, Some(name)) => find_query(input.query, name).is_some(),
            (Root::Value(name), _) => input
                .values
                .get(name)
                .and_then(|value| lookup(value, &self.segments))
                .is_some_and(|v| !v.is_null()),
        }
    }

    /// The value's text, capped, or `None` when it renders as nothing.
    fn value_text(&self, input: &RenderInput<'_>) -> Option<String> {
        match (self.root, self.segments.first()) {
            (Root::Payload, _) => json_text(lookup(input.payload, &self.segments)?),
            (Root::Headers, None) => json_text(&pairs_object(input.headers, true)),
            (Root::Query, None) => json_text(&pairs_object(input.query, false)),
            (Root::Headers, Some(name)) => plain_text(find_header(input.headers, name)?),
            (Root::Query, Some(name)) => plain_text(find_query(input.query, name)?),
            (Root::Value(name), _) => json_text(lookup(input.values.get(name)?, &self.segments)?),
        }
    }
}

fn lookup<'v>(mut current: &'v Value, segments: &[String]) -> Option<&'v Value> {
    for segment in segments {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) if segment.bytes().all(|b| b.is_ascii_digit()) => {
                items.get(segment.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(current)
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn find_query<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// All pairs as a JSON object; the first value for a name wins.
fn pairs_object(pairs: &[(String, String)], lowercase_names: bool) -> Value {
    let mut map = Map::new();
    for (name, value) in pairs {
        let key = if lowercase_names {
            name.to_ascii_lowercase()
        } else {
            name.clone()
        };
        map.entry(key)
            .or_insert_with(|| Value::String(value.clone()));
    }
    Value::Object(map)
}

fn json_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => plain_text(text),
        Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(_) | Value::Object(_) => Some(capped_pretty_json(value)),
    }
}

fn plain_text(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    if text.len() <= MAX_VALUE_BYTES {
        return Some(text.to_string());
    }
    let mut cut = MAX_VALUE_BYTES;
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let kept = text.get(..cut).unwrap_or_default();
    Some(truncated(kept, text.len() - kept.len()))
}

fn truncated(kept: &str, cut_bytes: usize) -> String {
    format!("{kept}… [truncated {cut_bytes} bytes]")
}

/// Keeps the first `cap` bytes written and counts the rest.
struct CappedWriter {
    kept: Vec<u8>,
    total: usize,
    cap: usize,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.cap.saturating_sub(self.kept.len());
        let take = room.min(data.len());
        self.kept
            .extend_from_slice(data.get(..take).unwrap_or_default());
        self.total = self.total.saturating_add(data.len());
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Pretty JSON of `value`, capped at [`MAX_VALUE_BYTES`] without ever
/// holding more than that in memory.
fn capped_pretty_json(value: &Value) -> String {
    let mut writer = CappedWriter {
        kept: Vec::new(),
        total: 0,
        cap: MAX_VALUE_BYTES,
    };
    // Writing a `Value` into a writer that never fails cannot fail; if it
    // somehow did, whatever was produced so far is used.
    let _ = serde_json::to_writer_pretty(&mut writer, value);
    let valid_len = match std::str::from_utf8(&writer.kept) {
        Ok(text) => text.len(),
        Err(err) => err.valid_up_to(),
    };
    let kept = writer
        .kept
        .get(..valid_len)
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .unwrap_or_default();
    if writer.total <= kept.len() {
        kept.to_string()
    } else {
        truncated(kept, writer.total - kept.len())
    }
}

/// Wraps a value in the data marker, neutralising markers inside it.
fn wrap(path: &str, value: &str) -> String {
    let mut out = String::with_capacity(value.len() + path.len() + 2 * DATA_TAG.len() + 16);
    out.push('<');
    out.push_str(DATA_TAG);
    out.push_str(" source=\"");
    out.push_str(path);
    out.push_str("\">");
    let mut last = 0;
    for (i, _) in value.match_indices('<') {
        let rest = value.get(i + 1..).unwrap_or_default().as_bytes();
        let tail = rest.strip_prefix(b"/").unwrap_or(rest);
        let is_marker = tail
            .get(..DATA_TAG.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(DATA_TAG.as_bytes()));
        if is_marker {
            out.push_str(value.get(last..i).unwrap_or_default());
            out.push_str("&lt;");
            last = i + 1;
        }
    }
    out.push_str(value.get(last..).unwrap_or_default());
    out.push_str("</");
    out.push_str(DATA_TAG);
    out.push('>');
    out
}

fn push_limited(out: &mut String, piece: &str, limit: usize) -> Result<(), RenderError> {
    let bytes = out.len().saturating_add(piece.len());
    if bytes > limit {
        return Err(RenderError::TooLarge { bytes, limit });
    }
    out.push_str(piece);
    Ok(())
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
