//! Where a call goes and what it carries: the method, the URL a path makes under a host's base
//! URL (never another scheme, host, port or a path above the base), and the headers a call may
//! set (never the credentials, the host or what the HTTP client writes itself).

use std::collections::BTreeMap;

use reqwest::header::HeaderMap;
use reqwest::{Method, Url};

use crate::outbound::{check_header, HOP_BY_HOP};

/// The methods a host may allow.
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// One of [`METHODS`], in any case.
pub fn method(text: &str) -> Option<Method> {
    let upper = text.trim().to_ascii_uppercase();
    METHODS
        .contains(&upper.as_str())
        .then(|| Method::from_bytes(upper.as_bytes()).ok())
        .flatten()
}

/// The URL `path` (and `query`) names under `base`, or what is wrong with the path. `path`
/// starts with `/` and is read from the base URL's path (`/repos/x` under
/// `https://api.example.com/v3` is `https://api.example.com/v3/repos/x`); a query string may
/// follow `?`, and `query`'s pairs are added to it.
pub fn join(base: &Url, path: &str, query: &[(String, String)]) -> Result<Url, String> {
    const EXAMPLE: &str = "e.g. `/repos/octocat/hello-world/issues`";
    if !path.starts_with('/') {
        return Err(format!(
            "`path` must start with `/` and is read from the host's base URL ({EXAMPLE}); a \
             full URL is not accepted: the host is named in `host`"
        ));
    }
    if path.starts_with("//") {
        return Err(format!(
            "`path` must not start with `//`, which URLs read as another host ({EXAMPLE})"
        ));
    }
    if path.chars().any(char::is_control) {
        return Err("`path` must not contain control characters (line breaks, tabs)".to_owned());
    }
    if path.contains('\\') {
        // URL parsers read `\` as `/` in http URLs.
        return Err("`path` must not contain `\\`; write `/`, or `%5C` for a backslash".to_owned());
    }
    if path.contains('#') {
        return Err("`path` must not contain `#`: a fragment is never sent to the host".to_owned());
    }
    let path_only = path
        .split_once('?')
        .map_or(path, |(path_only, _)| path_only);
    for segment in path_only.split('/') {
        if is_dot_segment(segment) {
            return Err(format!(
                "`path` must not contain `.` or `..` segments (`{segment}`, which would leave \
                 the base URL's path); give the path from the base URL, {EXAMPLE}"
            ));
        }
    }
    for (key, _) in query {
        if key.is_empty() {
            return Err("`query` keys must not be empty".to_owned());
        }
    }
    let prefix = base.as_str().trim_end_matches('/');
    let mut url = Url::parse(&format!("{prefix}{path}"))
        .map_err(|err| format!("`path` does not make a URL with the host's base URL: {err}"))?;
    // What the checks above mean to ensure; checked again on the URL itself, whatever a URL
    // parser may do with a path that passed them.
    let base_path = base.path().trim_end_matches('/');
    let under_base = url.path() == base_path
        || url
            .path()
            .strip_prefix(base_path)
            .is_some_and(|rest| rest.starts_with('/'));
    if url.scheme() != base.scheme()
        || url.host() != base.host()
        || url.port_or_known_default() != base.port_or_known_default()
        || !under_base
    {
        return Err(format!(
            "`path` leads outside the host's base URL; give the path from it, {EXAMPLE}"
        ));
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}

/// Whether a path segment is `.` or `..` once percent-decoded (`%2e%2e`), repeatedly (a
/// server may decode twice), or holds such a segment after an encoded slash (`..%2f..`).
fn is_dot_segment(segment: &str) -> bool {
    let mut text = segment.to_owned();
    for _ in 0..3 {
        if text
            .split(['/', '\\'])
            .any(|piece| piece == "." || piece == "..")
        {
            return true;
        }
        let decoded = percent_decoded(&text);
        if decoded == text {
            return false;
        }
        text = decoded;
    }
    true
}

fn percent_decoded(text: &str) -> String {
    let hex = |byte: Option<&u8>| byte.and_then(|byte| (*byte as char).to_digit(16));
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            if let (Some(high), Some(low)) = (hex(bytes.get(at + 1)), hex(bytes.get(at + 2))) {
                out.push((high * 16 + low) as u8);
                at += 3;
                continue;
            }
        }
        out.push(bytes[at]);
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The headers a call gives, checked: none may replace one the host's configuration sets (its
/// credentials), and none may carry credentials, name another host or frame the request.
pub fn request_headers(
    configured: &BTreeMap<String, String>,
    given: &BTreeMap<String, String>,
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in given {
        let lower = name.trim().to_ascii_lowercase();
        if configured
            .keys()
            .any(|configured| configured.eq_ignore_ascii_case(name.trim()))
        {
            return Err(format!(
                "`headers`: `{name}` is set by the host's configuration and cannot be changed"
            ));
        }
        if matches!(lower.as_str(), "authorization" | "cookie") || lower.starts_with("proxy-") {
            return Err(format!(
                "`headers`: `{name}` cannot be set: credentials are added by the server, from \
                 the host's configuration"
            ));
        }
        if HOP_BY_HOP.contains(&lower.as_str()) {
            return Err(format!(
                "`headers`: `{name}` cannot be set: the HTTP client writes it (the host is the \
                 one `host` names)"
            ));
        }
        let (name, value) =
            check_header(name.trim(), value).map_err(|err| format!("`headers`: {err}"))?;
        headers.insert(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_under_the_base_and_never_leave_it() {
        let base = Url::parse("https://api.example.com/v3/").unwrap();
        let ok: &[(&str, &str)] = &[
            ("/repos/x", "https://api.example.com/v3/repos/x"),
            ("/", "https://api.example.com/v3/"),
            ("/a//b", "https://api.example.com/v3/a//b"),
            ("/a b/ü", "https://api.example.com/v3/a%20b/%C3%BC"),
            (
                "/projects/group%2Fproject",
                "https://api.example.com/v3/projects/group%2Fproject",
            ),
            ("/a..b/.well", "https://api.example.com/v3/a..b/.well"),
            ("/@evil.com/x", "https://api.example.com/v3/@evil.com/x"),
            (
                "/search?q=a&page=2",
                "https://api.example.com/v3/search?q=a&page=2",
            ),
        ];
        for (path, expected) in ok {
            assert_eq!(
                join(&base, path, &[]).unwrap().as_str(),
                *expected,
                "{path}"
            );
        }
        let refused: &[(&str, &str)] = &[
            ("../x", "must start with `/`"),
            ("repos/x", "must start with `/`"),
            ("http://x", "must start with `/`"),
            ("https://evil.com/x", "must start with `/`"),
            ("//evil.com/x", "must not start with `//`"),
            ("/a/../../b", "`..` segments (`..`"),
            ("/..", "`..` segments"),
            ("/./x", "`..` segments (`.`"),
            ("/%2e%2e/x", "`..` segments (`%2e%2e`"),
            ("/%2E%2e", "`..` segments"),
            ("/.%2e/x", "`..` segments"),
            ("/%252e%252e/x", "`..` segments"),
            ("/a/..%2f..%2fadmin", "`..` segments"),
            ("/a/%2e%2e%5c", "`..` segments"),
            ("/..?x=1", "`..` segments"),
            ("/a\\..\\b", "must not contain `\\`"),
            ("/\\evil.com", "must not contain `\\`"),
            ("/a\n/b", "control characters"),
            ("/a\t", "control characters"),
            ("/a#frag", "must not contain `#`"),
        ];
        for (path, expected) in refused {
            let error = join(&base, path, &[]).unwrap_err();
            assert!(error.contains(expected), "{path}: {error}");
        }
        let root = Url::parse("http://127.0.0.1:8080").unwrap();
        let query = [
            ("q".to_owned(), "a b&c".to_owned()),
            ("n".to_owned(), "2".to_owned()),
        ];
        assert_eq!(
            join(&root, "/s?x=1", &query).unwrap().as_str(),
            "http://127.0.0.1:8080/s?x=1&q=a+b%26c&n=2"
        );
        assert!(join(&root, "/s", &[(String::new(), "v".into())]).is_err());
        assert_eq!(method("post"), Some(Method::POST));
        assert_eq!(method("TRACE"), None);
    }

    #[test]
    fn a_call_cannot_set_credentials_or_replace_configured_headers() {
        let configured = BTreeMap::from([("X-Api-Key".to_owned(), "secret".to_owned())]);
        let given = |name: &str| BTreeMap::from([(name.to_owned(), "v".to_owned())]);
        for (name, expected) in [
            ("x-api-key", "set by the host's configuration"),
            ("Authorization", "credentials are added by the server"),
            ("cookie", "credentials are added by the server"),
            ("Proxy-Authorization", "credentials are added by the server"),
            ("Host", "the HTTP client writes it"),
            ("Content-Length", "the HTTP client writes it"),
            ("Transfer-Encoding", "the HTTP client writes it"),
            ("Bad Name", "is not a header name"),
        ] {
            let error = request_headers(&configured, &given(name)).unwrap_err();
            assert!(error.contains(expected), "{name}: {error}");
        }
        let error = request_headers(
            &configured,
            &BTreeMap::from([("X-Note".to_owned(), "a\r\nb".to_owned())]),
        )
        .unwrap_err();
        assert!(error.contains("the value of `X-Note`"), "{error}");
        let headers = request_headers(
            &configured,
            &BTreeMap::from([
                (
                    "Accept".to_owned(),
                    "application/vnd.github+json".to_owned(),
                ),
                ("X-GitHub-Api-Version".to_owned(), "2022-11-28".to_owned()),
            ]),
        )
        .unwrap();
        assert_eq!(headers["accept"], "application/vnd.github+json");
        assert_eq!(headers.len(), 2);
    }
}
