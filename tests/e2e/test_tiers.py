"""Tiers that move, on the real cluster: a warm pool wakes on its first requests through the gateway and
goes back to zero; a cold pool is built on demand and torn down when idle; a pool that cannot wake ends
its held requests with 503 on time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .cluster import Operator, apply, condition, get, kubectl, wait_for
from .conftest import pool_doc
from .test_gateway import free_port, token_kubeconfig

IDLE = 20  # activation.idleAfterSeconds of the test pools


def scale_writes(ns: str, name: str) -> int:
    """PATCHes of the pool Deployment's scale subresource (the operator's 0 -> 1), from the audit log."""
    log = Path(os.environ["KUBECONFIG"]).parent / "logs/audit.log"
    if not log.exists():
        pytest.fail("the audit log (.cluster/logs/audit.log) is needed to count scale writes")
    n = 0
    for line in log.read_text().splitlines():
        if f'"/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale' in line and '"verb":"patch"' in line:
            n += '"stage":"ResponseComplete"' in line
    return n


def ask(base: str, model: str, stream: bool = False) -> tuple[int, dict[str, str], str]:
    route = "/generate_stream" if stream else "/generate"
    body = json.dumps({"inputs": "wake up", "parameters": {"max_new_tokens": 4}}).encode()
    req = urllib.request.Request(
        base + route, data=body, method="POST", headers={"Content-Type": "application/json", "X-Model": model}
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


@pytest.fixture
def gateway(operator: Operator, ns: str, tmp_path: Path) -> Iterator[str]:
    """A ModelGateway for the namespace's pools, and its process with the Role the operator made."""
    apply(
        {
            "apiVersion": "tgipool.io/v1alpha1",
            "kind": "ModelGateway",
            "metadata": {"name": "gw", "namespace": ns},
            "spec": {"poolSelector": {"matchLabels": {"tier-test": "yes"}}},
        }
    )
    wait_for("gateway Role", lambda: get("role", "gw-gateway", ns), timeout=60)
    kubeconfig = token_kubeconfig("gw-gateway", ns, tmp_path / "gw.kubeconfig")
    port = free_port()
    args = ["gateway", "--modelgateway", "gw", "-n", ns, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--core", "auto"]  # as the ModelGateway's pod runs it
    with (tmp_path / "gw.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tgipool.cli", *args, "--log-level", "INFO"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": "gw-test"},
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def resting_pool(name: str, ns: str, tier: str, **spec: Any) -> None:
    doc = pool_doc(
        name,
        ns,
        tier=tier,
        replicas={"min": 0, "max": 2},
        activation={"idleAfterSeconds": IDLE, "holdSeconds": 120},
        **spec,
    )
    doc["spec"]["model"]["servedName"] = name
    doc["metadata"]["labels"] = {"tier-test": "yes"}
    apply(doc)


def last_wake(name: str, ns: str, key: str) -> dict[str, Any] | None:
    woke = ((get("modelpool", name, ns) or {}).get("status") or {}).get("lastActivation") or {}
    return woke if key in woke else None


def phase(name: str, ns: str) -> str | None:
    return ((get("modelpool", name, ns) or {}).get("status") or {}).get("phase")


def in_table(base: str, model: str) -> bool:
    """The gateway routes the model (an unknown one is 404; a resting one is held, so ask /info)."""
    req = urllib.request.Request(base + "/info", headers={"X-Model": model})
    try:
        with urllib.request.urlopen(req, timeout=5):
            return True
    except urllib.error.HTTPError as e:
        return e.code == 503  # routed, no endpoint yet
    except urllib.error.URLError:
        return False


def test_warm_pool_wakes_once_for_a_burst_and_goes_back_to_zero(gateway: str, ns: str) -> None:
    resting_pool("warm", ns, "warm")
    wait_for("warm pool at rest", lambda: phase("warm", ns) == "Standby", timeout=90)
    dep = get("deployment", "warm", ns)
    assert dep is not None and dep["spec"]["replicas"] == 0
    assert get("hpa", "warm", ns) is None and get("lease", "warm-demand", ns) is not None
    wait_for("gateway routes the warm pool", lambda: in_table(gateway, "warm"), timeout=60)

    t0 = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: ask(gateway, "warm"), range(20)))
    took = time.monotonic() - t0
    assert [a[0] for a in answers] == [200] * 20, answers[:3]
    assert all(float(a[1]["X-TGIPool-Cold-Start"]) > 0 for a in answers)
    assert scale_writes(ns, "warm") == 1  # one wake for twenty requests
    # The operator records the wake once it sees the pod Ready (its watch may trail the gateway's).
    woke = wait_for("lastActivation", lambda: last_wake("warm", ns, "readyAt"), timeout=30)
    assert woke["requestedAt"] and 0 <= woke["seconds"] <= took + 2, woke
    assert woke["loadingSeconds"] >= 0 and woke["schedulingSeconds"] >= 0
    assert get("hpa", "warm", ns) is not None  # awake: the HPA owns 1 .. max
    events = kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=warm", "-o", "json")
    reasons = [e["reason"] for e in json.loads(events)["items"]]
    assert "Waking" in reasons

    # No demand for idleAfterSeconds: back to zero; the Deployment and the cache stay.
    wait_for("back to rest", lambda: phase("warm", ns) == "Standby", timeout=IDLE + 60)
    dep = get("deployment", "warm", ns)
    assert dep is not None and dep["spec"]["replicas"] == 0
    assert get("hpa", "warm", ns) is None and get("pvc", "warm-cache", ns) is not None
    wait_for(
        "BackToRest event",
        lambda: (
            "BackToRest"
            in [e["reason"] for e in json.loads(kubectl("get", "events", "-n", ns, "-o", "json"))["items"]]
        ),
        timeout=30,
    )


