"""PURE: observed children of a pool -> its status (phase, replicas, conditions).

Kept free of I/O so that every reason an on-call engineer may read is unit-tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tgipool.api.modelpool import ModelPool
from tgipool.config import OperatorConfig
from tgipool.desired import names
from tgipool.desired.cache import needs_fetch
from tgipool.desired.service import endpoint
from tgipool.manifest import Manifest
from tgipool.planner import Assessment


@dataclass(frozen=True)
class Observed:
    """What the cluster holds for one pool (from the operator's watch caches)."""

    deployment: Manifest | None = None
    fetch_job: Manifest | None = None
    cache: Manifest | None = None
    pods: list[Manifest] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    message: str


def _cond(status: bool, reason: str, message: str) -> Verdict:
    return Verdict("True" if status else "False", reason, message)


def set_condition(
    previous: list[Manifest], ctype: str, verdict: Verdict, generation: int | None, now: str
) -> Manifest:
    """A condition whose lastTransitionTime moves only when its status flips."""
    old = next((c for c in previous if c.get("type") == ctype), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == verdict.status else None
    cond: Manifest = {
        "type": ctype,
        "status": verdict.status,
        "reason": verdict.reason,
        "message": verdict.message,
        "lastTransitionTime": since or now,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def _job_condition(job: Manifest, ctype: str) -> Manifest | None:
    for c in job.get("status", {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return dict(c)
    return None


def weights_verdict(pool: ModelPool, job: Manifest | None) -> Verdict:
    if pool.spec.tier == "cold":
        return _cond(False, "ColdTier", "cold pools fetch weights on first demand")
    if not needs_fetch(pool):
        return _cond(True, "LocalPath", f"model is a path in the cache: {pool.spec.model.id}")
    if job is None:
        return _cond(False, "FetchPending", "the prefetch Job is not created yet")
    if (job.get("status", {}).get("succeeded") or 0) >= 1:
        return _cond(True, "Fetched", f"{pool.spec.model.id}@{pool.spec.model.revision} is in the cache")
    failed = _job_condition(job, "Failed")
    if failed:
        why = failed.get("message") or failed.get("reason") or "the Job failed"
        return _cond(False, "FetchFailed", f"prefetch Job {job['metadata']['name']} failed: {why}")
    return _cond(False, "Fetching", f"prefetch Job {job['metadata']['name']} is downloading the weights")


def pod_problem(pool: ModelPool, pods: list[Manifest]) -> Verdict | None:
    """The first reason pods of the pool cannot serve, in the words of the scheduler or kubelet."""
    gpu = pool.spec.gpu.resource
    for pod in pods:
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        for c in pod.get("status", {}).get("conditions") or []:
            if (
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
            ):
                msg = c.get("message", "")
                if f"Insufficient {gpu}" in msg:
                    return _cond(
                        True,
                        "InsufficientGPU",
                        f"pods need {pool.spec.engine.num_shard} {gpu} each and no node can fit them: {msg}",
                    )
                return _cond(True, "Unschedulable", f"pods cannot be scheduled: {msg}")
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull"):
                return _cond(
                    True, waiting["reason"], f"pod {pod['metadata']['name']}: {waiting.get('message', '')}"
                )
    return None


def compute_status(
    pool: ModelPool,
    observed: Observed,
    cfg: OperatorConfig,
    previous: list[Manifest],
    now: str,
    capacity: Assessment | None = None,
) -> Manifest:
    gen = pool.metadata.generation
    refused = capacity is not None and capacity.refused
    dep = observed.deployment
    dep_status = (dep or {}).get("status", {})
    desired = (dep or {}).get("spec", {}).get("replicas")
    replicas = int(desired if desired is not None else dep_status.get("replicas") or 0)
    ready = int(dep_status.get("readyReplicas") or 0)
    floor = max(1, pool.spec.replicas.min) if pool.spec.tier == "hot" else 0

    weights = weights_verdict(pool, observed.fetch_job)
    problem = pod_problem(pool, observed.pods)
    if refused and capacity is not None:
        # The planner's verdict outranks what old pods show: no new Deployment will be made.
        problem = _cond(True, capacity.reason, capacity.message)
    if problem is None and weights.reason == "FetchFailed":
        problem = _cond(True, "FetchFailed", weights.message)
    if problem is None and dep is not None:
        for c in dep_status.get("conditions") or []:
            if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
                problem = _cond(True, "ProgressDeadlineExceeded", c.get("message", ""))
    degraded = problem or _cond(False, "AsExpected", "no problem observed")

    rolled = dep is not None and (
        (dep.get("metadata", {}).get("generation") or 0) <= (dep_status.get("observedGeneration") or 0)
        and int(dep_status.get("updatedReplicas") or 0) >= replicas
        and int(dep_status.get("replicas") or 0) <= replicas
    )
    if pool.spec.tier == "cold":
        progressing = _cond(False, "ColdTier", "nothing runs until the first demand")
    elif refused:
        progressing = _cond(False, "CapacityInfeasible", "waiting for a spec that fits the GPUs")
    elif weights.status != "True":
        progressing = _cond(weights.reason != "FetchFailed", "FetchingWeights", weights.message)
    elif dep is None:
        progressing = _cond(True, "Creating", "creating the Deployment")
    elif not rolled:
        progressing = _cond(True, "RollingOut", "the Deployment is rolling out a new revision")
    elif ready < floor:
        progressing = _cond(True, "ScalingUp", f"{ready}/{floor} replicas ready")
    else:
        progressing = _cond(False, "Stable", "the Deployment is rolled out")

    if refused and problem:
        ready_v = _cond(False, problem.reason, problem.message)
    elif floor and ready >= floor:
        ready_v = _cond(True, "ReplicasReady", f"{ready}/{replicas} replicas ready (minimum {floor})")
    elif pool.spec.tier == "cold":
        ready_v = _cond(False, "ColdTier", "cold pools start on first demand")
    elif floor == 0:
        ready_v = _cond(False, "ScaledToZero", "warm pool is idle at zero replicas; weights stay cached")
    elif problem:
        ready_v = _cond(False, problem.reason, problem.message)
    else:
        ready_v = _cond(False, progressing.reason, progressing.message)

    if pool.spec.tier == "cold":
        phase = "Cold"
    elif refused:
        phase = "Infeasible"
    elif problem:
        phase = "Degraded"
    elif ready_v.status == "True":
        phase = "Ready" if progressing.status == "False" else "Progressing"
    elif weights.status != "True":
        phase = "FetchingWeights"
    elif floor == 0:
        phase = "Standby"
    else:
        phase = "Progressing"

    conditions = [
        set_condition(previous, ctype, verdict, gen, now)
        for ctype, verdict in (
            ("Ready", ready_v),
            ("Progressing", progressing),
            ("Degraded", degraded),
            ("WeightsCached", weights),
        )
    ]
    if capacity is not None:
        feasible = Verdict(capacity.status, capacity.reason, capacity.message)
        conditions.append(set_condition(previous, "CapacityFeasible", feasible, gen, now))
    out: Manifest = {
        "observedGeneration": gen,
        "phase": phase,
        "replicas": replicas,
        "readyReplicas": ready,
        "ready": f"{ready}/{replicas}",
        "selector": names.selector_string(pool),
        "endpoint": endpoint(pool, cfg),
        "servedName": pool.served_name,
        "conditions": conditions,
    }
    if capacity is not None:
        out["capacity"] = capacity.capacity_status().model_dump(by_alias=True, exclude_none=True)
    return out


def invalid_status(generation: int | None, message: str, previous: list[Manifest], now: str) -> Manifest:
    """A pool the operator refuses: every field it could not accept is named in the message."""
    bad = _cond(False, "InvalidSpec", message)
    return {
        "observedGeneration": generation,
        "phase": "Invalid",
        "conditions": [
            set_condition(previous, "Ready", bad, generation, now),
            set_condition(previous, "Degraded", _cond(True, "InvalidSpec", message), generation, now),
        ],
    }
