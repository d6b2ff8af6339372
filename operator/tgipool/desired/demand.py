"""The demand Lease of a warm or cold pool: how the gateway asks for a wake without writing replicas.

The operator creates `NAME-demand` (owned by the pool); gateways only patch its `renewTime` (and
`acquireTime` when a wake starts), at most every few seconds per gateway replica. The operator
watches it: fresh demand wakes the pool, none for `activation.idleAfterSeconds` puts it back to rest.
One writer per field: the HPA owns replicas from 1 up, the operator 0 <-> 1, the gateway only demand.
"""

from __future__ import annotations

from tgipool.api.modelpool import ModelPool
from tgipool.config import OperatorConfig
from tgipool.desired import names
from tgipool.manifest import Manifest

DEMAND = "demand"


def demand_lease_name(pool_name: str) -> str:
    return f"{pool_name}-{DEMAND}"


def build_demand_lease(pool: ModelPool, cfg: OperatorConfig) -> Manifest | None:
    activation = pool.activation
    if activation is None:
        return None  # hot pools never sleep
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": names.metadata(pool, demand_lease_name(pool.name), component=DEMAND),
        # Documentary: demand older than this puts the pool back to rest. renewTime is the gateways'.
        "spec": {"leaseDurationSeconds": activation.idle_after_seconds},
    }
