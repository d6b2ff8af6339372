"""The one idempotent path for create, update, resume and child events: validate, build, apply
what differs, write status only when it changed."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from pydantic import ValidationError

from tgipool.api.parse import describe_validation_error, parse_pool
from tgipool.config import OperatorConfig
from tgipool.desired import build_children, names
from tgipool.handlers.indexes import Snapshot
from tgipool.k8s.client import ApplyError, Kube
from tgipool.k8s.compare import needs_apply, stamped
from tgipool.manifest import Manifest
from tgipool.planner import assess
from tgipool.status import compute_status, invalid_status, weights_verdict

STATUS_KEYS = (
    "observedGeneration",
    "phase",
    "replicas",
    "readyReplicas",
    "ready",
    "selector",
    "endpoint",
    "servedName",
    "conditions",
    "capacity",
)

_locks: dict[tuple[str, str], asyncio.Lock] = {}
# Status we last wrote, by pool uid: the watch may not have delivered it yet, and comparing
# against a stale copy would write the same status twice.
_written: dict[str, Manifest] = {}
# The API server's answer to our last apply of each child, by (kind, namespace, name).
_applied: dict[tuple[str, str, str], Manifest] = {}


@dataclass
class Outcome:
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False
    errors: list[ApplyError] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return len(self.applied) + len(self.deleted) + int(self.status_written)


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


def fresher(cached: Manifest | None, applied: Manifest | None) -> Manifest | None:
    """The newer of the watch cache's copy of a child and the API server's answer to our last apply.

    Under load the watch lags behind our own writes; without this, every event that arrives in
    between would apply the same child again. etcd-backed resourceVersions increase, so the larger
    one is the newer state (a hand edit after our apply wins, and is reverted).
    """
    if applied is None:
        return cached
    if cached is not None and _rv(cached) >= _rv(applied):
        return cached
    return applied


def forget_applied(kind: str, namespace: str, name: str) -> None:
    """A child was deleted: the next reconcile must see it missing, whatever we applied before."""
    _applied.pop((kind, namespace, name), None)


def event_target(raw: Mapping[str, Any]) -> kopf.Body:
    return kopf.Body(cast("kopf.RawBody", dict(raw)))


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_patch(new: Manifest, old: Mapping[str, Any]) -> Manifest | None:
    """The merge patch that turns `old` into `new` for the keys the operator owns, or None."""
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in STATUS_KEYS if k not in new and old.get(k) is not None})
    return patch or None


async def reconcile(
    raw: Mapping[str, Any], snap: Snapshot, kube: Kube, cfg: OperatorConfig, logger: kopf.Logger
) -> Outcome:
    meta = raw["metadata"]
    key = (meta.get("namespace", ""), meta["name"])
    lock = _locks.setdefault(key, asyncio.Lock())
    async with lock:
        return await _reconcile(raw, snap, kube, cfg, logger)


async def _reconcile(
    raw: Mapping[str, Any], snap: Snapshot, kube: Kube, cfg: OperatorConfig, logger: kopf.Logger
) -> Outcome:
    out = Outcome()
    meta = raw["metadata"]
    old_status: Mapping[str, Any] = raw.get("status") or {}
    previous = list(old_status.get("conditions") or [])
    try:
        pool = parse_pool(raw)
    except ValidationError as err:
        message = describe_validation_error(err)
        new = invalid_status(meta.get("generation"), message, previous, now_rfc3339())
        await _write_status(kube, meta, new, old_status, out)
        if out.status_written:
            kopf.warn(event_target(raw), reason="InvalidSpec", message=message)
        raise kopf.PermanentError(f"invalid ModelPool: {message}") from err

    children = build_children(pool, cfg)
    capacity = assess(pool)
    weights = weights_verdict(pool, snap.get("Job", names.fetch_job_name(pool)))
    deployment_exists = snap.get("Deployment", pool.name) is not None
    plan = [children.service, children.cache, children.fetch_job]
    # GPUs are only asked for once the weights are cached and the planner says they fit;
    # an existing Deployment keeps serving its last good spec meanwhile.
    if weights.status == "True" and not capacity.refused:
        plan.append(children.deployment)
    if (weights.status == "True" and not capacity.refused) or deployment_exists:
        plan += [children.hpa, children.pdb]

    for manifest in filter(None, plan):
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        key = (kind, pool.namespace, name)
        if not needs_apply(manifest, fresher(snap.get(kind, name), _applied.get(key))):
            continue
        try:
            _applied[key] = await asyncio.to_thread(kube.apply, stamped(manifest))
            out.applied.append(f"{kind}/{name}")
        except ApplyError as e:
            out.errors.append(e)

    # Prune what the spec no longer asks for: fetch Jobs of an older revision, and everything but
    # the pool itself when it turns cold (its GPUs and cache are released).
    wanted = {(m["kind"], m["metadata"]["name"]) for m in children.all()}
    for (kind, name), child in snap.children.items():
        if (kind, name) in wanted or child["metadata"].get("deletionTimestamp"):
            continue
        await asyncio.to_thread(kube.delete, child["apiVersion"], kind, pool.namespace, name)
        forget_applied(kind, pool.namespace, name)
        out.deleted.append(f"{kind}/{name}")
    current_job = children.fetch_job["metadata"]["name"] if children.fetch_job else None

    observed = snap.observed(pool.name, current_job, names.cache_name(pool))
    new = compute_status(pool, observed, cfg, previous, now_rfc3339(), capacity)
    if out.errors:
        first = out.errors[0]
        message = f"the API server refused {first.kind} {first.name}: {first.message}"
        new["conditions"] = [
            c
            if c["type"] != "Degraded"
            else {**c, "status": "True", "reason": "ApplyFailed", "message": message}
            for c in new["conditions"]
        ]
        new["phase"] = "Degraded"
    await _write_status(kube, meta, new, old_status, out)
    if capacity.refused and out.status_written:
        kopf.warn(event_target(raw), reason=capacity.reason, message=capacity.message)

    if out.applied or out.deleted:
        done = ", ".join(out.applied + [f"deleted {d}" for d in out.deleted])
        kopf.info(event_target(raw), reason="Reconciled", message=f"server-side applied {done}")
        logger.info("reconciled pool=%s/%s writes=%d %s", pool.namespace, pool.name, out.writes, done)
    else:
        logger.debug("pool=%s/%s unchanged; no writes", pool.namespace, pool.name)
    if out.errors:
        for refused in out.errors:
            kopf.warn(event_target(raw), reason="ApplyFailed", message=str(refused))
        raise kopf.TemporaryError(f"{len(out.errors)} children refused: {out.errors[0]}", delay=30)
    return out


async def _write_status(
    kube: Kube, meta: Mapping[str, Any], new: Manifest, old: Mapping[str, Any], out: Outcome
) -> None:
    uid = meta.get("uid") or ""
    mine = _written.get(uid)
    if mine is not None and status_patch(new, mine) is None:
        return
    patch = status_patch(new, old)
    if patch is None:
        return
    await asyncio.to_thread(kube.patch_status, meta.get("namespace", ""), meta["name"], patch)
    _written[uid] = new
    out.status_written = True
