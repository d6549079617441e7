//! Reading an MCP server's `tools/list` answers, wherever they are asked for: by the guard on a
//! worker (`autopilot-mcp-guard --list-tools`) and by the control plane of a remote server.
//! Always built (the control plane reads it).

use serde_json::Value;

/// The tools of one `tools/list` answer, and the cursor of the next page.
pub fn page_of(answer: &Value) -> Result<(Vec<Value>, Option<String>), String> {
    if let Some(error) = answer.get("error") {
        return Err(format!(
            "the server answered tools/list with an error: {error}"
        ));
    }
    let tools = answer
        .pointer("/result/tools")
        .and_then(Value::as_array)
        .ok_or("the server's tools/list answer holds no `tools` array")?;
    let next = answer
        .pointer("/result/nextCursor")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((tools.clone(), next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_page_gives_its_tools_and_the_next_cursor() {
        let answer = json!({ "jsonrpc": "2.0", "id": 1, "result": {
            "tools": [{ "name": "a" }, { "name": "b", "annotations": { "readOnlyHint": true } }],
            "nextCursor": "p2" } });
        let (tools, next) = page_of(&answer).unwrap();
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[1]["annotations"]["readOnlyHint"], true);
        assert_eq!(next.as_deref(), Some("p2"));
        assert!(page_of(&json!({ "id": 1, "error": { "code": -1 } }))
            .unwrap_err()
            .contains("error"));
        assert!(page_of(&json!({ "id": 1, "result": {} })).is_err());
    }
}
