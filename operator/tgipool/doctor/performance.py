"""PURE: findings from the live numbers (status.metrics, SLOMet) and the last cold start
(status.lastActivation): high p95, latency spikes, low throughput, errors, slow wakes.

The replicas a fix asks for are what the pool's HPA computes from the same numbers; the lengths and
sequences come from the planner (`remedies.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from tgipool.activation import parse_time
from tgipool.api.modelpool import ModelPool
from tgipool.doctor import remedies
from tgipool.doctor.evidence import Evidence, Finding, Severity
from tgipool.monitoring.rules import COLD_START_LIMIT_SECONDS
from tgipool.planner import plan

Check = Callable[[ModelPool, Evidence], list[Finding]]
SPIKE_RATIO = 3.0  # p99 at least this many times the median: a spike, not a slow pool
LOW_OCCUPANCY = 0.25  # running sequences per replica over what a replica may batch
MIN_SEQUENCE_TOKENS_PER_SECOND = 10.0  # below it one sequence generates slower than people read
ERROR_RATE = 0.05  # TGIPoolErrorRateHigh's threshold
LOCAL_NVME_BYTES_PER_SECOND = 2e9


def _metrics(ev: Evidence) -> Mapping[str, Any]:
    return ev.status.get("metrics") or {}


def _numbers(m: Mapping[str, Any], replicas: int) -> str:
    parts = [
        f"{label} {m[key]:g}{unit}"
        for key, label, unit in (
            ("p50LatencyMs", "p50", " ms"),
            ("p95LatencyMs", "p95", " ms"),
            ("p99LatencyMs", "p99", " ms"),
            ("queueDepth", "queue", ""),
            ("requestsPerSecond", "req/s", ""),
            ("tokensPerSecond", "tokens/s", ""),
        )
        if m.get(key) is not None
    ]
    at = f" at {m['observedAt']}" if m.get("observedAt") else ""
    return f"status.metrics{at}: " + ", ".join(parts) + f"; {replicas} replica(s)"


def _replicas(ev: Evidence) -> int:
    return int(ev.status.get("replicas") or 0)


def high_p95(pool: ModelPool, ev: Evidence) -> list[Finding]:
    m = _metrics(ev)
    p95, target = m.get("p95LatencyMs"), pool.slo_p95_ms
    slo = ev.condition("SLOMet")
    if p95 is None or (p95 <= target and slo.get("status") != "False"):
        return []
    replicas = _replicas(ev)
    wanted = remedies.hpa_replicas(
        replicas, p95, target, float(m.get("queueDepth") or 0), pool.spec.autoscaling.queue_per_replica
    )
    lines = [
        f"p95 {p95:g} ms over the objective {target} ms (SLOMet {slo.get('status', '?')})",
        _numbers(m, replicas),
    ]
    fixes = (
        remedies.tighten_fix(pool),
        remedies.split_fix(pool),
        remedies.replicas_fix(pool, replicas, wanted),
    )
    return [
        Finding(
            "HighP95", "warning", f"p95 {p95:g} ms is above the objective {target} ms", tuple(lines), fixes
        )
    ]


def latency_spikes(pool: ModelPool, ev: Evidence) -> list[Finding]:
    m = _metrics(ev)
    p50, p99 = m.get("p50LatencyMs"), m.get("p99LatencyMs")
    if not p50 or p99 is None or p99 < SPIKE_RATIO * p50 or p99 <= pool.slo_p95_ms:
        return []
    lines = (f"p99 {p99:g} ms is {p99 / p50:.1f}x the median {p50:g} ms", _numbers(m, _replicas(ev)))
    fixes = (
        "long requests in their own pool: " + remedies.split_fix(pool),
        "network or disk contention on the GPU nodes: weights on local NVMe (cache.storageClassName), "
        "no noisy neighbours (spec.podTemplate.affinity, a dedicated GPU node pool)",
        "a queue that builds in bursts: a lower autoscaling.queuePerReplica (now "
        f"{pool.spec.autoscaling.queue_per_replica}) scales out sooner",
    )
    return [
        Finding("LatencySpikes", "warning", "latency spikes: the tail is far above the median", lines, fixes)
    ]


def low_throughput(pool: ModelPool, ev: Evidence) -> list[Finding]:
    m = _metrics(ev)
    rps, tps, p50 = m.get("requestsPerSecond"), m.get("tokensPerSecond"), m.get("p50LatencyMs")
    if not rps or tps is None or not p50:
        return []
    replicas = max(1, _replicas(ev))
    running = rps * p50 / 1000  # Little's law, with the median standing in for the mean
    per_replica = running / replicas
    cap, bound = remedies.batch_capacity(pool)
    per_sequence = tps / running if running else 0.0
    queue = float(m.get("queueDepth") or 0) / replicas
    fixes: tuple[str, ...]
    lines = [
        _numbers(m, replicas),
        f"about {per_replica:.1f} sequences run per replica (req/s x p50) of the {cap} it may batch "
        f"({bound}); each generates about {per_sequence:.1f} tokens/s",
    ]
    # A slow decode step comes first: it slows every sequence, whatever the batch, and queued requests
    # are then a consequence of it rather than of the batching.
    if per_sequence < MIN_SEQUENCE_TOKENS_PER_SECOND:
        p = plan(pool)
        title = f"low TPS: each sequence generates {per_sequence:.1f} tokens/s"
        fixes = (
            "a slow decode step: quantization with fast kernels (engine.quantize fp8, or awq/marlin) "
            "reads fewer weight bytes per token",
            f"engine.numShard {p.num_shard * 2} splits each step over more GPUs"
            + remedies.price_text(p, p.num_shard * 2),
            "contention on the GPU: GPU clocks, other processes, the node's PCIe/NVLink topology",
            f"bigger batches or concurrency raise the TPS: up to {cap} sequences per replica ({bound})",
        )
    elif queue >= 1 and per_replica < LOW_OCCUPANCY * cap:
        title = f"low TPS: {queue:.1f} requests wait per replica while batches stay small"
        prefill = pool.limits.max_batch_prefill_tokens
        fixes = (
            "bigger batches: waiting requests join the batch in prefill chunks of "
            f"limits.maxBatchPrefillTokens {prefill}; raise it (up to {cap} sequences fit, bound: {bound}), "
            "and drop a --max-batch-size",
            "CPU-bound tokenization: TGI's router tokenizes and validates on the CPU; give the pod CPUs "
            "(spec.podTemplate.resources.requests.cpu)",
            "shorter prefixes: a long shared system prompt costs a prefill on every request",
        )
    else:
        return []
    return [Finding("LowThroughput", "warning", title, tuple(lines), fixes)]


def errors(pool: ModelPool, ev: Evidence) -> list[Finding]:
    rate = _metrics(ev).get("errorRate")
    if rate is None or rate <= ERROR_RATE:
        return []
    lines = (f"errorRate {rate:.1%} of requests fail (tgi_request_failure / tgi_request_count)",)
    fixes = (
        f"requests over the limits (maxInputTokens {pool.limits.max_input_tokens}, maxTotalTokens "
        f"{pool.limits.max_total_tokens}) fail with 422: the gateway routes them to a pool that fits",
        f"overload: 429 past limits.maxConcurrentRequests {pool.limits.max_concurrent_requests}",
    )
    return [Finding("HighErrorRate", "warning", f"{rate:.1%} of requests fail", lines, fixes)]


def metrics_unavailable(pool: ModelPool, ev: Evidence) -> list[Finding]:
    slo = ev.condition("SLOMet")
    if slo.get("reason") != "MetricsUnavailable":
        return []
    fix = (
        "tgipool run --prometheus-url URL (chart: metrics.prometheusUrl), a Prometheus that scrapes the pods",
    )
    return [
        Finding(
            "MetricsUnavailable",
            "info",
            "no live metrics: p95, TPS and cost are not judged",
            (str(slo.get("message")),),
            fix,
        )
    ]


def cold_start(pool: ModelPool, ev: Evidence) -> list[Finding]:
    act, la = pool.activation, ev.status.get("lastActivation") or {}
    if act is None or not la.get("requestedAt"):
        return []
    hold = act.hold_seconds
    seconds = la.get("seconds")
    severity: Severity
    if seconds is None:
        started = parse_time(la.get("requestedAt"))
        waited = (ev.now - started).total_seconds() if started else 0.0
        if waited <= hold:
            return []
        seconds, title = (
            waited,
            f"a wake has run {waited:.0f} s, past holdSeconds {hold}: held requests got 503",
        )
        severity = "critical"
    elif seconds > min(COLD_START_LIMIT_SECONDS, hold / 2):
        title, severity = f"cold start took {seconds:g} s (holdSeconds {hold})", "warning"
    else:
        return []
    phases = ", ".join(
        f"{k.removesuffix('Seconds')} {la[k]:g} s"
        for k in ("weightsSeconds", "schedulingSeconds", "loadingSeconds")
        if la.get(k) is not None
    )
    lines = [
        f"status.lastActivation: requested {la.get('requestedAt')}, {seconds:g} s"
        + (f" ({phases})" if phases else "")
    ]
    fixes = _cold_fixes(pool, la, seconds)
    return [Finding("SlowColdStart", severity, title, tuple(lines), tuple(fixes))]


def _cold_fixes(pool: ModelPool, la: Mapping[str, Any], seconds: float) -> list[str]:
    p = plan(pool)
    gpus = pool.spec.engine.num_shard
    price = pool.spec.gpu.hourly_price
    cost = f": ${price * gpus * 24:.2f}/day per replica" if price is not None else ""
    fixes = [f"keep it hot: tier hot with replicas.min 1 never cold-starts{cost}"]
    if la.get("weightsSeconds"):
        fixes.append(
            "tier warm keeps the weights on the cache PVC: saves the "
            f"{la['weightsSeconds']:g} s fetch on every wake"
        )
    load = la.get("loadingSeconds")
    if load and p.weights_bytes_total:
        rate = p.weights_bytes_total / load
        if rate < 0.75 * LOCAL_NVME_BYTES_PER_SECOND:
            fixes.append(
                f"local NVMe for the weight cache: {p.weights_bytes_total / 1e9:.1f} GB loaded at "
                f"{rate / 1e9:.2f} GB/s in {load:g} s; at ~2 GB/s it takes "
                f"{p.weights_bytes_total / LOCAL_NVME_BYTES_PER_SECOND:.0f} s (cache.storageClassName)"
            )
    if la.get("schedulingSeconds") and la["schedulingSeconds"] > 60:
        fixes.append(
            f"{la['schedulingSeconds']:g} s to a node: no free {pool.spec.gpu.product or 'GPU'} was at hand; "
            "keep spare GPU capacity for waking pools"
        )
    hold = pool.activation.hold_seconds if pool.activation else 0
    if seconds > hold:
        fixes.append(
            f"activation.holdSeconds {math.ceil(seconds * 1.5)} (from {hold}): requests held longer got 503"
        )
    return fixes


CHECKS: tuple[Check, ...] = (
    high_p95,
    latency_spikes,
    low_throughput,
    errors,
    metrics_unavailable,
    cold_start,
)
