"""Pure desired-state builders: (pool, config) -> manifests. No I/O, no kopf, no client."""

from __future__ import annotations

from dataclasses import dataclass

from tgipool.api.modelpool import ModelPool
from tgipool.config import OperatorConfig
from tgipool.desired.autoscaling import build_hpa, build_pdb
from tgipool.desired.cache import build_cache_pvc, build_fetch_job, needs_fetch
from tgipool.desired.demand import build_demand_lease
from tgipool.desired.deployment import build_deployment
from tgipool.desired.inference_pool import build_inference_pool
from tgipool.desired.service import build_service
from tgipool.manifest import Manifest


@dataclass(frozen=True)
class Children:
    """Every child of a pool, in apply order; None where the tier has no such child."""

    service: Manifest | None = None
    cache: Manifest | None = None
    fetch_job: Manifest | None = None
    deployment: Manifest | None = None
    hpa: Manifest | None = None
    pdb: Manifest | None = None
    demand: Manifest | None = None
    inference_pool: Manifest | None = None  # spec.routing.inferencePool; its CRD may be absent

    def all(self) -> list[Manifest]:
        items = (
            self.demand,
            self.service,
            self.cache,
            self.fetch_job,
            self.deployment,
            self.hpa,
            self.pdb,
            self.inference_pool,
        )
        return [m for m in items if m is not None]


def build_children(
    pool: ModelPool, cfg: OperatorConfig, awake: bool | None = None, hpa_max: int | None = None
) -> Children:
    """`awake`: a warm or cold pool with fresh demand (see `activation.py`); hot pools always are.
    None: the tier's resting state (what `tgipool render` shows). `hpa_max`: a shared budget's ceiling.

    At rest a warm pool keeps its cache, Job and a Deployment at zero, a cold pool only its demand
    Lease. The HPA exists only while the pool is awake, so it never holds a resting pool above zero.
    """
    if awake is None:
        awake = pool.activation is None
    demand = build_demand_lease(pool, cfg)
    if pool.spec.tier == "cold" and not awake:
        return Children(demand=demand)
    return Children(
        service=build_service(pool, cfg),
        cache=build_cache_pvc(pool, cfg),
        fetch_job=build_fetch_job(pool, cfg) if needs_fetch(pool) else None,
        deployment=build_deployment(pool, cfg, awake),
        hpa=build_hpa(pool, cfg, hpa_max) if awake else None,
        pdb=build_pdb(pool, cfg),
        demand=demand,
        inference_pool=build_inference_pool(pool, cfg),
    )
