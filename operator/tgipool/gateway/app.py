"""The gateway's HTTP app: TGI's routes in front of pools of TGI servers.

Generation routes (`POST /generate`, `/generate_stream`, `/`, `/v1/chat/completions`, `/v1/completions`):

1. tenant: `Authorization: Bearer KEY` when tenants are configured (401 without a valid key);
2. model: the OpenAI `model` field on `/v1/*` (else the `X-Model` header), the `X-Model` header on TGI routes;
   no model, `"tgi"` or an unknown model: the default pool's model; none: 404 (`parsing.py`);
3. pool: the routing rule of `routing.py` among the pools serving that model that the tenant may use (403
   when it may use none of them); a request too long for all of them: 422 with TGI's message;
4. tenant limits (429 `rate_limited` with Retry-After);
5. endpoint: least work in flight; a saturated pool spills to its `fallbackPool` when that pool has room and
   fits the request, else the request waits in the pool's priority queue (priority: the tenant's, or the
   `X-Priority` header, which a tenant may use to lower but not raise its own) and gets 429 `overloaded`
   with Retry-After when `queueTimeoutSeconds` passes or the queue already holds `maxQueueLength` requests
   (steps 3-5: `dispatch.py`);
6. proxy: retries, overload redispatch and streaming (`proxy.py`).

Every response of a routed request carries `X-TGIPool-Pool: <pool>`. Gateway errors use TGI's
`{"error","error_type"}` shape (`errors.py`). `GET /info` is proxied to the `X-Model` (or default) pool;
`GET /health` and `GET /` answer 200 while some pool has a usable endpoint (no fan-out); `GET /metrics` is
the gateway's own.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from tgipool.gateway import proxy
from tgipool.gateway.config import GatewayConfig
from tgipool.gateway.dispatch import dispatch
from tgipool.gateway.errors import Rejection, error_response
from tgipool.gateway.parsing import OPENAI_ROUTES, TGI_ROUTES, parse_request
from tgipool.gateway.state import Gateway
from tgipool.gateway.tenants import Tenant
from tgipool.serving import ListeningApp

GATEWAY_KEY = web.AppKey("tgipool_gateway", Gateway)


class Handlers:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def generate(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        gw = self.gw
        route = request.path
        tenant: Tenant | None = None
        if gw.tenants.enabled:
            tenant = gw.tenants.authenticate(request.headers.get("Authorization"))
            if tenant is None:
                return gw.reject(route, Rejection(401, "Unauthorized", "authentication", "unauthorized"))
            gw.child(gw.metrics.tenant_requests, tenant.name).inc()
        body = await request.read()
        try:
            data = json.loads(body)
        except ValueError as exc:
            gw.metrics.rejections.labels("bad_request").inc()
            gw.done(route, 400)
            return web.Response(
                status=400, text=f"Failed to parse the request body as JSON: {exc}", content_type="text/plain"
            )
        if not isinstance(data, dict):
            return gw.reject(
                route, Rejection(422, "Request body must be a JSON object", "validation", "bad_request")
            )
        try:
            d = await dispatch(
                gw, parse_request(route, data, request.headers.get("X-Model")), tenant, request.headers
            )
        except Rejection as rej:
            return gw.reject(route, rej)
        if route.startswith("/v1/") and data.get("model") == d.pool.model:
            # TGI serves its base model as "tgi" and takes any other name for a LoRA adapter id:
            # the served name clients use must not reach it.
            body = json.dumps({**data, "model": "tgi"}, separators=(",", ":")).encode()
        stream = route == "/generate_stream" or data.get("stream") is True
        return await proxy.forward(gw, request, route, body, d, t0, stream)

    async def info(self, request: web.Request) -> web.StreamResponse:
        pools = self.gw.table.candidates(request.headers.get("X-Model"))
        if not pools:
            return error_response(404, "No pool serves this model", "model_not_found")
        return await proxy.info(self.gw, min(pools, key=lambda p: (p.total_limit, -p.priority, p.name)))

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
