//! The fixed `web` server: the real CLI fetches a page through it as markdown; a private address
//! is refused unless the server's settings allow it.

use autopilot_tests::fake_anthropic::Reply;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PAGE: &str = "<html><head><title>Release notes</title></head><body>\
    <h1>Release 4.2</h1><p>The <a href=\"/changes\">changes</a> are <b>ready</b>.</p>\
    <script>steal()</script></body></html>";

#[tokio::test]
async fn the_web_server_fetches_pages_as_markdown_and_refuses_private_addresses() {
    // The page, on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/notes",
        axum::routing::get(|| async { axum::response::Html(PAGE) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let Some((server, fake)) = super::fixed_server().await else {
        return;
    };
    for (name, allow_private) in [("web", "true"), ("web-public", "false")] {
        let (status, body) = server
            .call(
                Method::POST,
                "/api/v1/servers",
                Some(json!({
                    "name": name,
                    "transport": { "type": "fixed", "server": "web", "env": { "WEB_ALLOW_PRIVATE": allow_private } },
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    fake.push(Reply::tool_use(
        "mcp__web__fetch_url",
        json!({ "url": format!("{site}/notes") }),
    ));
    fake.push(Reply::tool_use(
        "mcp__web-public__fetch_url",
        json!({ "url": format!("{site}/notes") }),
    ));
    fake.push(Reply::text("Read the notes."));
    let job = server
        .create_job(json!({
            "name": "reader",
            "prompt": "Read the release notes.",
            "servers": [{ "server": "web" }, { "server": "web-public" }],
        }))
        .await;
    let (run, events) = super::run_once(&server, &job).await;
    assert_eq!(run["status"], "succeeded", "{run:#} {events:#?}");
    let results: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 2, "{events:#?}");
    let page = results[0]["data"].to_string();
    assert!(page.contains("Release 4.2"), "{page}");
    assert!(page.contains("**ready**"), "markdown: {page}");
    assert!(
        page.contains(&format!("{site}/changes")),
        "absolute links: {page}"
    );
    assert!(!page.contains("steal()"), "no scripts: {page}");
    assert_eq!(results[1]["data"]["is_error"], true, "{}", results[1]);
    let refused = results[1]["data"].to_string();
    assert!(refused.contains("WEB_ALLOW_PRIVATE"), "{refused}");
}
