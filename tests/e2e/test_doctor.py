"""`tgipool doctor` and `tgipool check` against faults reproduced on the simulated cluster: TGI OOMKilled at
warm-up (the sim's crash loop), pods the scheduler cannot place, a pod that never gets ready, a slow model
above its objective; and ProductionReady turning True once a gateway routes the pool and traffic measures it.

The faults come from the pods' annotation `sim.tgipool.io/fault`, which the pool's
`spec.podTemplate.annotations` puts there and the cluster's `tgipool sim` reads (emulator/faults.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from .cluster import ROOT, Operator, apply, condition, get, items, wait_for
from .conftest import apply_pool, pool_doc
from .test_metrics import Load

pytestmark = pytest.mark.skipif(
    not (ROOT / ".cluster/sim.pid").exists(),
    reason="needs the local cluster's `tgipool sim` (make cluster-up starts it)",
)

POD_SELECTOR = "app.kubernetes.io/component=inference-server,tgipool.io/pool="
ARCH = {"numLayers": 32, "numKeyValueHeads": 8, "headDim": 128, "parametersB": 8.0}
COMMIT = "5f0b02c75b57c5855da9ae460ce51323ea669d8a"
H100 = {"product": "NVIDIA-H100-80GB-HBM3", "memoryGiB": 80, "hourlyPrice": 2.49}


def model(**extra: Any) -> dict[str, Any]:
    return {"id": "meta-llama/Meta-Llama-3-8B-Instruct", "revision": COMMIT, "architecture": ARCH, **extra}


def fault(kind: str) -> dict[str, Any]:
    return {"annotations": {"sim.tgipool.io/fault": kind}}


def tgipool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tgipool.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def doctor(pool: str, ns: str, *extra: str) -> dict[str, dict[str, Any]]:
    """The pool's findings by code (doctor --json)."""
    proc = tgipool("doctor", pool, "-n", ns, "--json", *extra)
    assert proc.returncode in (0, 1), proc.stderr
    (report,) = json.loads(proc.stdout)
    return {f["code"]: f for f in report["findings"]}


def finding(pool: str, ns: str, code: str, *extra: str, has: str = "") -> dict[str, Any]:
    """The first finding `code` whose text has `has` (doctor runs until it says so)."""

    def found() -> dict[str, Any] | None:
        f = doctor(pool, ns, *extra).get(code)
        return f if f and has in json.dumps(f) else None

    out: dict[str, Any] = wait_for(f"doctor finds {code} on {pool}", found, timeout=60, interval=1)
    return out


def test_oom_at_warm_up(operator: Operator, ns: str) -> None:
    apply_pool("oom", ns, model=model(), gpu=H100, replicas={"min": 1, "max": 1}, podTemplate=fault("oom"))
    f = finding("oom", ns, "OutOfMemory")
    assert f["severity"] == "critical" and f["title"] == "TGI is OOMKilled at start (warm-up)"
    assert "container tgi OOMKilled (exit 137)" in f["evidence"][0] and "CrashLoopBackOff" in f["evidence"][0]
    fixes = "\n".join(f["fixes"])
    # The planner's numbers for an 8B bf16 model on one H100 80GB, short profile.
    assert "limits.maxBatchPrefillTokens 2048 (from 4096)" in fixes
    assert (
        "engine.quantize fp8 and remove engine.dtype (a checkpoint quantized for it): weights 7.5 GiB"
        in fixes
    )
    assert "engine.numShard 2 (from 1): weights 7.5 GiB and KV cache 63.5 GiB per GPU, 253 sequences" in fixes
    # The operator saw the crash loop too.
    pool = wait_for(
        "Degraded CrashLoopBackOff",
        lambda: (
            (p := get("modelpool", "oom", ns))
            and condition(p, "Degraded").get("reason") == "CrashLoopBackOff"
            and p
        ),
        timeout=30,
    )
    assert pool["status"]["phase"] == "Degraded"
    text = tgipool("doctor", "oom", "-n", ns)
    assert text.returncode == 1 and "✗ CRITICAL OutOfMemory" in text.stdout


def test_pending_unschedulable(operator: Operator, ns: str) -> None:
    """4 shards on the cluster's only L4 node (2 GPUs): the scheduler's reason, and the planner's fix."""
    l4 = {"product": "NVIDIA-L4", "memoryGiB": 24, "hourlyPrice": 0.8}
    apply_pool("wide", ns, model=model(), engine={"numShard": 4}, gpu=l4, replicas={"min": 1, "max": 1})
    # The scheduler's reason for the GPU pod, once it has tried it: before that the doctor may report the
    # prefetch Job's pod (also `wide-…`), briefly Pending on its unbound cache PVC.
    f = finding("wide", ns, "Unschedulable", has="Insufficient nvidia.com/gpu")
    assert "Insufficient nvidia.com/gpu" in f["title"], f
    assert any(e.startswith("pod wide-") and "Pending" in e for e in f["evidence"])
    assert any("event FailedScheduling on Pod/wide-" in e for e in f["evidence"])
    assert f["fixes"][0] == "engine.numShard 4 asks for more nvidia.com/gpu than any NVIDIA-L4 node has (2)"
    assert f["fixes"][1].startswith("fewer GPUs per replica: engine.numShard 1: weights 14.9 GiB")
    assert "($0.80/h per replica)" in f["fixes"][1]


