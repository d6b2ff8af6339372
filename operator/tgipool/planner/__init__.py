"""Capacity planner: pure arithmetic on a ModelPool (KV cache, weights, latency, cost).

`assess(pool)` gives the `CapacityFeasible` condition and `status.capacity`;
`plan(pool, ...)` gives every number behind it, for `tgipool plan`.
"""

from tgipool.planner.architecture import ModelArchitecture, architecture_from_config, architecture_from_spec
from tgipool.planner.assess import Assessment, Plan, assess, plan

__all__ = [
    "Assessment",
    "ModelArchitecture",
    "Plan",
    "architecture_from_config",
    "architecture_from_spec",
    "assess",
    "plan",
]
