"""Pure desired-state builders: (pool, config) -> manifests. No I/O, no kopf, no client."""

from __future__ import annotations

from dataclasses import dataclass

from tgipool.api.modelpool import ModelPool
from tgipool.config import OperatorConfig
from tgipool.desired.autoscaling import build_hpa, build_pdb
from tgipool.desired.cache import build_cache_pvc, build_fetch_job, needs_fetch
from tgipool.desired.deployment import build_deployment
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

    def all(self) -> list[Manifest]:
        items = (self.service, self.cache, self.fetch_job, self.deployment, self.hpa, self.pdb)
        return [m for m in items if m is not None]


def build_children(pool: ModelPool, cfg: OperatorConfig) -> Children:
    if pool.spec.tier == "cold":
        # Cold pools are only the CR until the first demand (gateway issue).
        return Children()
    return Children(
        service=build_service(pool, cfg),
        cache=build_cache_pvc(pool, cfg),
        fetch_job=build_fetch_job(pool, cfg) if needs_fetch(pool) else None,
        deployment=build_deployment(pool, cfg),
        hpa=build_hpa(pool, cfg),
        pdb=build_pdb(pool, cfg),
    )
