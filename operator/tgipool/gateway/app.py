"""The gateway's HTTP app: TGI's routes in front of pools of TGI servers.

Generation routes (`POST /generate`, `/generate_stream`, `/`, `/v1/chat/completions`, `/v1/completions`):

1. tenant: `Authorization: Bearer KEY` when tenants are configured (401 with `WWW-Authenticate` without a
   valid key);
2. body: `Content-Type: application/json` (415), within `clientTimeoutSeconds` (408) and 4 MiB (413), JSON
   as TGI reads it (400, `tgipool.strict_json`), an object (422);
3. model: the OpenAI `model` field on `/v1/*` (else the `X-Model` header), the `X-Model` header on TGI routes;
   no model or `"tgi"`: the default pool's model; a model no pool serves: 404 `model_not_found`
   (`parsing.py`, which also checks the fields the charge depends on: 422); only pools of the request's
   environment serve it: prod, unless it asks for staging (`X-TGIPool-Environment: staging`, or a tenant
   bound to staging; a bound tenant asking for the other environment: 403);
4. pool: the routing rule of `routing.py` among the pools serving that model that the tenant may use (403
   when it may use none of them); a request too long for all of them: 422 with TGI's message;
5. tenant limits (429 `rate_limited` with Retry-After; 413 `request_too_large` for a request over a whole
   bucket, which would never pass);
6. endpoint: least work in flight; a saturated pool spills to its `fallbackPool` when that pool has room and
   fits the request, else the request waits in the pool's priority queue (priority: the tenant's, or the
   `X-Priority` header, which a tenant may use to lower but not raise its own) and gets 429 `overloaded`
   with Retry-After when `queueTimeoutSeconds` passes or the queue already holds `maxQueueLength` requests
   (steps 4-6: `dispatch.py`);
7. proxy: retries, overload redispatch, streaming and the upstream timeouts (`proxy.py`). The model name
   a pool gets is always one it expects: a served name becomes `"tgi"` for TGI (any other name is a LoRA
   adapter id to TGI), stays the served name for vLLM and SGLang (`parsing.upstream_body`). TGI's own
   routes go to TGI pools only: a model served only by other engines answers 400 `unsupported_route`.
   A model naming a LoRA adapter (`legal`, or `<servedName>/legal`) goes to a pool that loaded it, and
   TGI gets the adapter's id: as the OpenAI `model` on `/v1/*`, as `parameters.adapter_id` on TGI's
   routes; an adapter no pool loaded is a 404 (TGI itself would silently answer with the base model).

Every response of a routed request carries `X-TGIPool-Pool: <pool>`. Gateway errors use the route's shape
(`errors.py`): TGI's `{"error","error_type"}`, OpenAI's `{"error":{...}}` on `/v1/*`. `GET /info` is proxied
to the `X-Model` (or default) model's TGI pool (400 `unsupported_route` when only other engines serve it);
`GET /health` and `GET /` answer 200 while some pool has a usable endpoint (no fan-out, no key: probes use
it); `GET /metrics` is the gateway's own. With tenants, `/info`, `/v1/models` and `/metrics` need a key like
generation does (metrics name tenants; the model list shows a tenant only its models). Any other path or
method: 404 / 405 in the route's shape. An app built core-linked (`build_app(..., core_link=True)`, behind
the compiled core on loopback) also serves the core's `/internal/core/*` routes (`core_link.py`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError

from tgipool import strict_json
from tgipool.gateway import proxy
from tgipool.gateway.config import GatewayConfig
from tgipool.gateway.core_link import CoreHandlers
from tgipool.gateway.dispatch import dispatch, tgi_pools
from tgipool.gateway.errors import Rejection, bad_request, error_response, render, unauthorized
from tgipool.gateway.http_server import GatewayRunner, arrival
from tgipool.gateway.overload import add_headers
from tgipool.gateway.parsing import OPENAI_ROUTES, TGI_ROUTES, environment, parse_request, upstream_body
from tgipool.gateway.state import Gateway
from tgipool.gateway.tenants import Tenant
from tgipool.serving import ListeningApp

GATEWAY_KEY = web.AppKey("tgipool_gateway", Gateway)
MAX_BODY_BYTES = 4 * 1024 * 1024
_GET_ROUTES = ("/", "/health", "/info", "/metrics", "/v1/models")


def _json_content_type(request: web.BaseRequest) -> bool:
    """axum's `Json` rule: `application/json` or `application/*+json`."""
    ctype = request.content_type
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


