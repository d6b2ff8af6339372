"""The link between the compiled gateway core (`gatewaycore/`) and this gateway: the protocol's one home.

With `tgipool gateway --core BIN`, the compiled core (`tgipool-gateway-core`) owns the hot path: it
listens on the public port, serves the common generation requests itself and hands every other request
to this gateway on loopback. Python stays the control plane (configuration, cluster watch, wake holds,
tenants, adapters, metrics). This module is the link, served only by a core-linked app:

* `GET /internal/core/snapshot?after=V&wait=S`: the routing state the core serves from (`snapshot`), at
  once when its version is past `after`, else after the next change within `wait` seconds (204 if none).
  The version moves on every table update and learned endpoint limit (`CoreLink.bump`).
* `POST /internal/core/report`: the core's counts since its previous report, added into this gateway's
  metrics (`apply_report`), and the pools it served, whose demand Leases stay renewed.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tgipool import strict_json
from tgipool.gateway.config import describe
from tgipool.gateway.errors import Rejection, bad_request, render
from tgipool.gateway.routing import Pool

if TYPE_CHECKING:
    from tgipool.gateway.state import Gateway

# The histograms the core measures (not cold_start_wait_seconds: it serves awake pools only).
CORE_HISTOGRAMS = (
    "queue_wait_seconds",
    "upstream_seconds",
    "ttft_seconds",
    "request_seconds",
    "added_latency_seconds",
)
DEFAULT_WAIT_SECONDS = 20.0
MAX_WAIT_SECONDS = 60.0


class CoreLink:
    """The snapshot's version, the long polls waiting for it to move, and the core's queue depths."""

    def __init__(self) -> None:
        self.version = 0
        self._changed = asyncio.Event()  # set (and replaced) by each bump
        self.depth: dict[str, int] = {}  # the core's own queue per pool, from its last report

    def bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_past(self, after: int, seconds: float) -> bool:
        """True once the version is past `after`; False when `seconds` passed first."""
        deadline = asyncio.get_running_loop().time() + seconds
        while self.version <= after:
            changed = self._changed
            try:
                async with asyncio.timeout_at(deadline):
                    await changed.wait()
            except TimeoutError:
                return False
        return True


def _pool(pool: Pool) -> dict[str, Any]:
    route = pool.route
    return {
        "name": pool.name,
        "model": pool.model,
        "environment": pool.environment,
        "input_limit": pool.input_limit,
        "total_limit": pool.total_limit,
        "priority": pool.priority,
        "fallback": pool.fallback,
        "overload": pool.overload,
        "spare": pool.spare,
        "cap": pool.cap,
        "tokenizer": route.tokenizer,
        "engine": pool.engine,
        "tgi_api": pool.tgi_api,
        "upstream_model": pool.upstream_model,
        "hold": route.hold_seconds is not None,
        "adapters": bool(pool.adapters),
        "endpoints": [{"url": ep.url, "id": ep.id, "limit": ep.limit} for ep in pool.endpoints],
    }


def snapshot(gw: Gateway) -> dict[str, Any]:
    """The routing state the core serves from, as the protocol's snapshot JSON."""
    cfg = gw.config
    return {
        "version": gw.core.version,
        "tenants": gw.tenants.enabled,
        "default_pool": gw.table.default_pool,
        "queue_timeout_seconds": cfg.queue_timeout_seconds,
        "max_queue_length": cfg.max_queue_length,
        "connect_timeout_seconds": cfg.connect_timeout_seconds,
        "response_timeout_seconds": cfg.response_timeout_seconds,
        "stream_idle_timeout_seconds": cfg.stream_idle_timeout_seconds,
        "client_timeout_seconds": cfg.client_timeout_seconds,
        "buckets": {name: [float(b) for b in gw.metrics.bounds[name]] for name in CORE_HISTOGRAMS},
        "pools": [_pool(p) for p in gw.table.pools.values()],
    }


# --- the report ---
Count = Annotated[int, Field(ge=0)]


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RequestCount(_Shape):
    route: str
    code: int = Field(ge=100, le=599)
    n: Count


class FallbackCount(_Shape):
    pool: str
    fallback: str
    n: Count


class RetryCount(_Shape):
    pool: str
    reason: str
    n: Count


class Observed(_Shape):
    buckets: list[Count]  # per bucket, not cumulative; the last one is +Inf
    sum: float = Field(ge=0, allow_inf_nan=False)


