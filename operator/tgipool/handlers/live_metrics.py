"""The metrics loop: one batched read of Prometheus per round for every pool, kept in memory.

The folder (`pool.fold_pools`) then folds the latest reading into each pool's status through
`reconcile` (which writes only what changed). Prometheus absent or down gives a reading with an
error: SLOMet turns Unknown once, and nothing else is written. The operator's own per-pool gauges,
which the chart's alerts compare the pools' live numbers against, live here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Awaitable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from tgipool.api.modelpool import ModelPool
from tgipool.monitoring import rules
from tgipool.monitoring.reader import PrometheusReader
from tgipool.monitoring.readings import NO_PROMETHEUS, Reading

log = logging.getLogger("tgipool.metrics")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LiveMetrics:
    def __init__(self, reader: PrometheusReader | None, interval: float) -> None:
        self.reader = reader
        self.interval = interval
        self.reading = Reading(values={}, observed_at=_now(), error=None if reader else NO_PROMETHEUS)
        self._task: asyncio.Task[None] | None = None
        self._round = asyncio.Event()  # set (and replaced) when a round lands: wakes the folder

    def wake(self) -> None:
        """Wakes everything waiting for the next round (a new reading, or a gateway that came or went)."""
        event, self._round = self._round, asyncio.Event()
        event.set()

    async def next_round(self, timeout: float | None, *stopped: Awaitable[Any]) -> None:
        """Waits for the next round, `timeout` seconds (None: no limit), or any of `stopped` (a kopf
        daemon's stopper, the pool's deletion), whichever comes first."""
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._round.wait())}
        waits.update(asyncio.ensure_future(s) for s in stopped)
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def refresh(self) -> Reading:
        if self.reader is None:
            return self.reading
        reading = await self.reader.read()
        if (reading.error is None) != (self.reading.error is None):
            # Log transitions only: a down Prometheus must not flood the log either.
            if reading.error:
                log.warning("Prometheus at %s unavailable: %s", self.reader.url, reading.error)
            else:
                log.info(
                    "Prometheus at %s answers (%d pools with series)", self.reader.url, len(reading.values)
                )
        self.reading = reading
        self.wake()
        return reading

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self.reader is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="tgipool-metrics-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class PoolGauges:
    """`tgipool_pool_*`: the objective, replicas, replicas.max and GPU cost per hour of each pool."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        labels = ["namespace", "pool"]
        r = self.registry
        self.slo = Gauge(rules.SLO_GAUGE, "p95 latency objective of the pool (ms).", labels, registry=r)
        self.replicas = Gauge(rules.REPLICAS_GAUGE, "Replicas of the pool's Deployment.", labels, registry=r)
        self.max = Gauge(rules.MAX_REPLICAS_GAUGE, "replicas.max of the pool.", labels, registry=r)
        self.cost = Gauge(
            rules.GPU_COST_GAUGE,
            "GPU cost per hour of the pool's replicas (gpu.hourlyPrice).",
            labels,
            registry=r,
        )

    def set(self, pool: ModelPool, replicas: int) -> None:
        key = (pool.namespace, pool.name)
        self.slo.labels(*key).set(pool.slo_p95_ms)
        self.replicas.labels(*key).set(replicas)
        self.max.labels(*key).set(pool.spec.replicas.ceiling)
        price = pool.spec.gpu.hourly_price
        if price is not None:
            self.cost.labels(*key).set(price * pool.spec.engine.num_shard * replicas)

    def forget(self, namespace: str, name: str) -> None:
        for gauge in (self.slo, self.replicas, self.max, self.cost):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)
