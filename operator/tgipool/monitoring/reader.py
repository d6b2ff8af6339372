"""The metrics loop's reads: one instant query per metric for every pool (prometheus-api-client).

I/O lives here and nowhere else in `monitoring/`; failures become `Reading.error`, never exceptions.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
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
            return Reading(values={}, observed_at=_now(), error=self.describe(e))
        return Reading(values=by_pool(answers), observed_at=_now(), rule_groups=self.rule_groups())

    def rule_groups(self) -> frozenset[str] | None:
        """The names of the rule groups Prometheus has loaded, or None when it does not say."""
        try:
            resp = self._prom._session.get(
                f"{self.url.rstrip('/')}/api/v1/rules", params={"type": "alert"}, timeout=self.timeout
            )
            resp.raise_for_status()
            groups = resp.json()["data"]["groups"]
            return frozenset(str(g["name"]) for g in groups)
        except Exception as e:  # an answer we cannot read is no evidence either way
            log.debug("Prometheus rules at %s: %s", self.url, e)
            return None

    def describe(self, error: Exception) -> str:
        """The same words for the same failure: the message goes into SLOMet, and a message that
        changes every round (requests puts object addresses in its) would rewrite every status."""
        if isinstance(error, requests.exceptions.Timeout):
            return f"no answer from {self.url} within {self.timeout:g} s"
        if isinstance(error, requests.exceptions.ConnectionError):
            return f"cannot connect to {self.url}"
        if isinstance(error, PrometheusApiClientException):
            status = re.search(r"\b[1-5][0-9]{2}\b", str(error))
            return f"{self.url} refused the query" + (f" (HTTP {status.group(0)})" if status else "")
        return f"{type(error).__name__} from {self.url}"

    async def read(self) -> Reading:
        return await asyncio.to_thread(self.read_sync)
