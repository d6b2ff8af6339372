"""Capacity planner: pure arithmetic on a ModelPool (KV cache, weights, latency, cost).

`assess(pool)` gives the `CapacityFeasible` condition and `status.capacity`;
`plan(pool, ...)` gives every number behind it, for `tgipool plan`.
"""

from tgipool.planner.architecture import ModelArchitecture, architecture_from_config, architecture_from_spec
from tgipool.planner.plans import Plan, plan
from tgipool.planner.verdicts import Assessment, assess

__all__ = [
    "Assessment",
    "ModelArchitecture",
    "Plan",
    "architecture_from_config",
    "architecture_from_spec",
    "assess",
    "plan",
]