class Report(_Shape):
    """Counts since the core's previous report; `queue_depth` is the core's queue now (a pool it leaves
    out has none)."""

    requests: list[RequestCount] = Field(default_factory=list)
    routed: dict[str, Count] = Field(default_factory=dict)
    fallbacks: list[FallbackCount] = Field(default_factory=list)
    rejections: dict[str, Count] = Field(default_factory=dict)
    retries: list[RetryCount] = Field(default_factory=list)
    queue_depth: dict[str, Count] = Field(default_factory=dict)
    histograms: dict[str, dict[str, Observed]] = Field(default_factory=dict)
    active: list[str] = Field(default_factory=list)


def _check(gw: Gateway, report: Report) -> None:
    """What the shape alone does not say: known histograms, one delta per bucket of theirs."""
    for name, pools in report.histograms.items():
        if name not in CORE_HISTOGRAMS:
            raise bad_request(f"report: histograms.{name}: not one of {', '.join(CORE_HISTOGRAMS)}")
        want = len(gw.metrics.bounds[name]) + 1
        for pool, observed in pools.items():
            if len(observed.buckets) != want:
                raise bad_request(
                    f"report: histograms.{name}.{pool}.buckets: {len(observed.buckets)} deltas for "
                    f"{want} buckets (the snapshot's bounds and +Inf)"
                )


def apply_report(gw: Gateway, report: dict[str, Any]) -> None:
    """Add the core's report into this gateway's metrics and demand; Rejection 400 naming the field at
    fault (nothing is applied then)."""
    try:
        r = Report.model_validate(report)
    except ValidationError as err:
        raise bad_request(f"report: {describe(err)}") from None
    _check(gw, r)
    m = gw.metrics
    counts: list[tuple[Any, tuple[str, ...], int]] = [
        *((m.requests, (req.route, str(req.code)), req.n) for req in r.requests),
        *((m.routed, (pool,), n) for pool, n in r.routed.items()),
        *((m.fallbacks, (fb.pool, fb.fallback), fb.n) for fb in r.fallbacks),
        *((m.rejections, (reason,), n) for reason, n in r.rejections.items()),
        *((m.retries, (retry.pool, retry.reason), retry.n) for retry in r.retries),
    ]
    for counter, labels, n in counts:
        if n:  # a zero creates no series, as the gateway's own counting does not
            gw.child(counter, *labels).inc(n)
    for name, pools in r.histograms.items():
        for pool, observed in pools.items():
            child = gw.child(m.histograms[name], pool)
            # prometheus_client has no public API to add pre-bucketed observations: add the deltas into
            # the child's per-bucket values (observe() keeps them per bucket too; exposition sums them
            # up) and its sum, as observe() would have, one observation at a time.
            for i, d in enumerate(observed.buckets):
                if d:
                    child._buckets[i].inc(d)
            if observed.sum:
                child._sum.inc(observed.sum)
    table = gw.table
    old, gw.core.depth = gw.core.depth, {p: d for p, d in r.queue_depth.items() if p in table.pools}
    for name in old.keys() | gw.core.depth.keys():
        if old.get(name, 0) != gw.core.depth.get(name, 0) and name in table.pools:
            table.on_queue_change(table.pools[name])  # the gauge: this gateway's queue + the core's
    for name in r.active:
        active = table.pools.get(name)
        if active is not None:
            gw.demand.note(active)


# --- the routes (registered by `app.build_app(..., core_link=True)`) ---
class CoreHandlers:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        try:
            after = int(request.query.get("after", "0"))
            wait = float(request.query.get("wait", DEFAULT_WAIT_SECONDS))
        except ValueError:
            return render("", bad_request("after must be an integer and wait a number of seconds"))
        if math.isnan(wait):
            return render("", bad_request("wait must be a number of seconds"))
        if not await self.gw.core.wait_past(after, min(max(wait, 0.0), MAX_WAIT_SECONDS)):
            return web.Response(status=204)
        return web.json_response(snapshot(self.gw))

    async def report(self, request: web.Request) -> web.StreamResponse:
        try:
            data = strict_json.loads(await request.read())
        except strict_json.JsonSyntaxError as exc:
            return render("", bad_request(f"report: not JSON: {exc}"))
        if not isinstance(data, dict):
            return render("", bad_request("report: expected a JSON object"))
        try:
            apply_report(self.gw, data)
        except Rejection as rej:
            return render("", rej)
        return web.Response(status=204)
