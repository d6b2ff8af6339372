"""The one idempotent path for a pool's create, update, resume and child events: validate, decide
the gating, apply what differs, prune, write status only when it changed."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from tgipool.activation import demand_of, is_awake, last_activation
from tgipool.api import budget
from tgipool.api.modelpool import ModelPoolStatus
from tgipool.api.parse import describe_validation_error, parse_pool
from tgipool.checklist import Facts
from tgipool.config import OperatorConfig
from tgipool.desired import build_children, names
from tgipool.desired.demand import demand_lease_name
from tgipool.handlers.indexes import Snapshot
from tgipool.handlers.writer import Outcome, Writer, event_target, normal_event, report
from tgipool.k8s import errors
from tgipool.manifest import Manifest
from tgipool.monitoring.readings import Reading
from tgipool.planner import assess
from tgipool.status import (
    Observed,
    Verdict,
    compute_status,
    gate,
    invalid_status,
    now_rfc3339,
    set_condition,
    weights_verdict,
)


async def reconcile(
    raw: Mapping[str, Any],
    snap: Snapshot,
    writer: Writer,
    cfg: OperatorConfig,
    logger: kopf.Logger,
    reading: Reading | None = None,
    settle: float = 0.0,
) -> Outcome:
    """`reading`: the metrics loop's last round (None when the operator runs without the loop);
    `settle`: see `Writer.write_status`."""
    meta = raw["metadata"]
    async with writer.lock("ModelPool", meta.get("namespace", ""), meta["name"]), writer.turn():
        return await _reconcile(raw, snap, writer, cfg, logger, reading, settle)


async def reconcile_latest(
    key: tuple[str, str],
    load: Callable[[], tuple[Mapping[str, Any], Snapshot] | None],
    writer: Writer,
    cfg: OperatorConfig,
    logger: kopf.Logger,
    reading: Callable[[], Reading | None],
    settle: float = 0.0,
) -> Outcome | None:
    """A reconcile of the pool and children as the caches hold them once the pool's lock is ours (not
    as they were when the event that asked for it came); None when `load` finds the pool gone."""
    async with writer.lock("ModelPool", *key), writer.turn():
        loaded = load()
        if loaded is None or writer.terminating(key[0]):
            return None
        return await _reconcile(*loaded, writer, cfg, logger, reading(), settle)


async def _reconcile(
    raw: Mapping[str, Any],
    snap: Snapshot,
    writer: Writer,
    cfg: OperatorConfig,
    logger: kopf.Logger,
    reading: Reading | None,
    settle: float,
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

    demand = demand_of(snap.get("Lease", demand_lease_name(pool.name)))
    awake = is_awake(pool, demand, datetime.datetime.now(datetime.UTC))
    hpa_max = None
    if snap.budget is not None:
        replicas = pool.spec.replicas
        hpa_max = budget.ceiling(replicas.ceiling, replicas.min, pool.spec.engine.num_shard, *snap.budget)
    children = build_children(pool, cfg, awake, hpa_max)
    job = snap.get("Job", names.fetch_job_name(pool))
    gating = gate(pool, job, assess(pool), awake)
    plan = [children.demand, children.service, children.cache, children.fetch_job]
    # An existing Deployment keeps serving its last good spec while the gate is closed.
    if gating.deploy:
        plan.append(children.deployment)
    if gating.deploy or snap.get("Deployment", pool.name) is not None:
        plan += [children.hpa, children.pdb]
    await writer.apply(filter(None, plan), snap.get, out)
    if writer.terminating(pool.namespace):  # refused: the namespace's deletion takes the pool next
        logger.debug("the namespace of %s is being deleted: its children are not made again", pool.name)
        return out
    inference_pool = await _apply_optional(children.inference_pool, snap, writer, out)
    deployment = snap.get("Deployment", pool.name)
    if awake and gating.deploy and deployment is not None and deployment["spec"].get("replicas") == 0:
        await writer.wake(deployment, out)

    # Prune what the spec no longer asks for: fetch Jobs of an older revision, and everything but
    # the pool itself when it turns cold (its GPUs and cache are released).
    wanted = {(m["kind"], m["metadata"]["name"]) for m in children.all()}
    for (kind, name), child in snap.children.items():
        if (kind, name) not in wanted and not child["metadata"].get("deletionTimestamp"):
            await writer.delete(child, out)
    # An InferencePool we wrote after its CRD appeared mid-run: kopf may not watch that kind yet, so the
    # index lacks it; the writer's own answer still names it.
    ns = pool.namespace
    if children.inference_pool is None and snap.get("InferencePool", pool.name) is None:
        written = writer.current("InferencePool", ns, pool.name, None)
        if written is not None:
            await writer.delete(written, out)

    # Status from what this reconcile wrote too (the caches may not have our answers yet): a Job just
    # created is Fetching, not FetchPending; a Deployment just applied is rolling out.
    job = writer.current("Job", ns, names.fetch_job_name(pool), job)
    deployment = writer.current("Deployment", ns, pool.name, deployment)
    if job is not None and gating.weights.reason == "FetchPending":
        gating = dataclasses.replace(gating, weights=weights_verdict(pool, job, awake))
    refused = errors.refused(out.errors[0]) if out.errors else None
    old_status = current.get("status") or {}
    woke, now = None, now_rfc3339()
    if pool.activation is not None:
        woke = last_activation(demand, snap.pods, job, old_status.get("lastActivation"))
    new = compute_status(
        pool,
        Observed(deployment=deployment, pods=snap.pods),
        gating,
        cfg,
        previous,
        now,
        refused,
        reading,
        old_status.get("metrics"),
        woke,
        Facts(routed_by=snap.routed_by, previous=old_status.get("checklist") or ()),
    )
    if inference_pool is not None:
        cond = set_condition(previous, INFERENCE_POOL, inference_pool, pool.metadata.generation, now)
        new = new.model_copy(update={"conditions": [*new.conditions, cond]})
    await writer.write_status(raw, new, out, settle)
    if out.status_written:
        _tier_events(raw, old_status.get("phase"), new, pool.activation is not None)
    out.pool, out.replicas = pool, new.replicas or 0
    if gating.refused and out.status_written:
        kopf.warn(event_target(raw), reason=gating.capacity.reason, message=gating.capacity.message)
    report(raw, out, logger)
    return out


INFERENCE_POOL = "InferencePool"


async def _apply_optional(
    child: Manifest | None, snap: Snapshot, writer: Writer, out: Outcome
) -> Verdict | None:
    """Applies a child of an optional kind (today the InferencePool); None when the spec asks for none.

    A 404 to a server-side apply means the API server has no such resource: its CRD is not installed.
    That is no refused write: the pool serves as before and the condition says what is missing.
    """
    if child is None:
        return None
    trial = Outcome()
    await writer.apply([child], snap.get, trial)
    out.applied += trial.applied
    out.errors += [e for e in trial.errors if e.status != 404]
    group_version, kind = child["apiVersion"], child["kind"]
    if any(e.status == 404 for e in trial.errors):
        return Verdict(
            "False",
            "CRDNotInstalled",
            f"{kind} ({group_version}) is not served by this cluster: install the Gateway API inference "
            f"extension's CRDs; the pool serves without it",
        )
    if trial.errors:
        return Verdict("False", "ApplyRefused", str(trial.errors[0]))
    return Verdict("True", "Applied", f"{kind} {child['metadata']['name']} selects the pool's pods")


def _tier_events(raw: Mapping[str, Any], before: str | None, new: ModelPoolStatus, rests: bool) -> None:
    """An event for each wake of a warm or cold pool and each return to rest."""
    if not rests or before == new.phase:
        return
    if new.phase == "Waking":
        woke = new.last_activation
        since = f" (first request at {woke.requested_at})" if woke and woke.requested_at else ""
        normal_event(event_target(raw), reason="Waking", message=f"demand on a resting pool: waking{since}")
    elif new.phase in ("Ready", "Progressing") and before == "Waking" and new.last_activation:
        took = new.last_activation.seconds
        normal_event(event_target(raw), reason="Woken", message=f"first replica Ready after {took} s")
    elif new.phase in ("Standby", "Cold") and before not in (None, "Standby", "Cold"):
        normal_event(event_target(raw), reason="BackToRest", message=f"no demand: back to {new.phase}")
