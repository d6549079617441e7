//! What the servers that call endpoints the job's owner configures share (`notify`, `http`):
//! reading their JSON settings without ever echoing a value (the worker fills credentials into
//! them, so any value may be a secret), header checks, the forms of a credential worth
//! redacting, and a connection checked and pinned as `web::address` does it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;
use serde_json::{Map, Value};

use crate::web::address::{first_non_public, non_public_kind, resolve};

/// The setting `name`, a JSON object of named entries, e.g. `{"team": {…}}`; an error says
/// where the JSON is wrong, never what it holds. `None` when unset.
pub fn json_entries(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<Map<String, Value>>, String> {
    let Some(text) = var(name).filter(|text| !text.trim().is_empty()) else {
        return Ok(None);
    };
    let value: Value = serde_json::from_str(&text).map_err(|err| {
        // Syntax errors name a position, never the text; other kinds are not expected from a
        // parse into `Value`, but are described without their message to be sure.
        let what = match err.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                err.to_string()
            }
            _ => format!("at line {} column {}", err.line(), err.column()),
        };
        format!(
            "{name} is not valid JSON ({what}); a credential filled into it that holds a `\"` \
             or `\\` must be written escaped"
        )
    })?;
    match value {
        Value::Object(entries) => Ok(Some(entries)),
        _ => Err(format!("{name} must be a JSON object of named entries")),
    }
}

/// Whether `name` may name a channel or host: it is shown to the model and written in calls.
pub fn is_entry_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The error for an entry whose name is not one; the name is not shown, as a misplaced secret
/// (a URL written as the key) must not be.
pub fn bad_entry_name(setting: &str, what: &str) -> String {
    format!(
        "{setting}: one {what} name is not letters, digits, `-`, `_` and `.` (at most 64); it \
         is not shown here, as it may be a misplaced credential"
    )
}

/// One entry of a JSON setting, with what names it in errors (e.g. "NOTIFY_CHANNELS: channel
/// `team`"). Its errors name fields, never their values.
pub struct Entry<'a> {
    pub label: String,
    pub fields: &'a Map<String, Value>,
}

impl<'a> Entry<'a> {
    pub fn new(label: String, value: &'a Value) -> Result<Self, String> {
        match value {
            Value::Object(fields) => Ok(Self { label, fields }),
            _ => Err(format!("{label} must be a JSON object")),
        }
    }

    /// Refuses fields other than `known`, which are likely misspellings.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        match self
            .fields
            .keys()
            .find(|key| !known.contains(&key.as_str()))
        {
            None => Ok(()),
            Some(key) => Err(format!(
                "{}: unknown field `{key}`; the fields are {}",
                self.label,
                known.join(", ")
            )),
        }
    }

    pub fn string(&self, field: &str) -> Result<Option<&'a str>, String> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.as_str())),
            Some(_) => Err(format!("{}: `{field}` must be a string", self.label)),
        }
    }

    pub fn required_string(&self, field: &str) -> Result<&'a str, String> {
        self.string(field)?
            .filter(|text| !text.trim().is_empty())
            .ok_or_else(|| format!("{}: `{field}` is required", self.label))
    }

    /// The field `headers`: an object of header names to values, each checked.
    pub fn headers(&self) -> Result<BTreeMap<String, String>, String> {
        let fields = match self.fields.get("headers") {
            None | Some(Value::Null) => return Ok(BTreeMap::new()),
            Some(Value::Object(fields)) => fields,
            Some(_) => return Err(format!("{}: `headers` must be a JSON object", self.label)),
        };
        let mut headers = BTreeMap::new();
        for (name, value) in fields {
            let Value::String(value) = value else {
                return Err(format!(
                    "{}: the header `{name}` must be a string",
                    self.label
                ));
            };
            check_header(name, value).map_err(|err| format!("{}: {err}", self.label))?;
            if HOP_BY_HOP.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "{}: the header `{name}` is set by the HTTP client and cannot be configured",
                    self.label
                ));
            }
            headers.insert(name.clone(), value.clone());
        }
        Ok(headers)
    }
}

/// Headers that the HTTP client writes itself, about the connection or the body's framing: set
/// by hand they would contradict it (or smuggle a second request).
pub const HOP_BY_HOP: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Checks a header's name and value; the error names the header, never the value.
pub fn check_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let header_name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a header name"))?;
    let header_value = HeaderValue::from_str(value)
        .map_err(|_| format!("the value of `{name}` is not a valid header value (one line)"))?;
    Ok((header_name, header_value))
}

/// The headers as a map for a request (each was checked when the settings were read).
pub fn header_map(headers: &BTreeMap<String, String>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let Ok((name, value)) = check_header(name, value) {
            map.insert(name, value);
        }
    }
    map
}

/// What else to redact besides a header's value: the credential after its scheme (`Bearer
/// abc…` → `abc…`, which a server may echo alone) and, for `Basic`, the decoded
/// `user:password` and the password.
pub fn credential_parts(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let Some((scheme, credential)) = value.trim().split_once(' ') else {
        return parts;
    };
    let credential = credential.trim();
    parts.push(credential.to_owned());
    if scheme.eq_ignore_ascii_case("basic") {
        if let Some(decoded) = STANDARD
            .decode(credential)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
        {
            if let Some((_, password)) = decoded.split_once(':') {
                parts.push(password.to_owned());
            }
            parts.push(decoded);
        }
    }
    parts
}

