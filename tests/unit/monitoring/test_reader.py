"""The metrics loop's reads from a real HTTP server on loopback: a down Prometheus says the same thing
every round (its words go into SLOMet; words that change would rewrite every pool's status), and a
round costs one query per metric whatever the number of pools."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import threading
import urllib.parse
from typing import Any

import pytest

from tgipool.handlers.live_metrics import LiveMetrics
from tgipool.monitoring.promql import pool_queries
from tgipool.monitoring.reader import PrometheusReader


def test_a_down_prometheus_reads_the_same_every_round() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    reader = PrometheusReader(url, timeout=1)
    first, second = reader.read_sync(), reader.read_sync()
    assert first.error == second.error == f"cannot connect to {url}"
    assert first.values == {} and second.values == {}


class FakePrometheus:
    """A real HTTP server on loopback standing in for Prometheus's query API: it answers every instant
    query with one sample per pool (labelled like the recording rules' series) and counts the queries."""

    def __init__(self, pools: int) -> None:
        self.pools = pools
        self.queries: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, query: str) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/api/v1/query":
                    fake.queries.append(query)
                    result = [
                        {"metric": {"namespace": "ns", "pool": f"p{i}"}, "value": [1.0, str(i + 1)]}
                        for i in range(fake.pools)
                    ]
                    data: dict[str, Any] = {"resultType": "vector", "result": result}
                elif url.path == "/api/v1/rules":
                    data = {"groups": [{"name": "tgipool.alerts"}]}
                else:
                    self.send_error(404)
                    return
                body = json.dumps({"status": "success", "data": data}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("query", [""])
                self._answer(query[0])

            def do_POST(self) -> None:
                form = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                self._answer(urllib.parse.parse_qs(form).get("query", [""])[0])

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakePrometheus:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("pools", [1, 40, 1000])
def test_one_query_per_metric_for_all_pools(pools: int) -> None:
    """The metrics loop's round reads every pool with one query per metric: the count does not grow
    with the number of pools, and every pool gets every metric from those answers."""
    expected = [q.expr for q in pool_queries("2m")]
    with FakePrometheus(pools) as prom:
        reader = PrometheusReader(prom.url, window="2m", timeout=2)
        reading = reader.read_sync()
        assert reading.error is None
        assert prom.queries == expected  # each metric once, in one round
        assert len(reading.values) == pools
        assert all(set(v) == {q.field for q in pool_queries("2m")} for v in reading.values.values())
        assert reading.of("ns", f"p{pools - 1}")["queueDepth"] == pools
        assert reading.rule_groups == frozenset({"tgipool.alerts"})


def test_the_live_loop_reads_once_per_round_whatever_the_pools() -> None:
    """Rounds of `LiveMetrics` against the fake: queries = rounds x metrics, for 5 and for 500 pools."""
    per_round = len(pool_queries("2m"))
    for pools in (5, 500):
        with FakePrometheus(pools) as prom:
            live = LiveMetrics(PrometheusReader(prom.url, timeout=2), interval=0.01)

            async def rounds(live: LiveMetrics = live) -> None:
                for _ in range(3):
                    await live.refresh()

            asyncio.run(rounds())
            assert len(prom.queries) == 3 * per_round
            assert len(live.reading.values) == pools


def test_a_round_wakes_every_waiting_pool_at_once() -> None:
    """The pools' folders wait for the next round (no polling); a round wakes all of them, and one
    with a timeout wakes by itself."""

    async def main() -> tuple[int, float]:
        live = LiveMetrics(None, interval=15)
        woken = 0

        async def folder() -> None:
            nonlocal woken
            await live.next_round(None)
            woken += 1

        tasks = [asyncio.create_task(folder()) for _ in range(100)]
        await asyncio.sleep(0.05)
        assert woken == 0
        live.wake()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await live.next_round(0.05)  # nothing comes: the timeout ends the wait
        return woken, loop.time() - t0

    woken, waited = asyncio.run(main())
    assert woken == 100
    assert 0.04 <= waited < 1
