"""The one idempotent path for a pool's create, update, resume and child events: validate, decide
the gating, apply what differs, prune, write status only when it changed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from tgipool.api.parse import describe_validation_error, parse_pool
from tgipool.config import OperatorConfig
from tgipool.desired import build_children, names
from tgipool.handlers.indexes import Snapshot
from tgipool.handlers.writer import Outcome, Writer, event_target, report
from tgipool.k8s import errors
from tgipool.monitoring.readings import Reading
from tgipool.planner import assess
from tgipool.status import compute_status, gate, invalid_status, now_rfc3339


async def reconcile(
    raw: Mapping[str, Any],
    snap: Snapshot,
    writer: Writer,
    cfg: OperatorConfig,
    logger: kopf.Logger,
    reading: Reading | None = None,
) -> Outcome:
    """`reading`: the metrics loop's last round (None when the operator runs without the loop)."""
    meta = raw["metadata"]
    async with writer.lock("ModelPool", meta.get("namespace", ""), meta["name"]):
        return await _reconcile(raw, snap, writer, cfg, logger, reading)


async def _reconcile(
    raw: Mapping[str, Any],
    snap: Snapshot,
    writer: Writer,
    cfg: OperatorConfig,
    logger: kopf.Logger,
    reading: Reading | None,
) -> Outcome:
    out = Outcome()
    meta = raw["metadata"]
    current = writer.current("ModelPool", meta.get("namespace", ""), meta["name"], dict(raw)) or raw
    previous = list((current.get("status") or {}).get("conditions") or [])
    try:
        pool = parse_pool(raw)
    except ValidationError as err:
        message = describe_validation_error(err)
        await writer.write_status(
            raw, invalid_status(meta.get("generation"), message, previous, now_rfc3339()), out
        )
        if out.status_written:
            kopf.warn(event_target(raw), reason="InvalidSpec", message=message)
        raise kopf.PermanentError(f"invalid ModelPool: {message}") from err

    children = build_children(pool, cfg)
    gating = gate(pool, snap.get("Job", names.fetch_job_name(pool)), assess(pool))
    plan = [children.service, children.cache, children.fetch_job]
    # An existing Deployment keeps serving its last good spec while the gate is closed.
    if gating.deploy:
        plan.append(children.deployment)
    if gating.deploy or snap.get("Deployment", pool.name) is not None:
        plan += [children.hpa, children.pdb]
    await writer.apply(filter(None, plan), snap.get, out)

    # Prune what the spec no longer asks for: fetch Jobs of an older revision, and everything but
    # the pool itself when it turns cold (its GPUs and cache are released).
    wanted = {(m["kind"], m["metadata"]["name"]) for m in children.all()}
    for (kind, name), child in snap.children.items():
        if (kind, name) not in wanted and not child["metadata"].get("deletionTimestamp"):
            await writer.delete(child, out)

    refused = errors.refused(out.errors[0]) if out.errors else None
    metrics = (current.get("status") or {}).get("metrics")
    new = compute_status(
        pool, snap.observed(pool.name), gating, cfg, previous, now_rfc3339(), refused, reading, metrics
    )
    await writer.write_status(raw, new, out)
    out.pool, out.replicas = pool, new.replicas or 0
    if gating.refused and out.status_written:
        kopf.warn(event_target(raw), reason=gating.capacity.reason, message=gating.capacity.message)
    report(raw, out, logger)
    return out
