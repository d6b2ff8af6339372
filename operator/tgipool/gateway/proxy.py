"""Proxying a dispatched request to an endpoint: retries, overload redispatch, streaming.

The original body bytes go upstream unchanged (headers minus hop-by-hop ones, `Authorization`, `X-Model` and
`X-Priority`); a connect failure or a 5xx before the first byte is retried once on another endpoint; an
endpoint answering 429 (or a stream whose first event is TGI's overloaded error) is skipped for a moment and
the request goes back to `acquire`; event streams are written to the client chunk by chunk as they arrive; a
stream that breaks mid-way ends with `data:{"error":"...","error_type":"incomplete_generation_stream"}`.
"""

from __future__ import annotations

import json
import logging
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tgipool.gateway.dispatch import Dispatch, acquire
from tgipool.gateway.errors import POOL_HEADER, Rejection, error_response
from tgipool.gateway.routing import Endpoint, Pool
from tgipool.gateway.state import Gateway
from tgipool.gateway.wake import COLD_START_HEADER, end_held_stream, hold, must_hold, start_held_stream

log = logging.getLogger("tgipool.gateway")

ENDPOINT_HEADER = "X-TGIPool-Endpoint"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
_REQUEST_DROP = _HOP_BY_HOP | {"host", "authorization", "x-model", "x-priority"}
_MAX_OVERLOAD_REDISPATCH = 8
_STREAM_OVERLOADED = b'"error_type":"overloaded"'


def _request_headers(request: web.Request) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP)


def _response_headers(upstream: aiohttp.ClientResponse, pool: str) -> CIMultiDict[str]:
    headers = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP)
    headers[POOL_HEADER] = pool
    # Which server answered: operators trace a slow or failing reply to one pod.
    headers[ENDPOINT_HEADER] = str(upstream.url.origin())
    return headers


async def _fail(
    gw: Gateway, route: str, rej: Rejection, pool: str, held: web.StreamResponse | None
) -> web.StreamResponse:
    """A refusal: the gateway's error answer, or the last event of a stream already started."""
    if held is None:
        return gw.reject(route, rej, pool)
    gw.metrics.rejections.labels(rej.reason).inc()
    gw.done(route, rej.status)
    return await end_held_stream(held, route, rej)


async def _hold(gw: Gateway, pool: Pool, held: web.StreamResponse | None, t0: float) -> float:
    """Holds a request for a resting pool until it wakes; the seconds held. A stream already started
    (`held`) gets a comment line every 10 s and one with the cold start's length."""

    async def tick(seconds: float) -> None:
        if held is not None:
            await held.write(f": pool {pool.name} is waking ({seconds:.0f} s)\n\n".encode())

    try:
        cold = await hold(pool, gw.demand, tick)
    finally:
        gw.child(gw.metrics.cold_start, pool.name).observe(time.perf_counter() - t0)
    if held is not None:
        await held.write(f": cold start {cold:.1f} s\n\n".encode())
    return cold


