"""An independent MCP client for the end-to-end tests: the official Python `mcp` SDK.

Usage:
  client.py http URL TOKEN STEPS_JSON
  client.py stdio COMMAND STEPS_JSON      (COMMAND is run with the argument `mcp`;
                                           AUTOPILOT_* variables are passed through)

STEPS_JSON is a list of steps, each `{"list_tools": true}` or
`{"tool": NAME, "args": {...}, "progress": bool}`. An argument value
`{"$from": [STEP_INDEX, "key", ...]}` is replaced by that path in an earlier step's output.
Prints one JSON object: the initialize result and each step's output (results as the protocol
spells them, camelCase), plus the progress notifications each tool call received.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def resolve(value, outputs):
    if isinstance(value, dict):
        if set(value) == {"$from"}:
            index, *path = value["$from"]
            found = outputs[index]
            for key in path:
                found = found[key]
            return found
        return {key: resolve(item, outputs) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, outputs) for item in value]
    return value


async def run_steps(session, steps):
    init = await session.initialize()
    outputs = []
    for step in steps:
        if step.get("list_tools"):
            listed = await session.list_tools()
            outputs.append(dump(listed))
            continue
        progress = []

        async def on_progress(value, total, message, progress=progress):
            progress.append({"progress": value, "total": total, "message": message})

        args = resolve(step.get("args", {}), outputs)
        result = await session.call_tool(
            step["tool"],
            args,
            progress_callback=on_progress if step.get("progress") else None,
        )
        output = dump(result)
        output["progress"] = progress
        outputs.append(output)
    return {"initialize": dump(init), "steps": outputs}


async def main():
    mode = sys.argv[1]
    if mode == "http":
        url, token, steps = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                out = await run_steps(session, steps)
    elif mode == "stdio":
        command, steps = sys.argv[2], json.loads(sys.argv[3])
        env = {name: value for name, value in os.environ.items() if name.startswith("AUTOPILOT_")}
        params = StdioServerParameters(command=command, args=["mcp"], env=env)
        async with stdio_client(params) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                out = await run_steps(session, steps)
    else:
        raise SystemExit(f"unknown mode {mode!r}: use http or stdio")
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
