//! The dashboard in a real browser: tests/browser/dashboard.py drives Debian's Chromium through
//! Playwright against the real `autopilot` binary, whose Claude runs use the real CLI against the
//! fake model API. The model's replies are queued here in the order the flow starts its runs.

use std::time::Duration;

use autopilot_tests::cluster::claude_worker_env;
use autopilot_tests::components;
use autopilot_tests::fake_anthropic::{FakeAnthropic, Reply};
use serde_json::json;

const PASSWORD: &str = "browser-test-operator-password";

/// Runs `tests/browser/dashboard.py` with `args` against the dashboard at `url`; its output.
pub(crate) async fn run_script(url: &str, password: &str, args: &[&str]) -> Option<String> {
    let python = components::browser_python()?;
    let chromium = components::chromium()?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard.py");
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script)
        .args(args)
        .env("AUTOPILOT_URL", url)
        .env("AUTOPILOT_OPERATOR_PASSWORD", password)
        .env("AUTOPILOT_TEST_CHROMIUM", chromium)
        .kill_on_drop(true);
    if let Some(dir) = std::env::var_os("AUTOPILOT_TEST_SCREENSHOTS") {
        command.env("AUTOPILOT_TEST_SCREENSHOTS", dir);
    }
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("the browser flow finishes within 10 minutes")
        .expect("start the browser flow");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the browser flow failed:\n{text}");
    Some(text)
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser() {
    let Some(claude) = components::claude_bin() else {
        return;
    };
    if components::browser_python().is_none() || components::chromium().is_none() {
        return;
    }
    let fake = FakeAnthropic::start().await.expect("fake API");
    // The job's run: a tool call after a pause (the page is open before it comes), then text
    // with markup that must stay text. Then the edited rerun, the webhook run and its replay.
    fake.push_all([
        Reply::tool_use("Bash", json!({ "command": "echo hello-from-tool" }))
            .with_text_before("Let me look at the sprint.")
            .delay(Duration::from_millis(2500)),
        Reply::text("All done. <script>alert(1)</script> [more](javascript:alert(1))")
            .delay(Duration::from_millis(1000)),
        Reply::text("Edited run done."),
        Reply::text("Webhook handled."),
        Reply::text("Replayed."),
    ]);
    let data = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = claude_worker_env(&claude, &fake.base_url());
    env.push(("AUTOPILOT_OPERATOR_PASSWORD".into(), PASSWORD.into()));
    let env_refs: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let Some(autopilot) = crate::process::spawn(data.path(), &env_refs).await else {
        return;
    };
    let output = run_script(&autopilot.base_url, PASSWORD, &["test"]).await;
    if let Some(output) = output {
        assert!(output.contains("browser flow passed"), "{output}");
    }
}
