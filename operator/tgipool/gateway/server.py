"""The gateway's HTTP server: TGI's routes in front of pools of TGI servers.

Generation routes (`POST /generate`, `/generate_stream`, `/`, `/v1/chat/completions`, `/v1/completions`):

1. tenant: `Authorization: Bearer KEY` when tenants are configured (401 without a valid key);
2. model: the OpenAI `model` field on `/v1/*` (else the `X-Model` header), the `X-Model` header on TGI routes;
   no model, `"tgi"` or an unknown model: the default pool's model; none: 404;
3. pool: the routing rule of `routing.py` among the pools serving that model that the tenant may use (403
   when it may use none of them); a request too long for all of them: 422 with TGI's message;
4. tenant limits (429 `rate_limited` with Retry-After);
5. endpoint: least work in flight; a saturated pool spills to its `fallbackPool` when that pool has room and
   fits the request, else the request waits in the pool's priority queue (priority: the tenant's, or the
   `X-Priority` header, which a tenant may use to lower but not raise its own) and gets 429 `overloaded`
   with Retry-After when `queueTimeoutSeconds` passes or the queue already holds `maxQueueLength` requests;
6. proxy: the original body bytes go upstream unchanged (headers minus hop-by-hop ones, `Authorization`,
   `X-Model` and `X-Priority`); a connect failure or a 5xx before the first byte is retried once on another
   endpoint; an endpoint answering 429 (or a stream whose first event is TGI's overloaded error) is skipped
   for a moment and the request goes back through step 5; event streams are written to the client chunk by
   chunk as they arrive; a stream that breaks mid-way ends with
   `data:{"error":"...","error_type":"incomplete_generation_stream"}`.

Every response of a routed request carries `X-TGIPool-Pool: <pool>`. Gateway errors use TGI's
`{"error","error_type"}` shape. `GET /info` is proxied to the `X-Model` (or default) pool; `GET /health` and
`GET /` answer 200 while some pool has a usable endpoint (no fan-out); `GET /metrics` is the gateway's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tgipool.gateway.config import GatewayConfig
from tgipool.gateway.metrics import GatewayMetrics
from tgipool.gateway.routing import Endpoint, Pool, PoolRemovedError, RoutingTable
from tgipool.gateway.tenants import Tenant, Tenants
from tgipool.gateway.tokens import chat_text, count_tokens
from tgipool.serving import ListeningApp

log = logging.getLogger("tgipool.gateway")

POOL_HEADER = "X-TGIPool-Pool"
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

TGI_ROUTES = ("/generate", "/generate_stream", "/")
OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions")


class Rejection(Exception):  # noqa: N818 - a response, not a failure of the gateway
    def __init__(
        self,
        status: int,
        message: str,
        error_type: str,
        reason: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.reason = reason
        self.headers = headers or {}


def error_response(
    status: int, message: str, error_type: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = json.dumps({"error": message, "error_type": error_type}, separators=(",", ":")).encode()
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


def _overloaded(retry_after: float, reason: str) -> Rejection:
    return Rejection(
        429, "Model is overloaded", "overloaded", reason, {"Retry-After": str(max(1, math.ceil(retry_after)))}
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Gateway:
    """Routing state, tenants, metrics and the one shared upstream ClientSession of an app."""

    def __init__(self, config: GatewayConfig) -> None:
        self.table = RoutingTable()
        self.tenants = Tenants()
        self.metrics = GatewayMetrics()
        self.session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._depth: dict[str, Any] = {}
        self.table.queue_listener = self._on_queue_change
        self.config = config
        self.apply(config)

    # --- lifecycle and live updates ---
    def apply(self, config: GatewayConfig) -> None:
        """Install a new configuration (pools, endpoints, tenants) without a restart."""
        self.config = config
        self.table.update(config.pools, config.default_pool)
        self.tenants.update(config.tenants)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,  # no global cap: pools' concurrency limits are the gate
            limit_per_host=0,
            ttl_dns_cache=60,
            keepalive_timeout=60,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_seconds),
            auto_decompress=False,  # bytes pass through untouched, Content-Encoding included
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
        )
        self.table.learn_limit = self._learn_limit
        for ep in self.table.endpoints.values():
            if ep.configured_limit is None and not ep.info_requested:
                ep.info_requested = True
                self._learn_limit(ep)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.session is not None:
            await self.session.close()

    def _learn_limit(self, ep: Endpoint) -> None:
        """Read `max_concurrent_requests` from the endpoint's /info in the background."""
        if self.session is None:
            ep.info_requested = False
            return
        task = asyncio.get_running_loop().create_task(self._fetch_info(ep))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch_info(self, ep: Endpoint) -> None:
        assert self.session is not None
        try:
            async with self.session.get(ep.url + "/info", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                info = await resp.json(content_type=None) if resp.status == 200 else None
            limit = _int_or_none(info.get("max_concurrent_requests")) if isinstance(info, dict) else None
            if limit is not None and limit > 0:
                self.table.set_learned_limit(ep, limit)
                log.debug("endpoint %s: max_concurrent_requests=%d", ep.url, limit)
                return
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("endpoint %s: /info failed: %s", ep.url, exc)
        ep.info_requested = False  # try again on a later request

    def _on_queue_change(self, pool: Pool) -> None:
        child = self._depth.get(pool.name)
        if child is None:
            child = self._depth[pool.name] = self.metrics.queue_depth.labels(pool.name)
        child.set(len(pool.waiters))

    # --- endpoint acquisition: room, fallback, queue ---
    async def acquire(
        self,
        pool: Pool,
        tokens: int,
        priority: int,
        fallback: Pool | None,
        exclude: list[Endpoint],
        timeout: float,
    ) -> tuple[Pool, Endpoint, float]:
        """(pool, endpoint, seconds queued); raises Rejection when the wait bound passes."""
        ep = pool.try_acquire(tokens, exclude)
        if ep is not None:
            return pool, ep, 0.0
        if fallback is not None:
            ep = fallback.try_acquire(tokens, exclude)
            if ep is not None:
                self.metrics.fallbacks.labels(pool.name, fallback.name).inc()
                return fallback, ep, 0.0
        if exclude:  # a retry with no other endpoint free: the same one again, unless it is down
            ep = pool.try_acquire(tokens)
            if ep is not None:
                return pool, ep, 0.0
        if len(pool.waiters) >= self.config.max_queue_length or timeout <= 0:
            raise _overloaded(self.config.queue_timeout_seconds, "queue_full")
        waiter = pool.enqueue(priority, tokens)
        started = time.perf_counter()
        try:
            ep = await asyncio.wait_for(waiter.future, timeout)
        except TimeoutError:
            pool.cancel(waiter)
            raise _overloaded(self.config.queue_timeout_seconds, "overloaded") from None
        except PoolRemovedError:
            raise Rejection(503, f"Pool {pool.name} was removed", "unavailable", "pool_removed") from None
        except asyncio.CancelledError:
            pool.cancel(waiter)
            raise
        waited = time.perf_counter() - started
        self.metrics.queue_wait.labels(pool.name).observe(waited)
        return pool, ep, waited


def _request_headers(request: web.Request) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP)


