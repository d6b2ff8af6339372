"""Pools of one model sharing a GPU budget: each HPA may grow only into what the others leave."""

from __future__ import annotations

from .cluster import Operator, get, kubectl, wait_for
from .conftest import apply_pool


def _hpa_max(name: str, ns: str) -> int | None:
    hpa = get("horizontalpodautoscaler", name, ns)
    return None if hpa is None else int(hpa["spec"]["maxReplicas"])


def test_pools_sharing_a_gpu_budget_rebalance_their_hpa_ceilings(operator: Operator, ns: str) -> None:
    budget = {"queuePerReplica": 8, "gpuBudget": {"name": "llama", "gpus": 3}}
    for name in ("a", "b"):
        apply_pool(name, ns, replicas={"min": 1, "max": 3}, autoscaling=budget)
    # Each holds one GPU: each may grow to 3 - 1 = 2, not to its own max of 3.
    wait_for("both ceilings at 2", lambda: _hpa_max("a", ns) == 2 and _hpa_max("b", ns) == 2, timeout=90)
    kubectl("scale", "deployment/a", "--replicas=2", "-n", ns)
    wait_for("b's ceiling to shrink to 1", lambda: _hpa_max("b", ns) == 1, timeout=60)
    assert _hpa_max("a", ns) == 2  # b still holds one of the three
    kubectl("scale", "deployment/a", "--replicas=1", "-n", ns)
    wait_for("b's ceiling to grow back to 2", lambda: _hpa_max("b", ns) == 2, timeout=60)
    # A pool outside the budget keeps its own ceiling.
    apply_pool("c", ns, replicas={"min": 1, "max": 3})
    wait_for("c's own ceiling", lambda: _hpa_max("c", ns) == 3, timeout=90)
