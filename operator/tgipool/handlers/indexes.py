"""In-memory caches of every pool and gateway and of their children, and the reads of them.

Pools, gateways and a gateway's children are kopf indexes; a pool's children and the inference-server
pods are `child_caches`, which answer alike. kopf fills all of them before it runs any other handler, so
a reconcile right after an operator restart already sees every child and writes nothing for children
that match.

Each cached object is kept as compact JSON, zlib-compressed (`Packed`), and decoded when a reconcile
reads it: a Deployment is about 25 KB as Python dicts, 3.7 KB as JSON and 1.5 KB compressed; a
thousand pools' children as dicts were most of the operator's memory, and as JSON still the largest
share of what malloc holds. Decoding one pool's children costs well under a millisecond.

The index functions are coroutines: kopf runs a plain function in its thread pool, a hop to a thread
and back for every watch event.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from tgipool.api.modelgateway import GATEWAY_PLURAL
from tgipool.api.modelpool import GROUP, PLURAL, VERSION
from tgipool.checklist import routed_by
from tgipool.desired import names
from tgipool.desired.gateway_children import GATEWAY_LABEL
from tgipool.manifest import Manifest
from tgipool.status import Observed

Key = tuple[str, str]

MANAGED: dict[str, Any] = {
    "app.kubernetes.io/managed-by": names.MANAGED_BY,
    names.POOL_LABEL: kopf.PRESENT,
}
# (group, version, plural, kind) of every child kind the operator writes and watches.
CHILD_KINDS = [
    ("", "v1", "services", "Service"),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    ("batch", "v1", "jobs", "Job"),
    ("apps", "v1", "deployments", "Deployment"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    # Warm and cold pools' demand: a gateway's renewal wakes the pool at once.
    ("coordination.k8s.io", "v1", "leases", "Lease"),
    # spec.routing.inferencePool: kopf skips the watch while the CRD is absent (reconcile.py says so).
    ("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool"),
]


def slim(body: Mapping[str, Any]) -> Manifest:
    """A plain dict without managedFields (the bulk of an object), to cache: from a kopf body, or from the
    API server's answer to our apply (`writer.py`). A watched child comes without it (`watch_stream`)."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    return {**{k: v for k, v in body.items() if k != "metadata"}, "metadata": meta}


@dataclass(frozen=True, slots=True)
class Packed:
    """One cached object as compact JSON bytes, compressed."""

    raw: bytes

    def get(self) -> Manifest:
        out: Manifest = json.loads(zlib.decompress(self.raw))
        return out


def pack(body: Mapping[str, Any]) -> Packed:
    # Level 1: the fastest; the objects repeat their keys and labels, so it still packs them 2-3x.
    return Packed(zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 1))


def unpack(store: Iterable[Packed] | None) -> list[Manifest]:
    """The objects of one index entry (kopf's store), decoded."""
    return [p.get() for p in store or ()]


