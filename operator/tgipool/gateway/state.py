"""The state one gateway app shares across requests: routing table, tenants, metrics, upstream session."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web

from tgipool.gateway.config import GatewayConfig
from tgipool.gateway.core_link import CoreLink
from tgipool.gateway.errors import POOL_HEADER, Rejection, render
from tgipool.gateway.metrics import GatewayMetrics
from tgipool.gateway.parsing import int_or_none
from tgipool.gateway.routing import Endpoint, Pool, RoutingTable
from tgipool.gateway.tenants import Tenants
from tgipool.gateway.upstream import UpstreamClient
from tgipool.gateway.wake import Demand

log = logging.getLogger("tgipool.gateway")


class Gateway:
    """Routing state, tenants, metrics and the one shared upstream ClientSession of an app."""

    def __init__(self, config: GatewayConfig) -> None:
        self.table = RoutingTable()
        self.tenants = Tenants()
        self.metrics = GatewayMetrics()
        self.session: aiohttp.ClientSession | None = None  # /info
        self.upstream = UpstreamClient()  # generation requests
        self._tasks: set[asyncio.Task[None]] = set()
        self._depth: dict[str, Any] = {}
        self._children: dict[tuple[Any, ...], Any] = {}
        self.table.queue_listener = self._on_queue_change
        # The compiled core's link (`core_link.py`): the snapshot version moves with every table change.
        self.core = CoreLink()
        self.table.change_listener = self.core.bump
        # Demand for resting pools; `serve_cluster` gives it the API to patch their Leases with.
        self.demand = Demand(None, "", "gateway")
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
        for task in (
            asyncio.create_task(self.demand.keep_alive(self.table)),
            asyncio.create_task(self.upstream.sweep_forever()),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for ep in self.table.endpoints.values():
            if ep.configured_limit is None and not ep.info_requested:
                ep.info_requested = True
                self._learn_limit(ep)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.demand.close()
        self.upstream.close()
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
            limit = int_or_none(info.get("max_concurrent_requests")) if isinstance(info, dict) else None
            if limit is not None and limit > 0:
                self.table.set_learned_limit(ep, limit)
                log.debug("endpoint %s: max_concurrent_requests=%d", ep.url, limit)
                return
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("endpoint %s: /info failed: %s", ep.url, exc)
        ep.info_requested = False  # try again on a later request

    # --- metrics ---
    def _on_queue_change(self, pool: Pool) -> None:
        child = self._depth.get(pool.name)
        if child is None:
            child = self._depth[pool.name] = self.metrics.queue_depth.labels(pool.name)
        child.set(len(pool.waiters) + (0 if pool.removed else self.core.depth.get(pool.name, 0)))

    def child(self, metric: Any, *labels: str) -> Any:
        """A labelled metric child, cached: `labels()` takes a lock and builds a key on every call."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def done(self, route: str, status: int) -> None:
        self.child(self.metrics.requests, route, str(status)).inc()

    def reject(self, route: str, rej: Rejection, pool: str | None = None) -> web.Response:
        """The error answer for `rej` in the route's shape, counted."""
        self.metrics.rejections.labels(rej.reason).inc()
        self.done(route, rej.status)
        return render(route, rej, {POOL_HEADER: pool} if pool is not None else None)
