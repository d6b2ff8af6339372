"""The metrics loop on the real cluster: emulated TGI pods -> Prometheus -> prometheus-adapter ->
HPA, and Prometheus -> operator -> status.metrics and SLOMet."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from .cluster import ROOT, Operator, condition, get, items, kubectl, wait_for, write_requests
from .conftest import apply_pool

POD_SELECTOR = "app.kubernetes.io/component=inference-server,tgipool.io/pool="


def prometheus_url() -> str:
    path = ROOT / ".cluster/prometheus-url"
    assert path.exists(), "no local Prometheus: the metrics tests need `make cluster-up` (it starts one)"
    return path.read_text().strip()


def _http_port(pod: dict[str, Any]) -> int:
    for c in pod["spec"]["containers"]:
        for port in c.get("ports") or []:
            if port.get("name") == "http":
                return int(port["containerPort"])
    return 8080


class Load:
    """`clients` closed-loop clients sending /generate (or, `openai`, /v1/completions: every engine's
    route) to the pool's pods, round-robin, in a thread."""

    def __init__(
        self, pool: str, ns: str, clients: int, max_new_tokens: int, openai: str | None = None
    ) -> None:
        self.pool, self.ns, self.clients, self.tokens = pool, ns, clients, max_new_tokens
        self.openai = openai  # the served model name, for /v1/completions
        self.done = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def _urls(self) -> list[str]:
        pods = items("pods", self.ns, POD_SELECTOR + self.pool)
        # Each engine's own port: the container port named `http` (TGI 8080, vLLM 8000, SGLang 30000).
        return [f"http://{p['status']['podIP']}:{_http_port(p)}" for p in pods if p["status"].get("podIP")]

    async def _run(self) -> None:
        urls: list[str] = []
        refreshed = 0.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def client(i: int) -> None:
                nonlocal urls, refreshed
                n = i
                while not self._stop.is_set():
                    if time.monotonic() - refreshed > 2 or not urls:
                        refreshed = time.monotonic()
                        urls = await asyncio.to_thread(self._urls)
                    if not urls:
                        await asyncio.sleep(0.2)
                        continue
                    n += 1
                    path = "/generate"
                    body: dict[str, Any] = {
                        "inputs": "hello there",
                        "parameters": {"max_new_tokens": self.tokens},
                    }
                    if self.openai is not None:
                        path = "/v1/completions"
                        body = {"model": self.openai, "prompt": "hello there", "max_tokens": self.tokens}
                    try:
                        async with session.post(urls[n % len(urls)] + path, json=body) as resp:
                            await resp.read()
                            ok = resp.status == 200
                    except aiohttp.ClientError:
                        ok = False  # a pod that just went away
                    self.done += ok
                    self.failed += not ok

            await asyncio.gather(*(client(i) for i in range(self.clients)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)


def hpa_metrics(name: str, ns: str) -> dict[str, str]:
    hpa = get("hpa", name, ns) or {}
    out = {}
    for m in hpa.get("status", {}).get("currentMetrics") or []:
        kind = m.get("type", "").lower()
        if kind not in m:  # a metric the HPA could not read yet has an empty entry
            continue
        current = m[kind]["current"]
        out[m[kind]["metric"]["name"]] = current.get("averageValue") or current.get("value")
    return out


def replicas(name: str, ns: str) -> int:
    return int(((get("deployment", name, ns) or {}).get("spec") or {}).get("replicas") or 0)


def pool_metrics(name: str, ns: str) -> dict[str, Any]:
    return dict(((get("modelpool", name, ns) or {}).get("status") or {}).get("metrics") or {})


def test_load_scales_the_pool_on_real_metrics_and_status_follows(
    operator: Operator, ns: str, tmp_path: Path
) -> None:
    # Batches of 2 (TGI's --max-batch-size): 12 clients keep ~10 requests queued on one replica.
    apply_pool(
        "busy",
        ns,
        engine={"extraArgs": ["--max-batch-size=2"]},
        gpu={"product": "NVIDIA-H100-80GB-HBM3", "hourlyPrice": 2.49},
        replicas={"min": 1, "max": 3},
        autoscaling={"queuePerReplica": 2, "scaleDownStabilizationSeconds": 10},
        slo={"p95LatencyMs": 1500},
    )
    wait_for("pool Ready", lambda: condition(get("modelpool", "busy", ns), "Ready").get("status") == "True")
    # The adapter answers for the pod's queue before any load (TGI exports the gauge from the start).
    wait_for(
        "tgi_queue_size in custom.metrics.k8s.io",
        lambda: json.loads(
            kubectl(
                "get", "--raw", f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/tgi_queue_size"
            )
        )["items"],
        timeout=60,
    )

    with Load("busy", ns, clients=12, max_new_tokens=50) as load:
        wait_for("HPA scales up on the queue", lambda: replicas("busy", ns) > 1, timeout=90)
        both = {"tgi_queue_size", "tgipool_request_latency_p95_ms"}
        seen = wait_for("HPA reads both metrics", lambda: set(hpa_metrics("busy", ns)) == both, timeout=60)
        assert seen
        wait_for(
            "SLOMet False under overload",
            lambda: condition(get("modelpool", "busy", ns), "SLOMet").get("status") == "False",
            timeout=90,
        )
        metrics = pool_metrics("busy", ns)
        assert (
            metrics["p95LatencyMs"] > 1500
            and metrics["p99LatencyMs"] >= metrics["p95LatencyMs"] >= metrics["p50LatencyMs"]
        )
        assert (
            metrics["tokensPerSecond"] > 0 and metrics["requestsPerSecond"] > 0 and metrics["errorRate"] == 0
        )
        assert metrics["costPerMillionTokens"] > 0 and metrics["observedAt"]
        # The P95 column reads status.metrics.
        header, row = kubectl("get", "modelpool", "busy", "-n", ns).splitlines()[:2]
        p95_cell = row.split()[header.split().index("P95")]
        assert float(p95_cell) > 1500, (header, row)

        # An HPA decision survives a reconcile (a spec change) and an operator restart.
        scaled = replicas("busy", ns)
        kubectl(
            "patch",
            "modelpool",
            "busy",
            "-n",
            ns,
            "--type=merge",
            "-p",
            '{"spec":{"routing":{"priority":5}}}',
        )
        wait_for(
            "reconciled",
            lambda: (get("modelpool", "busy", ns) or {})["status"].get("observedGeneration") == 2,
        )
        assert replicas("busy", ns) >= scaled - 0  # the operator never wrote spec.replicas
        operator.restart()
        operator.wait_log(r"Starting|started|Resuming|watching", timeout=60)
        time.sleep(5)
        assert replicas("busy", ns) >= scaled
    assert load.done > 0

    # Light traffic: one client, well inside the objective; the window rolls the overload out.
    with Load("busy", ns, clients=1, max_new_tokens=20):
        wait_for(
            "SLOMet True with light traffic",
            lambda: condition(get("modelpool", "busy", ns), "SLOMet").get("status") == "True",
            timeout=120,
        )
        wait_for("HPA scales back to replicas.min", lambda: replicas("busy", ns) == 1, timeout=150)


def test_prometheus_down_makes_slomet_unknown_and_nothing_else(operator: Operator, ns: str) -> None:
    apply_pool("calm", ns, slo={"p95LatencyMs": 5000})
    wait_for("pool Ready", lambda: condition(get("modelpool", "calm", ns), "Ready").get("status") == "True")
    with Load("calm", ns, clients=1, max_new_tokens=10):
        wait_for(
            "SLOMet True",
            lambda: condition(get("modelpool", "calm", ns), "SLOMet").get("status") == "True",
            timeout=90,
        )
    before = get("modelpool", "calm", ns) or {}
    pid = int((ROOT / ".cluster/prometheus/prometheus.pid").read_text())
    subprocess.run(["kill", str(pid)], check=True)
    try:
        wait_for(
            "SLOMet Unknown",
            lambda: condition(get("modelpool", "calm", ns), "SLOMet").get("status") == "Unknown",
            timeout=60,
        )
        after = get("modelpool", "calm", ns) or {}
        slo = condition(after, "SLOMet")
        assert slo["reason"] == "MetricsUnavailable" and "Prometheus" in slo["message"]
        others = {c["type"]: c["status"] for c in after["status"]["conditions"] if c["type"] != "SLOMet"}
        assert others == {
            c["type"]: c["status"] for c in before["status"]["conditions"] if c["type"] != "SLOMet"
        }
        assert after["status"]["phase"] == before["status"]["phase"] == "Ready"
        # No write storm while it stays down: the operator writes nothing more.
        writes = write_requests()
        time.sleep(15)
        grown = {k: v - writes.get(k, 0) for k, v in write_requests().items() if v != writes.get(k, 0)}
        assert not grown, grown
    finally:
        subprocess.run([str(ROOT / "tools/cluster.sh"), "up"], check=True, capture_output=True)
