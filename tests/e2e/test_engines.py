"""vLLM and SGLang pools on the simulated cluster: the sim emulates the engine of the pod's label; the
pool becomes Ready, the gateway routes OpenAI requests to it and refuses TGI's own routes with a clear
error, and its HPA scales on that engine's queue metric read through Prometheus and the adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tgipool.monitoring.engine_metrics import hpa_queue_metric

from .cluster import Operator, apply, condition, get, kubectl, wait_for
from .conftest import pool_doc
from .test_gateway import free_port, post, token_kubeconfig
from .test_metrics import Load, hpa_metrics, replicas

# Batches of 2: limits.maxConcurrentRequests renders each engine's own flag (--max-num-seqs,
# --max-running-requests), which the sim reads as the engine would; the served name (model.servedName,
# "llama3") renders --served-model-name, the name the gateway sends.


def gateway_process(ns: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    kubeconfig = token_kubeconfig("main-gateway", ns, tmp_path / "gw.kubeconfig")
    port = free_port()
    with (tmp_path / "gw.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tgipool.cli", "gateway", "--modelgateway", "main", "-n", ns,
             "--host", "127.0.0.1", "--port", str(port), "--interval", "0.5", "--core", "auto"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_engine_pool_serves_routes_and_scales_on_its_queue(
    engine: str, operator: Operator, ns: str, tmp_path: Path
) -> None:
    queue = hpa_queue_metric(engine)  # type: ignore[arg-type]
    kubectl("create", "secret", "generic", "hf-token", "-n", ns, "--from-literal=token=placeholder")
    doc = pool_doc(
        "busy",
        ns,
        engine={"kind": engine},
        limits={"maxConcurrentRequests": 2},
        replicas={"min": 1, "max": 3},
        autoscaling={"queuePerReplica": 2, "scaleDownStabilizationSeconds": 10},
    )
    doc["metadata"]["labels"] = {"tgipool.io/gateway": "main"}
    apply(yaml.safe_dump(doc))
    gateway = {
        "apiVersion": "tgipool.io/v1alpha1",
        "kind": "ModelGateway",
        "metadata": {"name": "main", "namespace": ns},
        "spec": {"poolSelector": {"matchLabels": {"tgipool.io/gateway": "main"}}, "queueTimeoutSeconds": 5},
    }
    apply(yaml.safe_dump(gateway))
    wait_for("pool Ready", lambda: condition(get("modelpool", "busy", ns), "Ready").get("status") == "True")
    pods = json.loads(kubectl("get", "pods", "-n", ns, "-l", "tgipool.io/pool=busy", "-o", "json"))["items"]
    assert pods and all(p["metadata"]["labels"].get("tgipool.io/engine") == engine for p in pods)
    hpa = get("hpa", "busy", ns) or {}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == queue

    # The adapter serves the engine's queue gauge for the pod before any load (the engine exports it).
    wait_for(
        f"{queue} in custom.metrics.k8s.io",
        lambda: json.loads(
            kubectl("get", "--raw", f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/{queue}")
        )["items"],
        timeout=90,
    )

    proc, base = gateway_process(ns, tmp_path)
    try:
        chat = {"model": "llama3", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}

        def serving() -> bool:
            result = post(f"{base}/v1/chat/completions", chat)
            assert result[0] == 200, result
            return True

        wait_for("gateway serving the pool", serving, timeout=60)
        status, headers, body = post(f"{base}/v1/chat/completions", chat)
        assert status == 200 and headers["X-TGIPool-Pool"] == "busy", body
        assert body["model"] == "llama3" and body["id"].startswith("chatcmpl-")  # the engine's answer
        status, _, body = post(f"{base}/v1/completions", {"model": "llama3", "prompt": "a", "max_tokens": 2})
        assert status == 200 and body["usage"]["completion_tokens"] == 2
        status, _, body = post(f"{base}/generate", {"inputs": "hi"}, {"X-Model": "llama3"})
        assert status == 400 and body["error_type"] == "unsupported_route", body
        assert f"pool busy ({engine})" in body["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    with Load("busy", ns, clients=12, max_new_tokens=50, openai="llama3") as load:
        wait_for("HPA scales up on the engine's queue", lambda: replicas("busy", ns) > 1, timeout=120)
        seen = wait_for("HPA reads the queue metric", lambda: hpa_metrics("busy", ns).get(queue), timeout=60)
        assert seen not in (None, "", "<unknown>")
    # As in test_metrics: the load lists pods by address, so a new replica can be asked before it
    # serves (connection refused, or 503 while it loads); requests that reached a serving pod succeed.
    assert load.done > 0
