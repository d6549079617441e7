//! The server against a real HTTP server on loopback: fetching, redirects checked hop by hop,
//! limits, pages, search.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::*;

/// What the test site serves; `port` is its own, for absolute redirects.
struct Site {
    port: u16,
    big_fetches: AtomicUsize,
}

async fn start_site() -> (SocketAddr, Arc<Site>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let site = Arc::new(Site {
        port: address.port(),
        big_fetches: AtomicUsize::new(0),
    });
    let redirect = |to: String| (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
    let router = Router::new()
        .route(
            "/page",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    "<html><head><title>Test page</title></head><body><h1>Hello</h1>\
                     <p>See <a href=\"/other\">the other page</a>.</p></body></html>",
                )
            }),
        )
        .route(
            "/via-localhost",
            get(move |State(site): State<Arc<Site>>| async move {
                redirect(format!("http://localhost:{}/page", site.port))
            }),
        )
        .route(
            "/to-private",
            get(move |State(site): State<Arc<Site>>| async move {
                redirect(format!("http://127.0.0.2:{}/page", site.port))
            }),
        )
        .route(
            "/loop",
            get(move || async move { redirect("/loop".into()) }),
        )
        .route(
            "/big",
            get(|State(site): State<Arc<Site>>| async move {
                site.big_fetches.fetch_add(1, Ordering::SeqCst);
                let lines: String = (1..=20_000).map(|n| format!("line {n}\n")).collect();
                ([(header::CONTENT_TYPE, "text/plain")], lines)
            }),
        )
        .route(
            "/data.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], "{\"a\": 1}") }),
        )
        .route(
            "/file.pdf",
            get(|| async { ([(header::CONTENT_TYPE, "application/pdf")], "%PDF-1.4") }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route("/search", get(search_endpoint))
        .with_state(site.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (address, site)
}

/// A Brave Search lookalike that wants the header `X-Subscription-Token: tok-secret-1`.
async fn search_endpoint(
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if headers.get("x-subscription-token").map(|v| v.as_bytes()) != Some(b"tok-secret-1") {
        return (StatusCode::UNAUTHORIZED, "bad token tok-secret-2").into_response();
    }
    let q = query.get("q").cloned().unwrap_or_default();
    let results: Vec<serde_json::Value> = (1..=12)
        .map(|n| {
            serde_json::json!({
                "title": format!("Result {n} for {q}"),
                "url": format!("https://example.com/{n}"),
                "description": "about <strong>it</strong>",
            })
        })
        .collect();
    axum::Json(serde_json::json!({"type": "search", "web": {"results": results}})).into_response()
}

fn settings(pairs: &[(&str, &str)]) -> Settings {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::read(move |name| map.get(name).cloned()).unwrap()
}

fn web_server(pairs: &[(&str, &str)]) -> Arc<Web> {
    let limits = Limits {
        timeout: Duration::from_millis(1500),
        max_body_bytes: 100 * 1024,
        page_chars: 20_000,
    };
    Arc::new(Web::new(settings(pairs), limits).unwrap())
}

/// Calls `tool` as the MCP client would: (is it an error, its text).
async fn call(web: &Arc<Web>, tool: &str, args: serde_json::Value) -> (bool, String) {
    let serde_json::Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    let result = serde_json::to_value(web.call(tool, args).await).unwrap();
    let is_error = result["isError"].as_bool().unwrap_or(false);
    (
        is_error,
        result["content"][0]["text"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_page_is_fetched_as_markdown_when_private_addresses_are_allowed() {
    let (site, _) = start_site().await;
    let web = web_server(&[("WEB_ALLOW_PRIVATE", "true")]);
    let (is_error, text) = call(&web, "fetch_url", json(format!("http://{site}/page"))).await;
    assert!(!is_error, "{text}");
    assert_eq!(
        text,
        format!(
            "Title: Test page\nURL: http://{site}/page\n\n# Hello\n\nSee [the other \
             page](http://{site}/other)."
        )
    );
    // A redirect to a name: resolved, checked, and connected to at the address checked.
    let (is_error, text) = call(
        &web,
        "fetch_url",
        json(format!("http://{site}/via-localhost")),
    )
    .await;
    assert!(!is_error, "{text}");
    assert!(
        text.contains(&format!("URL: http://localhost:{}/page\n", site.port())),
        "{text}"
    );
    let (is_error, text) = call(&web, "fetch_url", json(format!("http://{site}/data.json"))).await;
    assert!(!is_error, "{text}");
    assert!(text.ends_with("\n\n{\"a\": 1}"), "{text}");
}

#[tokio::test]
async fn loopback_is_refused_unless_allowed_and_so_is_a_redirect_to_it() {
    let (site, _) = start_site().await;
    let web = web_server(&[]);
    let (is_error, text) = call(&web, "fetch_url", json(format!("http://{site}/page"))).await;
    assert!(is_error);
    assert!(
        text.contains("127.0.0.1, a loopback address") && text.contains("WEB_ALLOW_PRIVATE"),
        "{text}"
    );
    // A public site that redirects to a loopback address: here the test site's address counts
    // as public, the address it redirects to (127.0.0.2) does not.
    fn only_the_site_is_public(ip: IpAddr) -> Option<&'static str> {
        match ip == IpAddr::from([127, 0, 0, 1]) {
            true => None,
            false => non_public_kind(ip),
        }
    }
    let mut public = Web::new(settings(&[]), Limits::default()).unwrap();
    public.policy.classify = only_the_site_is_public;
    let public = Arc::new(public);
    let (is_error, text) = call(&public, "fetch_url", json(format!("http://{site}/page"))).await;
    assert!(!is_error, "{text}");
    let (is_error, text) = call(
        &public,
        "fetch_url",
        json(format!("http://{site}/to-private")),
    )
    .await;
    assert!(is_error);
    assert!(
        text.contains("127.0.0.2, a loopback address")
            && text.contains("WEB_ALLOW_PRIVATE")
            && text.contains(&format!("(http://{site}/to-private redirected there)")),
        "{text}"
    );
    let listed = web_server(&[
        ("WEB_ALLOW_PRIVATE", "true"),
        ("WEB_ALLOWED_HOSTS", "example.com"),
    ]);
    let (is_error, text) = call(&listed, "fetch_url", json(format!("http://{site}/page"))).await;
    assert!(is_error);
    assert!(text.contains("WEB_ALLOWED_HOSTS: example.com"), "{text}");
}

#[tokio::test]
async fn the_client_connects_to_the_addresses_checked_without_asking_dns() {
    let (site, _) = start_site().await;
    let web = web_server(&[]);
    // `.invalid` never resolves: the page is reached only through the address given.
    let url = Url::parse(&format!("http://pinned.invalid:{}/page", site.port())).unwrap();
    let client = web.client_for(&url, &[site]).unwrap();
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_long_body_is_cut_paged_and_later_pages_come_from_the_kept_copy() {
    let (site, state) = start_site().await;
    let web = web_server(&[("WEB_ALLOW_PRIVATE", "true")]);
    let url = format!("http://{site}/big");
    let (is_error, first) = call(&web, "fetch_url", json(url.clone())).await;
    assert!(!is_error, "{first}");
    // 100 KiB read of some 200 KB, in pages of 20,000 characters.
    assert!(
        first.contains("Note: only the first 100 KiB of the page were read\n"),
        "{first}"
    );
    assert!(first.contains("Page 1 of 6\n\nline 1\n"), "{first}");
    assert!(
        first.ends_with("page 1 of 6; call fetch_url with page=2 for more"),
        "{first}"
    );
    let (is_error, second) = call(
        &web,
        "fetch_url",
        serde_json::json!({"url": url, "page": 2}),
    )
    .await;
    assert!(!is_error, "{second}");
    assert!(second.contains("Page 2 of 6\n\nline "), "{second}");
    assert_eq!(
        state.big_fetches.load(Ordering::SeqCst),
        1,
        "page 2 was read from the kept copy"
    );
    let (is_error, text) = call(
        &web,
        "fetch_url",
        serde_json::json!({"url": url, "page": 7}),
    )
    .await;
    assert!(is_error);
    assert!(text.contains("has 6 pages"), "{text}");
}

#[tokio::test]
async fn what_cannot_be_read_is_an_error_saying_why() {
    let (site, _) = start_site().await;
    let web = web_server(&[("WEB_ALLOW_PRIVATE", "true")]);
    for (path, expected) in [
        (
            "/file.pdf",
            "`application/pdf`, which fetch_url does not read",
        ),
        ("/missing", "answered HTTP 404 Not Found"),
        ("/loop", "redirected more than 5 times"),
        ("/slow", "did not answer within 1.5 s"),
    ] {
        let (is_error, text) = call(&web, "fetch_url", json(format!("http://{site}{path}"))).await;
        assert!(is_error, "{path}: {text}");
        assert!(text.contains(expected), "{path}: {text}");
    }
    for (args, expected) in [
        (json("ftp://example.com/".into()), "only http and https"),
        (json("example.com".into()), "must be a full http(s) URL"),
        (
            serde_json::json!({"url": "https://e.x/", "pages": 1}),
            "invalid arguments",
        ),
    ] {
        let (is_error, text) = call(&web, "fetch_url", args).await;
        assert!(is_error && text.contains(expected), "{text}");
    }
}

#[tokio::test]
async fn search_asks_the_configured_provider_and_says_when_there_is_none() {
    let (site, _) = start_site().await;
    let template = format!("http://{site}/search?q={{query}}&count={{count}}");
    let searching = web_server(&[
        ("WEB_SEARCH_URL", &template),
        (
            "WEB_SEARCH_HEADERS",
            r#"{"X-Subscription-Token": "tok-secret-1"}"#,
        ),
    ]);
    let (is_error, text) = call(
        &searching,
        "web_search",
        serde_json::json!({"query": "rust & tokio", "count": 3}),
    )
    .await;
    assert!(!is_error, "{text}");
    assert!(
        text.starts_with(
            "Results for \"rust & tokio\":\n\n1. Result 1 for rust & tokio\n   \
             https://example.com/1\n   about it\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("3. Result 3") && !text.contains("4. Result"),
        "{text}"
    );
    let (is_error, text) = call(
        &searching,
        "web_search",
        serde_json::json!({"query": "x", "count": 11}),
    )
    .await;
    assert!(
        is_error && text.contains("`count` must be 1 to 10"),
        "{text}"
    );

    let wrong = web_server(&[
        ("WEB_SEARCH_URL", &template),
        (
            "WEB_SEARCH_HEADERS",
            r#"{"X-Subscription-Token": "tok-secret-2"}"#,
        ),
    ]);
    let (is_error, text) = call(&wrong, "web_search", serde_json::json!({"query": "x"})).await;
    assert!(is_error);
    assert!(text.contains("HTTP 401"), "{text}");
    assert!(
        !text.contains("tok-secret-2") && text.contains("[redacted X-Subscription-Token]"),
        "{text}"
    );

    let none = web_server(&[]);
    let (is_error, text) = call(&none, "web_search", serde_json::json!({"query": "x"})).await;
    assert!(is_error && text.contains("WEB_SEARCH_URL"), "{text}");
}

fn json(url: String) -> serde_json::Value {
    serde_json::json!({ "url": url })
}

#[test]
fn settings_are_read_and_each_mistake_names_its_variable() {
    let read = settings(&[
        ("WEB_ALLOW_PRIVATE", "TRUE"),
        ("WEB_ALLOWED_HOSTS", "Example.com, *.docs.rs ,,"),
        ("WEB_USER_AGENT", "bot/1"),
    ]);
    assert!(read.allow_private);
    assert_eq!(
        read.allowed_hosts,
        Some(vec!["example.com".to_owned(), "*.docs.rs".to_owned()])
    );
    assert_eq!(read.user_agent, "bot/1");
    assert_eq!(read.search, None);
    let defaults = settings(&[]);
    assert!(!defaults.allow_private);
    assert_eq!(defaults.allowed_hosts, None);
    assert!(defaults.user_agent.starts_with("autopilot-web/"));
    for (pairs, variable) in [
        (("WEB_ALLOW_PRIVATE", "sometimes"), "WEB_ALLOW_PRIVATE"),
        (
            ("WEB_ALLOWED_HOSTS", "https://example.com/"),
            "WEB_ALLOWED_HOSTS",
        ),
        (("WEB_ALLOWED_HOSTS", "*."), "WEB_ALLOWED_HOSTS"),
        (("WEB_ALLOWED_HOSTS", "*.com.*"), "WEB_ALLOWED_HOSTS"),
        (("WEB_USER_AGENT", "two\nlines"), "WEB_USER_AGENT"),
        (("WEB_SEARCH_URL", "https://s.example/"), "WEB_SEARCH_URL"),
    ] {
        let map = BTreeMap::from([(pairs.0.to_owned(), pairs.1.to_owned())]);
        let error = Settings::read(move |name| map.get(name).cloned()).unwrap_err();
        assert!(error.contains(variable), "{pairs:?}: {error}");
    }
}
