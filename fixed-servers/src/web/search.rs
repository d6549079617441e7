//! `web_search` through the provider a job configures: a URL template answering JSON, with the
//! headers (credentials among them) it needs. The provider is the job owner's choice, so the
//! address rules of `fetch_url` do not apply to it.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT};
use serde_json::Value;

use super::{html::text_of, read_body};
use crate::redact::Redactor;

/// Most results a call may ask for.
pub const MAX_COUNT: u8 = 10;
pub const DEFAULT_COUNT: u8 = 5;
/// Most of a provider's answer read.
const MAX_ANSWER_BYTES: usize = 2 * 1024 * 1024;
/// Longest snippet shown for one result.
const MAX_SNIPPET_CHARS: usize = 500;

/// The search provider, as the settings describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderSettings {
    /// A URL with `{query}` and, optionally, `{count}` in it.
    pub url_template: String,
    /// Header name → value.
    pub headers: BTreeMap<String, String>,
}

impl ProviderSettings {
    /// Reads `WEB_SEARCH_URL` and `WEB_SEARCH_HEADERS`; `None` when no provider is set. An error
    /// names the variable (and a header by its name, never its value).
    pub fn read(var: &impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let headers = match var("WEB_SEARCH_HEADERS") {
            None => BTreeMap::new(),
            Some(json) => {
                serde_json::from_str::<BTreeMap<String, String>>(&json).map_err(|_| {
                    "WEB_SEARCH_HEADERS is not a JSON object of strings, e.g. \
                 {\"X-Subscription-Token\": \"${BRAVE_API_KEY}\"}"
                        .to_owned()
                })?
            }
        };
        let Some(url_template) = var("WEB_SEARCH_URL").filter(|url| !url.trim().is_empty()) else {
            if !headers.is_empty() {
                return Err("WEB_SEARCH_HEADERS is set but WEB_SEARCH_URL is not".to_owned());
            }
            return Ok(None);
        };
        let url_template = url_template.trim().to_owned();
        if !url_template.contains("{query}") {
            return Err(
                "WEB_SEARCH_URL must contain `{query}` where the search terms go, e.g. \
                        https://api.search.brave.com/res/v1/web/search?q={query}"
                    .to_owned(),
            );
        }
        match reqwest::Url::parse(&fill(&url_template, "test", DEFAULT_COUNT)) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => return Err("WEB_SEARCH_URL is not an http(s) URL".to_owned()),
        }
        for (name, value) in &headers {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("WEB_SEARCH_HEADERS: `{name}` is not a header name"))?;
            HeaderValue::from_str(value).map_err(|_| {
                format!("WEB_SEARCH_HEADERS: the value of `{name}` is not a valid header value")
            })?;
        }
        Ok(Some(Self {
            url_template,
            headers,
        }))
    }
}

