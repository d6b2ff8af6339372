"""A ModelGateway on the simulated cluster: requests through the gateway reach emulated pods of the
right pool, with the gateway running under its own ServiceAccount's RBAC."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .cluster import Operator, apply, get, items, kubectl, wait_for
from .conftest import apply_pool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def token_kubeconfig(sa: str, ns: str, path: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount, to run a process with its RBAC."""
    admin = yaml.safe_load(kubectl("config", "view", "--raw", "--minify"))
    token = kubectl("create", "token", sa, "-n", ns, "--duration=1h").strip()
    admin["users"] = [{"name": sa, "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = sa
    path.write_text(yaml.safe_dump(admin))
    return path


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[None]:
    with (tmp_path / "sim.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tgipool.cli", "sim", "--interval", "0.5"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        yield
        proc.terminate()
        proc.wait(timeout=10)


def post(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")
    except urllib.error.URLError as e:  # not listening yet
        return 0, {}, str(e)


def pod_urls(pool: str, ns: str) -> set[str]:
    pods = items("pods", ns, f"tgipool.io/pool={pool},app.kubernetes.io/component=inference-server")
    return {f"http://{p['status']['podIP']}:8080" for p in pods if p["status"].get("podIP")}


def test_gateway_routes_to_emulated_pods_of_the_right_pool(
    operator: Operator, sim: None, ns: str, tmp_path: Path
) -> None:
    sel = {"tgipool.io/gateway": "main"}
    for name, served, profile, extra in (
        ("short", "llama3-8b-ru", "short", {"routing": {"priority": 10, "fallbackPool": "long"}}),
        ("long", "llama3-8b-ru", "long", {}),
        ("code", "code-7b", "short", {}),
    ):
        doc = apply_pool(name, ns, profile=profile, model={"id": "org/m", "servedName": served}, **extra)
        doc["metadata"]["labels"] = sel
        apply(doc)
    apply(
        {
            "apiVersion": "tgipool.io/v1alpha1",
            "kind": "ModelGateway",
            "metadata": {"name": "main", "namespace": ns},
            "spec": {"poolSelector": {"matchLabels": sel}, "defaultPool": "short"},
        }
    )

    def table() -> dict[str, Any] | None:
        gw = get("modelgateway", "main", ns)
        status = (gw or {}).get("status") or {}
        ready = all(p["readyEndpoints"] >= 1 for p in status.get("pools", []))
        return gw if status.get("routedPools") == 3 and ready and status.get("phase") == "Ready" else None

    gw = wait_for("routing table of 3 ready pools", table, timeout=120)
    rows = {p["name"]: p for p in gw["status"]["pools"]}
    assert rows["short"]["maxTotalTokens"] == 4096 and rows["long"]["maxTotalTokens"] == 12288
    assert rows["short"]["fallbackPool"] == "long" and gw["status"]["defaultPool"] == "short"
    for kind in ("deployment", "service", "serviceaccount", "role", "rolebinding", "hpa"):
        child = get(kind, "main-gateway", ns)
        assert child is not None and child["metadata"]["ownerReferences"][0]["kind"] == "ModelGateway", kind

    # The gateway process, as its pod would run it, with the Role the operator made for it.
    kubeconfig = token_kubeconfig("main-gateway", ns, tmp_path / "gw.kubeconfig")
    port = free_port()
    with (tmp_path / "gw.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tgipool.cli",
                "gateway",
                "--modelgateway",
                "main",
                "-n",
                ns,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--interval",
                "0.5",
                "--log-level",
                "INFO",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**__import__("os").environ, "KUBECONFIG": str(kubeconfig)},
        )
    try:
        base = f"http://127.0.0.1:{port}"
        short = {"inputs": "What is a KV cache?", "parameters": {"max_new_tokens": 8}}
        wait_for(
            "gateway serving",
            lambda: post(f"{base}/generate", short, {"X-Model": "llama3-8b-ru"})[0] == 200,
            timeout=60,
        )
        status, headers, body = post(f"{base}/generate", short, {"X-Model": "llama3-8b-ru"})
        assert status == 200 and headers["X-TGIPool-Pool"] == "short"
        assert headers["X-TGIPool-Endpoint"] in pod_urls("short", ns)
        assert body["generated_text"]

        long_prompt = {"inputs": "tell me more " * 1000, "parameters": {"max_new_tokens": 16}}
        status, headers, _ = post(f"{base}/generate", long_prompt, {"X-Model": "llama3-8b-ru"})
        assert status == 200 and headers["X-TGIPool-Pool"] == "long"
        assert headers["X-TGIPool-Endpoint"] in pod_urls("long", ns)

        chat = {"model": "code-7b", "max_tokens": 8, "messages": [{"role": "user", "content": "def f():"}]}
        status, headers, body = post(f"{base}/v1/chat/completions", chat)
        assert status == 200 and headers["X-TGIPool-Pool"] == "code"
        assert headers["X-TGIPool-Endpoint"] in pod_urls("code", ns)
        assert body["object"] == "chat.completion"

        status, headers, _ = post(f"{base}/generate", short)
        assert status == 200 and headers["X-TGIPool-Pool"] == "short", "no model: the default pool"

        too_long = {"inputs": "word " * 20000, "parameters": {"max_new_tokens": 16}}
        status, _, body = post(f"{base}/generate", too_long, {"X-Model": "llama3-8b-ru"})
        assert status == 422 and body["error_type"] == "validation"

        # A pool scaled up is followed live: its new pod starts answering through the gateway.
        kubectl("scale", "modelpool", "code", "-n", ns, "--replicas=2")
        wait_for("2 code pods", lambda: len(pod_urls("code", ns)) == 2, timeout=60)
        seen: set[str] = set()

        def both_code_pods() -> bool:
            st, hd, _ = post(f"{base}/v1/chat/completions", chat)
            if st == 200:
                seen.add(hd["X-TGIPool-Endpoint"])
            return seen == pod_urls("code", ns)

        wait_for("requests reach both code pods", both_code_pods, timeout=60, interval=0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
