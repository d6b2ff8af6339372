"""Requests for a resting (warm or cold) pool: held, bounded, while the operator wakes the pool.

A request for a pool with a hold (its route has `holdSeconds`) and no ready endpoint waits here, at
most `holdSeconds` and with at most `maxPendingRequests` others, and then goes on like any request; it
never gets a 429 for a pool that is waking. Past either bound it gets 503 with Retry-After. Demand
reaches the operator through the pool's Lease (`desired/demand.py`): this gateway replica patches its
renewTime at most every `RENEW_SECONDS` per pool, while requests wait or run, never per request; the
operator alone scales (one wake per pool however many requests and gateway replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from tgipool.gateway.errors import POOL_HEADER, Rejection, error_event
from tgipool.gateway.routing import Pool, RoutingTable

log = logging.getLogger("tgipool.gateway.wake")
RENEW_SECONDS = 5.0
POLL_SECONDS = 0.1
COLD_START_HEADER = "X-TGIPool-Cold-Start"

Patch = Callable[[str, dict[str, object]], Awaitable[None]]


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Demand:
    """Patches a pool's demand Lease: renewTime (and acquireTime when a wake starts), rate-limited."""

    def __init__(self, patch: Patch | None, namespace: str, identity: str) -> None:
        self.patch = patch  # None outside a cluster (a gateway on a config file): holding still works
        self.namespace = namespace
        self.identity = identity
        self._last: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.holding: dict[str, int] = {}
        self.patches = 0

    def note(self, pool: Pool, waking: bool = False) -> None:
        lease = pool.route.demand_lease
        if lease is None or self.patch is None:
            return
        now = time.monotonic()
        # The first request this replica holds for a pool starts a wake: acquireTime marks it.
        starts = waking and not self.holding.get(pool.name)
        if not starts and now - self._last.get(lease, -math.inf) < RENEW_SECONDS:
            return
        self._last[lease] = now
        spec: dict[str, object] = {"renewTime": _micro_time(), "holderIdentity": self.identity}
        if starts:
            spec["acquireTime"] = spec["renewTime"]
        task = asyncio.create_task(self._send(lease, {"spec": spec}))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, lease: str, body: dict[str, object]) -> None:
        assert self.patch is not None
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{lease}"
        try:
            await self.patch(path, body)
            self.patches += 1
        except Exception as e:  # the next request or renewal tries again; a wake must never crash a request
            log.warning("demand for %s not recorded: %s", lease, e)
            self._last.pop(lease, None)

    async def keep_alive(self, table: RoutingTable) -> None:
        """Renews the Lease of every resting-tier pool with requests waiting or in flight, so a pool
        never goes back to rest under a long generation."""
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            for pool in list(table.pools.values()):
                busy = self.holding.get(pool.name) or pool.waiters or any(e.in_flight for e in pool.endpoints)
                if busy:
                    self.note(pool)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def must_hold(pool: Pool) -> bool:
    return pool.route.hold_seconds is not None and not pool.endpoints


async def hold(pool: Pool, demand: Demand, tick: Callable[[float], Awaitable[None]] | None = None) -> float:
    """Waits until `pool` has a ready endpoint; the seconds waited. Raises 503 past the bounds.

    `tick(seconds waited)` runs about every 10 s (SSE comments for streaming clients)."""
    hold_seconds = pool.route.hold_seconds or 0
    held = demand.holding.get(pool.name, 0)
    if held >= (pool.route.max_pending_requests or 0):
        raise Rejection(
            503,
            f"Pool {pool.name} is waking and already holds {held} requests (maxPendingRequests)",
            "unavailable",
            "wake_queue_full",
            {"Retry-After": str(hold_seconds)},
        )
    demand.note(pool, waking=True)
    demand.holding[pool.name] = held + 1
    started = time.monotonic()
    next_tick = started + 10
    try:
        while not pool.endpoints:
            now = time.monotonic()
            if pool.removed:
                raise Rejection(503, f"Pool {pool.name} was removed", "unavailable", "pool_removed")
            if now - started >= hold_seconds:
                raise Rejection(
                    503,
                    f"Pool {pool.name} did not wake within {hold_seconds} s (activation.holdSeconds)",
                    "unavailable",
                    "wake_timeout",
                    {"Retry-After": str(hold_seconds)},
                )
            if tick is not None and now >= next_tick:
                next_tick = now + 10
                await tick(now - started)
            await asyncio.sleep(POLL_SECONDS)
    finally:
        demand.holding[pool.name] -= 1
    return time.monotonic() - started


async def start_held_stream(request: web.Request, pool: str) -> web.StreamResponse:
    """A streaming client's answer starts at once, with SSE comment lines while the pool wakes, so
    proxies with an idle timeout between it and us keep the connection."""
    resp = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", POOL_HEADER: pool},
    )
    await resp.prepare(request)
    await resp.write(f": pool {pool} is waking\n\n".encode())
    return resp


async def end_held_stream(resp: web.StreamResponse, route: str, rej: Rejection) -> web.StreamResponse:
    """The last event of a stream that started while its pool woke (`errors.error_event`)."""
    with contextlib.suppress(ConnectionResetError):
        await resp.write(error_event(route, rej))
        await resp.write_eof()
    return resp
