"""Proxying a dispatched request to an endpoint: retries, overload redispatch, timeouts.

The body goes upstream with the client's headers minus hop-by-hop ones (those `Connection` names too),
`Authorization`, `Cookie`, the client's `X-Forwarded-*` / `Forwarded` / `X-Real-IP`, `X-Model` and
`X-Priority`. A connect failure or a 5xx before the first byte is retried once on another endpoint; an
endpoint answering 429 (or a stream whose first event is TGI's overloaded error) is skipped for a moment and
the request goes back to `acquire`.

Timeouts (`config.py`): `connectTimeoutSeconds` for the TCP connect (then another endpoint);
`responseTimeoutSeconds` for the answer's headers, and a non-streamed answer's body, else 504 in the route's
shape (no retry: the endpoint took the request); `streamIdleTimeoutSeconds` for each gap in a stream
(`streaming.py`). The slot is freed and the upstream request closed in every case, a client that goes away
included (its handler is cancelled: `http_server.py`), so TGI stops generating for nobody. No answer names
an endpoint's address: `X-TGIPool-Endpoint` carries its id (`routing.endpoint_id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from http import HTTPStatus

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tgipool.gateway.dispatch import Dispatch, acquire
from tgipool.gateway.errors import POOL_HEADER, Rejection, error_response, render
from tgipool.gateway.overload import CAPPED_HEADER, OVERLOAD_HEADER, capped_body, say
from tgipool.gateway.routing import Endpoint, Pool
from tgipool.gateway.state import Gateway
from tgipool.gateway.streaming import ENDPOINT_HEADER, HOP_BY_HOP, fail, relay, response_headers
from tgipool.gateway.upstream import UpstreamConnectError, UpstreamResponse
from tgipool.gateway.wake import COLD_START_HEADER, hold, must_hold, start_held_stream

log = logging.getLogger("tgipool.gateway")

# Also never upstream: the client's credentials and cookies, what it claims about forwarding, our own
# routing headers, `Expect` (answered here), and `Content-Encoding` (aiohttp has decoded the body).
_REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-real-ip",
    "x-model",
    "x-priority",
    "x-tgipool-environment",
    "expect",
    "content-encoding",
}
_MAX_OVERLOAD_REDISPATCH = 8
_STREAM_OVERLOADED = b'"error_type":"overloaded"'
_UPSTREAM_TYPES = {
    400: "bad_request",
    401: "authentication",
    413: "bad_request",
    415: "bad_request",
    422: "validation",
}
CLIENT_GONE = 499  # nginx's code for a client that closed the connection before the answer


def request_headers(request: web.BaseRequest) -> CIMultiDict[str]:
    """The headers that go upstream (module docstring). Values that are not UTF-8 are dropped."""
    named = {t.strip().lower() for v in request.headers.getall("Connection", ()) for t in v.split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in request.headers.items():
        low = k.lower()
        if low in _REQUEST_DROP or low in named:
            continue
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            continue
        out.add(k, v)
    return out


@dataclass
class _Try:
    """What the attempts of one request share."""

    gw: Gateway
    request: web.Request
    route: str
    body: bytes
    stream: bool
    t0: float
    headers: CIMultiDict[str]
    held: web.StreamResponse | None = None
    cold: float | None = None
    exclude: list[Endpoint] = field(default_factory=list)
    retried: bool = False
    redispatches: int = 0
    upstream_time: float = 0.0  # sending the request to the upstream's last byte, over all attempts
    waited: float = 0.0  # queued for an endpoint, or held while a resting pool woke
    pool: str | None = None  # the pool of the last attempt
    deadline: float = 0.0  # the queue's


class _Again(Exception):  # noqa: N818 - control flow: try again
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    """The answer to a dispatched request, written to the client; `t0`: its arrival (`http_server.arrival`).

    The answer is written here rather than by aiohttp after the handler returns, so the latency metrics
    end at its last byte: `added_latency_seconds` is what the client waits for minus the upstream's own
    time (sending the request to its last byte), the time queued for an endpoint and the time held while
    a resting pool woke."""
    t = _Try(gw, request, route, body, stream, t0, request_headers(request))
    try:
        resp = await _forward(t, d)
        if not resp.prepared:
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
                await resp.prepare(request)
                await resp.write_eof()
        return resp
    finally:
        if t.pool is not None:  # an endpoint was tried
            end = time.perf_counter()
            m = gw.metrics
            gw.child(m.upstream, t.pool).observe(t.upstream_time)
            gw.child(m.added, t.pool).observe(max(0.0, end - t0 - t.upstream_time - t.waited))
            gw.child(m.request_seconds, t.pool).observe(end - t0)


async def _forward(t: _Try, d: Dispatch) -> web.StreamResponse:
    gw, request, route, pool = t.gw, t.request, t.route, d.pool
    gw.child(gw.metrics.routed, pool.name).inc()
    if must_hold(pool):
        t.held = await start_held_stream(request, pool.name) if t.stream else None
        started = time.perf_counter()
        try:
            t.cold = await _hold(gw, pool, t.held, t.t0)
        except Rejection as rej:
            return await fail(gw, route, rej, pool.name, t.held)
        finally:
            t.waited += time.perf_counter() - started
    else:
        gw.demand.note(pool)  # a resting-tier pool at work stays awake (rate-limited)
    t.deadline = time.monotonic() + gw.config.queue_timeout_seconds
    if pool.overload == "cap" and pool.cap is not None and not pool.has_room(time.monotonic()):
        capped = capped_body(route, t.body, pool.cap)
        if capped is not None:
            t.body = capped
            say(request, CAPPED_HEADER, str(pool.cap))
            say(request, OVERLOAD_HEADER, "cap")
    while True:
        try:
            used, ep, waited = await acquire(
                gw, pool, d.tokens, d.priority, d.fallback, t.exclude, max(0.0, t.deadline - time.monotonic())
            )
        except Rejection as rej:
            return await fail(gw, route, rej, pool.name, t.held)
        t.waited += waited
        if used is not pool:
            say(request, OVERLOAD_HEADER, pool.overload)
        try:
            return await _attempt(t, used, ep, d.tokens)
        except _Again as again:
            if again.reason == "overloaded":
                gw.table.mark_busy(ep)  # after the release, which clears a busy mark
            gw.metrics.retries.labels(used.name, again.reason).inc()


async def _attempt(t: _Try, pool: Pool, ep: Endpoint, tokens: int) -> web.StreamResponse:
    """One try on `ep`, which it always releases; raises _Again when another try may do better."""
    gw, route = t.gw, t.route
    assert gw.session is not None, "Gateway.start() not called"
    cfg = gw.config
    loop = asyncio.get_running_loop()
    answer_by = loop.time() + cfg.response_timeout_seconds
    status = CLIENT_GONE  # unless the attempt gets further
    t_up = time.perf_counter()
    upstream: UpstreamResponse | None = None
    upstream_end: float | None = None  # when its last byte came
    again = counted = False  # counted: `fail` has counted the answer
    try:
        try:
            async with asyncio.timeout_at(answer_by):
                upstream = await gw.upstream.request(
                    t.request.method, ep.url, route, t.body, t.headers.items(), cfg.connect_timeout_seconds
                )
        except aiohttp.ClientError as exc:  # refused, connect timeout, closed before answering
            if isinstance(exc, UpstreamConnectError):
                gw.table.mark_down(ep)
            log.debug("pool %s: endpoint %s failed: %s", pool.name, ep.id, exc)
            status = 502
            if not t.retried:
                t.retried, again = True, True
                t.exclude.append(ep)
                raise _Again("connect_error") from None
            rej = Rejection(
                502, f"No endpoint of pool {pool.name} could be reached", "unavailable", "upstream_error"
            )
            counted = True
            return await fail(gw, route, rej, pool.name, t.held)
        except TimeoutError:
            counted = True
            return await fail(gw, route, _timed_out(cfg.response_timeout_seconds), pool.name, t.held)
        status = upstream.status
        is_stream = upstream.content_type == "text/event-stream"
        first, stalled = b"", False
        overloaded = status == 429
        if is_stream and status == 200:
            try:
                async with asyncio.timeout(cfg.stream_idle_timeout_seconds):
                    first = await upstream.content.readany()
                overloaded = first.startswith(b'data:{"error"') and _STREAM_OVERLOADED in first
            except aiohttp.ClientError:
                status = 502  # died before the first byte: same as a 5xx
            except TimeoutError:
                stalled = True
        if overloaded and t.redispatches < _MAX_OVERLOAD_REDISPATCH and time.monotonic() < t.deadline:
            t.redispatches += 1
            again = True
            raise _Again("overloaded")  # the caller marks it busy, once its slot is released
        if status >= 500 and not t.retried:
            t.retried, again = True, True
            t.exclude.append(ep)
            raise _Again("status_5xx")
        if is_stream and status < 500:
            resp, upstream_end = await relay(
                gw, t.request, route, upstream, first, pool.name, ep.id, t.t0, t.held, stalled
            )
            return resp
        if is_stream:  # a stream that died before its first byte
            closed = Rejection(502, "Upstream closed the stream", "unavailable", "upstream_error")
            counted = True
            return await fail(gw, route, closed, pool.name, t.held)
        try:
            if upstream.content.is_eof():  # all here already (a small answer): nothing to wait for
                payload = await upstream.read()
            else:
                async with asyncio.timeout_at(answer_by):
                    payload = await upstream.read()
            upstream_end = time.perf_counter()
        except TimeoutError:
            counted = True
            return await fail(gw, route, _timed_out(cfg.response_timeout_seconds), pool.name, t.held)
        except aiohttp.ClientError as exc:
            log.debug("pool %s: endpoint %s failed mid-answer: %s", pool.name, ep.id, exc)
            failed = Rejection(502, "Upstream failed while answering", "unavailable", "upstream_error")
            counted = True
            return await fail(gw, route, failed, pool.name, t.held)
        if t.held is not None:  # the stream started while the pool woke; the pod refused the request
            counted = True
            return await fail(gw, route, _refusal(status, payload), pool.name, t.held)
        headers = response_headers(upstream, pool.name, ep.id)
        if status >= 400 and (route.startswith("/v1/") or upstream.content_type != "application/json"):
            # TGI's body rejections are axum's plain text, and its errors TGI-shaped on /v1 too: the
            # client gets the route's shape, with TGI's message.
            return render(route, _refusal(status, payload), {POOL_HEADER: pool.name, ENDPOINT_HEADER: ep.id})
        if t.cold is not None:
            headers[COLD_START_HEADER] = f"{t.cold:.1f}"
        return web.Response(status=status, body=payload, headers=headers)
    finally:
        if upstream is not None:
            # Not read to the end (a timeout, a client gone, a retry): the connection closes, and TGI
            # cancels the generation; else it goes back to the pool.
            if upstream.content.is_eof():
                upstream.release()
            else:
                upstream.close()
        t.upstream_time += (upstream_end or time.perf_counter()) - t_up
        t.pool = pool.name
        gw.table.release(ep, tokens)
        if not again and not counted:
            gw.done(route, status)


def _timed_out(seconds: float) -> Rejection:
    message = f"Upstream did not answer within {seconds:g} s (responseTimeoutSeconds)"
    return Rejection(504, message, "timeout", "upstream_timeout")


def _refusal(status: int, payload: bytes) -> Rejection:
    """A backend's error answer, to be given in the route's shape (or as a stream's last event)."""
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):  # OpenAI-shaped already
        body = {"error": body["error"].get("message"), "error_type": body["error"].get("code")}
    if isinstance(body, dict) and body.get("error") is not None:
        error_type = str(body.get("error_type") or _UPSTREAM_TYPES.get(status, "upstream"))
        return Rejection(status, str(body["error"]), error_type, "upstream")
    text = payload.decode(errors="replace")[:500] or HTTPStatus(status).phrase
    return Rejection(status, text, _UPSTREAM_TYPES.get(status, "upstream"), "upstream")


async def info(gw: Gateway, pool: Pool) -> web.StreamResponse:
    """The pool's `/info`, from an endpoint that is not down (two tries)."""
    now = time.monotonic()
    eps = [e for e in pool.endpoints if now >= e.down_until] or pool.endpoints
    assert gw.session is not None
    for ep in eps[:2]:
        try:
            timeout = aiohttp.ClientTimeout(total=min(10.0, gw.config.response_timeout_seconds))
            async with gw.session.get(ep.url + "/info", timeout=timeout) as upstream:
                payload = await upstream.read()
                return web.Response(
                    status=upstream.status, body=payload, headers=response_headers(upstream, pool.name, ep.id)
                )
        except (aiohttp.ClientError, TimeoutError):
            gw.table.mark_down(ep)
    return error_response(503, "unhealthy", "healthcheck", {POOL_HEADER: pool.name})


__all__ = ["ENDPOINT_HEADER", "forward", "info", "request_headers"]