@kopf.index(GROUP, VERSION, PLURAL)
async def pool_index(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[Key, Packed]:
    return {(namespace or "", name): pack(slim(body))}


@kopf.index(GROUP, VERSION, PLURAL)
async def pool_names(namespace: str | None, name: str, **_: Any) -> dict[str, str]:
    """Pool names by namespace: a gateway reads its namespace's pools without scanning all of them."""
    return {namespace or "": name}


POD_STATUS = ("phase", "conditions", "containerStatuses", "podIP", "startTime")


def pod_view(body: Mapping[str, Any]) -> Manifest:
    """What a reconcile reads of an inference-server pod."""
    status, meta = body.get("status") or {}, body["metadata"]
    return {
        "metadata": {k: meta.get(k) for k in ("name", "deletionTimestamp", "labels")},
        "status": {k: status.get(k) for k in POD_STATUS},
    }


SERVER_PODS: dict[str, Any] = {**MANAGED, names.COMPONENT_LABEL: names.SERVER}


async def _listed(**_: Any) -> None:
    """Never called with an object: `watch_stream` hands the kind's events to `child_caches`."""


def register_gates() -> None:
    """An index registration per child kind and for the server pods. kopf watches a kind only for a
    handler, and holds every pool's handlers until each indexed kind is listed: `watch_stream` passes
    the listing's end on once `child_caches` holds it."""
    for group, version, plural, _kind in CHILD_KINDS:
        kopf.index(group, version, plural, labels=MANAGED, id=f"{plural}_listed")(_listed)
    kopf.index("", "v1", "pods", labels=SERVER_PODS, id="pods_listed")(_listed)


register_gates()


# A gateway's children that the operator may watch; its ServiceAccount and RBAC objects it may only
# read and write (see `handlers/modelgateway.py`).
GATEWAY_MANAGED: dict[str, Any] = {
    "app.kubernetes.io/managed-by": names.MANAGED_BY,
    GATEWAY_LABEL: kopf.PRESENT,
}
GATEWAY_CHILD_KINDS = [k for k in CHILD_KINDS if k[3] in ("Service", "Deployment", "HorizontalPodAutoscaler")]


@kopf.index(GROUP, VERSION, GATEWAY_PLURAL)
async def gateway_index(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, Packed]:
    """Gateways by namespace: a pool's event refreshes the routing tables of its namespace."""
    return {namespace or "": pack(slim(body))}


def _register_gateway_child_index(group: str, version: str, plural: str, kind: str) -> None:
    async def index(
        body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> dict[Key, Packed]:
        return {(namespace or "", labels[GATEWAY_LABEL]): pack(slim(body))}

    index.__name__ = f"gateway_{plural}_index"
    kopf.index(group, version, plural, labels=GATEWAY_MANAGED, id=index.__name__)(index)


for _kind in GATEWAY_CHILD_KINDS:
    _register_gateway_child_index(*_kind[:4])


@dataclass(frozen=True)
class Snapshot:
    """Every cached child of one pool, by (kind, name)."""

    children: dict[tuple[str, str], Manifest]
    pods: list[Manifest]
    # The gateways whose routing table holds the pool -> the pools of its environment in each table
    # (the checklist's: where it may spill).
    routed_by: dict[str, frozenset[str]] = field(default_factory=dict)
    # A shared GPU budget (`api/budget.py`): (its GPUs, GPUs the other pools of it hold now); None: none.
    budget: tuple[int, int] | None = None

    def get(self, kind: str, name: str) -> Manifest | None:
        return self.children.get((kind, name))

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for (k, _), m in self.children.items() if k == kind]

    def observed(self, deployment: str) -> Observed:
        return Observed(deployment=self.get("Deployment", deployment), pods=self.pods)


def snapshot(kwargs: Mapping[str, Any], key: Key) -> Snapshot:
    """Gathers one pool's children from the indexes kopf passes to every handler."""
    children: dict[tuple[str, str], Manifest] = {}
    for _group, _version, plural, kind in CHILD_KINDS:
        for body in unpack(kwargs[f"{plural}_index"].get(key)):
            children[(kind, body["metadata"]["name"])] = body
    pods = unpack(kwargs["pods_index"].get(key))
    this = pool(kwargs, key)
    return Snapshot(
        children=children, pods=pods, routed_by=routing(kwargs, key), budget=budget_use(kwargs, key, this)
    )


def pool(kwargs: Mapping[str, Any], key: Key) -> Manifest | None:
    return next(iter(unpack(kwargs["pool_index"].get(key))), None)


def routing(kwargs: Mapping[str, Any], key: Key) -> dict[str, frozenset[str]]:
    """The gateways routing the pool (the checklist's); reads the namespace's pools only if it has one."""
    gateways = unpack(kwargs.get("gateway_index", {}).get(key[0]))
    if not gateways:
        return {}
    this = pool(kwargs, key)
    return routed_by(this, gateways, pools_in(kwargs, key[0])) if this else {}


def _budget_of(pool: Mapping[str, Any]) -> Mapping[str, Any] | None:
    budget = ((pool.get("spec") or {}).get("autoscaling") or {}).get("gpuBudget")
    return budget if isinstance(budget, Mapping) and isinstance(budget.get("gpus"), int) else None


def budget_use(kwargs: Mapping[str, Any], key: Key, pool: Manifest | None) -> tuple[int, int] | None:
    """(the budget's GPUs, the GPUs its other pools' Deployments hold): from the caches, no API call."""
    mine = _budget_of(pool) if pool is not None else None
    if mine is None:
        return None
    gpus, used = int(mine["gpus"]), 0
    for other in pools_in(kwargs, key[0]):
        theirs = _budget_of(other)
        name = other["metadata"]["name"]
        if theirs is None or theirs.get("name") != mine.get("name") or name == key[1]:
            continue
        gpus = min(gpus, int(theirs["gpus"]))
        shards = int(((other.get("spec") or {}).get("engine") or {}).get("numShard") or 1)
        for dep in unpack(kwargs["deployments_index"].get((key[0], name))):
            if dep["metadata"]["name"] == name:
                used += int((dep.get("spec") or {}).get("replicas") or 0) * shards
    return gpus, used


def gateway(kwargs: Mapping[str, Any], key: Key) -> Manifest | None:
    return next(
        (g for g in unpack(kwargs["gateway_index"].get(key[0])) if g["metadata"]["name"] == key[1]), None
    )


def gateway_children(kwargs: Mapping[str, Any], key: Key) -> dict[tuple[str, str], Manifest]:
    """One gateway's watched children by (kind, name)."""
    return {
        (kind, body["metadata"]["name"]): body
        for _group, _version, plural, kind in GATEWAY_CHILD_KINDS
        for body in unpack(kwargs[f"gateway_{plural}_index"].get(key))
    }


def pools_in(kwargs: Mapping[str, Any], namespace: str) -> list[Manifest]:
    """The namespace's pools (by the namespace index: no scan of every pool of the cluster)."""
    names_ = sorted(set(kwargs["pool_names"].get(namespace) or ()))
    return [p for name in names_ for p in unpack(kwargs["pool_index"].get((namespace, name)))]


def server_pods(kwargs: Mapping[str, Any], namespace: str) -> list[Manifest]:
    """The namespace's inference-server pods."""
    pools = sorted(set(kwargs["pod_pools"].get(namespace) or ()))
    return [pod for name in pools for pod in unpack(kwargs["pods_index"].get((namespace, name)))]
