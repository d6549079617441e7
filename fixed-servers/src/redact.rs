//! Removing credential values from text: each value, and its base64 and URL-encoded forms,
//! becomes `[redacted NAME]`. The worker redacts what a run reports (events, results); the MCP
//! guard redacts what a server answers, before the model reads it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::Value;

/// Values shorter than this are not redacted: they would match ordinary text everywhere, and a
/// credential that short is no secret.
const MIN_REDACTED_BYTES: usize = 6;

/// Replaces a run's credential values, and their base64 and URL-encoded forms, with
/// `[redacted NAME]` in the text of events and results.
#[derive(Default)]
pub struct Redactor {
    /// (form of a value, what replaces it), longest first so that no form is cut by a shorter.
    needles: Vec<(String, String)>,
}

impl Redactor {
    pub fn new(secrets: &BTreeMap<String, String>) -> Self {
        let mut needles = Vec::new();
        for (name, value) in secrets {
            if value.len() < MIN_REDACTED_BYTES {
                continue;
            }
            let label = format!("[redacted {name}]");
            let url_encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
            let forms = [
                value.clone(),
                STANDARD.encode(value),
                URL_SAFE.encode(value),
                URL_SAFE_NO_PAD.encode(value),
                // Padding may be cut off where the encoded value is embedded in longer text.
                STANDARD.encode(value).trim_end_matches('=').to_owned(),
                url_encoded,
            ];
            for form in forms {
                if !needles.iter().any(|(known, _)| known == &form) {
                    needles.push((form, label.clone()));
                }
            }
        }
        needles.sort_by_key(|(form, _)| std::cmp::Reverse(form.len()));
        Self { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for (form, label) in &self.needles {
            if text.contains(form.as_str()) {
                text = Cow::Owned(text.replace(form.as_str(), label));
            }
        }
        text
    }

    /// Redacts every string in `value`, keys included.
    pub fn value(&self, value: Value) -> Value {
        if self.is_empty() {
            return value;
        }
        match value {
            Value::String(text) => match self.text(&text) {
                Cow::Borrowed(_) => Value::String(text),
                Cow::Owned(redacted) => Value::String(redacted),
            },
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.value(v)).collect()),
            Value::Object(object) => Value::Object(
                object
                    .into_iter()
                    .map(|(key, v)| (self.text(&key).into_owned(), self.value(v)))
                    .collect(),
            ),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn secrets() -> BTreeMap<String, String> {
        BTreeMap::from([("CRM_TOKEN".to_owned(), "tok/en+secret?1".to_owned())])
    }

    #[test]
    fn every_form_of_a_credential_is_redacted() {
        let redactor = Redactor::new(&secrets());
        let value = "tok/en+secret?1";
        let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let event = json!({
            "plain": format!("the token is {value}."),
            "nested": [{ "b64": STANDARD.encode(value), "url": format!("?t={encoded}") }],
            value: URL_SAFE_NO_PAD.encode(value),
        });
        let redacted = redactor.value(event).to_string();
        assert!(!redacted.contains("secret"), "{redacted}");
        assert!(!redacted.contains(&STANDARD.encode(value)), "{redacted}");
        assert!(!redacted.contains(&encoded), "{redacted}");
        assert_eq!(
            redacted.matches("[redacted CRM_TOKEN]").count(),
            5,
            "{redacted}"
        );
        // Short values are left alone.
        let short = Redactor::new(&BTreeMap::from([("PIN".to_owned(), "1234".to_owned())]));
        assert!(short.is_empty());
    }
}
