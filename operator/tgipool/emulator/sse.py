"""Server-sent events framed the way axum's `Sse` frames them in TGI.

`Event::json_data` writes `data:{json}` with no space after the colon; `Event::data("[DONE]")` writes
`data: [DONE]`; idle streams get axum's default keep-alive comment every 15 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

KEEP_ALIVE_SECONDS = 15.0
DONE = b"data: [DONE]\n\n"


def dumps(obj: Any) -> bytes:
    """serde_json's compact form."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event(obj: Any) -> bytes:
    return b"data:" + dumps(obj) + b"\n\n"


async def _keep_alive(resp: web.StreamResponse, last_write: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(KEEP_ALIVE_SECONDS)
        if loop.time() - last_write[0] >= KEEP_ALIVE_SECONDS:
            await resp.write(b":\n\n")
            last_write[0] = loop.time()


async def respond(
    request: web.Request, headers: Mapping[str, str], chunks: AsyncIterator[bytes]
) -> web.StreamResponse:
    """Stream `chunks` as a 200 event stream; a client disconnect closes `chunks` (freeing the permit)."""
    resp = web.StreamResponse(status=200)
    resp.content_type = "text/event-stream"
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers.update(headers)
    loop = asyncio.get_running_loop()
    last_write = [loop.time()]
    keep_alive: asyncio.Task[None] | None = None
    try:
        await resp.prepare(request)
        keep_alive = asyncio.create_task(_keep_alive(resp, last_write))
        async for chunk in chunks:
            await resp.write(chunk)
            last_write[0] = loop.time()
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away; closing `chunks` below cancels its sequence
    finally:
        if keep_alive is not None:
            keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await keep_alive
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    return resp
