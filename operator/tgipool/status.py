"""PURE: what the operator observed and decided -> the status of a ModelPool or a ModelGateway.

Statuses are the pydantic status models of api/, so each kind's status has exactly the keys its
model declares, and a patch clears the keys a new status leaves out. Kept free of I/O so that every
reason an on-call engineer may read is unit-tested.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from tgipool import checklist
from tgipool.api.checklist import PRODUCTION_READY
from tgipool.api.modelgateway import ModelGatewayStatus, RoutePool
from tgipool.api.modelpool import ActivationStatus, Condition, MetricsStatus, ModelPool, ModelPoolStatus
from tgipool.config import OperatorConfig
from tgipool.desired import names
from tgipool.desired.cache import needs_fetch
from tgipool.desired.service import endpoint
from tgipool.manifest import Manifest
from tgipool.monitoring.readings import Reading, metrics_status, plan_verdict, slo_verdict
from tgipool.planner import Assessment


@dataclass(frozen=True)
class Observed:
    """What the cluster holds for one pool (from the operator's watch caches)."""

    deployment: Manifest | None = None
    pods: list[Manifest] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str


@dataclass(frozen=True)
class Refused:
    """A write the API server refused: pools show it as Degraded, gateways as not Ready."""

    reason: str
    message: str


@dataclass(frozen=True)
class Gating:
    """What a pool may have, decided once per reconcile: the handler applies by it, status shows it."""

    weights: Verdict
    capacity: Assessment
    # GPUs are asked for only once the weights are cached and the planner does not refuse them.
    deploy: bool
    # Hot pools always; warm and cold ones while their demand is fresh (activation.py).
    awake: bool = True

    @property
    def refused(self) -> bool:
        return self.capacity.refused


def gate(
    pool: ModelPool, fetch_job: Manifest | None, capacity: Assessment, awake: bool | None = None
) -> Gating:
    awake = pool.activation is None if awake is None else awake
    weights = weights_verdict(pool, fetch_job, awake)
    return Gating(weights, capacity, deploy=weights.status == "True" and not capacity.refused, awake=awake)


def _cond(status: bool, reason: str, message: str) -> Verdict:
    return Verdict("True" if status else "False", reason, message)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    previous: Sequence[Mapping[str, Any]], ctype: str, verdict: Verdict, generation: int | None, now: str
) -> Condition:
    """A condition whose lastTransitionTime moves only when its status flips."""
    old = next((c for c in previous if c.get("type") == ctype), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == verdict.status else None
    return Condition(
        type=ctype,
        status=verdict.status,
        reason=verdict.reason,
        message=verdict.message,
        observed_generation=generation,
        last_transition_time=since or now,
    )


def status_patch(new: BaseModel, old: Mapping[str, Any]) -> Manifest | None:
    """The merge patch that turns `old` into `new`, or None when nothing changed.

    Every key of `new`'s model is the operator's: a key `new` leaves unset is cleared. Keys outside
    the model (another writer's) are left alone.
    """
    want = new.model_dump(by_alias=True, exclude_none=True)
    patch = {k: v for k, v in want.items() if old.get(k) != v}
    for name, info in type(new).model_fields.items():
        key = info.alias or name
        if key not in want and old.get(key) is not None:
            patch[key] = None
    return patch or None


def must_write_now(new: BaseModel, old: Mapping[str, Any]) -> bool:
    """Whether a status change must reach readers at once: the first status, a newly handled
    generation, another phase, a condition that came, went or turned (True/False/Unknown). A new reason,
    message, count or number without any of those may wait for the next write."""
    if not old:
        return True
    want = new.model_dump(by_alias=True, exclude_none=True)
    if any(want.get(k) != old.get(k) for k in ("phase", "observedGeneration")):
        return True

    def turned(status: Mapping[str, Any]) -> set[tuple[Any, Any]]:
        return {(c.get("type"), c.get("status")) for c in status.get("conditions") or ()}

    return turned(want) != turned(old)


def _job_condition(job: Manifest, ctype: str) -> Manifest | None:
    for c in job.get("status", {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return dict(c)
    return None


def weights_verdict(pool: ModelPool, job: Manifest | None, awake: bool = True) -> Verdict:
    if pool.spec.tier == "cold" and not awake:
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


def live_status(
    pool: ModelPool, reading: Reading, replicas: int, previous: Mapping[str, Any] | None
) -> tuple[MetricsStatus | None, Verdict]:
    """`status.metrics` and SLOMet from the metrics loop's last round. While Prometheus cannot be
    read, the last numbers stay (their observedAt says how old they are) and only SLOMet changes."""
    values = reading.of(pool.namespace, pool.name)
    slo = slo_verdict(values, pool.slo_p95_ms, reading.error)
    verdict = Verdict(slo.status, slo.reason, slo.message)
    if reading.error is not None:
        return (MetricsStatus.model_validate(previous) if previous else None), verdict
    gpus = replicas * pool.spec.engine.num_shard
    metrics = metrics_status(values, gpus, pool.spec.gpu.hourly_price, reading.observed_at, previous)
    return (MetricsStatus.model_validate(metrics) if metrics else None), verdict


def compute_status(
    pool: ModelPool,
    observed: Observed,
    gating: Gating,
    cfg: OperatorConfig,
    previous: Sequence[Mapping[str, Any]],
    now: str,
    refused: Refused | None = None,
    reading: Reading | None = None,
    previous_metrics: Mapping[str, Any] | None = None,
    last_activation: ActivationStatus | None = None,
    facts: checklist.Facts | None = None,
) -> ModelPoolStatus:
    """`facts`: what the reconcile gathered for the production checklist (none: no gateway known)."""
    gen = pool.metadata.generation
    capacity, weights = gating.capacity, gating.weights
    dep = observed.deployment
    dep_status = (dep or {}).get("status", {})
    desired = (dep or {}).get("spec", {}).get("replicas")
    replicas = int(desired if desired is not None else dep_status.get("replicas") or 0)
    ready = int(dep_status.get("readyReplicas") or 0)
    # The replicas the pool must have to serve: hot its minimum, warm and cold one while awake.
    floor = max(1, pool.spec.replicas.min) if pool.spec.tier == "hot" else int(gating.awake)
    resting_cold = pool.spec.tier == "cold" and not gating.awake

    problem = pod_problem(pool, observed.pods)
    if gating.refused:
        # The planner's verdict outranks what old pods show: no new Deployment will be made.
        problem = _cond(True, capacity.reason, capacity.message)
    if problem is None and weights.reason == "FetchFailed":
        problem = _cond(True, "FetchFailed", weights.message)
    if problem is None and dep is not None:
        for c in dep_status.get("conditions") or []:
            if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
                problem = _cond(True, "ProgressDeadlineExceeded", c.get("message", ""))
    degraded = problem or _cond(False, "AsExpected", "no problem observed")
    if refused is not None:
        # A refused write outranks what the children show: they may not be what the spec asks.
        degraded = _cond(True, refused.reason, refused.message)

    rolled = dep is not None and (
        (dep.get("metadata", {}).get("generation") or 0) <= (dep_status.get("observedGeneration") or 0)
        and int(dep_status.get("updatedReplicas") or 0) >= replicas
        and int(dep_status.get("replicas") or 0) <= replicas
    )
    if resting_cold:
        progressing = _cond(False, "ColdTier", "nothing runs until the first demand")
    elif gating.refused:
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

    if gating.refused and problem:
        ready_v = _cond(False, problem.reason, problem.message)
    elif floor and ready >= floor:
        ready_v = _cond(True, "ReplicasReady", f"{ready}/{replicas} replicas ready (minimum {floor})")
    elif resting_cold:
        ready_v = _cond(False, "ColdTier", "cold pools start on first demand")
    elif floor == 0:
        ready_v = _cond(False, "ScaledToZero", "warm pool is idle at zero replicas; weights stay cached")
    elif problem:
        ready_v = _cond(False, problem.reason, problem.message)
    elif pool.activation is not None:
        ready_v = _cond(False, "Waking", f"waking on demand: {progressing.message}")
    else:
        ready_v = _cond(False, progressing.reason, progressing.message)

    if refused is not None:
        phase = "Degraded"
    elif resting_cold:
        phase = "Cold"
    elif gating.refused:
        phase = "Infeasible"
    elif problem:
        phase = "Degraded"
    elif ready_v.status == "True":
        phase = "Ready" if progressing.status == "False" else "Progressing"
    elif ready_v.reason == "Waking":
        phase = "Waking"
    elif weights.status != "True":
        phase = "FetchingWeights"
    elif floor == 0:
        phase = "Standby"
    else:
        phase = "Progressing"

    feasible = Verdict(capacity.status, capacity.reason, capacity.message)
    verdicts = [
        ("Ready", ready_v),
        ("Progressing", progressing),
        ("Degraded", degraded),
        ("WeightsCached", weights),
        ("CapacityFeasible", feasible),
    ]
    metrics = None
    if reading is not None:
        metrics, slo = live_status(pool, reading, replicas, previous_metrics)
        verdicts.append(("SLOMet", slo))
        planned = pool.metadata.annotations.get(names.PLANNED_RPS_ANNOTATION)
        if planned is not None:
            v = plan_verdict(reading.of(pool.namespace, pool.name), planned, reading.error)
            verdicts.append(("TrafficMatchesPlan", Verdict(v.status, v.reason, v.message)))
    items = checklist.items(pool, metrics, reading, facts or checklist.Facts())
    verdicts.append((PRODUCTION_READY, _cond(*checklist.production_ready(items))))
    return ModelPoolStatus(
        observed_generation=gen,
        phase=phase,
        replicas=replicas,
        ready_replicas=ready,
        ready=f"{ready}/{replicas}",
        selector=names.selector_string(pool),
        endpoint=endpoint(pool, cfg),
        served_name=pool.served_name,
        conditions=[set_condition(previous, ctype, verdict, gen, now) for ctype, verdict in verdicts],
        capacity=capacity.capacity_status(),
        metrics=metrics,
        last_activation=last_activation,
        checklist=items,
    )


def invalid_status(
    generation: int | None, message: str, previous: Sequence[Mapping[str, Any]], now: str
) -> ModelPoolStatus:
    """A pool the operator refuses: every field it could not accept is named in the message."""
    return ModelPoolStatus(
        observed_generation=generation,
        phase="Invalid",
        conditions=[
            set_condition(previous, "Ready", _cond(False, "InvalidSpec", message), generation, now),
            set_condition(previous, "Degraded", _cond(True, "InvalidSpec", message), generation, now),
        ],
    )


def invalid_gateway_status(
    generation: int | None, message: str, previous: Sequence[Mapping[str, Any]], now: str
) -> ModelGatewayStatus:
    ready = _cond(False, "InvalidSpec", message)
    return ModelGatewayStatus(
        observed_generation=generation,
        phase="Invalid",
        conditions=[set_condition(previous, "Ready", ready, generation, now)],
    )


def gateway_status(
    generation: int | None,
    previous: Sequence[Mapping[str, Any]],
    now: str,
    *,
    deployment: str,
    ready_replicas: int,
    endpoint: str,
    table: Sequence[RoutePool],
    default_pool: str | None,
    refused: Refused | None = None,
) -> ModelGatewayStatus:
    """A gateway's phase and Ready condition, the routing table it serves, and its default pool
    while that pool is in the table."""
    if refused is not None:
        ready, phase = _cond(False, refused.reason, refused.message), "Degraded"
    elif ready_replicas:
        why = f"{ready_replicas} gateway replica(s) ready, routing {len(table)} pool(s)"
        ready, phase = _cond(True, "GatewayReady", why), "Ready"
    else:
        why = f"Deployment {deployment} has no ready replica yet"
        ready, phase = _cond(False, "WaitingForReplicas", why), "Progressing"
    return ModelGatewayStatus(
        observed_generation=generation,
        phase=phase,
        endpoint=endpoint,
        conditions=[set_condition(previous, "Ready", ready, generation, now)],
        pools=list(table),
        routed_pools=len(table),
        default_pool=default_pool if any(r.name == default_pool for r in table) else None,
    )