def _response_headers(upstream: aiohttp.ClientResponse, pool: str) -> CIMultiDict[str]:
    headers = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP)
    headers[POOL_HEADER] = pool
    # Which server answered: operators trace a slow or failing reply to one pod.
    headers[ENDPOINT_HEADER] = str(upstream.url.origin())
    return headers


class _Parsed:
    __slots__ = ("max_new", "model", "texts")

    def __init__(self, model: str | None, texts: list[str], max_new: int | None) -> None:
        self.model = model
        self.texts = texts
        self.max_new = max_new


def _parse(path: str, data: dict[str, Any], header_model: str | None) -> _Parsed:
    if path == "/v1/chat/completions":
        model = data.get("model")
        max_new = _int_or_none(data.get("max_tokens", data.get("max_completion_tokens")))
        return _Parsed(
            model if isinstance(model, str) else header_model, [chat_text(data.get("messages"))], max_new
        )
    if path == "/v1/completions":
        model = data.get("model")
        prompt = data.get("prompt")
        texts = [p for p in prompt if isinstance(p, str)] if isinstance(prompt, list) else [str(prompt or "")]
        return _Parsed(
            model if isinstance(model, str) else header_model,
            texts or [""],
            _int_or_none(data.get("max_tokens")),
        )
    params = data.get("parameters")
    max_new = _int_or_none(params.get("max_new_tokens")) if isinstance(params, dict) else None
    inputs = data.get("inputs")
    return _Parsed(header_model, [inputs if isinstance(inputs, str) else ""], max_new)


async def _measure(pool: Pool, texts: list[str]) -> tuple[int, int]:
    """(longest, total) input tokens of the request's prompts with the pool's tokenizer."""
    if len(texts) == 1:
        n = await count_tokens(pool.counter, texts[0])
        return n, n
    counts = [await count_tokens(pool.counter, t) for t in texts]
    return max(counts), sum(counts)


GATEWAY_KEY = web.AppKey("tgipool_gateway", Gateway)


