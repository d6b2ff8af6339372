"""Warm and cold pools: awake while demand is fresh, the wake's phases from Lease, Job and Pod times."""

from __future__ import annotations

import datetime
from typing import Any

from tgipool.activation import Demand, demand_of, is_awake, last_activation
from tgipool.api.modelpool import ModelPool
from tgipool.config import DEFAULT_CONFIG
from tgipool.planner import assess
from tgipool.status import Observed, compute_status, gate

T0 = datetime.datetime(2026, 11, 29, 12, 0, 0, tzinfo=datetime.UTC)


def at(seconds: float) -> str:
    return (T0 + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def warm(doc: dict[str, Any], tier: str = "warm", **activation: int) -> ModelPool:
    spec = {**doc["spec"], "tier": tier, "replicas": {"min": 0, "max": 3}, "activation": activation}
    return ModelPool.model_validate({**doc, "spec": spec})


def test_demand_from_the_lease_micro_times() -> None:
    lease = {
        "spec": {"acquireTime": "2026-11-29T12:00:00.123456Z", "renewTime": "2026-11-29T12:00:05.000000Z"}
    }
    d = demand_of(lease)
    assert d.requested_at == T0 + datetime.timedelta(microseconds=123456)
    assert d.last_at == T0 + datetime.timedelta(seconds=5)
    assert demand_of(None) == Demand()


def test_awake_while_demand_is_younger_than_idle_after(short_pool: dict[str, Any]) -> None:
    pool = warm(short_pool, idleAfterSeconds=60)
    demand = Demand(T0, T0 + datetime.timedelta(seconds=10))
    assert is_awake(pool, demand, T0 + datetime.timedelta(seconds=69))
    assert not is_awake(pool, demand, T0 + datetime.timedelta(seconds=70))
    assert not is_awake(pool, Demand(), T0)  # never asked for
    hot = ModelPool.model_validate(short_pool)
    assert is_awake(hot, Demand(), T0)


def pod(scheduled: float, started: float | None, ready: float | None) -> dict[str, Any]:
    conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": at(scheduled)}]
    if ready is not None:
        conditions.append({"type": "Ready", "status": "True", "lastTransitionTime": at(ready)})
    return {
        "metadata": {"name": "p"},
        "status": {"conditions": conditions, "startTime": started and at(started)},
    }


def test_the_phases_of_a_cold_wake() -> None:
    job = {"status": {"startTime": at(2), "completionTime": at(30)}}
    woke = last_activation(Demand(T0, T0), [pod(33, 34, 50)], job, None)
    assert woke is not None
    assert (woke.requested_at, woke.ready_at, woke.seconds) == (at(0), at(50), 50.0)
    assert (woke.weights_seconds, woke.scheduling_seconds, woke.loading_seconds) == (28.0, 3.0, 16.0)


def test_a_warm_wake_in_progress_then_kept_once_complete() -> None:
    pending = last_activation(Demand(T0, T0), [pod(1, 2, None)], None, None)
    assert pending is not None and pending.ready_at is None and pending.scheduling_seconds == 1.0
    done = last_activation(Demand(T0, T0), [pod(1, 2, 9)], None, None)
    assert done is not None and done.seconds == 9.0 and done.weights_seconds is None
    # Complete: later pod changes (a second replica, a restart) do not rewrite it.
    again = last_activation(
        Demand(T0, T0), [pod(1, 2, 9), pod(40, 41, 60)], None, done.model_dump(by_alias=True)
    )
    assert again == done
    # Demand has microseconds, pods whole seconds: a pod Ready in the same second is this wake's.
    same = last_activation(
        Demand(T0 + datetime.timedelta(microseconds=500_000), T0), [pod(0, 0, 0)], None, None
    )
    assert same is not None and same.seconds == 0.0 and same.ready_at == at(0)
    # A pod that was ready before this wake's demand is not this wake's.
    old = last_activation(Demand(T0, T0), [pod(-100, -99, -90)], None, None)
    assert old is not None and old.ready_at is None


def test_status_waking_then_ready(short_pool: dict[str, Any]) -> None:
    pool = warm(short_pool)
    fetched = {"metadata": {"name": "j"}, "status": {"succeeded": 1}}
    at_zero = {"metadata": {"generation": 1}, "spec": {"replicas": 0}, "status": {"observedGeneration": 1}}

    def status(awake: bool, dep: dict[str, Any]) -> Any:
        g = gate(pool, fetched, assess(pool), awake)
        return compute_status(pool, Observed(deployment=dep), g, DEFAULT_CONFIG, [], "NOW")

    resting = status(False, at_zero)
    assert resting.phase == "Standby"
    waking = status(True, at_zero)
    ready = {c.type: c for c in waking.conditions}["Ready"]
    assert (waking.phase, ready.status, ready.reason) == ("Waking", "False", "Waking")
    one = {
        "metadata": {"generation": 2},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1},
    }
    assert status(True, one).phase == "Ready"
    cold = warm(short_pool, tier="cold")
    g = gate(cold, None, assess(cold), False)
    assert compute_status(cold, Observed(), g, DEFAULT_CONFIG, [], "NOW").phase == "Cold"
    g = gate(cold, None, assess(cold), True)
    awake_cold = compute_status(cold, Observed(), g, DEFAULT_CONFIG, [], "NOW")
    assert awake_cold.phase == "Waking" and g.weights.reason == "FetchPending"
