"""The metrics loop's pure half: Prometheus vectors -> status.metrics and SLOMet."""

from __future__ import annotations

import math

from tgipool.monitoring.readings import by_pool, metrics_status, slo_verdict


def _sample(ns: str, pool: str, value: float | str) -> dict[str, object]:
    return {"metric": {"namespace": ns, "pool": pool}, "value": [1700000000.0, str(value)]}


def test_by_pool_regroups_vectors_and_drops_nan_and_unlabelled() -> None:
    answers = {
        "p95LatencyMs": [_sample("a", "short", 1234.5), _sample("a", "idle", math.nan)],
        "queueDepth": [_sample("a", "short", 3), _sample("b", "short", 0)],
        "tokensPerSecond": [{"metric": {"pool": "nolabels"}, "value": [0, "5"]}],
    }
    got = by_pool(answers)
    assert got == {
        ("a", "short"): {"p95LatencyMs": 1234.5, "queueDepth": 3.0},
        ("b", "short"): {"queueDepth": 0.0},
    }


def test_cost_per_million_tokens_from_gpu_hours_and_live_tokens() -> None:
    # 2 GPUs at $2.49/h = $0.001383/s; at 500 tokens/s that is $2.7667 per 1M tokens.
    status = metrics_status({"tokensPerSecond": 500.0, "p95LatencyMs": 812.345}, 2, 2.49, "T")
    assert status is not None
    assert status["costPerMillionTokens"] == round(2.49 * 2 / 3600 / 500 * 1e6, 4) == 2.7667
    assert status["p95LatencyMs"] == 812.3 and status["observedAt"] == "T"


def test_no_cost_without_tokens_or_price() -> None:
    assert "costPerMillionTokens" not in (metrics_status({"tokensPerSecond": 0.0}, 2, 2.49, "T") or {})
    assert "costPerMillionTokens" not in (metrics_status({"tokensPerSecond": 10.0}, 2, None, "T") or {})
    assert metrics_status({}, 2, 2.49, "T") is None


def test_observed_at_moves_only_when_a_value_changes() -> None:
    first = metrics_status({"queueDepth": 0.0, "requestsPerSecond": 0.0}, 1, 2.0, "T1")
    same = metrics_status({"queueDepth": 0.0, "requestsPerSecond": 0.001}, 1, 2.0, "T2", previous=first)
    assert same == first and same is not None and same["observedAt"] == "T1"
    moved = metrics_status({"queueDepth": 2.0, "requestsPerSecond": 0.0}, 1, 2.0, "T3", previous=first)
    assert moved is not None and moved["observedAt"] == "T3" and moved["queueDepth"] == 2.0


def test_slo_verdicts() -> None:
    assert slo_verdict({"p95LatencyMs": 900}, 1000, None).status == "True"
    above = slo_verdict({"p95LatencyMs": 1500}, 1000, None)
    assert (above.status, above.reason) == ("False", "AboveObjective")
    assert "1500 ms > objective 1000 ms" in above.message
    down = slo_verdict({"p95LatencyMs": 900}, 1000, "ConnectionError: refused")
    assert (down.status, down.reason) == ("Unknown", "MetricsUnavailable")
    assert slo_verdict({}, 1000, None).reason == "NoTraffic"
    assert slo_verdict({"p95LatencyMs": 1}, None, None).reason == "NoObjective"
