//! A host's answer as the model reads it: the status, the headers worth knowing (content type,
//! where a redirect leads, pagination links, rate limits) and the body, JSON pretty-printed,
//! text as it is, binary refused; every configured credential redacted from all of it.

use reqwest::header::{HeaderMap, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::redact::Redactor;
use crate::web::document::{self, Form};

/// An answer as read.
pub struct Answer<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// Whether the body was longer than `max_bytes`, and so cut.
    pub cut: bool,
    pub max_bytes: usize,
}

/// Headers shown, besides `location`: the rest may hold anything (cookies among them).
fn is_shown(name: &str) -> bool {
    matches!(name, "content-type" | "link" | "retry-after")
        || name.starts_with("x-ratelimit-")
        || name.starts_with("ratelimit")
}

/// The answer to `method` `url` as text, with everything `redactor` knows redacted. `base` is
/// the host's base URL, against which a redirect's location is told.
pub fn render(answer: &Answer, method: &str, url: &Url, base: &Url, redactor: &Redactor) -> String {
    let status = answer.status;
    let mut out = format!("{method} {url} → HTTP {status}");
    if status.is_redirection() {
        out.push_str(" (a redirect, which http_request does not follow)");
    }
    out.push('\n');
    for (name, value) in answer.headers {
        let name = name.as_str();
        let value = String::from_utf8_lossy(value.as_bytes());
        if name == LOCATION.as_str() {
            out.push_str(&format!(
                "location: {value}{}\n",
                where_it_leads(&value, url, base)
            ));
        } else if is_shown(name) {
            out.push_str(&format!("{name}: {value}\n"));
        }
    }
    out.push('\n');
    out.push_str(&body(answer, redactor));
    if answer.cut {
        out.push_str(&format!(
            "\n\n(the body was cut at {} bytes, the job's HTTP_MAX_RESPONSE_BYTES)",
            answer.max_bytes
        ));
    }
    // The body's strings were redacted before it was laid out; this catches the headers, and
    // a credential the layout could have joined.
    redactor.text(&out).into_owned()
}

/// Where a redirect leads, told against the base URL: the path to call, or that it cannot be.
fn where_it_leads(location: &str, url: &Url, base: &Url) -> String {
    let Ok(target) = url.join(location) else {
        return " (not a URL)".to_owned();
    };
    let same_origin = target.scheme() == base.scheme()
        && target.host() == base.host()
        && target.port_or_known_default() == base.port_or_known_default();
    if !same_origin {
        return " (another host, which http_request does not reach)".to_owned();
    }
    let base_path = base.path().trim_end_matches('/');
    match target.path().strip_prefix(base_path) {
        Some(rest) if rest.starts_with('/') => {
            let query = target.query().map(|q| format!("?{q}")).unwrap_or_default();
            format!(" (this host: call http_request with the path `{rest}{query}`)")
        }
        _ => " (this host, outside its base URL, which http_request does not reach)".to_owned(),
    }
}

