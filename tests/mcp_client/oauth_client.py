"""The Python `mcp` SDK's own OAuth client against Autopilot, headless.

Usage:
  oauth_client.py MCP_URL REDIRECT_URI STEPS_JSON AFTER_REFRESH_STEPS_JSON

The SDK's `OAuthClientProvider` (an httpx2 auth) does everything a desktop client would: it
meets the 401 from `/mcp`, reads the protected-resource and authorization-server metadata,
registers a client dynamically, and starts an authorization-code flow with PKCE. Where a
browser would open, the redirect handler instead GETs the authorization URL itself (the
server under test approves without a consent page) without following the redirect, and
hands `code`, `state` and `iss` from the `Location` to the callback handler.

STEPS_JSON runs first (same step format as client.py). Then the stored access token is made
to look expired, so the provider refreshes it before the next request, and
AFTER_REFRESH_STEPS_JSON runs in the same session.

Prints one JSON object: the initialize result, each step's output, what the redirect looked
like, the registered client, and a fingerprint of every token set the storage received.
"""

import asyncio
import hashlib
import json
import sys
import time
from urllib.parse import parse_qs, urlsplit

import httpx2
from mcp import ClientSession
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from client import dump, resolve


def fingerprint(secret):
    """Tokens never reach the output: only a short digest, enough to tell two apart."""
    if secret is None:
        return None
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


class MemoryStorage:
    """A `TokenStorage` that keeps everything in memory and remembers each token set."""

    def __init__(self):
        self.tokens = None
        self.client_info = None
        self.history = []

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken):
        self.tokens = tokens
        self.history.append(
            {
                "access_token": fingerprint(tokens.access_token),
                "refresh_token": fingerprint(tokens.refresh_token),
                "token_type": tokens.token_type,
                "expires_in": tokens.expires_in,
                "scope": tokens.scope,
            }
        )

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull):
        self.client_info = client_info


class HeadlessBrowser:
    """Plays the browser: follows the authorization URL once and reads the redirect."""

    def __init__(self, redirect_uri):
        self.redirect_uri = redirect_uri
        self.pending = None
        self.seen = []

    async def redirect_handler(self, authorization_url):
        async with httpx2.AsyncClient(follow_redirects=False, timeout=30) as http:
            response = await http.get(authorization_url)
        location = response.headers.get("location", "")
        query = parse_qs(urlsplit(location).query)
        first = lambda name: query.get(name, [None])[0]  # noqa: E731
        asked = parse_qs(urlsplit(authorization_url).query)
        self.seen.append(
            {
                "status": response.status_code,
                "location_base": location.split("?", 1)[0],
                "has_code": first("code") is not None,
                "state_matches": first("state") == asked.get("state", [None])[0],
                "iss": first("iss"),
                "error": first("error"),
                "asked": {
                    name: asked[name][0]
                    for name in ("response_type", "code_challenge_method", "scope", "resource")
                    if name in asked
                },
            }
        )
        if response.status_code not in (302, 303) or first("code") is None:
            raise RuntimeError(f"authorization did not redirect with a code: {response.status_code} {location}")
        self.pending = AuthorizationCodeResult(code=first("code"), state=first("state"), iss=first("iss"))

    async def callback_handler(self):
        result, self.pending = self.pending, None
        if result is None:
            raise RuntimeError("the callback came before any redirect")
        return result


async def run(session, steps, outputs):
    for step in steps:
        if step.get("list_tools"):
            outputs.append(dump(await session.list_tools()))
            continue
        result = await session.call_tool(step["tool"], resolve(step.get("args", {}), outputs))
        outputs.append(dump(result))


async def main():
    url, redirect_uri = sys.argv[1], sys.argv[2]
    steps, after_refresh = json.loads(sys.argv[3]), json.loads(sys.argv[4])
    storage = MemoryStorage()
    browser = HeadlessBrowser(redirect_uri)
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="mcp-sdk-e2e",
            redirect_uris=[redirect_uri],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    outputs = []
    http = create_mcp_http_client(auth=provider)
    async with streamable_http_client(url, http_client=http) as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            init = await session.initialize()
            await run(session, steps, outputs)
            tokens_before_refresh = len(storage.history)
            # Make the provider believe its access token has expired: the next request goes
            # through its refresh-token grant before it is sent.
            provider.context.token_expiry_time = time.time() - 1
            await run(session, after_refresh, outputs)
    info = storage.client_info
    print(
        json.dumps(
            {
                "initialize": dump(init),
                "steps": outputs,
                "authorizations": browser.seen,
                "client": {
                    "client_id": info.client_id if info else None,
                    "token_endpoint_auth_method": info.token_endpoint_auth_method if info else None,
                    "redirect_uris": [str(uri) for uri in info.redirect_uris or []] if info else [],
                },
                "tokens": storage.history,
                "tokens_before_refresh": tokens_before_refresh,
                "issuer": str(provider.context.oauth_metadata.issuer) if provider.context.oauth_metadata else None,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
