"""Latency, QPS, tokens per hour and cost per 1M tokens, worked by hand."""

from __future__ import annotations

import pytest

from tgipool.planner import performance as perf


def test_latency_and_qps() -> None:
    # L_in / P + L_out / (D / B): 2048 / 10000 + 2048 / (2500 / 32) = 0.2048 + 26.2144 = 26.4192 s.
    t = perf.latency_seconds(2048, 2048, 10_000, 2500, 32)
    assert t == pytest.approx(26.4192)
    assert perf.latency_seconds(2048, 2048, 10_000, 2500, 32, overhead_seconds=0.05) == pytest.approx(26.4692)
    # QPS = B / T = 32 / 26.4192 = 1.21124...
    assert perf.qps(32, t) == pytest.approx(1.2112404)


def test_tokens_per_hour_and_cost() -> None:
    # 2500 tokens/s x 3600 = 9,000,000 tokens/hour; $2.49 x 1 GPU / 9 = $0.27667 per 1M tokens.
    assert perf.tokens_per_hour(2500) == 9_000_000
    assert perf.cost_per_million_tokens(2.49, 1, 2500) == pytest.approx(0.2766667)
    # 2 GPUs at $2.49 and 1000 tokens/s: 3.6M tokens/hour -> 4.98 / 3.6 = $1.38333.
    assert perf.cost_per_million_tokens(2.49, 2, 1000) == pytest.approx(1.3833333)


def test_performance_bundle() -> None:
    p = perf.performance(2048, 2048, 10_000, 2500, 32, gpus=1, hourly_price=None)
    assert p.cost_per_million_tokens is None
    assert p.tokens_per_hour == 9_000_000
    with pytest.raises(ValueError, match="rates"):
        perf.latency_seconds(1, 1, 0, 1, 1)
