"""The operator against a real API server, scheduler, controllers and KWOK-simulated GPU nodes."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from .cluster import Operator, add_node, condition, get, items, kubectl, wait_for, write_requests
from .conftest import COMMIT, apply_pool

CHILDREN = [
    ("service", "{n}"),
    ("persistentvolumeclaim", "{n}-cache"),
    ("deployment", "{n}"),
    ("horizontalpodautoscaler", "{n}"),
    ("poddisruptionbudget", "{n}"),
]


def pool(name: str, ns: str) -> dict[str, Any]:
    out = get("modelpool", name, ns)
    assert out is not None
    return out


def wait_ready(name: str, ns: str, timeout: float = 120) -> dict[str, Any]:
    kubectl(
        "wait",
        "--for=condition=Ready",
        f"modelpool/{name}",
        "-n",
        ns,
        f"--timeout={int(timeout)}s",
        timeout=timeout + 10,
    )
    return pool(name, ns)


def tgi_args(name: str, ns: str) -> list[str]:
    dep = get("deployment", name, ns)
    assert dep is not None
    args: list[str] = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_pool_creates_children_and_becomes_ready(operator: Operator, ns: str) -> None:
    apply_pool("p1", ns)
    p = wait_ready("p1", ns)
    uid = p["metadata"]["uid"]
    for kind, pattern in CHILDREN:
        child = get(kind, pattern.format(n="p1"), ns)
        assert child is not None, kind
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["controller"]) == (uid, True), kind
    (job,) = items("jobs", ns, "tgipool.io/pool=p1")
    assert job["metadata"]["name"].startswith("p1-fetch-") and job["status"].get("succeeded") == 1
    status = p["status"]
    assert status["observedGeneration"] == p["metadata"]["generation"]
    assert condition(p, "Ready")["status"] == "True"
    assert condition(p, "WeightsCached")["reason"] == "Fetched"
    assert status["readyReplicas"] >= 1 and status["phase"] == "Ready"
    pods = items("pods", ns, "tgipool.io/pool=p1,app.kubernetes.io/component=inference-server")
    assert pods and all(pod["spec"]["nodeName"].startswith("gpu-h100") for pod in pods)
    row = kubectl("get", "modelpools", "-n", ns, "p1", "--no-headers").split()
    header = kubectl("get", "modelpools", "-n", ns, "p1").splitlines()[0].split()
    assert header == ["NAME", "MODEL", "TIER", "SHARDS", "READY", "PHASE", "P95", "AGE"]
    assert row[:6] == ["p1", "llama3", "hot", "1", f"{status['readyReplicas']}/{status['replicas']}", "Ready"]


def test_more_gpus_than_any_node_has_then_a_bigger_node(operator: Operator, ns: str) -> None:
    apply_pool("big", ns, engine={"numShard": 4, "dtype": "bfloat16"}, gpu={"product": "NVIDIA-L4"})

    def unschedulable() -> dict[str, Any] | None:
        p = pool("big", ns)
        return p if condition(p, "Ready").get("reason") == "InsufficientGPU" else None

    p = wait_for("InsufficientGPU", unschedulable, timeout=90)
    ready = condition(p, "Ready")
    assert ready["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in ready["message"] and "4 nvidia.com/gpu" in ready["message"]
    assert p["status"]["phase"] == "Degraded"
    node = f"gpu-l4-big-{uuid.uuid4().hex[:4]}"
    add_node(node, 8, "NVIDIA-L4")
    try:
        wait_ready("big", ns, timeout=120)
        # Ready follows the Deployment's watch and Degraded the pods': the two caches may be a moment
        # apart, and the status written between them (Ready, and the pod still unschedulable) is fixed by
        # the pod's event.
        wait_for(
            "Degraded False",
            lambda: condition(pool("big", ns), "Degraded").get("status") == "False",
            timeout=30,
        )
    finally:
        kubectl("delete", "node", node, "--wait=false", check=False)


def test_update_rolls_the_deployment(operator: Operator, ns: str) -> None:
    apply_pool("roll", ns)
    wait_ready("roll", ns)
    before = get("deployment", "roll", ns)
    assert before is not None
    apply_pool(
        "roll",
        ns,
        limits={"maxInputTokens": 1000, "maxTotalTokens": 3000},
        engine={"numShard": 2, "dtype": "bfloat16"},
    )

    def rolled() -> bool:
        args = tgi_args("roll", ns)
        return "--max-total-tokens=3000" in args and "--num-shard=2" in args

    wait_for("new args", rolled, timeout=60)
    after = get("deployment", "roll", ns)
    assert after is not None and after["metadata"]["generation"] > before["metadata"]["generation"]
    res = after["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "2"

    def converged() -> dict[str, Any] | None:
        # Ready holds through the roll (the old pod serves while the new one loads its weights);
        # Progressing turns False once the Deployment has rolled out.
        p = pool("roll", ns)
        gen_ok = p["status"].get("observedGeneration") == p["metadata"]["generation"]
        rolled = condition(p, "Progressing")["status"] == "False"
        return p if gen_ok and rolled and condition(p, "Ready")["status"] == "True" else None

    wait_for("observedGeneration and the roll done", converged, timeout=120)
    pods = items("pods", ns, "tgipool.io/pool=roll,app.kubernetes.io/component=inference-server")
    assert all(
        "--num-shard=2" in pod["spec"]["containers"][0]["args"]
        for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
    )


def test_scale_subresource_sets_the_floor(operator: Operator, ns: str) -> None:
    apply_pool("sc", ns, replicas={"min": 1, "max": 4})
    wait_ready("sc", ns)
    kubectl("scale", "modelpool", "sc", "-n", ns, "--replicas=3")
    p = pool("sc", ns)
    assert p["spec"]["replicas"]["min"] == 3
    wait_for("HPA min 3", lambda: (get("hpa", "sc", ns) or {}).get("spec", {}).get("minReplicas") == 3, 60)

    def three_ready() -> bool:
        q = pool("sc", ns)
        return q["status"].get("readyReplicas") == 3 and condition(q, "Ready")["status"] == "True"

    wait_for("3 ready replicas", three_ready, timeout=120)
    scale = kubectl(
        "get", "modelpool", "sc", "-n", ns, "--subresource=scale", "-o", "jsonpath={.status.replicas}"
    )
    assert scale == "3"
    out = kubectl("scale", "modelpool", "sc", "-n", ns, "--replicas=9", check=False)
    assert "spec.replicas.min must be at most spec.replicas.max" in out


def test_deleted_child_returns_and_hand_edit_is_reverted(operator: Operator, ns: str) -> None:
    apply_pool("drift", ns)
    wait_ready("drift", ns)
    for kind in ("service", "horizontalpodautoscaler", "poddisruptionbudget"):
        old = get(kind, "drift", ns)
        assert old is not None
        kubectl("delete", kind, "drift", "-n", ns)
        wait_for(
            f"{kind} back",
            lambda k=kind, o=old: (
                (get(k, "drift", ns) or {}).get("metadata", {}).get("uid") not in (None, o["metadata"]["uid"])
            ),
            timeout=60,
        )
    patch = (
        '[{"op":"replace","path":"/spec/template/spec/containers/0/args/4",'
        '"value":"--max-total-tokens=999999"}]'
    )
    kubectl("patch", "deployment", "drift", "-n", ns, "--type=json", "-p", patch)
    wait_for("args reverted", lambda: "--max-total-tokens=4096" in tgi_args("drift", ns), timeout=60)
    assert "--max-total-tokens=999999" not in tgi_args("drift", ns)


def test_pool_deletion_garbage_collects_children(operator: Operator, ns: str) -> None:
    apply_pool("gc", ns)
    wait_ready("gc", ns)
    kubectl("delete", "modelpool", "gc", "-n", ns)

    def gone() -> bool:
        left = [k for k, pattern in CHILDREN if get(k, pattern.format(n="gc"), ns) is not None]
        return not left and not items("jobs", ns, "tgipool.io/pool=gc")

    wait_for("children garbage-collected", gone, timeout=90)


def test_restart_mid_reconcile_converges_without_duplicates(operator: Operator, ns: str) -> None:
    apply_pool("rs", ns, replicas={"min": 2, "max": 2})
    # Kill the operator hard as soon as it has started writing this pool's children.
    wait_for("first child", lambda: get("service", "rs", ns) is not None, timeout=30, interval=0.05)
    operator.stop(signal.SIGKILL)
    operator.start()
    p = wait_ready("rs", ns)
    assert p["status"]["readyReplicas"] == 2
    for kind in (
        "deployments",
        "services",
        "persistentvolumeclaims",
        "jobs",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
    ):
        assert len(items(kind, ns, "tgipool.io/pool=rs")) == 1, kind


def operator_writes(since: int) -> list[str]:
    """Write requests by the operator (its API client and kopf's) in the audit log from byte `since` on:
    every resource, events and Leases included."""
    log = Path(os.environ["KUBECONFIG"]).parent / "logs/audit.log"
    out = []
    with log.open("rb") as f:
        f.seek(since)
        for raw in f:
            ev = json.loads(raw)
            agent = ev.get("userAgent") or ""
            if ev.get("stage") == "ResponseComplete" and agent.startswith(("tgipool-operator", "kopf/")):
                ref = ev.get("objectRef") or {}
                what = f"{ref.get('resource')}/{ref.get('subresource', '')}"
                out.append(f"{agent.split()[0]} {ev['verb']} {what} {ref.get('name')}")
    return out


def audit_offset() -> int | None:
    log = Path(os.environ["KUBECONFIG"]).parent / "logs/audit.log"
    return log.stat().st_size if log.exists() else None


def test_unchanged_pool_makes_no_write_request(operator: Operator, ns: str) -> None:
    quiet = [f"quiet-{i}" for i in range(6)]
    for name in quiet:
        apply_pool(name, ns, replicas={"min": 2, "max": 2} if name == "quiet-0" else {"min": 1, "max": 1})
    for name in quiet:
        wait_ready(name, ns)

    def others_gone() -> bool:
        names = kubectl("get", "namespaces", "-o", "name").split()
        return not [n for n in names if n.startswith("namespace/e2e-") and n != f"namespace/{ns}"]

    # Namespaces of earlier tests are still being emptied by the namespace controller (its
    # deletes would count); measure only once they are gone.
    wait_for("other test namespaces deleted", others_gone, timeout=120)
    if "--prometheus-url" in operator.args:
        # The live numbers arrive once Prometheus has scraped the pods: a real change of the status.
        # Measure after it. An idle TGI exports only its gauges (series appear on first use), so an
        # idle pool's numbers are its queue, and they stay put.
        def settled() -> bool:
            return all("queueDepth" in (pool(n, ns).get("status", {}).get("metrics") or {}) for n in quiet)

        wait_for("live metrics in status", settled, timeout=90)
    # Let status settle after the last pod became ready: a message or a count the operator holds back
    # (handlers/pool.py's SETTLE_SECONDS, 5 s) is a write that follows a real change.
    time.sleep(3 + 5)
    before, since = write_requests(), audit_offset()
    # A restart runs the resume handler on every pool: a full reconcile from the caches.
    operator.restart()
    wait_for(
        "every pool resumed",
        lambda: len(re.findall(r"Resuming is processed", operator.log())) >= len(quiet),
        timeout=60,
    )
    # Child events keep arriving (controllers update status); each triggers a reconcile too, and a
    # metrics round wakes every pool's folder.
    time.sleep(5 + float(operator.args[operator.args.index("--metrics-interval") + 1])
               if "--metrics-interval" in operator.args else 5)  # fmt: skip
    after = write_requests()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    assert delta == {}, f"write requests during an unchanged reconcile: {delta}"
    if since is not None:  # the local cluster's audit log: no write at all by the operator, Events included
        assert operator_writes(since) == [], "the operator wrote during a restart with nothing changed"
    for name in quiet:
        assert condition(pool(name, ns), "Ready")["status"] == "True"


def test_infeasible_pool_gets_no_deployment_until_fixed(operator: Operator, ns: str) -> None:
    model = {
        "id": "meta-llama/Meta-Llama-3-70B-Instruct",
        "revision": COMMIT,
        "servedName": "llama3-70b",
        "architecture": {"numLayers": 80, "numKeyValueHeads": 8, "headDim": 128, "parametersB": 70.6},
    }
    gpu = {"product": "NVIDIA-H100-80GB-HBM3", "memoryGiB": 80}
    apply_pool("huge", ns, model=model, gpu=gpu)

    def refused() -> dict[str, Any] | None:
        p = pool("huge", ns)
        return p if condition(p, "CapacityFeasible").get("status") == "False" else None

    p = wait_for("CapacityFeasible=False", refused, timeout=60)
    cap = condition(p, "CapacityFeasible")
    assert cap["reason"] == "WeightsDoNotFit" and "numShard" in cap["message"]
    assert p["status"]["phase"] == "Infeasible" and condition(p, "Ready")["status"] == "False"
    assert p["status"]["capacity"]["kvBytesPerToken"] == 2 * 80 * 8 * 128 * 2
    # The weights are fetched meanwhile, but no GPU is asked for.
    wait_for("fetch job done", lambda: condition(pool("huge", ns), "WeightsCached")["status"] == "True", 60)
    assert get("deployment", "huge", ns) is None
    events = kubectl(
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "involvedObject.name=huge",
        "-o",
        "jsonpath={.items[*].reason}",
    )
    assert "WeightsDoNotFit" in events
    apply_pool("huge", ns, model=model, gpu=gpu, engine={"numShard": 4, "dtype": "bfloat16"})
    p = wait_ready("huge", ns)
    assert condition(p, "CapacityFeasible")["status"] == "True"
    dep = get("deployment", "huge", ns)
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_sim_serves_an_emulated_tgi_on_every_pod(operator: Operator, ns: str) -> None:
    # The cluster's own `tgipool sim` (tools/cluster.sh up) serves every pool pod's address.
    apply_pool(
        "live", ns, replicas={"min": 2, "max": 2}, limits={"maxInputTokens": 1000, "maxTotalTokens": 1500}
    )
    wait_ready("live", ns)
    pods = items("pods", ns, "tgipool.io/pool=live,app.kubernetes.io/component=inference-server")
    urls = [f"http://{pod['status']['podIP']}:8080" for pod in pods]
    assert len(urls) == 2

    def info(url: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{url}/info", timeout=2) as r:
                out: dict[str, Any] = json.loads(r.read())
                return out
        except OSError:
            return None

    for url in urls:
        got = wait_for(f"emulator on {url}", lambda u=url: info(u), timeout=30)
        assert (got["max_input_tokens"], got["max_total_tokens"]) == (1000, 1500)
    req = urllib.request.Request(
        f"{urls[0]}/generate",
        method="POST",
        data=b'{"inputs":"hi","parameters":{"max_new_tokens":3}}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["x-generated-tokens"] == "3"
    kubectl("delete", "modelpool", "live", "-n", ns)
    wait_for("emulators stopped", lambda: all(info(u) is None for u in urls), timeout=60)


def test_turning_cold_releases_gpus_and_cache(operator: Operator, ns: str) -> None:
    apply_pool("chill", ns)
    wait_ready("chill", ns)
    apply_pool("chill", ns, tier="cold")

    def released() -> bool:
        left = [k for k, pattern in CHILDREN if get(k, pattern.format(n="chill"), ns) is not None]
        return not left and not items("jobs", ns, "tgipool.io/pool=chill")

    wait_for("children of a cold pool deleted", released, timeout=90)
    p = pool("chill", ns)
    assert p["status"]["phase"] == "Cold" and condition(p, "Ready")["reason"] == "ColdTier"
    apply_pool("chill", ns, tier="hot")
    wait_ready("chill", ns)


def refused_in(ns: str, since: int) -> list[str]:
    """The operator's writes in namespace `ns` the API server refused, from byte `since` of the audit log."""
    log = Path(os.environ["KUBECONFIG"]).parent / "logs/audit.log"
    out = []
    with log.open("rb") as f:
        f.seek(since)
        for raw in f:
            ev = json.loads(raw)
            ref, code = ev.get("objectRef") or {}, (ev.get("responseStatus") or {}).get("code", 0)
            agent = ev.get("userAgent") or ""
            if ref.get("namespace") == ns and code >= 400 and agent.startswith(("tgipool-operator", "kopf/")):
                out.append(f"{ev['verb']} {ref.get('resource')} {ref.get('name')}: {code}")
    return out


def test_a_deleted_namespace_is_left_to_go(operator: Operator) -> None:
    """Deleting a namespace deletes the pools' children before the pools. The operator must not make
    them again: in a namespace being deleted each create is refused (403), and it was one refused write
    per missing child at every child event, for minutes at 500 pools (the bench's cleanup)."""
    ns = f"e2e-gone-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    names = [f"gone-{i}" for i in range(4)]
    for name in names:
        apply_pool(name, ns)
    for name in names:
        wait_ready(name, ns)
    since = audit_offset()
    if since is None:
        kubectl("delete", "namespace", ns, "--wait=false")
        raise AssertionError("the audit log (.cluster/logs/audit.log) is needed to count refused writes")
    kubectl("delete", "namespace", ns, "--timeout=120s", timeout=130)
    refused = refused_in(ns, since)
    # Refused: only children that reconciles already running when the first refusal came back tried to
    # make, each once, and no warning event about them (those were refused too). Before the fix: 22
    # refused writes for these 4 pools, children tried again and kopf's warning events; after it, 1.
    assert len(refused) == len(set(refused)), refused
    assert not [r for r in refused if " events " in r], refused