def test_cold_pool_is_built_on_demand_and_torn_down_when_idle(gateway: str, ns: str) -> None:
    resting_pool("cold", ns, "cold")
    wait_for("cold pool", lambda: phase("cold", ns) == "Cold", timeout=60)
    assert get("deployment", "cold", ns) is None and get("pvc", "cold-cache", ns) is None
    wait_for("gateway routes the cold pool", lambda: in_table(gateway, "cold"), timeout=60)

    status, _, text = ask(gateway, "cold", stream=True)
    assert status == 200 and text.startswith(": pool cold is waking"), text[:200]
    assert ": cold start " in text and "data:" in text
    woke = wait_for("lastActivation", lambda: last_wake("cold", ns, "readyAt"), timeout=30)
    assert woke["weightsSeconds"] is not None and woke["seconds"] >= woke["weightsSeconds"], woke
    wait_for("back to nothing", lambda: get("deployment", "cold", ns) is None, timeout=IDLE + 60)
    assert get("pvc", "cold-cache", ns) is None or get("pvc", "cold-cache", ns)["metadata"].get(
        "deletionTimestamp"
    )
    assert phase("cold", ns) == "Cold" and get("lease", "cold-demand", ns) is not None


def test_a_pool_that_cannot_wake_ends_held_requests_with_503_on_time(gateway: str, ns: str) -> None:
    resting_pool(
        "nogpu",
        ns,
        "warm",
        gpu={"product": "NVIDIA-B200-NOT-HERE"},
    )
    kubectl(
        "patch",
        "modelpool",
        "nogpu",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec":{"activation":{"holdSeconds":8}}}',
    )
    wait_for("at rest", lambda: phase("nogpu", ns) == "Standby", timeout=90)
    wait_for("gateway routes it", lambda: in_table(gateway, "nogpu"), timeout=60)
    t0 = time.monotonic()
    status, headers, text = ask(gateway, "nogpu")
    took = time.monotonic() - t0
    assert status == 503 and headers["Retry-After"] == "8", (status, text)
    assert 8 <= took < 15
    assert "did not wake within 8 s" in json.loads(text)["error"]
    ready = condition(get("modelpool", "nogpu", ns), "Ready")
    assert ready["status"] == "False" and ready["reason"] in ("Unschedulable", "InsufficientGPU"), ready
    # Nothing retries in a loop: one wake, and the Deployment stays at its one pending replica.
    time.sleep(5)
    assert scale_writes(ns, "nogpu") == 1
