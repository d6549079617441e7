//! Webhook prompt templates: parsing any source, and rendering a parsed one for any delivery.
//!
//! Input: `TEMPLATE \0 BODY \0 HEADERS \0 QUERY \0 LIMIT`: the template source, the delivery's
//! body (JSON if it parses, else a string), `name: value` header lines, a query string, and the
//! size limit of the rendered prompt (decimal; the real limit when absent).
//!
//! Properties: a parse error points inside the source at a line and column that match its byte
//! offset; rendering respects the limit exactly as unlimited rendering says it should; a required
//! value that is missing is one the template references; text without `{{` renders as itself;
//! and the data markers in the output always alternate open, close, open, ... when the template's
//! own text has no `<`, so a delivery can neither open nor close a marker.
#![no_main]

use autopilot_control_plane::domain::limits::MAX_PROMPT_BYTES;
use autopilot_control_plane::domain::template::{
    RenderError, RenderInput, Template, TemplateError, DATA_TAG, VALUE_ROOTS,
};
use autopilot_fuzz::{header_lines, number, parts};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let [source, body, headers, query, limit] = parts::<5>(data);
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let template = match Template::parse(source) {
        Ok(template) => template,
        Err(error) => return check_error(source, &error),
    };
    let references = template.references();
    for path in &references {
        assert!(
            ["payload", "headers", "query"]
                .iter()
                .chain(VALUE_ROOTS.iter())
                .any(|root| path == root || path.starts_with(&format!("{root}."))),
            "reference `{path}` has no root"
        );
    }

    let payload: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    let headers = header_lines(&String::from_utf8_lossy(headers));
    let query: Vec<(String, String)> = form_urlencoded::parse(query)
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    let input = RenderInput {
        payload: &payload,
        headers: &headers,
        query: &query,
        // A delivery's template has no run values: those roots render as nothing.
        values: &Value::Null,
    };
    let limit = number::<usize>(limit).unwrap_or(MAX_PROMPT_BYTES);

    let unlimited = template.render(&input, usize::MAX);
    match template.render(&input, limit) {
        Ok(prompt) => {
            assert!(
                prompt.len() <= limit,
                "{} bytes over a limit of {limit}",
                prompt.len()
            );
            assert_eq!(
                Ok(&prompt),
                unlimited.as_ref(),
                "the limit changed the prompt"
            );
            if !source.contains("{{") {
                assert_eq!(prompt, source, "text without substitutions is not itself");
            }
            if !source.contains('<') {
                check_markers(&prompt);
            }
        }
        Err(RenderError::MissingRequired { path }) => {
            assert!(references.contains(&path), "`{path}` is not referenced");
            assert_eq!(unlimited, Err(RenderError::MissingRequired { path }));
        }
        Err(RenderError::TooLarge {
            bytes,
            limit: reported,
        }) => {
            assert_eq!(reported, limit);
            assert!(bytes > limit, "too large at {bytes} bytes, under {limit}");
            let full = unlimited.expect("only the limit refused it");
            assert!(
                full.len() > limit,
                "the whole prompt fits: {} bytes",
                full.len()
            );
        }
    }
});

/// An error's position is a character boundary inside the source, and its line and column are
/// those of its byte offset.
fn check_error(source: &str, error: &TemplateError) {
    assert!(!error.message.is_empty());
    assert!(error.offset <= source.len(), "{error:?}");
    assert!(source.is_char_boundary(error.offset), "{error:?}");
    let before = &source[..error.offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    assert_eq!((error.line, error.column), (line, column), "{error:?}");
}

/// Opening and closing data markers (ASCII case-insensitive, as the template contract reads
/// them) alternate, starting with an opening one.
fn check_markers(prompt: &str) {
    let lower = prompt.to_ascii_lowercase();
    let open = format!("<{DATA_TAG}");
    let close = format!("</{DATA_TAG}");
    let mut markers: Vec<(usize, bool)> = lower
        .match_indices(&open)
        .map(|(at, _)| (at, true))
        .chain(lower.match_indices(&close).map(|(at, _)| (at, false)))
        .collect();
    markers.sort_unstable();
    for (index, (at, opening)) in markers.iter().enumerate() {
        assert_eq!(
            *opening,
            index.is_multiple_of(2),
            "marker {index} at byte {at} is out of turn in {prompt:?}"
        );
    }
    assert!(
        markers.len().is_multiple_of(2),
        "a marker is left open in {prompt:?}"
    );
}
