"""Relaying an event stream from an endpoint to the client, and ending any stream with an error.

Events are written to the client as they arrive. The stream ends with the route's error event
(`errors.error_event`: TGI's `data:{"error","error_type"}`, or on /v1 OpenAI's error chunk and
`data: [DONE]`) when the endpoint breaks it (`incomplete_generation_stream`) or sends nothing for
`streamIdleTimeoutSeconds` (`timeout`; TGI's keep-alive comments count as something). A client that stops
reading for `clientTimeoutSeconds`, or leaves, ends it too; the caller closes the upstream response, so
TGI cancels the generation.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tgipool.gateway.errors import POOL_HEADER, Rejection, error_event
from tgipool.gateway.state import Gateway
from tgipool.gateway.upstream import UpstreamResponse
from tgipool.gateway.wake import end_held_stream

log = logging.getLogger("tgipool.gateway")

ENDPOINT_HEADER = "X-TGIPool-Endpoint"
# Hop-by-hop headers (RFC 9110 7.6.1, and the legacy ones) and Content-Length: never relayed either way.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


class ClientGoneError(Exception):
    """The client stopped reading (clientTimeoutSeconds) or closed the connection."""


def response_headers(
    upstream: aiohttp.ClientResponse | UpstreamResponse, pool: str, endpoint_id: str
) -> CIMultiDict[str]:
    headers = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP)
    headers[POOL_HEADER] = pool
    # Which server answered, by id (never its address): operators trace a slow or failing reply to a pod.
    headers[ENDPOINT_HEADER] = endpoint_id
    return headers


async def fail(
    gw: Gateway, route: str, rej: Rejection, pool: str, held: web.StreamResponse | None
) -> web.StreamResponse:
    """A refusal: the gateway's error answer, or the last event of a stream already started."""
    if held is None:
        return gw.reject(route, rej, pool)
    gw.metrics.rejections.labels(rej.reason).inc()
    gw.done(route, rej.status)
    return await end_held_stream(held, route, rej)


# A write that leaves the client's transport buffer under this cannot pause it (asyncio's default high-water
# mark is 64 KiB), so it cannot wait: it needs no timeout.
_NEVER_WAITS = 16 * 1024


async def _send(request: web.Request, resp: web.StreamResponse, data: bytes, seconds: float) -> None:
    transport = request.transport
    try:
        if transport is not None and transport.get_write_buffer_size() + len(data) <= _NEVER_WAITS:
            await resp.write(data)
            return
        async with asyncio.timeout(seconds):
            await resp.write(data)
    except (TimeoutError, ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
        raise ClientGoneError from exc


async def relay(
    gw: Gateway,
    request: web.Request,
    route: str,
    upstream: UpstreamResponse,
    first: bytes,
    pool: str,
    endpoint_id: str,
    t0: float,
    held: web.StreamResponse | None = None,
    stalled: bool = False,
) -> tuple[web.StreamResponse, float]:
    """Relay `upstream` (whose first bytes are `first`; `stalled`: none came in time) to the client;
    the answer and when the upstream's last byte came (`perf_counter`)."""
    cfg = gw.config
    last = time.perf_counter()
    idle, client = cfg.stream_idle_timeout_seconds, cfg.client_timeout_seconds
    resp = held
    if resp is None:
        resp = web.StreamResponse(
            status=upstream.status, headers=response_headers(upstream, pool, endpoint_id)
        )
        await resp.prepare(request)
    end: Rejection | None = None
    try:
        if first:
            await _send(request, resp, first, client)
            gw.child(gw.metrics.ttft, pool).observe(time.perf_counter() - t0)
        content = upstream.content
        try:
            # Each read takes all the upstream has sent so far: one write per read, however many events.
            while not stalled and not content.at_eof():
                async with asyncio.timeout(idle):
                    chunk = await content.readany()
                last = time.perf_counter()
                if not chunk:
                    break
                await _send(request, resp, chunk, client)
        except TimeoutError:
            stalled = True
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            log.debug("pool %s: stream broke: %s", pool, exc)
            end = Rejection(
                500,
                "Incomplete generation stream: upstream failed",
                "incomplete_generation_stream",
                "upstream_error",
            )
        if stalled:
            end = Rejection(
                504,
                f"Upstream sent nothing for {idle:g} s (streamIdleTimeoutSeconds)",
                "timeout",
                "stream_idle_timeout",
            )
        if end is not None:
            gw.metrics.rejections.labels(end.reason).inc()
            await _send(request, resp, error_event(route, end), client)
        await resp.write_eof()
    except ClientGoneError:
        log.debug("pool %s: the client left a stream", pool)
        if request.transport is not None:
            request.transport.abort()  # unread bytes would keep the connection (and its descriptor)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass  # the client left at write_eof: nothing more to send
    return resp, last
