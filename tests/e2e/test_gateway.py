"""A ModelGateway on the simulated cluster: requests through the gateway reach emulated pods of the
right pool, with the gateway running under its own ServiceAccount's RBAC."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tgipool.gateway.routing import endpoint_id

from .cluster import ROOT, Operator, apply, get, items, kubectl, wait_for

EXAMPLES = ROOT / "examples"


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


def pod_endpoints(pool: str, ns: str) -> set[str]:
    """The pool's pods as the gateway names them in X-TGIPool-Endpoint (an id, never the address)."""
    pods = items("pods", ns, f"tgipool.io/pool={pool},app.kubernetes.io/component=inference-server")
    return {endpoint_id(f"http://{p['status']['podIP']}:8080") for p in pods if p["status"].get("podIP")}


def test_gateway_routes_to_emulated_pods_of_the_right_pool(
    operator: Operator, ns: str, tmp_path: Path
) -> None:
    # The example pools and gateway, as a platform team would apply them, plus a tenant.
    kubectl("create", "secret", "generic", "hf-token", "-n", ns, "--from-literal=token=placeholder")
    tenants = [
        {
            "name": "team-a",
            "apiKey": "key-team-a-0123",
            "pools": ["code-7b", "llama3-8b-ru-short", "llama3-8b-ru-long"],
        },
        {"name": "team-code", "apiKey": "key-team-code-0123", "pools": ["code-7b"]},
    ]
    kubectl(
        "create",
        "secret",
        "generic",
        "gateway-tenants",
        "-n",
        ns,
        f"--from-literal=tenants.yaml={yaml.safe_dump(tenants)}",
    )
    for f in sorted(EXAMPLES.glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        if doc["kind"] == "ModelPool" and doc["spec"].get("engine", {}).get("kind", "tgi") != "tgi":
            continue  # the TGI example set; vLLM and SGLang pools are routed in test_engines.py
        doc["metadata"]["namespace"] = ns
        if doc["kind"] == "ModelGateway":
            doc["spec"]["tenantsSecretRef"] = {"name": "gateway-tenants"}
        apply(doc)

    def table() -> dict[str, Any] | None:
        gw = get("modelgateway", "main", ns)
        status = (gw or {}).get("status") or {}
        ready = all(p["readyEndpoints"] >= 1 for p in status.get("pools", []))
        return gw if status.get("routedPools") == 4 and ready and status.get("phase") == "Ready" else None

    gw = wait_for("routing table of 4 ready pools", table, timeout=120)
    rows = {p["name"]: p for p in gw["status"]["pools"]}
    assert rows["llama3-8b-ru-short"]["maxTotalTokens"] == 4096
    assert rows["llama3-8b-ru-long"]["maxTotalTokens"] == 12288
    assert rows["llama3-8b-ru-short"]["fallbackPool"] == "llama3-8b-ru-long"
    assert gw["status"]["defaultPool"] == "llama3-8b-ru-short"
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
        a = {"Authorization": "Bearer key-team-a-0123"}
        llama = {**a, "X-Model": "llama3-8b-ru"}
        short = {"inputs": "What is a KV cache?", "parameters": {"max_new_tokens": 8}}

        def serving() -> bool:
            result = post(f"{base}/generate", short, llama)
            assert result[0] == 200, result  # wait_for reports the last answer on timeout
            return True

        wait_for("gateway serving", serving, timeout=60)
        status, headers, body = post(f"{base}/generate", short, llama)
        assert status == 200 and headers["X-TGIPool-Pool"] == "llama3-8b-ru-short"
        assert headers["X-TGIPool-Endpoint"] in pod_endpoints("llama3-8b-ru-short", ns)
        assert body["generated_text"]

        long_prompt = {"inputs": "tell me more " * 1000, "parameters": {"max_new_tokens": 16}}
        status, headers, _ = post(f"{base}/generate", long_prompt, llama)
        assert status == 200 and headers["X-TGIPool-Pool"] == "llama3-8b-ru-long"
        assert headers["X-TGIPool-Endpoint"] in pod_endpoints("llama3-8b-ru-long", ns)

        chat = {"model": "code-7b", "max_tokens": 8, "messages": [{"role": "user", "content": "def f():"}]}
        status, headers, body = post(f"{base}/v1/chat/completions", chat, a)
        assert status == 200 and headers["X-TGIPool-Pool"] == "code-7b"
        assert headers["X-TGIPool-Endpoint"] in pod_endpoints("code-7b", ns)
        assert body["object"] == "chat.completion"

        status, headers, _ = post(f"{base}/generate", short, a)
        assert status == 200 and headers["X-TGIPool-Pool"] == "llama3-8b-ru-short", "no model: the default"

        too_long = {"inputs": "word " * 20000, "parameters": {"max_new_tokens": 16}}
        status, _, body = post(f"{base}/generate", too_long, llama)
        assert status == 422 and body["error_type"] == "validation"

        # Tenants from the Secret: no key, a wrong key, a pool outside the tenant's list.
        assert post(f"{base}/generate", short, {"X-Model": "llama3-8b-ru"})[0] == 401
        wrong = {"X-Model": "llama3-8b-ru", "Authorization": "Bearer nope-nope-nope"}
        assert post(f"{base}/generate", short, wrong)[0] == 401
        code_only = {"Authorization": "Bearer key-team-code-0123"}
        assert post(f"{base}/generate", short, {**code_only, "X-Model": "llama3-8b-ru"})[0] == 403
        assert post(f"{base}/v1/chat/completions", chat, code_only)[0] == 200

        # A pool scaled up is followed live: its new pod starts answering through the gateway.
        kubectl("scale", "modelpool", "code-7b", "-n", ns, "--replicas=2")
        wait_for("2 code pods", lambda: len(pod_endpoints("code-7b", ns)) == 2, timeout=60)
        seen: set[str] = set()

        def both_code_pods() -> bool:
            st, hd, _ = post(f"{base}/v1/chat/completions", chat, a)
            if st == 200:
                seen.add(hd["X-TGIPool-Endpoint"])
            return seen == pod_endpoints("code-7b", ns)

        wait_for("requests reach both code pods", both_code_pods, timeout=60, interval=0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
