"""The metrics loop's reads from a real HTTP server on loopback: a down Prometheus says the same thing
every round (its words go into SLOMet; words that change would rewrite every pool's status)."""

from __future__ import annotations

import socket

from tgipool.monitoring.reader import PrometheusReader


def test_a_down_prometheus_reads_the_same_every_round() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    reader = PrometheusReader(url, timeout=1)
    first, second = reader.read_sync(), reader.read_sync()
    assert first.error == second.error == f"cannot connect to {url}"
    assert first.values == {} and second.values == {}
