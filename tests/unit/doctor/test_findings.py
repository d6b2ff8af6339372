"""`tgipool doctor`'s findings from evidence: one test per finding, its evidence and its fixes in the pool's
numbers (the planner's, the HPA's), and the pods the simulated cluster's faults produce."""

from __future__ import annotations

import copy
import datetime
from typing import Any

from tgipool.api.modelpool import ModelPool
from tgipool.doctor.evidence import Evidence, Finding
from tgipool.doctor.findings import diagnose
from tgipool.emulator import faults
from tgipool.planner import assess

from ..conftest import load_example

NOW = datetime.datetime(2026, 11, 29, 12, 0, 0, tzinfo=datetime.UTC)
POOL = "llama3-8b-ru-short"


def stamp(seconds_ago: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def cond(ctype: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": message}


def pool_doc(**spec: Any) -> dict[str, Any]:
    """The short example pool, Ready and healthy, with `spec` merged in."""
    doc = load_example(POOL)
    doc["metadata"].update(namespace="ml", generation=1)
    for k, v in spec.items():
        doc["spec"][k] = {**doc["spec"].get(k, {}), **v} if isinstance(v, dict) else v
    doc["status"] = {
        "observedGeneration": 1,
        "phase": "Ready",
        "replicas": 2,
        "conditions": [
            cond("Ready", "True", "ReplicasReady"),
            cond("Degraded", "False", "AsExpected"),
            cond("CapacityFeasible", "True", "Fits"),
            cond("SLOMet", "True", "WithinObjective"),
        ],
        "checklist": [{"item": "SLO set", "ok": True, "detail": "spec.slo.p95LatencyMs 3000 ms"}],
    }
    return doc


def pod(name: str = "p-0", started_ago: float = 120, ready: bool = True, **status: Any) -> dict[str, Any]:
    """A pool pod, Running since `started_ago` seconds."""
    out = {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": f"uid-{name}",
            "labels": {"tgipool.io/pool": POOL},
        },
        "spec": {"containers": [{"name": "tgi", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        "status": {
            "phase": "Running",
            "startTime": stamp(started_ago),
            "conditions": [
                cond("Ready", "True" if ready else "False", "" if ready else "ContainersNotReady")
            ],
            "containerStatuses": [
                {
                    "name": "tgi",
                    "ready": ready,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": stamp(started_ago)}},
                }
            ],
        },
    }
    out["status"].update(status)
    return out


def event(reason: str, kind: str, name: str, message: str) -> dict[str, Any]:
    return {
        "reason": reason,
        "type": "Warning",
        "involvedObject": {"kind": kind, "name": name},
        "message": message,
    }


def find(doc: dict[str, Any], pods: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Finding]:
    found = diagnose(Evidence(doc, pods or [], now=NOW, **kw))
    return {f.code: f for f in found}


def text(f: Finding) -> str:
    return "\n".join((f.title, *f.evidence, *f.fixes))


def test_a_healthy_pool_has_no_finding() -> None:
    assert find(pool_doc(), [pod()]) == {}


def test_oom_at_warm_up_as_the_sim_reports_it() -> None:
    """The pod `tgipool sim` writes for fault `oom` (OOMKilled, CrashLoopBackOff) is an OutOfMemory finding
    whose fixes are the planner's numbers for this pool (Llama-3-8B bf16 on an H100 80GB)."""
    crashing = pod(ready=False)
    crashing["status"].update(faults.crash_patch(crashing, NOW)["status"])  # type: ignore[index]
    doc = pool_doc()
    backoff = event("BackOff", "Pod", "p-0", "Back-off restarting failed container tgi")
    f = find(doc, [crashing], events=[backoff])["OutOfMemory"]
    assert f.severity == "critical" and f.title == "TGI is OOMKilled at start (warm-up)"
    assert f.evidence[0].startswith("pod p-0: container tgi OOMKilled (exit 137)")
    assert "restarts 4, now CrashLoopBackOff" in f.evidence[0]
    assert "event BackOff on Pod/p-0" in f.evidence[1]
    fixes = "\n".join(f.fixes)
    assert "limits.maxBatchPrefillTokens 2048 (from 4096)" in fixes
    assert "engine.quantize fp8 and remove engine.dtype" in fixes and "weights 7.5 GiB" in fixes
    assert "engine.quantize awq" in fixes
    assert "engine.numShard 2 (from 1): weights 7.5 GiB and KV cache 63.5 GiB per GPU, 253 sequences" in fixes
    assert "($4.98/h per replica)" in fixes
    assert "engine.kvCacheDtype fp8_e5m2: KV bytes per token 131072 -> 65536" in fixes


def test_gpu_oom_message_and_host_memory_limit() -> None:
    crashing = pod(ready=False)
    tgi = crashing["status"]["containerStatuses"][0]
    tgi["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    tgi["lastState"] = {
        "terminated": {
            "reason": "Error",
            "exitCode": 1,
            "message": 'Error: Warmup(Generation("Not enough memory to handle 4096 prefill tokens. '
            'You need to decrease `--max-batch-prefill-tokens`"))',
        }
    }
    f = find(pool_doc(), [crashing])["OutOfMemory"]
    assert f.title == "TGI runs out of GPU memory at warm-up" and "Not enough memory" in f.evidence[0]
    assert "CrashLoop" not in find(pool_doc(), [crashing])  # one finding, not two
    killed = pod(ready=False)
    killed["spec"]["containers"][0]["resources"]["limits"]["memory"] = "32Gi"
    killed["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"reason": "OOMKilled", "exitCode": 137}
    }
    f = find(pool_doc(), [killed])["OutOfMemory"]
    assert f.fixes[0].startswith(
        "the kernel killed it at the container's memory limit 32Gi (16.0 GB of weights"
    )


def test_crash_loop_and_image_pull() -> None:
    crashing = pod(ready=False)
    tgi = crashing["status"]["containerStatuses"][0]
    tgi.update(restartCount=3, state={"waiting": {"reason": "CrashLoopBackOff"}})
    tgi["lastState"] = {"terminated": {"reason": "Error", "exitCode": 1, "message": "unknown architecture"}}
    f = find(pool_doc(engine={"extraArgs": ["--foo=1"]}), [crashing])["CrashLoop"]
    assert (
        "pod p-0: container tgi Error (exit 1)" in f.evidence[0] and "unknown architecture" in f.evidence[0]
    )
    assert "logs p-0 -c tgi --previous" in f.fixes[0] and "engine.extraArgs --foo=1" in f.fixes[2]
    pulling = pod(ready=False)
    pulling["status"]["containerStatuses"][0]["state"] = {
        "waiting": {"reason": "ImagePullBackOff", "message": "nf"}
    }
    f = find(pool_doc(), [pulling])["ImagePull"]
    assert (
        f.evidence == ("pod p-0: ImagePullBackOff: nf",) and "text-generation-inference:3.3.6" in f.fixes[0]
    )


NODES = [
    {
        "metadata": {"name": f"gpu-{i}", "labels": {"nvidia.com/gpu.product": product}},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }
    for i, (product, gpus) in enumerate([("NVIDIA-H100-80GB-HBM3", 8)] * 4 + [("NVIDIA-L4", 2)])
] + [{"metadata": {"name": "cpu-0"}, "status": {"allocatable": {"cpu": "8"}}}]


def pending_pod(message: str) -> dict[str, Any]:
    p = pod(ready=False)
    p["status"] = {
        "phase": "Pending",
        "conditions": [cond("PodScheduled", "False", "Unschedulable", message)],
    }
    return p


def test_pending_with_too_many_gpus_per_replica() -> None:
    """70B in bf16 over 8 shards on the L4 nodes (2 GPUs each, 24 GB): the planner's fewest GPUs that fit."""
    arch = {"numLayers": 80, "numKeyValueHeads": 8, "headDim": 128, "parametersB": 70.0}
    doc = pool_doc(
        model={"architecture": arch},
        engine={"numShard": 8},
        gpu={"product": "NVIDIA-L4", "memoryGiB": 24, "hourlyPrice": 0.8},
    )
    msg = (
        "0/6 nodes are available: 1 Insufficient nvidia.com/gpu, "
        "5 node(s) didn't match Pod's node affinity/selector."
    )
    scheduling = event("FailedScheduling", "Pod", "p-0", msg)
    f = find(doc, [pending_pod(msg)], events=[scheduling], nodes=NODES)["Unschedulable"]
    assert f.severity == "critical" and f.title == f"pods cannot be scheduled: {msg}"
    assert f.evidence[0] == f"pod p-0 Pending: {msg}" and "event FailedScheduling on Pod/p-0" in f.evidence[1]
    assert f.fixes[0] == "engine.numShard 8 asks for more nvidia.com/gpu than any NVIDIA-L4 node has (2)"
    # The planner's fewest GPUs per replica on those nodes: 4-bit weights over both L4s of a node.
    assert f.fixes[1] == (
        "fewer GPUs per replica: engine.numShard 2 with engine.quantize awq: weights 16.9 GiB and KV cache "
        "4.6 GiB per GPU, 7 sequences of 4096 tokens ($1.60/h per replica)"
    )


def test_pending_on_a_gpu_product_no_node_has_and_on_busy_gpus() -> None:
    doc = pool_doc(gpu={"product": "NVIDIA-B200"})
    msg = "0/6 nodes are available: 6 node(s) didn't match Pod's node affinity/selector."
    f = find(doc, [pending_pod(msg)], nodes=NODES)["Unschedulable"]
    assert f.fixes[0].startswith(
        "no node has nvidia.com/gpu.product=NVIDIA-B200; the cluster has NVIDIA-H100-80GB"
    )
    assert "NVIDIA-L4 (1 nodes, up to 2 GPUs): set spec.gpu.product to one of them" in f.fixes[0]
    # No Pending pod in the list (yet, or any more) but the pool says so: the finding from its condition.
    busy = "0/6 nodes are available: 4 Insufficient nvidia.com/gpu."
    doc = pool_doc(engine={"numShard": 2})
    doc["status"]["conditions"][0] = cond("Ready", "False", "InsufficientGPU", busy)
    f = find(doc, [], nodes=NODES)["Unschedulable"]
    assert f.evidence == (f"condition Ready False (InsufficientGPU): {busy}",)
    assert f.fixes[0].startswith("the NVIDIA-H100-80GB-HBM3 nodes' 32 GPUs are taken")
    assert f.fixes[1].startswith("fewer GPUs per replica: engine.numShard 1:")


def test_a_prefetch_pod_pending_on_its_cache_and_past_events_are_not_findings() -> None:
    unbound = "0/6 nodes are available: pod has unbound immediate PersistentVolumeClaims."
    fetch = pending_pod(unbound)
    fetch["metadata"].update(name=f"{POOL}-fetch-1a2b3c4d-x")
    fetch["metadata"]["labels"]["app.kubernetes.io/component"] = "weights-fetch"
    f = find(pool_doc(), [fetch], nodes=NODES)["Unschedulable"]
    assert f.fixes == (
        f"the cache PVC {POOL}-cache is not bound: check cache.storageClassName (the default class)",
    )
    # The same pod scheduled since: its old FailedScheduling event is history, not a finding.
    old = event("FailedScheduling", "Pod", f"{POOL}-fetch-1a2b3c4d-x", unbound)
    assert find(pool_doc(), [pod()], events=[old], nodes=NODES) == {}
    # A fetch pod's image cannot be pulled: the pool never gets its weights.
    fetch = pod(name=f"{POOL}-fetch-1a2b3c4d-y", ready=False)
    fetch["status"]["containerStatuses"] = [
        {"name": "model", "state": {"waiting": {"reason": "ErrImagePull"}}}
    ]
    assert find(pool_doc(), [fetch])["ImagePull"].evidence == (f"pod {POOL}-fetch-1a2b3c4d-y: ErrImagePull",)


def test_never_ready_after_the_threshold_only() -> None:
    stuck = pod(started_ago=700, ready=False)
    unhealthy = event("Unhealthy", "Pod", "p-0", "Readiness probe failed: connection refused")
    f = find(pool_doc(), [stuck], events=[unhealthy])["NeverReady"]
    assert f.evidence[0].startswith("pod p-0: Running for 700 s, its TGI never Ready")
    assert f.evidence[1] == "weights 16.0 GB: from a local NVMe cache loading takes about 8 s"
    assert "Readiness probe failed" in f.evidence[2]
    assert "the startup probe restarts the container after 1800 s" in "\n".join(f.fixes)
    assert "NeverReady" not in find(pool_doc(), [pod(started_ago=100, ready=False)])
    assert "NeverReady" in find(pool_doc(), [pod(started_ago=100, ready=False)], not_ready_after=30)


def test_capacity_refused_and_unchecked() -> None:
    arch = {"numLayers": 80, "numKeyValueHeads": 8, "headDim": 128, "parametersB": 70.0}
    doc = pool_doc(model={"architecture": arch})
    verdict = assess(ModelPool.model_validate(doc))
    doc["status"]["conditions"][2] = cond("CapacityFeasible", "False", verdict.reason, verdict.message)
    f = find(doc)["CapacityInfeasible"]
    assert f.title == "the planner refuses the pool (WeightsDoNotFit): no GPU is asked for"
    fixes = "\n".join(f.fixes)
    assert "engine.quantize awq" in fixes and "engine.numShard 2 (from 1)" in fixes and "fp8" in fixes
    doc["status"]["conditions"][2] = cond(
        "CapacityFeasible", "Unknown", "ArchitectureUnknown", "lacks headDim"
    )
    f = find(doc)["CapacityUnchecked"]
    assert f.severity == "info" and "spec.model.architecture" in f.fixes[0]


def test_fetch_failed_rollout_stuck_and_other_degraded() -> None:
    doc = pool_doc()
    doc["status"]["conditions"].append(cond("WeightsCached", "False", "FetchFailed", "401 gated repo"))
    f = find(doc)["FetchFailed"]
    assert f.evidence == ("401 gated repo",) and "hfTokenSecretRef" in f.fixes[1]
    doc = pool_doc()
    doc["status"]["conditions"][1] = cond("Degraded", "True", "ProgressDeadlineExceeded", "RS timed out")
    assert find(doc)["RolloutStuck"].evidence == ("RS timed out",)
    doc["status"]["conditions"][1] = cond("Degraded", "True", "Forbidden", "cannot patch hpa")
    f = find(doc)["Degraded"]
    assert (f.severity, f.title) == ("critical", "Degraded: Forbidden")


def metrics_doc(**metrics: Any) -> dict[str, Any]:
    doc = pool_doc()
    doc["status"]["metrics"] = {"observedAt": "2026-11-29T11:59:50Z", **metrics}
    if metrics.get("p95LatencyMs", 0) > 3000:
        doc["status"]["conditions"][3] = cond("SLOMet", "False", "AboveObjective")
    return doc


def test_high_p95_with_the_hpas_replicas() -> None:
    doc = metrics_doc(
        p50LatencyMs=2000, p95LatencyMs=4500, p99LatencyMs=5000, queueDepth=10, requestsPerSecond=3
    )
    f = find(doc)["HighP95"]
    assert f.title == "p95 4500 ms is above the objective 3000 ms"
    assert f.evidence[0] == "p95 4500 ms over the objective 3000 ms (SLOMet False)"
    assert f.fixes[0].startswith(
        "tighten limits.maxInputTokens 1024 / maxTotalTokens 2048 (from 2048 / 4096): "
        "227 sequences fit instead of 113"
    )
    assert f.fixes[1].startswith(
        "split short and long: a short pool (maxInputTokens 1024, maxTotalTokens 2048)"
    )
    # ceil(2 replicas x 4500 / 3000) = 3, within replicas.max 4
    assert f.fixes[2].startswith("more replicas: the HPA's rules ask for 3 (now 2, max 4)")
    doc = metrics_doc(p50LatencyMs=2000, p95LatencyMs=9000, p99LatencyMs=9500)
    assert find(doc)["HighP95"].fixes[2] == (
        "replicas.max 6 (from 4): the HPA wants 6 replicas but stops at 4, +$4.98/h"
    )


def test_latency_spikes() -> None:
    f = find(metrics_doc(p50LatencyMs=400, p95LatencyMs=1200, p99LatencyMs=4000))["LatencySpikes"]
    assert f.evidence[0] == "p99 4000 ms is 10.0x the median 400 ms"
    assert f.fixes[0].startswith("long requests in their own pool: split short and long")
    assert "HighP95" not in find(metrics_doc(p50LatencyMs=400, p95LatencyMs=1200, p99LatencyMs=4000))
    assert find(metrics_doc(p50LatencyMs=400, p95LatencyMs=1200, p99LatencyMs=2000)) == {}


def test_low_throughput_small_batches_and_a_slow_model() -> None:
    # 2 req/s x 1 s = 2 sequences over 2 replicas while 8 wait on each.
    doc = metrics_doc(
        p50LatencyMs=1000, p95LatencyMs=1500, requestsPerSecond=2, tokensPerSecond=400, queueDepth=16
    )
    f = find(doc)["LowThroughput"]
    assert f.title == "low TPS: 8.0 requests wait per replica while batches stay small"
    assert "about 1.0 sequences run per replica (req/s x p50) of the 113 it may batch" in f.evidence[1]
    assert "limits.maxBatchPrefillTokens 4096" in f.fixes[0] and "CPU-bound tokenization" in f.fixes[1]
    # A slow model: 4 sequences in flight generate 20 tokens/s in all.
    doc = metrics_doc(
        p50LatencyMs=2000, p95LatencyMs=2500, requestsPerSecond=2, tokensPerSecond=20, queueDepth=0
    )
    f = find(doc)["LowThroughput"]
    assert f.title == "low TPS: each sequence generates 5.0 tokens/s"
    assert "engine.numShard 2 splits each step over more GPUs ($4.98/h per replica)" in f.fixes
    # Slow and queued: the slow decode step is named, since it holds every sequence back.
    doc = metrics_doc(
        p50LatencyMs=2000, p95LatencyMs=2500, requestsPerSecond=2, tokensPerSecond=20, queueDepth=4
    )
    assert find(doc)["LowThroughput"].title == "low TPS: each sequence generates 5.0 tokens/s"
    doc = metrics_doc(
        p50LatencyMs=2000, p95LatencyMs=2500, requestsPerSecond=2, tokensPerSecond=200, queueDepth=0
    )
    assert "LowThroughput" not in find(doc)


def test_error_rate_and_metrics_unavailable() -> None:
    f = find(metrics_doc(errorRate=0.12))["HighErrorRate"]
    assert f.title == "12.0% of requests fail"
    doc = pool_doc()
    doc["status"]["conditions"][3] = cond("SLOMet", "Unknown", "MetricsUnavailable", "cannot read Prometheus")
    assert find(doc)["MetricsUnavailable"].severity == "info"


def warm(la: dict[str, Any]) -> dict[str, Any]:
    doc = pool_doc(tier="warm", replicas={"min": 0, "max": 4}, gpu={"hourlyPrice": 2.49})
    doc["status"]["lastActivation"] = la
    return doc


def test_slow_cold_start_and_a_wake_past_its_hold() -> None:
    la = {
        "requestedAt": stamp(900),
        "readyAt": stamp(500),
        "seconds": 400.0,
        "schedulingSeconds": 90.0,
        "loadingSeconds": 300.0,
    }
    f = find(warm(la))["SlowColdStart"]
    assert (f.severity, f.title) == ("warning", "cold start took 400 s (holdSeconds 600)")
    assert f.evidence[0] == (
        f"status.lastActivation: requested {stamp(900)}, 400 s (scheduling 90 s, loading 300 s)"
    )
    fixes = "\n".join(f.fixes)
    assert "keep it hot: tier hot with replicas.min 1 never cold-starts: $59.76/day per replica" in fixes
    assert (
        "local NVMe for the weight cache: 16.0 GB loaded at 0.05 GB/s in 300 s; at ~2 GB/s it takes 8 s"
        in fixes
    )
    assert "90 s to a node" in fixes
    assert "SlowColdStart" not in find(
        warm({**la, "seconds": 20.0, "loadingSeconds": 8.0, "schedulingSeconds": 1})
    )
    waking = find(warm({"requestedAt": stamp(700)}))["SlowColdStart"]
    assert waking.severity == "critical" and "past holdSeconds 600: held requests got 503" in waking.title
    assert "activation.holdSeconds 1050 (from 600)" in "\n".join(waking.fixes)


def test_status_missing_stale_not_production_ready_and_invalid() -> None:
    doc = pool_doc()
    doc.pop("status")
    assert find(doc)["NotReconciled"].severity == "warning"
    doc = pool_doc()
    doc["metadata"]["generation"] = 2
    assert find(doc)["StaleStatus"].evidence == ("metadata.generation 2, status.observedGeneration 1",)
    doc = pool_doc()
    doc["metadata"].update(
        generation=2, deletionTimestamp="2026-11-29T11:00:00Z", finalizers=["tgipool.io/finalizer"]
    )
    f = find(doc)["Deleting"]
    assert "StaleStatus" not in find(doc) and "finalizers ['tgipool.io/finalizer']" in f.evidence[0]
    doc = pool_doc()
    doc["status"]["checklist"] = [{"item": "SLO set", "ok": False, "detail": "unset"}]
    f = find(doc)["NotProductionReady"]
    assert f.evidence == ("SLO set: unset",) and f.fixes == (
        f"`tgipool check {POOL} -n ml` lists the checklist",
    )
    bad = copy.deepcopy(pool_doc())
    bad["spec"]["replicas"] = {"min": 5, "max": 2}
    f = find(bad)["InvalidSpec"]
    assert f.severity == "critical" and "replicas" in f.evidence[0]


def test_most_severe_first() -> None:
    doc = metrics_doc(p50LatencyMs=400, p95LatencyMs=4000, p99LatencyMs=4100, errorRate=0.2)
    doc["status"]["checklist"] = [{"item": "SLO set", "ok": False, "detail": "unset"}]
    stuck = pod(started_ago=900, ready=False)
    codes = [
        f.code for f in diagnose(Evidence(doc, [pending_pod("0/6 nodes are available"), stuck], now=NOW))
    ]
    assert codes == [
        "Unschedulable",
        "NeverReady",
        "HighP95",
        "LatencySpikes",
        "HighErrorRate",
        "NotProductionReady",
    ]
