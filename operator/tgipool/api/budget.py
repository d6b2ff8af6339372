"""`spec.autoscaling.gpuBudget`: pools of one model that share GPUs.

Pools in one namespace naming the same budget share its GPUs: each pool's HPA may grow into whatever the
others do not use right now (maxReplicas = the GPUs left by the others ÷ its GPUs per replica, within its
own replicas.min and max), so as one pool's load falls and its HPA scales it down, another can take the
freed GPUs. When pools state different `gpus` for one budget, the smallest holds.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class GpuBudget(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)
    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="The shared budget.",
    )
    gpus: int = Field(ge=1, le=100_000, description="GPUs all pools of this budget may use together.")


def ceiling(own_max: int, own_min: int, gpus_per_replica: int, budget_gpus: int, others_gpus: int) -> int:
    """The most replicas a pool may have now: what the others leave of the budget, within min..max."""
    left = max(budget_gpus - others_gpus, 0) // gpus_per_replica
    return max(min(own_max, left), own_min, 1)
