"""The simulated cluster's data plane: a pool pod is Running but not Ready while its emulated TGI loads
the weights, then Ready, as a kubelet's readiness probe would have it (the cluster's `tgipool sim`,
started by tools/cluster.sh up, is that prober; KWOK's stages leave pool pods unready)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

import pytest
import yaml

from .cluster import ROOT, Operator, apply, condition, get, items, kubectl, wait_for
from .conftest import COMMIT, apply_pool

POD_SELECTOR = "app.kubernetes.io/component=inference-server,tgipool.io/pool="
# The rate tools/cluster.sh gives the sim (the same variable, so a run with another rate still passes).
BYTES_PER_SECOND = float(os.environ.get("TGIPOOL_SIM_LOAD_BYTES_PER_SECOND", "2e9"))

pytestmark = pytest.mark.skipif(
    not (ROOT / ".cluster/sim.pid").exists(),
    reason="needs the local cluster's `tgipool sim` (make cluster-up starts it)",
)


def health(ip: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{ip}:8080/health", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0  # not listening (yet)


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_pool_pod_is_not_ready_while_its_tgi_loads(operator: Operator, ns: str) -> None:
    if BYTES_PER_SECOND <= 0:
        pytest.skip("the sim runs without cold starts (TGIPOOL_SIM_LOAD_BYTES_PER_SECOND=0)")
    # 6B parameters in bf16: 12 GB of weights, 6 s of loading at the default 2 GB/s.
    arch = {"numLayers": 32, "numKeyValueHeads": 8, "headDim": 128, "parametersB": 6.0}
    model = {"id": "org/six-b", "revision": COMMIT, "servedName": "six-b", "architecture": arch}
    apply_pool("loads", ns, model=model, replicas={"min": 1, "max": 1})
    load = 12e9 / BYTES_PER_SECOND

    def loading() -> dict[str, Any] | None:
        for p in items("pods", ns, POD_SELECTOR + "loads"):
            if p["status"].get("phase") == "Running" and p["status"].get("podIP") and not ready(p):
                return p if health(p["status"]["podIP"]) == 503 else None
        return None

    pod = wait_for("a Running pod, not Ready, whose TGI answers 503 (loading)", loading, timeout=60)
    assert pod["metadata"]["annotations"]["tgipool.io/weights-bytes"] == "12000000000"
    (cs,) = pod["status"]["containerStatuses"]
    assert (cs["ready"], cs.get("started")) == (False, False)
    cond = condition(pod, "Ready")
    assert cond["reason"] == "ContainersNotReady"
    name = pod["metadata"]["name"]

    def now_ready() -> dict[str, Any] | None:
        p = get("pod", name, ns)
        return p if p and ready(p) else None

    pod = wait_for("the pod Ready once loaded", now_ready, timeout=load + 30)
    assert health(pod["status"]["podIP"]) == 200
    (cs,) = pod["status"]["containerStatuses"]
    assert (cs["ready"], cs["started"]) == (True, True)
    # Ready came no sooner than the load time after the container started (stamps are whole seconds).
    started = when(cs["state"]["running"]["startedAt"])
    became_ready = when(condition(pod, "Ready")["lastTransitionTime"])
    assert (became_ready - started).total_seconds() >= load - 1
    wait_for(
        "the pool Ready",
        lambda: condition(get("modelpool", "loads", ns), "Ready").get("status") == "True",
        timeout=60,
    )


def test_other_pods_keep_kwoks_ready_at_once(ns: str) -> None:
    """Only a tgipool pool's TGI pods wait for the sim; any other pod is Running and Ready at once."""
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "plain",
            "namespace": ns,
            # The component label alone does not make a pod a pool's TGI server.
            "labels": {"app.kubernetes.io/component": "inference-server"},
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "example.com/app:1",
                    "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                }
            ]
        },
    }
    apply(yaml.safe_dump(doc))

    def running_ready() -> dict[str, Any] | None:
        p = json.loads(kubectl("get", "pod", "plain", "-n", ns, "-o", "json"))
        return p if p["status"].get("phase") == "Running" and ready(p) else None

    wait_for("plain pod Running and Ready", running_ready, timeout=60)
