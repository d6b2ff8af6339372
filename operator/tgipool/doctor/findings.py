"""PURE: evidence in, findings out: what is wrong with a pool and what to change, with its numbers.

Each check reads one kind of evidence (the pool's conditions, its pods' states, the scheduler's
reasons, events; the live metrics and cold starts are in `performance.py`) and returns findings whose
fixes come from the planner (`remedies.py`). `diagnose` runs them all, most severe first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from tgipool.api.modelpool import ModelPool
from tgipool.api.parse import describe_validation_error
from tgipool.config import DEFAULT_CONFIG
from tgipool.desired import names
from tgipool.desired.deployment import GPU_PRODUCT_LABEL
from tgipool.doctor import performance, remedies
from tgipool.doctor.evidence import (
    SEVERITY_RANK,
    Evidence,
    Finding,
    about,
    all_statuses,
    event_line,
    gpu_nodes,
    is_ready,
    is_server,
    live,
    memory_limit,
    pod_name,
    pool_events,
    running_since,
    servers,
    terminations,
    tgi_status,
    unschedulable,
    waiting_reason,
)
from tgipool.manifest import Manifest
from tgipool.planner import plan

Check = Callable[[ModelPool, Evidence], list[Finding]]
GPU_OOM_MARKERS = ("Not enough memory to handle", "CUDA out of memory", "OutOfMemoryError")
PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName")
MAX_LINES = 5  # evidence lines of one kind (pods, events) in a finding
LOAD_BYTES_PER_SECOND = 2e9  # local NVMe to GPU, roughly (the simulated cluster's default too)


def _events(ev: Evidence, kind: str, pods: list[Manifest], reasons: tuple[str, ...]) -> list[str]:
    found = list(about(pool_events(ev.name, ev.pods, ev.events), kind, map(pod_name, pods)))
    return [event_line(e) for e in found if e.get("reason") in reasons][-MAX_LINES:]


def _is_oom(t: Mapping[str, Any]) -> bool:
    message = str(t.get("message") or "")
    return t.get("reason") == "OOMKilled" or any(m in message for m in GPU_OOM_MARKERS)


def _termination_line(pod: Manifest) -> str:
    cs = tgi_status(pod)
    last = terminations(cs)[0]
    message = str(last.get("message") or "").strip().splitlines()
    tail = f": {message[-1]}" if message else ""
    now = waiting_reason(cs)
    state = f", now {now[0]}" if now else ""
    return (
        f"pod {pod_name(pod)}: container {cs.get('name')} {last.get('reason', 'terminated')} "
        f"(exit {last.get('exitCode', '?')}) at {last.get('finishedAt', '?')}{tail}; "
        f"restarts {cs.get('restartCount', 0)}{state}"
    )


def invalid(message: str) -> Finding:
    return Finding(
        "InvalidSpec",
        "critical",
        "the operator refuses the spec",
        (message,),
        ("fix the named field; `tgipool render -f pool.yaml` checks a spec offline",),
    )


def not_reconciled(pool: ModelPool, ev: Evidence) -> list[Finding]:
    operator = "is the operator running? `kubectl -n tgipool-system logs deploy/tgipool` (or its log)"
    deleted = ev.pool["metadata"].get("deletionTimestamp")
    if deleted:
        why = f"deletionTimestamp {deleted}, finalizers {ev.pool['metadata'].get('finalizers') or []}"
        fix = f"the operator's finalizer holds the pool until the operator sees the deletion: {operator}"
        return [Finding("Deleting", "info", "the pool is being deleted", (why,), (fix,))]
    if not ev.status:
        return [Finding("NotReconciled", "warning", "the operator has written no status", (), (operator,))]
    seen, gen = ev.status.get("observedGeneration"), pool.metadata.generation
    if gen is not None and seen is not None and seen < gen:
        why = f"metadata.generation {gen}, status.observedGeneration {seen}"
        return [Finding("StaleStatus", "warning", "the status is older than the spec", (why,), (operator,))]
    return []


def capacity(pool: ModelPool, ev: Evidence) -> list[Finding]:
    c = ev.condition("CapacityFeasible")
    if c.get("status") == "False":
        reason = str(c.get("reason", ""))
        fixes = tuple(remedies.capacity_fixes(pool, reason))
        title = f"the planner refuses the pool ({reason}): no GPU is asked for"
        return [Finding("CapacityInfeasible", "critical", title, (str(c.get("message", "")),), fixes)]
    if c.get("status") == "Unknown":
        title = "the planner cannot check GPU memory"
        return [
            Finding(
                "CapacityUnchecked", "info", title, (str(c.get("message", "")),), (remedies.UNKNOWN_SHAPE,)
            )
        ]
    return []


def weights(pool: ModelPool, ev: Evidence) -> list[Finding]:
    c = ev.condition("WeightsCached")
    if c.get("reason") != "FetchFailed":
        return []
    model = pool.spec.model
    fixes = (
        f"`kubectl -n {pool.namespace} logs job/{names.fetch_job_name(pool)}`: the download's own error",
        "a gated or private repo needs spec.model.hfTokenSecretRef (a token that accepted the license)",
        f"spec.model.revision {model.revision} must exist in {model.id}",
    )
    return [
        Finding("FetchFailed", "critical", "the weights cannot be fetched", (str(c.get("message")),), fixes)
    ]


def out_of_memory(pool: ModelPool, ev: Evidence) -> list[Finding]:
    pods = [p for p in servers(ev.pods) if any(_is_oom(t) for t in terminations(tgi_status(p)))]
    if not pods:
        return []
    lines = [_termination_line(p) for p in pods[:MAX_LINES]]
    lines += _events(ev, "Pod", pods, ("BackOff", "OOMKilling"))
    texts = " ".join(str(t.get("message") or "") for p in pods for t in terminations(tgi_status(p)))
    gpu = any(m in texts for m in GPU_OOM_MARKERS)
    title = "TGI runs out of GPU memory at warm-up" if gpu else "TGI is OOMKilled at start (warm-up)"
    fixes = []
    limit = memory_limit(pods[0])
    if not gpu and limit:
        weights_bytes = plan(pool).weights_bytes_total
        size = (
            f" ({weights_bytes / 1e9:.1f} GB of weights pass through it while loading)"
            if weights_bytes
            else ""
        )
        fixes.append(
            f"the kernel killed it at the container's memory limit {limit}{size}: raise "
            "podTemplate.resources.limits.memory, or lower the GPU-side settings below"
        )
    fixes += remedies.memory_fixes(pool)
    return [Finding("OutOfMemory", "critical", title, tuple(lines), tuple(fixes))]


def crash_loop(pool: ModelPool, ev: Evidence) -> list[Finding]:
    pods = []
    for p in servers(ev.pods):
        cs = tgi_status(p)
        waiting = waiting_reason(cs)
        ended = terminations(cs)
        if any(_is_oom(t) for t in ended):
            continue  # out_of_memory's
        if (waiting and waiting[0] == "CrashLoopBackOff") or any(
            int(str(t.get("exitCode") or 0)) for t in ended
        ):
            pods.append(p)
    if not pods:
        return []
    lines = [
        _termination_line(p) if terminations(tgi_status(p)) else f"pod {pod_name(p)}: CrashLoopBackOff"
        for p in pods[:MAX_LINES]
    ]
    lines += _events(ev, "Pod", pods, ("BackOff", "Failed"))
    fixes = [
        f"`kubectl -n {pool.namespace} logs {pod_name(pods[0])} -c tgi --previous`: the launcher prints the "
        "failing shard's error",
        f"engine.image {pool.spec.engine.image} must support {pool.spec.model.id} "
        f"({pool.spec.engine.quantize or pool.spec.engine.dtype or 'default dtype'})",
    ]
    if pool.spec.engine.extra_args:
        fixes.append(
            f"engine.extraArgs {' '.join(pool.spec.engine.extra_args)}: a flag the launcher refuses exits 1"
        )
    return [
        Finding("CrashLoop", "critical", "TGI exits and the kubelet restarts it", tuple(lines), tuple(fixes))
    ]


def image_pull(pool: ModelPool, ev: Evidence) -> list[Finding]:
    """TGI's pods and the prefetch Job's (same image) alike: neither runs without it."""
    stuck = [
        (p, w)
        for p in live(ev.pods)
        for cs in all_statuses(p)
        if (w := waiting_reason(cs)) is not None and w[0] in PULL_REASONS
    ]
    if not stuck:
        return []
    lines = [f"pod {pod_name(p)}: {': '.join(filter(None, w))}" for p, w in stuck[:MAX_LINES]]
    fixes = (
        f"engine.image {pool.spec.engine.image} must exist in its registry (check the tag)",
        "a private registry needs spec.podTemplate.imagePullSecrets",
    )
    return [Finding("ImagePull", "critical", "the TGI image cannot be pulled", tuple(lines), fixes)]


def _scheduling_fixes(pool: ModelPool, ev: Evidence, message: str) -> list[str]:
    gpu, product, shards = pool.spec.gpu.resource, pool.spec.gpu.product, pool.spec.engine.num_shard
    nodes = gpu_nodes(ev.nodes or [], gpu, GPU_PRODUCT_LABEL)
    fixes: list[str] = []
    have = ", ".join(f"{k} ({len(v)} nodes, up to {max(v)} GPUs)" for k, v in sorted(nodes.items()))
    if "didn't match Pod's node affinity/selector" in message and product and product not in nodes:
        fixes.append(
            f"no node has {GPU_PRODUCT_LABEL}={product}"
            + (f"; the cluster has {have}: set spec.gpu.product to one of them" if have else "")
        )
    if f"Insufficient {gpu}" in message:
        counts = nodes.get(product, []) if product else [c for v in nodes.values() for c in v]
        most = max(counts) if counts else 0
        if counts and shards > most:
            fixes.append(
                f"engine.numShard {shards} asks for more {gpu} than any {product or 'GPU'} node has ({most})"
            )
        elif counts:
            fixes.append(
                f"the {product or 'GPU'} nodes' {sum(counts)} GPUs are taken: free some, add nodes, or "
                f"lower replicas.max ({pool.spec.replicas.ceiling})"
            )
        fewer = remedies.fewest_gpus(pool, min(most, shards - 1) if counts else shards - 1)
        if fewer:
            fixes.append(f"fewer GPUs per replica: {fewer}")
    if "untolerated taint" in message:
        fixes.append(
            "the GPU nodes carry a taint the pods do not tolerate: add it to spec.podTemplate.tolerations"
        )
    if "Insufficient cpu" in message or "Insufficient memory" in message:
        fixes.append("spec.podTemplate.resources requests more cpu/memory than the GPU nodes have free")
    if "PersistentVolumeClaim" in message:
        fixes.append(
            f"the cache PVC {names.cache_name(pool)} is not bound: check cache.storageClassName "
            f"({pool.spec.cache.storage_class_name or 'the default class'})"
        )
    return fixes or [f"the scheduler says: {message}"]


def pending(pool: ModelPool, ev: Evidence) -> list[Finding]:
    """Pods the scheduler cannot place now (TGI's and the prefetch Job's); else the pool's own word for it."""
    pods = sorted(live(ev.pods), key=lambda p: not is_server(p))  # TGI's pods first
    pods = [p for p in pods if unschedulable(p)]
    ready = ev.condition("Ready")
    if not pods and ready.get("reason") not in ("InsufficientGPU", "Unschedulable"):
        return []
    events = about(pool_events(ev.name, ev.pods, ev.events), "Pod", map(pod_name, pods))
    events = [e for e in events if e.get("reason") == "FailedScheduling"]
    message = unschedulable(pods[0]) if pods else str(ready.get("message", ""))
    lines = [f"pod {pod_name(p)} Pending: {unschedulable(p)}" for p in pods[:MAX_LINES]]
    lines += [event_line(e) for e in events[-MAX_LINES:]]
    if ready.get("reason") in ("InsufficientGPU", "Unschedulable"):
        lines.append(f"condition Ready False ({ready['reason']}): {ready.get('message', '')}")
    fixes = _scheduling_fixes(pool, ev, message or "")
    title = f"pods cannot be scheduled: {message}"
    return [Finding("Unschedulable", "critical", title, tuple(lines), tuple(fixes))]