/// Path segments and query values at least this long are taken for tokens in a webhook URL
/// (Slack's, Discord's and Teams' secrets are 24 characters or more; their fixed words, such as
/// `services` or `webhooks`, are shorter).
const TOKEN_CHARS: usize = 16;

/// The parts of a secret URL to redact: all of it, its path and query, each long path segment
/// and query value (the tokens, which a service's error may quote alone) and a password.
pub fn url_parts(url: &Url) -> Vec<String> {
    let mut parts = vec![url.as_str().to_owned()];
    parts.push(match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    });
    for segment in url.path().split('/') {
        if segment.len() >= TOKEN_CHARS {
            parts.push(segment.to_owned());
        }
    }
    for (_, value) in url.query_pairs() {
        if value.len() >= TOKEN_CHARS {
            parts.push(value.into_owned());
        }
    }
    if let Some(password) = url.password() {
        parts.push(password.to_owned());
    }
    parts
}

/// Why a URL's host may not be connected to.
#[derive(Debug, PartialEq)]
pub enum Unreachable {
    /// It did not resolve; the reason does not name the host.
    Unresolved(String),
    /// One of its addresses is not public, and private addresses are not allowed.
    NotPublic { ip: IpAddr, kind: &'static str },
}

/// The addresses to connect to for `url`: its host resolved, each address checked as
/// `web::address` does unless `allow_private`. Connect with [`pinned_client`] to exactly
/// these, so that a second DNS answer cannot swap in another.
pub async fn reachable_addresses(
    url: &Url,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Unreachable> {
    let addresses = resolve(url).await.map_err(Unreachable::Unresolved)?;
    if !allow_private {
        if let Some((ip, kind)) = first_non_public(&addresses, non_public_kind) {
            return Err(Unreachable::NotPublic { ip, kind });
        }
    }
    Ok(addresses)
}

pub(crate) use crate::web::address::pinned_client;

/// The first `chars` characters of a body, for an error.
pub fn excerpt(body: &[u8], chars: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::vars;

    #[test]
    fn json_errors_say_where_never_what() {
        let secret = "https://hooks.example/T0/B0/abcdefghijklmnopqrstuvwx";
        for text in [
            format!("{{\"team\": {{\"url\": \"{secret}\""),
            format!("{{\"team\": {{\"url\": \"{secret}\" \"kind\": 1}}}}"),
            format!("[\"{secret}\"]"),
        ] {
            let error = json_entries(&vars(&[("X_SETTING", &text)]), "X_SETTING").unwrap_err();
            assert!(error.starts_with("X_SETTING "), "{error}");
            assert!(!error.contains("abcdefgh"), "{error}");
        }
        let value = serde_json::json!({"url": 5, "headers": {"X-Key": "secret\nvalue"}});
        let entry = Entry::new("S: entry `a`".into(), &value).unwrap();
        assert_eq!(
            entry.string("url").unwrap_err(),
            "S: entry `a`: `url` must be a string"
        );
        let error = entry.headers().unwrap_err();
        assert!(
            error.contains("`X-Key`") && !error.contains("secret"),
            "{error}"
        );
        assert!(entry.only(&["url"]).unwrap_err().contains("`headers`"));
        let value = serde_json::json!({"headers": {"Content-Length": "5"}});
        let error = Entry::new("S".into(), &value)
            .unwrap()
            .headers()
            .unwrap_err();
        assert!(error.contains("set by the HTTP client"), "{error}");
        assert!(!is_entry_name("https://x/y") && is_entry_name("team-1.ops"));
    }

    #[test]
    fn a_credential_is_redacted_in_its_parts_too() {
        assert_eq!(
            credential_parts("token-without-scheme"),
            Vec::<String>::new()
        );
        assert_eq!(credential_parts("Bearer abc.def"), vec!["abc.def"]);
        let basic = format!("Basic {}", STANDARD.encode("bot:hunter22"));
        assert_eq!(
            credential_parts(&basic),
            vec![
                STANDARD.encode("bot:hunter22"),
                "hunter22".into(),
                "bot:hunter22".into()
            ]
        );
        let url = Url::parse(
            "https://hooks.slack.com/services/T0001/B0001/abcdefghijklmnopqrstuvwx?sig=0123456789abcdef0123",
        )
        .unwrap();
        let parts = url_parts(&url);
        assert!(parts.contains(&"abcdefghijklmnopqrstuvwx".to_owned()));
        assert!(parts.contains(&"0123456789abcdef0123".to_owned()));
        assert!(!parts.contains(&"services".to_owned()));
    }

    #[tokio::test]
    async fn addresses_are_checked_unless_private_ones_are_allowed() {
        let url = Url::parse("https://127.0.0.1:9/x").unwrap();
        assert_eq!(
            reachable_addresses(&url, false).await,
            Err(Unreachable::NotPublic {
                ip: "127.0.0.1".parse().unwrap(),
                kind: "loopback"
            })
        );
        assert_eq!(
            reachable_addresses(&url, true).await,
            Ok(vec!["127.0.0.1:9".parse().unwrap()])
        );
        assert_eq!(excerpt("  abcdef ".as_bytes(), 3), "abc…");
    }
}
