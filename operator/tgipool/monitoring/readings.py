"""PURE: the metrics loop's answers from Prometheus -> each pool's `status.metrics` and `SLOMet`.

Prometheus answers one vector per query (every pool at once); `by_pool` regroups them. A value that
is not finite (a quantile of no traffic is NaN) is left out: the status says nothing rather than 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

PoolKey = tuple[str, str]
# The reading's error while the operator runs without Prometheus.
NO_PROMETHEUS = "no Prometheus configured (tgipool run --prometheus-url)"


@dataclass(frozen=True)
class Reading:
    """One round of the metrics loop: per-pool values, or why there are none."""

    values: Mapping[PoolKey, Mapping[str, float]]
    observed_at: str
    error: str | None = None  # Prometheus unreachable or refusing: every SLOMet is Unknown
    # The rule groups Prometheus has loaded (GET /api/v1/rules); None: unknown (no Prometheus, or it
    # did not answer). The ProductionReady checklist looks for the alerts group in it.
    rule_groups: frozenset[str] | None = None

    def of(self, namespace: str, name: str) -> Mapping[str, float]:
        return self.values.get((namespace, name), {})


def by_pool(answers: Mapping[str, list[dict[str, Any]]]) -> dict[PoolKey, dict[str, float]]:
    """{status field: Prometheus vector} -> {(namespace, pool): {status field: value}}."""
    out: dict[PoolKey, dict[str, float]] = {}
    for field, vector in answers.items():
        for sample in vector:
            labels = sample.get("metric") or {}
            try:
                value = float(sample["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if not math.isfinite(value) or "namespace" not in labels or "pool" not in labels:
                continue
            out.setdefault((labels["namespace"], labels["pool"]), {})[field] = value
    return out


def _round(field: str, value: float) -> float:
    # Enough precision to read, not so much that every scrape rewrites the status.
    if field == "errorRate":
        return round(value, 4)
    return round(value, 1) if value >= 10 else round(value, 2)


def metrics_status(
    values: Mapping[str, float],
    gpus: int,
    hourly_price: float | None,
    at: str,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """`status.metrics` (camelCase keys) for one pool, or None when Prometheus has nothing on it.

    Cost comes from live generated tokens/s and the GPU-hours in use. `observedAt` moves only when a
    value changed, so an idle pool's status is not rewritten every round.
    """
    if not values:
        return None
    out: dict[str, Any] = {k: _round(k, v) for k, v in sorted(values.items())}
    tps = values.get("tokensPerSecond") or 0.0
    if hourly_price is not None and gpus > 0 and tps > 0:
        out["costPerMillionTokens"] = round(hourly_price * gpus / 3600 / tps * 1e6, 4)
    if previous is not None and {k: v for k, v in previous.items() if k != "observedAt"} == out:
        out["observedAt"] = previous.get("observedAt", at)
    else:
        out["observedAt"] = at
    return out


@dataclass(frozen=True)
class SloVerdict:
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str


def slo_verdict(values: Mapping[str, float], target_ms: int | None, error: str | None) -> SloVerdict:
    if target_ms is None:
        return SloVerdict("Unknown", "NoObjective", "no p95 objective (spec.slo.p95LatencyMs)")
    if error is not None:
        return SloVerdict("Unknown", "MetricsUnavailable", f"cannot read Prometheus: {error}")
    p95 = values.get("p95LatencyMs")
    if p95 is None:
        return SloVerdict("Unknown", "NoTraffic", "no requests in the metrics window, so no p95 to judge")
    if p95 <= target_ms:
        return SloVerdict("True", "WithinObjective", f"p95 {p95:.0f} ms <= objective {target_ms} ms")
    return SloVerdict("False", "AboveObjective", f"p95 {p95:.0f} ms > objective {target_ms} ms")


# Observed over planned requests per second outside [BELOW, ABOVE]: the plan no longer describes the pool.
PLAN_ABOVE = 1.25
PLAN_BELOW = 0.5


def plan_verdict(values: Mapping[str, float], planned: str, error: str | None) -> SloVerdict:
    """TrafficMatchesPlan: the live request rate against the rate `tgipool plan --traffic` sized the pool
    for (its annotation)."""
    try:
        rate = float(planned)
    except ValueError:
        rate = -1.0
    if not rate > 0:
        return SloVerdict(
            "Unknown", "InvalidPlan", f"planned requests per second {planned!r} is not a number > 0"
        )
    if error is not None:
        return SloVerdict("Unknown", "MetricsUnavailable", f"cannot read Prometheus: {error}")
    seen = values.get("requestsPerSecond")
    if seen is None:
        return SloVerdict("Unknown", "NoTraffic", "no request rate in the metrics window")
    said = f"{seen:.2f} req/s against a plan of {rate:g} req/s"
    if seen > rate * PLAN_ABOVE:
        return SloVerdict("False", "AbovePlan", f"{said}: re-run `tgipool plan --traffic` at the new rate")
    if seen < rate * PLAN_BELOW:
        return SloVerdict("False", "BelowPlan", f"{said}: the pool is sized for more than it serves")
    return SloVerdict("True", "WithinPlan", said)