class Handlers:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def tenant(self, request: web.BaseRequest) -> Tenant | None:
        """The request's tenant when tenants are configured (else None); Rejection 401 without a key."""
        gw = self.gw
        if not gw.tenants.enabled:
            return None
        given = request.headers.get("Authorization")
        tenant = gw.tenants.authenticate(given)
        if tenant is None:
            raise unauthorized(bool(given))
        return tenant

    async def read_body(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        """The body and its JSON object, read within clientTimeoutSeconds; Rejection (400, 408, 413, 415,
        422)."""
        if not _json_content_type(request):
            raise bad_request("Expected request with `Content-Type: application/json`", 415)
        try:
            if request.content.is_eof():  # the whole body came with the headers: nothing to wait for
                raw = await request.read()
            else:
                async with asyncio.timeout(self.gw.config.client_timeout_seconds):
                    raw = await request.read()
        except TimeoutError:
            raise Rejection(
                408,
                f"The request body did not arrive within {self.gw.config.client_timeout_seconds:g} s "
                "(clientTimeoutSeconds)",
                "timeout",
                "client_timeout",
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise bad_request(f"Request body over the limit of {MAX_BODY_BYTES} bytes", 413) from None
        except HttpProcessingError as exc:  # a broken chunked or compressed body
            raise bad_request(f"Malformed request body ({type(exc).__name__})") from None
        try:
            data = strict_json.loads(raw)
        except strict_json.JsonSyntaxError as exc:
            raise bad_request(f"Failed to parse the request body as JSON: {exc}") from None
        if not isinstance(data, dict):
            raise bad_request("Request body must be a JSON object", 422)
        return raw, data

    async def generate(self, request: web.Request) -> web.StreamResponse:
        t0 = arrival(request)
        gw = self.gw
        route = request.path
        try:
            tenant = self.tenant(request)
            if tenant is not None:
                gw.child(gw.metrics.tenant_requests, tenant.name).inc()
            body, data = await self.read_body(request)
            d = await dispatch(
                gw, parse_request(route, data, request.headers.get("X-Model")), tenant, request.headers
            )
        except Rejection as rej:
            resp = gw.reject(route, rej)
            if rej.status in (408, 413):
                resp.force_close()  # the rest of the body is not worth reading
            return resp
        upstream = upstream_body(route, data, d.pool, d.adapter_id)  # the model as the engine knows it
        if upstream is not None:
            body = upstream
        stream = route == "/generate_stream" or data.get("stream") is True
        return await proxy.forward(gw, request, route, body, d, t0, stream)

    async def info(self, request: web.Request) -> web.StreamResponse:
        try:
            tenant = self.tenant(request)
            env = environment(request.headers, tenant)
        except Rejection as rej:
            return render(request.path, rej)
        model = request.headers.get("X-Model")
        pools = self.gw.table.candidates(model, env)
        if tenant is not None and tenant.pools is not None and pools:
            pools = [p for p in pools if p.name in tenant.pools]
        if not pools:
            return error_response(404, f"No pool serves model {model!r} here", "model_not_found")
        try:
            pools = tgi_pools(pools, request.path)  # TGI's own route: other engines answer it with a 404
        except Rejection as rej:
            return render(request.path, rej)
        return await proxy.info(self.gw, min(pools, key=lambda p: (p.total_limit, -p.priority, p.name)))

    async def health(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        for pool in self.gw.table.pools.values():
            if any(not e.removed and now >= e.down_until for e in pool.endpoints):
                return web.Response(status=200)
        return error_response(503, "unhealthy", "healthcheck")

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        try:
            self.tenant(request)
        except Rejection as rej:
            return render(request.path, rej)
        return web.Response(body=self.gw.metrics.render(), content_type="text/plain", charset="utf-8")

    async def models(self, request: web.Request) -> web.StreamResponse:
        try:
            tenant = self.tenant(request)
            env = environment(request.headers, tenant)
        except Rejection as rej:
            return render(request.path, rej)
        table = self.gw.table
        names = [
            name
            for name, pools in table.by_model.items()
            if any(
                p.environment == env and (tenant is None or tenant.pools is None or p.name in tenant.pools)
                for p in pools
            )
        ]
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "tgipool"} for name in names]
        adapters = sorted(
            {
                (p.model, a)
                for p in table.pools.values()
                for a in p.adapters
                if p.environment == env and (tenant is None or tenant.pools is None or p.name in tenant.pools)
            }
        )
        data += [
            {"id": f"{m}/{a}", "object": "model", "created": 0, "owned_by": "tgipool", "parent": m}
            for m, a in adapters
        ]
        return web.json_response({"object": "list", "data": data})

    async def other(self, request: web.Request) -> web.StreamResponse:
        """Any other path or method, in the route's shape."""
        path = request.path
        if path in _GET_ROUTES or path in TGI_ROUTES or path in OPENAI_ROUTES:
            allow = ", ".join(
                m
                for m, paths in (("GET", _GET_ROUTES), ("POST", (*TGI_ROUTES, *OPENAI_ROUTES)))
                if path in paths
            )
            rej = Rejection(
                405, f"Method {request.method[:16]} not allowed on {path}", "bad_request", "bad_request"
            )
            return render(path, rej, {"Allow": allow})
        return render(path, Rejection(404, "Not found", "not_found", "bad_request"))

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: a request refused on its headers (no key) is answered before its body."""
        if request.version != HttpVersion11:
            return None
        if request.headers.get("Expect", "").lower() != "100-continue":
            rej = Rejection(
                417, "Unsupported Expect header: only 100-continue is supported", "bad_request", "bad_request"
            )
        else:
            try:
                if request.method == "POST":  # generation: the key is checked before the body comes
                    self.tenant(request)
            except Rejection as exc:
                rej = exc
            else:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0
                return None
        resp = render(request.path, rej)
        resp.force_close()
        return resp


def build_app(
    config: GatewayConfig, gateway: Gateway | None = None, core_link: bool = False
) -> web.Application:
    """The gateway app (its ClientSession lives while the app runs); `app[GATEWAY_KEY].apply(cfg)` updates.
    `core_link`: behind the compiled core, with the routes it syncs by (`core_link.py`)."""
    gw = gateway or Gateway(config)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[GATEWAY_KEY] = gw
    h = Handlers(gw)

    async def lifecycle(_app: web.Application) -> Any:
        await gw.start()
        yield
        await gw.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(add_headers)
    for path in (*TGI_ROUTES, *OPENAI_ROUTES):
        app.router.add_post(path, h.generate, expect_handler=h.expect)
    get_handlers = {
        "/": h.health,
        "/health": h.health,
        "/info": h.info,
        "/metrics": h.metrics,
        "/v1/models": h.models,
    }
    for path, handler in get_handlers.items():
        app.router.add_get(path, handler, expect_handler=h.expect)
    if core_link:
        core = CoreHandlers(gw)
        app.router.add_get("/internal/core/snapshot", core.snapshot)
        app.router.add_post("/internal/core/report", core.report)
    app.router.add_route("*", "/{tail:.*}", h.other, expect_handler=h.expect)
    return app


class GatewayServer(ListeningApp):
    """The gateway on a listening socket (`port=0`: a free port, see `.port` after `start()`)."""

    def __init__(
        self, config: GatewayConfig, host: str = "127.0.0.1", port: int = 0, core_link: bool = False
    ) -> None:
        app = build_app(config, core_link=core_link)
        gw = app[GATEWAY_KEY]
        runner = GatewayRunner(
            app,
            lambda: gw.config.client_timeout_seconds,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=1.0,
        )
        super().__init__(app, host, port, backlog=1024, runner=runner)
        self.gateway = gw

    @property
    def connections(self) -> int:
        """Client connections open now."""
        server = self._runner.server
        return len(server.connections) if server is not None else 0
