"""The metrics loop's reads: one instant query per metric for every pool (prometheus-api-client).

I/O lives here and nowhere else in `monitoring/`; failures become `Reading.error`, never exceptions.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from tgipool.monitoring.promql import pool_queries
from tgipool.monitoring.readings import Reading, by_pool

log = logging.getLogger("tgipool.metrics")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PrometheusReader:
    def __init__(self, url: str, window: str = "2m", timeout: float = 5.0) -> None:
        self.url = url
        self.window = window
        self.timeout = timeout
        # One quick retry: the loop comes round again soon, and a down Prometheus must not stall it.
        self._prom = PrometheusConnect(
            url=url, disable_ssl=True, timeout=int(max(1, timeout)), retry=Retry(total=1, backoff_factor=0.2)
        )

    def read_sync(self) -> Reading:
        answers: dict[str, list[dict[str, Any]]] = {}
        try:
            for q in pool_queries(self.window):
                answers[q.field] = self._prom.custom_query(q.expr)
        except Exception as e:  # requests' and the client's errors alike: Prometheus is unavailable
            reason = f"{type(e).__name__}: {e}"[:300]
            return Reading(values={}, observed_at=_now(), error=reason)
        return Reading(values=by_pool(answers), observed_at=_now())

    async def read(self) -> Reading:
        return await asyncio.to_thread(self.read_sync)
