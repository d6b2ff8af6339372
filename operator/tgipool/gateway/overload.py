"""Overload policies of a saturated pool (`spec.routing.overload`, `api/routing.py`): what the answer says.

spill and spare go to another pool through `dispatch.acquire` (the dispatch's fallback); reject is a 429
with Retry-After at once (`dispatch.acquire`); cap is here: the request waits for the pool as usual but asks
TGI for at most `capMaxNewTokens` new tokens, and the answer says so in `X-TGIPool-Capped-Max-New-Tokens`.
An answer that a policy shaped carries `X-TGIPool-Overload: <policy>`.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

OVERLOAD_HEADER = "X-TGIPool-Overload"
CAPPED_HEADER = "X-TGIPool-Capped-Max-New-Tokens"
_HEADERS = web.RequestKey("tgipool_overload_headers", dict)


def capped_body(route: str, body: bytes, cap: int) -> bytes | None:
    """The body asking for at most `cap` new tokens (in TGI's field of the route); None if it already does."""
    data: dict[str, Any] = json.loads(body)
    if route == "/v1/chat/completions":
        asked = data.get("max_completion_tokens", data.get("max_tokens"))
        if isinstance(asked, int) and asked <= cap:
            return None
        data.pop("max_completion_tokens", None)
        data["max_tokens"] = cap
    elif route == "/v1/completions":
        asked = data.get("max_tokens")
        if isinstance(asked, int) and asked <= cap:
            return None
        data["max_tokens"] = cap
    else:
        # Without `parameters` TGI samples (`do_sample: true`); with them, a missing bool is false: keep it.
        params = data.get("parameters")
        params = dict(params) if isinstance(params, dict) else {"do_sample": True}
        asked = params.get("max_new_tokens")
        if isinstance(asked, int) and asked <= cap:
            return None
        params["max_new_tokens"] = cap
        data["parameters"] = params
    return json.dumps(data, separators=(",", ":")).encode()


def say(request: web.Request, name: str, value: str) -> None:
    """Add a header to whatever answer the request gets (the app's `on_response_prepare`)."""
    headers: dict[str, str] = request.get(_HEADERS) or {}
    headers[name] = value
    request[_HEADERS] = headers


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in (request.get(_HEADERS) or {}).items():
        response.headers[name] = value
