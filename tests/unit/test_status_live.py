"""status.metrics and SLOMet from the metrics loop's rounds, folded into the pool's status."""

from __future__ import annotations

from typing import Any

from tgipool.api.modelpool import ModelPool
from tgipool.checklist import Facts
from tgipool.config import DEFAULT_CONFIG
from tgipool.monitoring.readings import Reading
from tgipool.planner import assess
from tgipool.status import Observed, compute_status, gate

DEPLOYMENT = {
    "metadata": {"generation": 1},
    "spec": {"replicas": 2},
    "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 1},
}


def _status(
    doc: dict[str, Any],
    reading: Reading | None,
    previous: dict[str, Any] | None = None,
    checklist: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    pool = ModelPool.model_validate(doc)
    gating = gate(pool, {"status": {"succeeded": 1}, "metadata": {"name": "j"}}, assess(pool))
    facts = Facts(previous=checklist or ())
    new = compute_status(
        pool,
        Observed(deployment=DEPLOYMENT),
        gating,
        DEFAULT_CONFIG,
        [],
        "NOW",
        None,
        reading,
        previous,
        None,
        facts,
    )
    return new.model_dump(by_alias=True, exclude_none=True)


def _slo(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "SLOMet")


def test_live_metrics_and_slo_from_a_round(short_pool: dict[str, Any]) -> None:
    key = (short_pool["metadata"]["namespace"], short_pool["metadata"]["name"])
    values = {"p95LatencyMs": 4200.0, "p50LatencyMs": 900.0, "tokensPerSecond": 1000.0, "queueDepth": 7.0}
    status = _status(short_pool, Reading(values={key: values}, observed_at="T1"))
    slo = _slo(status)
    assert (slo["status"], slo["reason"]) == ("False", "AboveObjective")  # the short pool's 3000 ms objective
    metrics = status["metrics"]
    assert (
        metrics["p95LatencyMs"] == 4200.0 and metrics["queueDepth"] == 7.0 and metrics["observedAt"] == "T1"
    )
    # 2 replicas x 1 GPU at the example's price, over 1000 generated tokens/s.
    price = short_pool["spec"]["gpu"]["hourlyPrice"]
    assert metrics["costPerMillionTokens"] == round(price * 2 / 3600 / 1000 * 1e6, 4)
    # Other pools' numbers are not this pool's.
    other = _status(short_pool, Reading(values={("x", "y"): values}, observed_at="T1"))
    assert "metrics" not in other and _slo(other)["reason"] == "NoTraffic"


def test_prometheus_down_keeps_the_last_numbers_and_only_slo_changes(short_pool: dict[str, Any]) -> None:
    key = (short_pool["metadata"]["namespace"], short_pool["metadata"]["name"])
    up = _status(short_pool, Reading(values={key: {"p95LatencyMs": 800.0}}, observed_at="T1"))
    down = _status(
        short_pool,
        Reading(values={}, observed_at="T2", error="ConnectionError: refused"),
        up["metrics"],
        up["checklist"],
    )
    assert down["metrics"] == up["metrics"]
    assert (_slo(down)["status"], _slo(down)["reason"]) == ("Unknown", "MetricsUnavailable")
    assert {k: v for k, v in down.items() if k not in ("conditions", "metrics")} == {
        k: v for k, v in up.items() if k not in ("conditions", "metrics")
    }


def test_without_the_metrics_loop_there_is_no_slo_condition(short_pool: dict[str, Any]) -> None:
    status = _status(short_pool, None)
    assert "SLOMet" not in {c["type"] for c in status["conditions"]} and "metrics" not in status


def _plan(status: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in status["conditions"] if c["type"] == "TrafficMatchesPlan"), None)


def test_traffic_against_the_plan_the_pool_was_sized_for(short_pool: dict[str, Any]) -> None:
    key = (short_pool["metadata"]["namespace"], short_pool["metadata"]["name"])
    assert (
        _plan(_status(short_pool, Reading(values={key: {"requestsPerSecond": 10.0}}, observed_at="T")))
        is None
    )
    planned = {**short_pool, "metadata": {**short_pool["metadata"], "annotations": {
        "tgipool.io/planned-requests-per-second": "20"}}}  # fmt: skip
    for seen, expected in ((20.0, ("True", "WithinPlan")), (26.0, ("False", "AbovePlan")),
                           (9.0, ("False", "BelowPlan")), (None, ("Unknown", "NoTraffic"))):  # fmt: skip
        values = {} if seen is None else {"requestsPerSecond": seen}
        cond = _plan(_status(planned, Reading(values={key: values}, observed_at="T")))
        assert cond is not None and (cond["status"], cond["reason"]) == expected, (seen, cond)
    cond = _plan(_status(planned, Reading(values={}, observed_at="T", error="connection refused")))
    assert cond is not None and cond["reason"] == "MetricsUnavailable"
    bad = {**planned, "metadata": {**planned["metadata"], "annotations": {
        "tgipool.io/planned-requests-per-second": "lots"}}}  # fmt: skip
    cond = _plan(_status(bad, Reading(values={key: {"requestsPerSecond": 1.0}}, observed_at="T")))
    assert cond is not None and cond["reason"] == "InvalidPlan" and "'lots'" in cond["message"]