fn body(answer: &Answer, redactor: &Redactor) -> String {
    if answer.body.is_empty() {
        return "(no body)".to_owned();
    }
    let content_type = answer
        .headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let media = content_type
        .and_then(|value| value.split(';').next())
        .map(|media| media.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let json = media == "application/json" || media == "text/json" || media.ends_with("+json");
    let text = if json || is_text(&media) {
        document::decode(answer.body, content_type, Form::Text)
    } else if let Some(text) = utf8_text(answer.body, answer.cut) {
        text
    } else {
        let kind = match media.as_str() {
            "" => String::new(),
            media => format!(" (`{media}`)"),
        };
        return format!(
            "(a binary body{kind} of {} bytes, not shown: http_request returns text and JSON)",
            answer.body.len()
        );
    };
    // JSON is laid out for reading; a body that claims to be JSON and is not (or was cut) is
    // shown as the text it is.
    if json || !is_text(&media) {
        if let Ok(value) = serde_json::from_str::<Value>(&text) {
            let value = redactor.value(value);
            if let Ok(pretty) = serde_json::to_string_pretty(&value) {
                return pretty;
            }
        }
    }
    redactor.text(&text).into_owned()
}

/// Media types read as text.
fn is_text(media: &str) -> bool {
    media.starts_with("text/")
        || media.ends_with("+xml")
        || matches!(
            media,
            "application/xml"
                | "application/javascript"
                | "application/yaml"
                | "application/x-yaml"
                | "application/x-ndjson"
                | "application/x-www-form-urlencoded"
                | "application/graphql"
        )
}

/// A body of another (or no) type as text, if it is UTF-8 text: no NUL, and no invalid byte
/// but a character cut off at the end of a cut body.
fn utf8_text(body: &[u8], cut: bool) -> Option<String> {
    if body.contains(&0) {
        return None;
    }
    match std::str::from_utf8(body) {
        Ok(text) => Some(text.to_owned()),
        Err(err) if cut && err.error_len().is_none() => {
            Some(String::from_utf8_lossy(&body[..err.valid_up_to()]).into_owned())
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn rendered(status: u16, pairs: &[(&'static str, &str)], body: &[u8], cut: bool) -> String {
        let redactor = Redactor::new(&BTreeMap::from([
            (
                "github Authorization".to_owned(),
                "Bearer ghp_secret123456".to_owned(),
            ),
            (
                "github Authorization part 1".to_owned(),
                "ghp_secret123456".to_owned(),
            ),
        ]));
        let base = Url::parse("https://api.example.com/v3").unwrap();
        let url = Url::parse("https://api.example.com/v3/repos/x?page=1").unwrap();
        let headers = headers(pairs);
        let answer = Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: &headers,
            body,
            cut,
            max_bytes: 64,
        };
        render(&answer, "GET", &url, &base, &redactor)
    }

    #[test]
    fn json_is_pretty_printed_and_credentials_are_redacted_everywhere() {
        let text = rendered(
            200,
            &[
                ("content-type", "application/json"),
                ("set-cookie", "session=abc"),
                ("x-ratelimit-remaining", "4999"),
                ("x-echo", "Bearer ghp_secret123456"),
                ("link", "<https://api.example.com/v3/repos/x?page=2&t=ghp_secret123456>; rel=\"next\""),
            ],
            br#"{"headers":{"authorization":"Bearer ghp_secret123456","escaped":"ghp_\u0073ecret123456"}}"#,
            false,
        );
        assert_eq!(
            text,
            "GET https://api.example.com/v3/repos/x?page=1 → HTTP 200 OK\n\
             content-type: application/json\n\
             x-ratelimit-remaining: 4999\n\
             link: <https://api.example.com/v3/repos/x?page=2&t=[redacted github Authorization \
             part 1]>; rel=\"next\"\n\n\
             {\n  \"headers\": {\n    \"authorization\": \"[redacted github Authorization]\",\n    \
             \"escaped\": \"[redacted github Authorization part 1]\"\n  }\n}"
        );
    }

    #[test]
    fn redirects_are_told_against_the_base_url() {
        for (location, expected) in [
            (
                "/v3/repos/y?page=2",
                "(this host: call http_request with the path `/repos/y?page=2`)",
            ),
            (
                "https://api.example.com/v3/a",
                "(this host: call http_request with the path `/a`)",
            ),
            ("/login", "(this host, outside its base URL"),
            ("http://api.example.com/v3/a", "(another host"),
            ("https://evil.example/v3/a", "(another host"),
            ("https://api.example.com:8443/v3/a", "(another host"),
        ] {
            let text = rendered(302, &[("location", location)], b"", false);
            assert!(
                text.starts_with(
                    "GET https://api.example.com/v3/repos/x?page=1 → HTTP 302 Found (a redirect, \
                     which http_request does not follow)\n"
                ),
                "{text}"
            );
            assert!(
                text.contains(&format!("location: {location} {expected}")),
                "{location}: {text}"
            );
            assert!(text.ends_with("\n\n(no body)"), "{text}");
        }
    }

    #[test]
    fn text_is_shown_binary_refused_and_a_cut_said() {
        let text = rendered(
            404,
            &[("content-type", "text/plain")],
            b"no such repo",
            false,
        );
        assert!(
            text.ends_with("HTTP 404 Not Found\ncontent-type: text/plain\n\nno such repo"),
            "{text}"
        );
        let text = rendered(
            200,
            &[("content-type", "image/png")],
            b"\x89PNG\r\n\x1a\n\0",
            false,
        );
        assert!(
            text.ends_with("(a binary body (`image/png`) of 9 bytes, not shown: http_request returns text and JSON)"),
            "{text}"
        );
        // No content type: JSON if it parses, text if it is UTF-8.
        let text = rendered(200, &[], br#"{"a":1}"#, false);
        assert!(text.ends_with("\n\n{\n  \"a\": 1\n}"), "{text}");
        let text = rendered(200, &[], "caf\u{e9}".as_bytes(), false);
        assert!(text.ends_with("\n\ncafé"), "{text}");
        // A cut JSON body is shown as text, a character cut in two left out.
        let text = rendered(
            200,
            &[("content-type", "application/json")],
            br#"{"a": "b"#,
            true,
        );
        assert!(
            text.ends_with("\n\n{\"a\": \"b\n\n(the body was cut at 64 bytes, the job's HTTP_MAX_RESPONSE_BYTES)"),
            "{text}"
        );
        let text = rendered(200, &[], &"é".as_bytes()[..1], true);
        assert!(text.contains("\n\n\n\n(the body was cut"), "{text}");
    }
}
