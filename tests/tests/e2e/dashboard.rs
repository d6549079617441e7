//! The dashboard over HTTP: sign-in and sessions, the security headers of every page, the
//! same-origin and form-token checks, every page and fragment, escaping of hostile run output,
//! the editor's errors, webhooks' shown-once secrets, and the live transcript's resume.

use std::time::Duration;

use autopilot_tests::dashboard::{DashboardClient, Page};
use autopilot_tests::fake_anthropic::Reply;
use autopilot_tests::harness::{TestServer, OPERATOR_PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn assert_security_headers(page: &Page, what: &str) {
    let header = |name: &str| {
        page.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what}: no {name} header"))
            .to_owned()
    };
    let csp = header("content-security-policy");
    for directive in [
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "default-src 'none'",
    ] {
        assert!(
            csp.contains(directive),
            "{what}: CSP lacks {directive}: {csp}"
        );
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header("referrer-policy"), "same-origin", "{what}");
    assert_eq!(
        header("cross-origin-opener-policy"),
        "same-origin",
        "{what}"
    );
    assert_eq!(header("x-frame-options"), "DENY", "{what}");
}

/// No inline script or style anywhere: the CSP would block it, so it must not be needed.
fn assert_no_inline_code(page: &Page, what: &str) {
    let body = &page.body;
    assert!(
        !body.contains("<script>") && !body.contains("<script >"),
        "{what}: inline script"
    );
    assert!(
        !body.contains(" style=\""),
        "{what}: inline style attribute"
    );
    assert!(!body.contains("<style"), "{what}: inline style element");
    assert!(
        !body.contains(" onclick=") && !body.contains(" onload="),
        "{what}: inline handler"
    );
}