/// The template with the query (URL-encoded) and the count filled in.
fn fill(template: &str, query: &str, count: u8) -> String {
    // `byte_serialize` writes a space as `+`, which means a space only in a query string; `%20`
    // means one everywhere (and a `+` of the query itself is encoded as `%2B`).
    let encoded = form_urlencoded::byte_serialize(query.as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    template
        .replace("{query}", &encoded)
        .replace("{count}", &count.to_string())
}

/// One search result.
#[derive(Debug, PartialEq)]
pub struct Hit {
    pub title: String,
    pub url: String,
    pub snippet: String,
}

/// The results in a provider's answer: Brave Search's `web.results[]`, or a top-level
/// `results[]` (SearXNG and others), each with `title`, `url` and `description`, `snippet` or
/// `content`. Snippets may hold HTML (Brave marks the matched words), which is reduced to text.
pub fn hits(answer: &Value) -> Result<Vec<Hit>, String> {
    let results = answer
        .pointer("/web/results")
        .or_else(|| answer.get("results"));
    let Some(results) = results else {
        // Brave leaves `web` out when nothing matched.
        if answer.get("type").and_then(Value::as_str) == Some("search") {
            return Ok(Vec::new());
        }
        return Err(
            "the search provider's answer has neither `web.results` nor `results`".to_owned(),
        );
    };
    let Some(results) = results.as_array() else {
        return Err("the search provider's results are not a list".to_owned());
    };
    let text = |item: &Value, keys: &[&str]| {
        keys.iter()
            .find_map(|key| item.get(*key).and_then(Value::as_str))
            .map(text_of)
            .unwrap_or_default()
    };
    Ok(results
        .iter()
        .filter_map(|item| {
            let url = item.get("url").and_then(Value::as_str)?.trim().to_owned();
            let snippet = text(item, &["description", "snippet", "content"]);
            let snippet = match snippet.char_indices().nth(MAX_SNIPPET_CHARS) {
                Some((cut, _)) => format!("{}…", &snippet[..cut]),
                None => snippet,
            };
            Some(Hit {
                title: text(item, &["title"]),
                url,
                snippet,
            })
        })
        .collect())
}

/// The hits as a numbered markdown list.
pub fn list(query: &str, hits: &[Hit]) -> String {
    if hits.is_empty() {
        return format!("No results for \"{query}\".");
    }
    let mut out = format!("Results for \"{query}\":\n");
    for (number, hit) in hits.iter().enumerate() {
        let title = if hit.title.is_empty() {
            "(untitled)"
        } else {
            &hit.title
        };
        out.push_str(&format!("\n{}. {title}\n   {}\n", number + 1, hit.url));
        if !hit.snippet.is_empty() {
            out.push_str(&format!("   {}\n", hit.snippet));
        }
    }
    out.push_str("\nRead a result with fetch_url.");
    out
}

/// A configured provider, ready to be asked.
pub struct Provider {
    settings: ProviderSettings,
    headers: HeaderMap,
    redactor: Redactor,
    client: reqwest::Client,
}

impl Provider {
    pub fn new(settings: ProviderSettings, timeout: Duration) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        for (name, value) in &settings.headers {
            // Checked when the settings were read.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| format!("cannot make the search client: {err}"))?;
        let redactor = Redactor::new(&settings.headers);
        Ok(Self {
            settings,
            headers,
            redactor,
            client,
        })
    }

    /// Up to `count` results for `query`; an error says what went wrong without the provider's
    /// URL or headers (either may hold a credential).
    pub async fn search(&self, query: &str, count: u8) -> Result<Vec<Hit>, String> {
        let url = fill(&self.settings.url_template, query, count);
        let response = self
            .client
            .get(&url)
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|err| {
                format!(
                    "the search provider cannot be reached: {}",
                    super::error_chain(&err.without_url())
                )
            })?;
        let status = response.status();
        let (body, _) = read_body(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|err| format!("reading the search provider's answer failed: {err}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(format!(
                "the search provider answered HTTP {status}: {}",
                self.redactor.text(text.trim())
            ));
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|err| format!("the search provider's answer is not JSON: {err}"))?;
        let mut hits = hits(&answer)?;
        hits.truncate(usize::from(count));
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_answer_shapes_are_read_and_snippets_become_text() {
        let brave = json!({
            "type": "search",
            "web": {"results": [
                {"title": "Rust &amp; Tokio", "url": "https://tokio.rs/",
                 "description": "An <strong>async</strong> runtime"},
                {"title": "No URL"},
                {"title": "Docs", "url": "https://docs.rs/tokio"}
            ]}
        });
        assert_eq!(
            hits(&brave).unwrap(),
            vec![
                Hit {
                    title: "Rust & Tokio".into(),
                    url: "https://tokio.rs/".into(),
                    snippet: "An async runtime".into(),
                },
                Hit {
                    title: "Docs".into(),
                    url: "https://docs.rs/tokio".into(),
                    snippet: String::new(),
                },
            ]
        );
        let generic = json!({"results": [
            {"title": "A", "url": "https://a.example/", "snippet": "first"},
            {"title": "B", "url": "https://b.example/", "content": "second"}
        ]});
        let found = hits(&generic).unwrap();
        assert_eq!(found[0].snippet, "first");
        assert_eq!(found[1].snippet, "second");
        assert_eq!(hits(&json!({"type": "search"})).unwrap(), vec![]);
        assert!(hits(&json!({"items": []}))
            .unwrap_err()
            .contains("web.results"));
        assert!(hits(&json!({"results": {}})).is_err());

        let text = list("tokio", &hits(&brave).unwrap());
        assert!(
            text.starts_with(
                "Results for \"tokio\":\n\n1. Rust & Tokio\n   https://tokio.rs/\n   An async \
                 runtime\n\n2. Docs\n"
            ),
            "{text}"
        );
        assert_eq!(list("x", &[]), "No results for \"x\".");
    }

    #[test]
    fn the_query_is_encoded_into_the_template() {
        assert_eq!(
            fill("https://s.example/?q={query}&n={count}", "a b+c/é?&", 3),
            "https://s.example/?q=a%20b%2Bc%2F%C3%A9%3F%26&n=3"
        );
    }

    #[test]
    fn provider_settings_name_the_variable_that_is_wrong() {
        let read = |pairs: &[(&str, &str)]| {
            let map: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ProviderSettings::read(&move |name: &str| map.get(name).cloned())
        };
        assert_eq!(read(&[]), Ok(None));
        let provider = read(&[
            (
                "WEB_SEARCH_URL",
                "https://api.search.brave.com/res/v1/web/search?q={query}",
            ),
            (
                "WEB_SEARCH_HEADERS",
                r#"{"X-Subscription-Token": "tok-123456"}"#,
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(provider.headers["X-Subscription-Token"], "tok-123456");
        for (pairs, variable) in [
            (
                &[("WEB_SEARCH_URL", "https://s.example/?q=x")][..],
                "WEB_SEARCH_URL must contain",
            ),
            (
                &[("WEB_SEARCH_URL", "ftp://s.example/{query}")][..],
                "WEB_SEARCH_URL is not",
            ),
            (
                &[("WEB_SEARCH_HEADERS", r#"{"A": "b"}"#)][..],
                "WEB_SEARCH_URL is not",
            ),
            (
                &[
                    ("WEB_SEARCH_URL", "https://s/{query}"),
                    ("WEB_SEARCH_HEADERS", "[1]"),
                ][..],
                "WEB_SEARCH_HEADERS is not",
            ),
            (
                &[
                    ("WEB_SEARCH_URL", "https://s/{query}"),
                    ("WEB_SEARCH_HEADERS", r#"{"Bad Name": "secret-value"}"#),
                ][..],
                "`Bad Name` is not a header name",
            ),
            (
                &[
                    ("WEB_SEARCH_URL", "https://s/{query}"),
                    ("WEB_SEARCH_HEADERS", "{\"X-Key\": \"secret\\nvalue\"}"),
                ][..],
                "the value of `X-Key`",
            ),
        ] {
            let error = read(pairs).unwrap_err();
            assert!(error.contains(variable), "{pairs:?}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
