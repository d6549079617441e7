"""An MCP client that shows forms: the official Python `mcp` SDK's high-level `Client`, with an
elicitation callback that records each form and answers it as told.

Usage:
  elicit_client.py URL TOKEN MODE TOOL ARGS_JSON ANSWER_JSON

MODE is `2026-07-28` (input requests inside a call, no session needed) or `legacy` (the
initialize handshake, where a stateless server cannot send a form). ANSWER_JSON is the form's
answer, e.g. `{"action": "accept", "content": {"decision": "deny", "reason": "no"}}`.
Prints one JSON object: the forms shown (message and schema) and the call's result.
"""

import asyncio
import json
import sys

from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main():
    url, token, mode, tool = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    args, answer = json.loads(sys.argv[5]), json.loads(sys.argv[6])
    forms = []

    async def on_form(context, params):
        forms.append(params.model_dump(mode="json", by_alias=True, exclude_none=True))
        return types.ElicitResult(action=answer["action"], content=answer.get("content"))

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    transport = streamable_http_client(url, http_client=http)
    async with Client(transport, mode=mode, elicitation_callback=on_form) as client:
        result = await client.call_tool(tool, args)
    out = {
        "forms": forms,
        "result": result.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