def never_ready(pool: ModelPool, ev: Evidence) -> list[Finding]:
    stuck = []
    for p in servers(ev.pods):
        since = running_since(p)
        if since is not None and not is_ready(p) and (ev.now - since).total_seconds() > ev.not_ready_after:
            stuck.append((p, (ev.now - since).total_seconds()))
    if not stuck:
        return []
    lines = [
        f"pod {pod_name(p)}: Running for {secs:.0f} s, its TGI never Ready (/health does not answer 200)"
        for p, secs in stuck[:MAX_LINES]
    ]
    weights_bytes = plan(pool).weights_bytes_total
    if weights_bytes:
        lines.append(
            f"weights {weights_bytes / 1e9:.1f} GB: from a local NVMe cache loading takes about "
            f"{weights_bytes / LOAD_BYTES_PER_SECOND:.0f} s"
        )
    lines += _events(ev, "Pod", [p for p, _ in stuck], ("Unhealthy",))
    budget = DEFAULT_CONFIG.startup_probe_failures * 10
    fixes = (
        f"`kubectl -n {pool.namespace} logs {pod_name(stuck[0][0])} -c tgi`: TGI logs each shard's weight "
        "loading and the warm-up; it opens its port only after both",
        f"the startup probe restarts the container after {budget} s without /health",
        "weights load from the cache PVC: on network storage they load far slower than from local NVMe "
        f"(cache.storageClassName, now {pool.spec.cache.storage_class_name or 'the default class'})",
        f"a model the image cannot serve can hang at start: {pool.spec.model.id} on {pool.spec.engine.image}",
    )
    title = f"{len(stuck)} pod(s) run but never turn Ready (over {ev.not_ready_after:.0f} s)"
    return [Finding("NeverReady", "warning", title, tuple(lines), fixes)]