class Handlers:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.m = gw.metrics
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """A labelled metric child, cached: `labels()` takes a lock and builds a key on every call."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _done(self, route: str, status: int) -> None:
        self._child(self.m.requests, route, str(status)).inc()

    def _reject(self, route: str, rej: Rejection, pool: str | None = None) -> web.Response:
        self.m.rejections.labels(rej.reason).inc()
        headers = dict(rej.headers)
        if pool is not None:
            headers[POOL_HEADER] = pool
        self._done(route, rej.status)
        return error_response(rej.status, rej.message, rej.error_type, headers)

    # --- generation routes ---
    async def generate(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        gw = self.gw
        route = request.path
        tenant: Tenant | None = None
        if gw.tenants.enabled:
            tenant = gw.tenants.authenticate(request.headers.get("Authorization"))
            if tenant is None:
                return self._reject(route, Rejection(401, "Unauthorized", "authentication", "unauthorized"))
            self._child(self.m.tenant_requests, tenant.name).inc()
        body = await request.read()
        try:
            data = json.loads(body)
        except ValueError as exc:
            self.m.rejections.labels("bad_request").inc()
            self._done(route, 400)
            return web.Response(
                status=400, text=f"Failed to parse the request body as JSON: {exc}", content_type="text/plain"
            )
        if not isinstance(data, dict):
            return self._reject(
                route, Rejection(422, "Request body must be a JSON object", "validation", "bad_request")
            )
        parsed = _parse(route, data, request.headers.get("X-Model"))
        pools = gw.table.candidates(parsed.model)
        if pools is None:
            return self._reject(
                route,
                Rejection(
                    404, f"Model {parsed.model!r} is not served here", "model_not_found", "unknown_model"
                ),
            )
        if tenant is not None and tenant.pools is not None:
            pools = [p for p in pools if p.name in tenant.pools]
            if not pools:
                return self._reject(
                    route,
                    Rejection(
                        403,
                        f"Tenant {tenant.name} may not use model {parsed.model!r}",
                        "forbidden",
                        "forbidden",
                    ),
                )
        counts: dict[str, tuple[int, int]] = {}
        for p in pools:
            if p.counter.key not in counts:
                counts[p.counter.key] = await _measure(p, parsed.texts)
        choice = gw.table.choose(pools, {k: v[0] for k, v in counts.items()}, parsed.max_new)
        if choice.pool is None:
            assert choice.error is not None
            return self._reject(
                route, Rejection(422, "Input validation error: " + choice.error, "validation", "too_long")
            )
        pool = choice.pool
        n_total = counts[pool.counter.key][1]
        cost = n_total + (parsed.max_new or 0) * len(parsed.texts)
        priority = self._priority(request, tenant)
        if tenant is not None:
            refused = tenant.check(cost)
            if refused is not None:
                limit, wait = refused
                return self._reject(
                    route,
                    Rejection(
                        429,
                        f"Rate limit exceeded: tenant {tenant.name} is over its {limit}",
                        "rate_limited",
                        "rate_limited",
                        {"Retry-After": str(wait)},
                    ),
                )
        fallback = await self._fallback(pool, tenant, parsed)
        if route.startswith("/v1/") and data.get("model") == pool.model:
            # TGI serves its base model as "tgi" and takes any other name for a LoRA adapter id:
            # the served name clients use must not reach it.
            body = json.dumps({**data, "model": "tgi"}, separators=(",", ":")).encode()
        return await self.forward(request, route, body, pool, fallback, n_total, priority, t0)

    @staticmethod
    def _priority(request: web.Request, tenant: Tenant | None) -> int:
        raw = request.headers.get("X-Priority")
        value: int | None = None
        if raw is not None:
            try:
                value = int(raw)
            except ValueError:
                value = None
        if tenant is None:
            return value if value is not None else 0
        return tenant.priority if value is None else min(value, tenant.priority)

    async def _fallback(self, pool: Pool, tenant: Tenant | None, parsed: _Parsed) -> Pool | None:
        if pool.fallback is None:
            return None
        fb = self.gw.table.pools.get(pool.fallback)
        if fb is None or (tenant is not None and tenant.pools is not None and fb.name not in tenant.pools):
            return None
        n, _ = await _measure(fb, parsed.texts)
        return fb if fb.accepts(n, parsed.max_new) else None

    async def forward(
        self,
        request: web.Request,
        route: str,
        body: bytes,
        pool: Pool,
        fallback: Pool | None,
        tokens: int,
        priority: int,
        t0: float,
    ) -> web.StreamResponse:
        gw = self.gw
        table = gw.table
        session = gw.session
        assert session is not None, "Gateway.start() not called"
        headers = _request_headers(request)
        exclude: list[Endpoint] = []
        retried = False
        redispatches = 0
        upstream_time = 0.0
        queued = 0.0
        deadline = time.monotonic() + gw.config.queue_timeout_seconds
        self._child(self.m.routed, pool.name).inc()
        while True:
            try:
                used, ep, waited = await gw.acquire(
                    pool, tokens, priority, fallback, exclude, max(0.0, deadline - time.monotonic())
                )
            except Rejection as rej:
                return self._reject(route, rej, pool.name)
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
                    self.m.retries.labels(used.name, "connect_error").inc()
                    continue
                return self._reject(
                    route,
                    Rejection(502, f"Upstream connection failed: {exc}", "unavailable", "upstream_error"),
                    used.name,
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
                self.m.retries.labels(used.name, "overloaded").inc()
                continue
            if status >= 500 and not retried:
                retried = True
                upstream.close()
                upstream_time += time.perf_counter() - t_up
                table.release(ep, tokens)
                exclude.append(ep)
                self.m.retries.labels(used.name, "status_5xx").inc()
                continue
            try:
                if is_stream and status < 500:
                    return await self._stream(request, upstream, first, used.name)
                payload = await upstream.read() if status != 502 or not is_stream else b""
                if status == 502 and is_stream:
                    return self._reject(
                        route,
                        Rejection(502, "Upstream closed the stream", "unavailable", "upstream_error"),
                        used.name,
                    )
                return web.Response(
                    status=status, body=payload, headers=_response_headers(upstream, used.name)
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                return self._reject(
                    route,
                    Rejection(502, f"Upstream failed: {exc}", "unavailable", "upstream_error"),
                    used.name,
                )
            finally:
                upstream.release()
                end = time.perf_counter()
                upstream_time += end - t_up
                table.release(ep, tokens)
                self._child(self.m.upstream, used.name).observe(upstream_time)
                self._child(self.m.added, used.name).observe(max(0.0, end - t0 - upstream_time - queued))
                self._done(route, status)

    async def _stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, first: bytes, pool: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=upstream.status, headers=_response_headers(upstream, pool))
        await resp.prepare(request)
        try:
            if first:
                await resp.write(first)
            try:
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                log.debug("pool %s: stream broke: %s", pool, exc)
                self.m.rejections.labels("upstream_error").inc()
                await resp.write(
                    b'data:{"error":"Incomplete generation stream: upstream failed",'
                    b'"error_type":"incomplete_generation_stream"}\n\n'
                )
            await resp.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            upstream.close()  # the client left: drop the upstream connection so TGI cancels the generation
        return resp

    # --- other routes ---
    async def info(self, request: web.Request) -> web.StreamResponse:
        pools = self.gw.table.candidates(request.headers.get("X-Model"))
        if not pools:
            return error_response(404, "No pool serves this model", "model_not_found")
        pool = min(pools, key=lambda p: (p.total_limit, -p.priority, p.name))
        now = time.monotonic()
        eps = [e for e in pool.endpoints if now >= e.down_until] or pool.endpoints
        assert self.gw.session is not None
        for ep in eps[:2]:
            try:
                async with self.gw.session.get(ep.url + "/info") as upstream:
                    payload = await upstream.read()
                    return web.Response(
                        status=upstream.status, body=payload, headers=_response_headers(upstream, pool.name)
                    )
            except (aiohttp.ClientError, TimeoutError):
                self.gw.table.mark_down(ep)
        return error_response(503, "unhealthy", "healthcheck", {POOL_HEADER: pool.name})

    async def health(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        for pool in self.gw.table.pools.values():
            if any(not e.removed and now >= e.down_until for e in pool.endpoints):
                return web.Response(status=200)
        return error_response(503, "unhealthy", "healthcheck")

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.gw.metrics.render(), content_type="text/plain", charset="utf-8")

    async def models(self, request: web.Request) -> web.StreamResponse:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "tgipool"}
            for name in self.gw.table.by_model
        ]
        return web.json_response({"object": "list", "data": data})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(config: GatewayConfig, gateway: Gateway | None = None) -> web.Application:
    """The gateway app (its ClientSession lives while the app runs); `app[GATEWAY_KEY].apply(cfg)` updates."""
    gw = gateway or Gateway(config)
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[GATEWAY_KEY] = gw
    h = Handlers(gw)

    async def lifecycle(_app: web.Application) -> Any:
        await gw.start()
        yield
        await gw.close()

    app.cleanup_ctx.append(lifecycle)
    for path in (*TGI_ROUTES, *OPENAI_ROUTES):
        app.router.add_post(path, h.generate)
    app.router.add_get("/", h.health)
    app.router.add_get("/health", h.health)
    app.router.add_get("/info", h.info)
    app.router.add_get("/metrics", h.metrics)
    app.router.add_get("/v1/models", h.models)
    return app


class GatewayServer(ListeningApp):
    """The gateway on a listening socket (`port=0`: a free port, see `.port` after `start()`)."""

    def __init__(self, config: GatewayConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(build_app(config), host, port, backlog=1024)
        self.gateway = self.app[GATEWAY_KEY]