def test_never_ready(operator: Operator, ns: str) -> None:
    apply_pool(
        "stuck", ns, model=model(), gpu=H100, replicas={"min": 1, "max": 1}, podTemplate=fault("never-ready")
    )
    running = wait_for(
        "a Running pod",
        lambda: [
            p for p in items("pods", ns, POD_SELECTOR + "stuck") if p["status"].get("phase") == "Running"
        ],
        timeout=60,
    )
    assert not doctor("stuck", ns).get("NeverReady")  # the default allows 600 s of loading
    f = finding("stuck", ns, "NeverReady", "--not-ready-after", "12")
    assert f["evidence"][0].startswith(f"pod {running[0]['metadata']['name']}: Running for ")
    assert "weights 16.0 GB: from a local NVMe cache loading takes about 8 s" in f["evidence"]
    # Past its 8 s of loading and still not Ready: nothing answers on the pod's port.
    assert condition(get("modelpool", "stuck", ns), "Ready").get("status") == "False"


def test_slow_model_high_p95_and_production_ready(operator: Operator, ns: str) -> None:
    """A slow model (10x) above its 1500 ms objective: doctor's HighP95 and LowThroughput with the HPA's
    replicas. The pool is otherwise production-ready: ProductionReady turns True once a gateway routes it
    (with its fallback) and a load has measured its rates and cost."""
    labels = {"tgipool.io/gateway": "main"}
    apply(spare_pool(ns, labels))
    doc = pool_doc(
        "slow",
        ns,
        model=model(),
        gpu=H100,
        replicas={"min": 1, "max": 2},
        limits={"maxInputTokens": 2048, "maxTotalTokens": 4096},
        slo={"p95LatencyMs": 1500},
        routing={"fallbackPool": "spare"},
        podTemplate=fault("slow"),
    )
    doc["metadata"]["labels"] = labels
    apply(doc)
    wait_for(
        "pool Ready",
        lambda: condition(get("modelpool", "slow", ns), "Ready").get("status") == "True",
        timeout=90,
    )

    check = tgipool("check", "slow", "-n", ns)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "ProductionReady False" in check.stdout and "  [ ] in a gateway: no ModelGateway" in check.stdout
    assert "  [x] alerts installed: Prometheus has the rule group tgipool.alerts loaded" in check.stdout
    assert "  [x] revision pinned" in check.stdout and "  [x] SLO set" in check.stdout

    apply(
        {
            "apiVersion": "tgipool.io/v1alpha1",
            "kind": "ModelGateway",
            "metadata": {"name": "main", "namespace": ns},
            "spec": {"poolSelector": {"matchLabels": labels}},
        }
    )

    def routed() -> bool:
        cl = (get("modelpool", "slow", ns) or {}).get("status", {}).get("checklist") or []
        return any(i["item"] == "in a gateway" and i["ok"] for i in cl)

    wait_for("the checklist sees the gateway", routed, timeout=30)

    with Load("slow", ns, clients=4, max_new_tokens=20) as load:
        wait_for(
            "SLOMet False",
            lambda: condition(get("modelpool", "slow", ns), "SLOMet").get("status") == "False",
            timeout=90,
        )
        wait_for(
            "ProductionReady True",
            lambda: condition(get("modelpool", "slow", ns), "ProductionReady").get("status") == "True",
            timeout=30,
        )
        found = doctor("slow", ns)
    assert load.done > 0
    high = found["HighP95"]
    assert high["title"].endswith("is above the objective 1500 ms")
    fixes = high["fixes"]
    assert fixes[0].startswith("tighten limits.maxInputTokens 1024 / maxTotalTokens 2048 (from 2048 / 4096)")
    assert fixes[1].startswith("split short and long")
    assert "the HPA" in fixes[2]
    slow = found["LowThroughput"]
    assert slow["title"].startswith("low TPS: each sequence generates")
    assert "NotProductionReady" not in found
    check = tgipool("check", "slow", "-n", ns)
    assert check.returncode == 0 and "ProductionReady True" in check.stdout, check.stdout


def spare_pool(ns: str, labels: dict[str, str]) -> dict[str, Any]:
    """A warm fallback pool: in the gateway's table, no GPU until demand."""
    return {
        "apiVersion": "tgipool.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": "spare", "namespace": ns, "labels": labels},
        "spec": {
            "model": {"id": "meta-llama/Meta-Llama-3-8B-Instruct", "revision": COMMIT},
            "profile": "long",
            "tier": "warm",
            "replicas": {"min": 0, "max": 1},
            "gpu": {"product": "NVIDIA-H100-80GB-HBM3"},
            "cache": {"size": "20Gi"},
        },
    }
