//! Servers planted in a run's workspace are not loaded: a `.mcp.json` (what an earlier run, a
//! cloned repository or a webhook's payload could leave there) and a project's
//! `.claude/settings.json` enabling it. Only the granted servers start, with or without a grant.

use autopilot_tests::fake_anthropic::Reply;
use serde_json::{json, Value};

use super::run_once;

#[tokio::test]
async fn a_mcp_json_in_the_workspace_is_not_loaded() {
    let Some((server, fake, python)) = super::start().await else {
        return;
    };
    let (status, body) = server
        .call(
            reqwest::Method::POST,
            "/api/v1/servers",
            Some(json!({ "name": "memory", "transport": { "type": "fixed", "server": "memory" } })),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    for (name, servers) in [
        ("granted-one", json!([{ "server": "memory" }])),
        ("granted-none", json!([])),
    ] {
        let job = server
            .create_job(json!({ "name": name, "prompt": "Work.", "servers": servers }))
            .await;
        let workspace = server.workspace_of(&job);
        std::fs::create_dir_all(workspace.join(".claude")).unwrap();
        // Started, the planted server would leave a marker beside the workspace.
        let marker = workspace.with_extension("planted-started");
        let script = format!(
            "open({:?}, 'w').write('started')\nimport time\ntime.sleep(30)\n",
            marker.display().to_string()
        );
        std::fs::write(workspace.join("planted.py"), script).unwrap();
        let planted = json!({ "mcpServers": { "planted": {
            "command": python.display().to_string(), "args": ["planted.py"] } } });
        std::fs::write(workspace.join(".mcp.json"), planted.to_string()).unwrap();
        let settings = json!({ "enableAllProjectMcpServers": true,
                               "enabledMcpjsonServers": ["planted"] });
        std::fs::write(
            workspace.join(".claude/settings.json"),
            settings.to_string(),
        )
        .unwrap();
        fake.push(Reply::tool_use("mcp__planted__anything", json!({})));
        fake.push(Reply::text("Done."));
        let (run, events) = run_once(&server, &job).await;
        assert_eq!(run["status"], "succeeded", "{name}: {run:#} {events:#?}");
        let init = events
            .iter()
            .find(|e| e["kind"] == "system_init")
            .unwrap_or_else(|| panic!("{name}: no init line: {events:#?}"));
        let listed: Vec<&str> = init["data"]["mcp_servers"]
            .as_array()
            .map(|servers| servers.iter().filter_map(|s| s["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(!listed.contains(&"planted"), "{name}: {init}");
        let expected: &[&str] = match name {
            "granted-one" => &["memory"],
            _ => &[],
        };
        assert_eq!(listed, expected, "{name}: only the granted servers");
        let result: Vec<&Value> = events
            .iter()
            .filter(|e| e["kind"] == "tool_result")
            .collect();
        assert!(
            result.iter().all(|r| r["data"]["is_error"] == true),
            "{name}: the planted tool answered: {result:#?}"
        );
        assert!(!marker.exists(), "{name}: the planted server was started");
    }
}