async def forward(
    gw: Gateway, request: web.Request, route: str, body: bytes, d: Dispatch, t0: float, stream: bool = False
) -> web.StreamResponse:
    table = gw.table
    session = gw.session
    assert session is not None, "Gateway.start() not called"
    m = gw.metrics
    pool, tokens = d.pool, d.tokens
    headers = _request_headers(request)
    exclude: list[Endpoint] = []
    retried = False
    redispatches = 0
    upstream_time = 0.0
    queued = 0.0
    gw.child(m.routed, pool.name).inc()
    cold: float | None = None
    held: web.StreamResponse | None = None
    if must_hold(pool):
        held = await start_held_stream(request, pool.name) if stream else None
        try:
            cold = await _hold(gw, pool, held, t0)
        except Rejection as rej:
            return await _fail(gw, route, rej, pool.name, held)
    else:
        gw.demand.note(pool)  # a resting-tier pool at work stays awake (rate-limited)
    deadline = time.monotonic() + gw.config.queue_timeout_seconds
    while True:
        try:
            used, ep, waited = await acquire(
                gw, pool, tokens, d.priority, d.fallback, exclude, max(0.0, deadline - time.monotonic())
            )
        except Rejection as rej:
            return await _fail(gw, route, rej, pool.name, held)
        queued += waited
        t_up = time.perf_counter()
        try:
            upstream = await session.request(request.method, ep.url + route, data=body, headers=headers)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            upstream_time += time.perf_counter() - t_up
            table.release(ep, tokens)
            if isinstance(exc, aiohttp.ClientConnectorError | TimeoutError):
                table.mark_down(ep)
            log.debug("pool %s: endpoint %s failed: %s", used.name, ep.url, exc)
            if not retried:
                retried = True
                exclude.append(ep)
                m.retries.labels(used.name, "connect_error").inc()
                continue
            return await _fail(
                gw,
                route,
                Rejection(502, f"Upstream connection failed: {exc}", "unavailable", "upstream_error"),
                used.name,
                held,
            )
        status = upstream.status
        is_stream = upstream.content_type == "text/event-stream"
        first = b""
        overloaded = status == 429
        try:
            if is_stream and status == 200:
                first = await upstream.content.readany()
                overloaded = first.startswith(b'data:{"error"') and _STREAM_OVERLOADED in first
        except (aiohttp.ClientError, TimeoutError):
            status = 502  # died before the first byte: same as a 5xx
        if overloaded and redispatches < _MAX_OVERLOAD_REDISPATCH and time.monotonic() < deadline:
            redispatches += 1
            upstream.close()
            upstream_time += time.perf_counter() - t_up
            table.release(ep, tokens)
            table.mark_busy(ep)
            m.retries.labels(used.name, "overloaded").inc()
            continue
        if status >= 500 and not retried:
            retried = True
            upstream.close()
            upstream_time += time.perf_counter() - t_up
            table.release(ep, tokens)
            exclude.append(ep)
            m.retries.labels(used.name, "status_5xx").inc()
            continue
        try:
            if is_stream and status < 500:
                return await _stream(gw, request, upstream, first, used.name, t0, held)
            payload = await upstream.read() if status != 502 or not is_stream else b""
            if status == 502 and is_stream:
                closed = Rejection(502, "Upstream closed the stream", "unavailable", "upstream_error")
                return await _fail(gw, route, closed, used.name, held)
            if held is not None:  # the stream started while the pool woke; the pod refused the request
                return await _fail(gw, route, _refusal(status, payload), used.name, held)
            headers = _response_headers(upstream, used.name)
            if cold is not None:
                headers[COLD_START_HEADER] = f"{cold:.1f}"
            return web.Response(status=status, body=payload, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            failed = Rejection(502, f"Upstream failed: {exc}", "unavailable", "upstream_error")
            return await _fail(gw, route, failed, used.name, held)
        finally:
            upstream.release()
            end = time.perf_counter()
            upstream_time += end - t_up
            table.release(ep, tokens)
            gw.child(m.upstream, used.name).observe(upstream_time)
            gw.child(m.added, used.name).observe(max(0.0, end - t0 - upstream_time - queued))
            gw.child(m.request_seconds, used.name).observe(end - t0)
            gw.done(route, status)


def _refusal(status: int, payload: bytes) -> Rejection:
    """A backend's error answer, carried into a stream that had already started."""
    try:
        body = json.loads(payload)
        return Rejection(
            status, str(body.get("error", body)), str(body.get("error_type", "upstream")), "upstream"
        )
    except (ValueError, AttributeError):
        return Rejection(status, payload.decode(errors="replace")[:500], "upstream", "upstream")


async def _stream(
    gw: Gateway,
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    first: bytes,
    pool: str,
    t0: float,
    held: web.StreamResponse | None = None,
) -> web.StreamResponse:
    resp = held
    if resp is None:
        resp = web.StreamResponse(status=upstream.status, headers=_response_headers(upstream, pool))
        await resp.prepare(request)
    try:
        if first:
            await resp.write(first)
            gw.child(gw.metrics.ttft, pool).observe(time.perf_counter() - t0)
        try:
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            log.debug("pool %s: stream broke: %s", pool, exc)
            gw.metrics.rejections.labels("upstream_error").inc()
            await resp.write(
                b'data:{"error":"Incomplete generation stream: upstream failed",'
                b'"error_type":"incomplete_generation_stream"}\n\n'
            )
        await resp.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        upstream.close()  # the client left: drop the upstream connection so TGI cancels the generation
    return resp


async def info(gw: Gateway, pool: Pool) -> web.StreamResponse:
    """The pool's `/info`, from an endpoint that is not down (two tries)."""
    now = time.monotonic()
    eps = [e for e in pool.endpoints if now >= e.down_until] or pool.endpoints
    assert gw.session is not None
    for ep in eps[:2]:
        try:
            async with gw.session.get(ep.url + "/info") as upstream:
                payload = await upstream.read()
                return web.Response(
                    status=upstream.status, body=payload, headers=_response_headers(upstream, pool.name)
                )
        except (aiohttp.ClientError, TimeoutError):
            gw.table.mark_down(ep)
    return error_response(503, "unhealthy", "healthcheck", {POOL_HEADER: pool.name})