#[tokio::test]
async fn signing_in_rotates_the_session_and_every_page_needs_one() {
    let server = TestServer::builder().start().await;
    let mut browser = DashboardClient::new(&server.base_url);

    let page = browser.get("/runs?status=failed").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/sign-in?next=%2Fruns%3Fstatus%3Dfailed");
    assert_security_headers(&page, "the redirect to sign-in");
    let sign_in = browser.get("/sign-in").await;
    assert_eq!(sign_in.status, StatusCode::OK);
    assert_security_headers(&sign_in, "the sign-in page");
    assert_no_inline_code(&sign_in, "the sign-in page");

    let wrong = browser.sign_in("not the password").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong.body.contains("not the operator password"),
        "{}",
        wrong.body
    );
    assert!(browser.cookie.is_none(), "a wrong password sets no cookie");

    let signed_in = browser.sign_in(OPERATOR_PASSWORD).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    let cookie_header = signed_in.headers["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie_header.contains(attribute), "{cookie_header}");
    }
    assert!(
        !cookie_header.contains("Secure") && cookie_header.starts_with("autopilot_session="),
        "over plain http the cookie cannot be Secure nor __Host-: {cookie_header}"
    );
    let first = browser.cookie.clone().unwrap();
    assert_eq!(browser.get("/").await.status, StatusCode::OK);

    // Signing in again from the same browser gives a new id and ends the old session.
    browser.sign_in(OPERATOR_PASSWORD).await;
    let second = browser.cookie.clone().unwrap();
    assert_ne!(first, second, "the session id is rotated at sign-in");
    let mut old = DashboardClient::new(&server.base_url);
    old.cookie = Some(first);
    assert_eq!(
        old.get("/").await.status,
        StatusCode::SEE_OTHER,
        "the old id is dead"
    );
    assert!(
        !server
            .store_contains(second.split('=').nth(1).unwrap())
            .await,
        "the store keeps only a digest of the session id"
    );

    // Signing out ends the session.
    let home = browser.get("/").await;
    let csrf = home.csrf().unwrap();
    let out = browser.post_form("/sign-out", &[("_csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(browser.get("/").await.status, StatusCode::SEE_OTHER);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_passwords_are_limited_per_address() {
    let server = TestServer::builder().start().await;
    let mut browser = DashboardClient::new(&server.base_url);
    for _ in 0..5 {
        assert_eq!(
            browser.sign_in("guess").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let limited = browser.sign_in(OPERATOR_PASSWORD).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.body
    );
    assert!(limited.headers.contains_key("retry-after"));
    assert!(limited.body.contains("Too many wrong passwords"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn writes_need_the_same_origin_and_the_form_token() {
    let server = TestServer::builder().start().await;
    let browser = DashboardClient::signed_in(&server.base_url).await;
    let job = server
        .create_job(json!({ "name": "guarded", "command": "true" }))
        .await;
    let run_now = format!("/jobs/{}/run", job["id"].as_str().unwrap());

    let no_token = browser.post_form(&run_now, &[]).await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN, "{}", no_token.body);
    assert!(no_token.body.contains("token"), "{}", no_token.body);
    let cross_site = browser
        .post_with(
            &run_now,
            &[("_csrf", &browser.csrf)],
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(cross_site.status, StatusCode::FORBIDDEN);
    let other_origin = browser
        .post_with(
            &run_now,
            &[("_csrf", &browser.csrf)],
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(other_origin.status, StatusCode::FORBIDDEN);
    assert!(
        server.runs_of(job["id"].as_str().unwrap()).await.is_empty(),
        "nothing ran"
    );

    let taken = browser.post(&run_now, &[]).await;
    assert_eq!(taken.status, StatusCode::SEE_OTHER, "{}", taken.body);
    assert!(taken.location().starts_with("/runs/"));
    assert_eq!(server.runs_of(job["id"].as_str().unwrap()).await.len(), 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn every_page_renders_with_its_headers_and_no_inline_code() {
    let server = TestServer::builder().start().await;
    let browser = DashboardClient::signed_in(&server.base_url).await;
    let job = server
        .create_job(json!({ "name": "echo", "command": "echo hello", "schedule": "0 9 * * 1-5", "timezone": "Europe/Paris" }))
        .await;
    let job_id = job["id"].as_str().unwrap();
    let run = server.trigger(job_id).await;
    let run_id = run["id"].as_str().unwrap();
    server.wait_until_finished(run_id, RUN_TIMEOUT).await;
    let second = server.trigger(job_id).await;
    server
        .wait_until_finished(second["id"].as_str().unwrap(), RUN_TIMEOUT)
        .await;
    let hook = server
        .create_webhook(
            json!({ "name": "pushes", "job": "echo", "signature": { "scheme": "none" } }),
        )
        .await;
    let hook_id = hook["id"].as_str().unwrap();

    let pages = [
        ("/", "Overview"),
        ("/jobs", "echo"),
        ("/jobs/new", "Cron expression"),
        (&format!("/jobs/{job_id}") as &str, "Next fires"),
        (&format!("/jobs/{job_id}/edit"), "0 9 * * 1-5"),
        ("/runs", "succeeded"),
        (
            "/runs?status=succeeded&trigger=manual&since=24h&job=echo",
            run_id,
        ),
        (&format!("/runs/{run_id}"), "hello"),
        (&format!("/runs/{run_id}/rerun"), "Rerun with edits"),
        (
            &format!("/jobs/new?from_run={run_id}"),
            ">echo hello</textarea>",
        ),
        ("/jobs?q=ECH&page=1", "echo"),
        (
            &format!("/runs/compare?a={}", second["id"].as_str().unwrap()),
            "Compare runs",
        ),
        ("/webhooks", "pushes"),
        ("/webhooks/new", "Signing secret"),
        (&format!("/webhooks/{hook_id}"), "Send a test delivery"),
        ("/tools", "Credentials"),
        ("/usage", "Costliest runs"),
        ("/usage?days=7", "last 7 days"),
        ("/quick-run", "Quick run"),
        ("/settings", "Public URL"),
    ];
    for (path, expected) in pages {
        let page = browser.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        assert!(page.body.contains(expected), "{path} lacks `{expected}`");
        assert!(
            page.body
                .contains(r#"<script type="module" src="/assets/app.js">"#),
            "{path}"
        );
        assert_security_headers(&page, path);
        assert_no_inline_code(&page, path);
    }
    for (path, kind) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let asset = browser.get(path).await;
        assert_eq!(asset.status, StatusCode::OK);
        assert!(asset.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        let etag = asset.headers["etag"].to_str().unwrap().to_owned();
        let again = browser.get_with(path, &[("if-none-match", &etag)]).await;
        assert_eq!(
            again.status,
            StatusCode::NOT_MODIFIED,
            "{path} revalidates by ETag"
        );
    }
    // Bad input is a page that says what was wrong.
    for (path, status, says) in [
        (
            "/runs?status=sleeping",
            StatusCode::UNPROCESSABLE_ENTITY,
            "sleeping",
        ),
        (
            "/runs?since=forever",
            StatusCode::UNPROCESSABLE_ENTITY,
            "1h, 24h, 7d or 30d",
        ),
        ("/runs/not-a-run", StatusCode::NOT_FOUND, "not a run id"),
        ("/jobs/nothing-here", StatusCode::NOT_FOUND, "not found"),
        (
            "/usage?days=9999",
            StatusCode::UNPROCESSABLE_ENTITY,
            "1 to 366",
        ),
        ("/runs/compare", StatusCode::BAD_REQUEST, "name a run"),
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.status, status, "{path}: {}", page.body);
        assert!(page.body.contains(says), "{path}: {}", page.body);
        assert_security_headers(&page, path);
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn hostile_run_output_is_escaped_everywhere() {
    let Some((server, fake)) = crate::claude::start().await else {
        return;
    };
    let browser = DashboardClient::signed_in(&server.base_url).await;
    fake.push(Reply::text(
        "Done. <script>alert('x')</script> [click me](javascript:alert(1)) \
         [data](data:text/html;base64,PHNjcmlwdD4=) <img src=x onerror=alert(2)>",
    ));
    let run = server
        .quick_run(json!({ "prompt": "say <b>hi</b> <script>alert(3)</script>" }))
        .await;
    let run_id = run["id"].as_str().unwrap();
    server.wait_until_finished(run_id, RUN_TIMEOUT).await;
    // And a shell run whose output holds markup and one line of a megabyte.
    let shell = server
        .create_job(json!({
            "name": "loud",
            "command": "printf '<script>alert(4)</script>\\n'; head -c 1048576 /dev/zero | tr '\\0' x; echo",
        }))
        .await;
    let shell_run = server.trigger(shell["id"].as_str().unwrap()).await;
    let shell_run_id = shell_run["id"].as_str().unwrap();
    server.wait_until_finished(shell_run_id, RUN_TIMEOUT).await;

    for path in [
        format!("/runs/{run_id}"),
        format!("/runs/{shell_run_id}"),
        "/runs".to_owned(),
        "/".to_owned(),
        format!("/runs/{run_id}/rerun"),
    ] {
        let page = browser.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        let body = &page.body;
        assert!(
            !body.contains("<script>alert"),
            "{path}: agent markup reached the page"
        );
        assert!(
            !body.contains("javascript:alert"),
            "{path}: a javascript: link survived"
        );
        assert!(
            !body.contains("data:text/html"),
            "{path}: a data: link survived"
        );
        assert!(!body.contains("<img"), "{path}: an image from the run");
        assert!(!body.contains("<b>hi</b>"), "{path}: the prompt's markup");
    }
    let page = browser.get(&format!("/runs/{run_id}")).await;
    assert!(
        page.body.contains("&lt;script&gt;alert("),
        "the text is shown, escaped"
    );
    let loud = browser.get(&format!("/runs/{shell_run_id}")).await;
    assert!(
        loud.body.len() < 200_000,
        "a 1 MB line is cut: {} bytes",
        loud.body.len()
    );
    assert!(
        loud.body.contains("Show all"),
        "with a link to the whole line"
    );
    // The whole line is there to read, escaped.
    let events = server.events(shell_run_id).await;
    let long = events
        .iter()
        .find(|event| {
            event["data"]["text"]
                .as_str()
                .is_some_and(|t| t.len() > 100_000)
        })
        .expect("the long line is an event");
    let whole = browser
        .get(&format!("/runs/{shell_run_id}/events/{}", long["seq"]))
        .await;
    assert_eq!(whole.status, StatusCode::OK);
    assert!(whole.body.contains(&"x".repeat(100_000)));
    // The transcript as markdown keeps the text as it was (it is not HTML).
    let markdown = browser.get(&format!("/runs/{run_id}/transcript.md")).await;
    assert!(markdown.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/markdown"));
    assert!(markdown.body.contains("Done."), "{}", markdown.body);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_job_editor_checks_like_the_api_and_previews_the_schedule() {
    let server = TestServer::builder().start().await;
    let browser = DashboardClient::signed_in(&server.base_url).await;
    let form = |schedule: &'static str| {
        vec![
            ("name", "morning report"),
            ("kind", "claude"),
            ("text", "Summarise the sprint."),
            ("when", "cron"),
            ("schedule", schedule),
            ("timezone", "Europe/Berlin"),
            ("enabled", "true"),
            ("misfire_policy", "run_once"),
            ("misfire_cap", "10"),
            ("overlap_policy", "skip"),
            ("allowed_tools", "Read\nGrep"),
            ("timeout_secs", "600"),
            ("pool", "default"),
            ("retry_count", "1"),
            ("retry_backoff_secs", "30"),
            ("max_cost_usd", "0.5"),
        ]
    };
    let refused = browser.post("/jobs/new", &form("61 9 * * 1-5")).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        refused.body.contains("minute takes 0-59"),
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains(r#"data-field="schedule""#),
        "the field is named"
    );
    assert!(
        refused.body.contains("Summarise the sprint."),
        "what was typed is kept"
    );
    assert!(server.get("/api/v1/jobs").await["jobs"]
        .as_array()
        .unwrap()
        .is_empty());

    let created = browser.post("/jobs/new", &form("0 9 * * 1-5")).await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    let jobs = server.get("/api/v1/jobs").await;
    let job = &jobs["jobs"][0];
    assert_eq!(job["schedule"], "0 9 * * 1-5");
    assert_eq!(job["timezone"], "Europe/Berlin");
    assert_eq!(job["allowed_tools"], json!(["Read", "Grep"]));
    assert_eq!(job["max_cost_usd"], json!(0.5));
    assert_eq!(job["retry"]["count"], json!(1));

    // Editing: clearing the cost limit sends null; a duplicate name is refused by name.
    let job_id = job["id"].as_str().unwrap();
    let mut edit = form("30 2 * * *");
    edit.retain(|(name, _)| *name != "max_cost_usd" && *name != "kind");
    let saved = browser.post(&format!("/jobs/{job_id}/edit"), &edit).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let job: Value = server.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(job["schedule"], "30 2 * * *");
    assert_eq!(job["max_cost_usd"], Value::Null);

    let preview = browser
        .get("/schedule-preview?schedule=30+2+*+*+*&timezone=Europe%2FBerlin")
        .await;
    assert_eq!(preview.status, StatusCode::OK);
    assert_eq!(preview.body.matches("<li>").count(), 5, "{}", preview.body);
    assert!(
        preview.body.contains("skip from 02:00 to 03:00"),
        "{}",
        preview.body
    );
    assert!(preview.body.contains("happen twice"), "{}", preview.body);
    let bad = browser.get("/schedule-preview?schedule=nonsense").await;
    assert!(bad.body.contains(r#"class="error""#), "{}", bad.body);

    // A grant's tool lists, which the editor does not show, survive an edit.
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/api/v1/servers",
            Some(json!({
                "name": "notes",
                "transport": { "type": "stdio", "command": "/bin/false" },
                "tools": [{ "name": "lookup_note" }, { "name": "erase_notes" }],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server
        .patch_job(
            job_id,
            json!({ "servers": [{ "server": "notes", "access": "write", "allow": ["lookup_note"] }] }),
        )
        .await;
    let editor = browser.get(&format!("/jobs/{job_id}/edit")).await;
    assert!(
        editor
            .body
            .contains(r#"name="server" value="notes" checked"#),
        "the grant is ticked"
    );
    let mut with_grant = edit.clone();
    with_grant.extend([("server", "notes"), ("access.notes", "write")]);
    let saved = browser
        .post(&format!("/jobs/{job_id}/edit"), &with_grant)
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let job = server.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(
        job["servers"],
        json!([{ "server": "notes", "access": "write", "allow": ["lookup_note"] }])
    );

    // The enabled switch and delete.
    let off = browser
        .post(&format!("/jobs/{job_id}/enabled"), &[("enabled", "false")])
        .await;
    assert_eq!(off.status, StatusCode::SEE_OTHER);
    assert_eq!(
        server.get(&format!("/api/v1/jobs/{job_id}")).await["enabled"],
        false
    );
    let gone = browser.post(&format!("/jobs/{job_id}/delete"), &[]).await;
    assert_eq!(gone.status, StatusCode::SEE_OTHER);
    assert!(server.get("/api/v1/jobs").await["jobs"]
        .as_array()
        .unwrap()
        .is_empty());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_webhook_shows_its_secrets_once_and_its_deliveries_replay() {
    let server = TestServer::builder().start().await;
    let browser = DashboardClient::signed_in(&server.base_url).await;
    server
        .create_job(json!({ "name": "on push", "command": "cat" }))
        .await;
    let created = browser
        .post(
            "/webhooks/new",
            &[
                ("name", "github pushes"),
                ("job", "on push"),
                ("scheme", "github"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert!(created.body.contains("shown only once"));
    let url = between(&created.body, r#"id="url" readonly value=""#, "\"");
    let secret = between(
        &created.body,
        r#"id="signing-secret" readonly value=""#,
        "\"",
    );
    assert!(
        url.starts_with(&format!("{}/hooks/", server.base_url)),
        "{url}"
    );
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(created.headers["cache-control"], "no-store");

    let hooks = server.get("/api/v1/webhooks").await;
    let hook_id = hooks["webhooks"][0]["id"].as_str().unwrap().to_owned();
    let page = browser.get(&format!("/webhooks/{hook_id}")).await;
    assert!(
        !page.body.contains(&secret) && !page.body.contains(&url),
        "never shown again"
    );

    // A signed delivery to the URL, then the same payload replayed from the run's page.
    let body = br#"{"ref":"refs/heads/main"}"#;
    let signature = format!(
        "sha256={}",
        crate::webhooks::hmac_hex(secret.as_bytes(), body)
    );
    let delivered = server
        .client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), StatusCode::ACCEPTED);
    let run_id = delivered.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    server.wait_until_finished(&run_id, RUN_TIMEOUT).await;
    let run_page = browser.get(&format!("/runs/{run_id}")).await;
    assert!(
        run_page.body.contains("refs/heads/main"),
        "the payload is on the run's page"
    );
    let replayed = browser.post(&format!("/runs/{run_id}/replay"), &[]).await;
    assert_eq!(replayed.status, StatusCode::SEE_OTHER, "{}", replayed.body);
    let replay_id = replayed.location().trim_start_matches("/runs/").to_owned();
    assert_ne!(replay_id, run_id);
    server.wait_until_finished(&replay_id, RUN_TIMEOUT).await;

    // A test delivery from the page, and a rotation that shows the new URL once.
    let tested = browser
        .post(
            &format!("/webhooks/{hook_id}/test"),
            &[("payload", r#"{"test":true}"#)],
        )
        .await;
    assert_eq!(tested.status, StatusCode::SEE_OTHER, "{}", tested.body);
    let not_json = browser
        .post(
            &format!("/webhooks/{hook_id}/test"),
            &[("payload", "{nope")],
        )
        .await;
    assert_eq!(not_json.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(not_json.body.contains("not JSON"));
    let rotated = browser
        .post(
            &format!("/webhooks/{hook_id}/rotate"),
            &[("grace_secs", "0")],
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let new_url = between(&rotated.body, r#"id="url" readonly value=""#, "\"");
    assert_ne!(new_url, url);
    let deliveries = browser.get(&format!("/webhooks/{hook_id}")).await;
    assert_eq!(deliveries.body.matches("<tr data-href=\"/runs/").count(), 3);
    server.stop().await.unwrap();
}

fn between(text: &str, start: &str, end: &str) -> String {
    let at = text
        .find(start)
        .unwrap_or_else(|| panic!("no `{start}` in {text}"))
        + start.len();
    let rest = &text[at..];
    rest[..rest.find(end).unwrap()].to_owned()
}

#[tokio::test]
async fn the_live_transcript_resumes_after_the_last_event_id() {
    let server = TestServer::builder().start().await;
    let browser = DashboardClient::signed_in(&server.base_url).await;
    let job = server
        .create_job(
            json!({ "name": "counter", "command": "for i in 1 2 3 4 5; do echo line-$i; done" }),
        )
        .await;
    let run = server.trigger(job["id"].as_str().unwrap()).await;
    let run_id = run["id"].as_str().unwrap();
    server.wait_until_finished(run_id, RUN_TIMEOUT).await;
    let events = server.events(run_id).await;
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.len() >= 5, "{seqs:?}");

    let whole = browser.get(&format!("/runs/{run_id}/live")).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert!(whole.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(autopilot_tests::harness::event_ids(&whole.body), seqs);
    assert!(
        whole.body.contains("event: end"),
        "a finished run's stream ends"
    );
    assert!(whole.body.contains("line-3"));

    let resume_after = seqs[2];
    let resumed = browser
        .get_with(
            &format!("/runs/{run_id}/live"),
            &[("last-event-id", &resume_after.to_string())],
        )
        .await;
    assert_eq!(
        autopilot_tests::harness::event_ids(&resumed.body),
        seqs[3..]
    );
    let from_query = browser
        .get(&format!("/runs/{run_id}/live?after={resume_after}"))
        .await;
    assert_eq!(
        autopilot_tests::harness::event_ids(&from_query.body),
        seqs[3..]
    );
    // Entries are rendered HTML, one article per event, with their ids.
    assert!(resumed.body.contains(&format!(r#"id="ev-{}""#, seqs[3])));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn runs_are_killed_and_rerun_with_edits_from_their_pages() {
    let server = TestServer::builder().start().await;
    let browser = DashboardClient::signed_in(&server.base_url).await;
    let job = server
        .create_job(json!({ "name": "sleeper", "command": "sleep 30", "overlap_policy": "allow" }))
        .await;
    let job_id = job["id"].as_str().unwrap();
    let first = server.trigger(job_id).await;
    let second = server.trigger(job_id).await;
    let first_id = first["id"].as_str().unwrap();
    let second_id = second["id"].as_str().unwrap();
    server
        .wait_for_run(first_id, RUN_TIMEOUT, |run| run["status"] == "running")
        .await;
    let killed = browser.post(&format!("/runs/{first_id}/kill"), &[]).await;
    assert_eq!(killed.status, StatusCode::SEE_OTHER, "{}", killed.body);
    assert_eq!(
        server.wait_until_finished(first_id, RUN_TIMEOUT).await["status"],
        "cancelled"
    );
    // Bulk kill from the list.
    let bulk = browser
        .post(
            "/runs/kill",
            &[("run", second_id), ("back", "/runs?job=sleeper")],
        )
        .await;
    assert_eq!(bulk.status, StatusCode::SEE_OTHER);
    assert_eq!(bulk.location(), "/runs?job=sleeper");
    assert_eq!(
        server.wait_until_finished(second_id, RUN_TIMEOUT).await["status"],
        "cancelled"
    );

    let edited = browser
        .post(
            &format!("/runs/{first_id}/rerun"),
            &[("edited", "1"), ("prompt", "echo edited-rerun")],
        )
        .await;
    assert_eq!(edited.status, StatusCode::SEE_OTHER, "{}", edited.body);
    let rerun_id = edited.location().trim_start_matches("/runs/").to_owned();
    let rerun = server.wait_until_finished(&rerun_id, RUN_TIMEOUT).await;
    assert_eq!(rerun["status"], "succeeded");
    assert_eq!(rerun["job_id"], job["id"], "a rerun belongs to the job");
    assert_eq!(rerun["settings"]["command"], "echo edited-rerun");
    let empty = browser
        .post(
            &format!("/runs/{first_id}/rerun"),
            &[("edited", "1"), ("prompt", " ")],
        )
        .await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(empty.body.contains("must not be empty"));
    server.stop().await.unwrap();
}
