"""Names, labels and owner references shared by every child of a pool."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tgipool.api.modelpool import GROUP, KIND, VERSION, ModelPool
from tgipool.desired.engines import ENGINE_RENDER
from tgipool.manifest import Manifest

POOL_LABEL = f"{GROUP}/pool"
# What `tgipool plan --traffic` sized a pool for; the status compares it with the live rate.
PLANNED_RPS_ANNOTATION = f"{GROUP}/planned-requests-per-second"
ENGINE_LABEL = f"{GROUP}/engine"  # on pods of non-TGI engines: the simulator emulates that engine
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY = "tgipool"
SERVER = "inference-server"
FETCH = "weights-fetch"


def cache_name(pool: ModelPool) -> str:
    return f"{pool.name}-cache"


def short_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


def fetch_key(pool: ModelPool) -> dict[str, Any]:
    """What the prefetch Job downloads; a change means a new Job (Job templates are immutable)."""
    spec = pool.spec
    return {
        "image": spec.engine.image,
        "model": spec.model.id,
        "revision": spec.model.revision,
        "adapters": [[a.id, a.revision] for a in spec.engine.lora_adapters if not a.id.startswith("/")],
    }


def fetch_job_name(pool: ModelPool) -> str:
    return f"{pool.name}-fetch-{short_hash(fetch_key(pool))}"


def selector_labels(pool: ModelPool, component: str = SERVER) -> dict[str, str]:
    return {POOL_LABEL: pool.name, COMPONENT_LABEL: component}


def labels(pool: ModelPool, component: str = SERVER) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": ENGINE_RENDER[pool.spec.engine.kind].app_name,
        "app.kubernetes.io/instance": pool.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "tgipool",
        **selector_labels(pool, component),
    }
    # Only other engines carry it: a new label on a TGI pod template would roll every existing pool.
    if pool.spec.engine.kind != "tgi":
        out[ENGINE_LABEL] = pool.spec.engine.kind
    return out


def metadata(pool: ModelPool, name: str, component: str = SERVER) -> Manifest:
    meta: Manifest = {"name": name, "namespace": pool.namespace, "labels": labels(pool, component)}
    if pool.metadata.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": pool.name,
                "uid": pool.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def selector_string(pool: ModelPool) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(pool).items())