COVERED = {
    "InsufficientGPU",
    "Unschedulable",
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "FetchFailed",
    "WeightsDoNotFit",
    "SequenceDoesNotFit",
    "PrefillDoesNotFit",
    "AsExpected",
}


def degraded(pool: ModelPool, ev: Evidence) -> list[Finding]:
    c = ev.condition("Degraded")
    reason = str(c.get("reason", ""))
    if c.get("status") != "True" or reason in COVERED:
        return []
    if reason == "ProgressDeadlineExceeded":
        fixes = (f"`kubectl -n {pool.namespace} describe deployment {pool.name}`: the rollout's stuck pods",)
        return [
            Finding(
                "RolloutStuck", "warning", "the rollout passed its deadline", (str(c.get("message")),), fixes
            )
        ]
    fix = ("the message names the refused write; `kubectl get events` has the API server's answer",)
    return [Finding("Degraded", "critical", f"Degraded: {reason}", (str(c.get("message")),), fix)]


def not_production_ready(pool: ModelPool, ev: Evidence) -> list[Finding]:
    missing = [i for i in ev.status.get("checklist") or [] if not i.get("ok")]
    if not missing:
        return []
    lines = tuple(f"{i.get('item')}: {i.get('detail')}" for i in missing)
    fixes = (f"`tgipool check {pool.name} -n {pool.namespace}` lists the checklist",)
    title = f"not production-ready: {len(missing)} checklist item(s) missing"
    return [Finding("NotProductionReady", "info", title, lines, fixes)]


CHECKS: tuple[Check, ...] = (
    not_reconciled,
    capacity,
    weights,
    out_of_memory,
    crash_loop,
    image_pull,
    pending,
    never_ready,
    degraded,
    *performance.CHECKS,
    not_production_ready,
)


def diagnose(ev: Evidence) -> list[Finding]:
    """Every finding about the pool, most severe first."""
    try:
        pool = ModelPool.model_validate(ev.pool)
    except ValidationError as err:
        return [invalid(describe_validation_error(err))]
    found = [f for check in CHECKS for f in check(pool, ev)]
    return sorted(found, key=lambda f: SEVERITY_RANK[f.severity])
