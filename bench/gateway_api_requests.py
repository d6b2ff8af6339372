"""The gateway's API requests per minute: polling (before) against LIST+WATCH (after), on a real API server.

Two gateways follow the same ModelGateway, the example pools, a ready pod and a tenants Secret on the local
cluster (or $KUBECONFIG), one after the other, each through a counting proxy in front of the API server.
"before" is the code just before the watch landed (the parent of the commit that added
`gateway/kube_watch.py`, from `git archive`); "after" is this tree. Requests are counted as they start, by
verb (GET, LIST, WATCH) and resource, over `--seconds` after a warm-up that covers the first lists; during
the window the pod turns unready and ready again, which "after" must follow. A window past 300 s includes
one resync (a LIST and a new WATCH per query).

    make cluster-up && .venv/bin/python bench/gateway_api_requests.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import kubernetes
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.e2e.cluster import apply, kubectl  # noqa: E402  (shared API-server helpers)

EXAMPLES = ROOT / "examples"
TENANTS = [{"name": "team-a", "apiKey": "key-team-a-0123", "pools": []}]


class CountingProxy:
    """Plain HTTP on loopback in front of the API server, with the admin's credentials; counts requests."""

    def __init__(self) -> None:
        conf = kubernetes.client.Configuration()
        # By name: the library reads $KUBECONFIG for its default at import, before main() sets it.
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.environ["KUBECONFIG"], client_configuration=conf
        )
        self.upstream = conf.host.rstrip("/")
        self.ssl = ssl.create_default_context(cafile=conf.ssl_ca_cert)
        if conf.cert_file:
            self.ssl.load_cert_chain(conf.cert_file, conf.key_file)
        token = conf.get_api_key_with_prefix("BearerToken", alias="authorization")
        self.auth = {"Authorization": token} if token else {}
        self.counts: Counter[tuple[str, str]] = Counter()
        self.session: aiohttp.ClientSession | None = None
        self.port = 0

    @staticmethod
    def classify(request: web.Request) -> tuple[str, str]:
        """(GET | LIST | WATCH | method, resource) of `.../namespaces/NS/PLURAL[/NAME]`."""
        parts = request.path.strip("/").split("/")
        at = parts.index("namespaces") + 2 if "namespaces" in parts else len(parts) - 1
        resource = parts[min(at, len(parts) - 1)]
        if request.method != "GET":
            return request.method, resource
        if request.query.get("watch") in ("1", "true"):
            return "WATCH", resource
        return ("GET" if len(parts) > at + 1 else "LIST"), resource

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.counts[self.classify(request)] += 1
        assert self.session is not None
        async with self.session.request(
            request.method,
            self.upstream + request.path_qs,
            headers={"Accept": request.headers.get("Accept", "application/json"), **self.auth},
            data=await request.read() or None,
            ssl=self.ssl,
        ) as upstream:
            resp = web.StreamResponse(
                status=upstream.status, headers={"Content-Type": upstream.headers.get("Content-Type", "")}
            )
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def start(self) -> web.AppRunner:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        return runner

    async def stop(self, runner: web.AppRunner) -> None:
        assert self.session is not None
        await self.session.close()
        await runner.cleanup()


def kubeconfig_for(port: int, path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "proxy", "user": {}}],
                "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
                "current-context": "proxy",
            }
        )
    )
    return path


def before_tree(tmp: Path) -> Path:
    """The package as it was just before the gateway watched (git archive of that commit)."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "operator/tgipool/gateway/kube_watch.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    out = tmp / "before"
    out.mkdir()
    archive = subprocess.run(
        ["git", "archive", f"{added}^", "operator"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "operator"


POD = "llama3-8b-ru-short-bench"


def setup(ns: str) -> None:
    kubectl("create", "namespace", ns)
    tenants = yaml.safe_dump(TENANTS)
    kubectl(
        "create", "secret", "generic", "gateway-tenants", "-n", ns, f"--from-literal=tenants.yaml={tenants}"
    )
    for f in sorted(EXAMPLES.glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        doc["metadata"]["namespace"] = ns
        if doc["kind"] == "ModelGateway":
            doc["spec"]["tenantsSecretRef"] = {"name": "gateway-tenants"}
        apply(doc)
    # A server pod that no node takes: its status is ours to write (no operator, no kubelet needed).
    labels = {"tgipool.io/pool": "llama3-8b-ru-short", "app.kubernetes.io/component": "inference-server"}
    spec = {
        "nodeSelector": {"tgipool.io/bench": "none"},
        "containers": [{"name": "tgi", "image": "tgi:bench"}],
    }
    apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": POD, "namespace": ns, "labels": labels},
            "spec": spec,
        }
    )
    set_ready(ns, True)


def set_ready(ns: str, ready: bool) -> None:
    status = {"podIP": "10.99.0.1", "conditions": [{"type": "Ready", "status": str(ready)}]}
    kubectl(
        "patch",
        "pod",
        POD,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def measure(
    label: str, pythonpath: Path, ns: str, seconds: float, warmup: float, tmp: Path
) -> tuple[Counter[tuple[str, str]], int]:
    """(requests by verb and resource in the window, routing tables the gateway applied in it)."""
    proxy = CountingProxy()
    runner = await proxy.start()
    config = kubeconfig_for(proxy.port, tmp / f"{label}.kubeconfig")
    log = (tmp / f"{label}.log").open("wb")
    env = {**os.environ, "KUBECONFIG": str(config), "PYTHONPATH": str(pythonpath)}
    args = ["gateway", "--modelgateway", "main", "-n", ns, "--host", "127.0.0.1", "--port", str(free_port())]
    proc = subprocess.Popen([sys.executable, "-m", "tgipool.cli", *args], env=env, stdout=log, stderr=log)
    logged = tmp / f"{label}.log"
    try:
        await asyncio.sleep(warmup)
        proxy.counts.clear()
        tables = logged.read_text().count("routing table:")
        await asyncio.sleep(seconds / 3)
        await asyncio.to_thread(set_ready, ns, False)
        await asyncio.sleep(seconds / 3)
        await asyncio.to_thread(set_ready, ns, True)
        await asyncio.sleep(seconds / 3)
        counts = Counter(proxy.counts)
        tables = logged.read_text().count("routing table:") - tables
        assert proc.poll() is None, logged.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        await proxy.stop(runner)
    return counts, tables


def report(label: str, counts: Counter[tuple[str, str]], seconds: float) -> float:
    per_minute = sum(counts.values()) * 60 / seconds
    detail = ", ".join(f"{verb} {res}: {n}" for (verb, res), n in sorted(counts.items()))
    print(f"{label:7s} {per_minute:8.1f} requests/min  ({detail or 'none'})")
    return per_minute


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="counting window per gateway (default 60)")
    parser.add_argument("--warmup", type=float, default=10, help="seconds before counting (default 10)")
    args = parser.parse_args()
    if "KUBECONFIG" not in os.environ:
        os.environ["KUBECONFIG"] = str(ROOT / ".cluster/kubeconfig")
    ns = f"gw-bench-{uuid.uuid4().hex[:6]}"
    setup(ns)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runs = {
                label: asyncio.run(measure(label, tree, ns, args.seconds, args.warmup, Path(tmp)))
                for label, tree in (("before", before_tree(Path(tmp))), ("after", ROOT / "operator"))
            }
        print(
            f"gateway API requests per minute, one replica, over {args.seconds:g}s "
            f"after a {args.warmup:g}s warm-up"
        )
        b, a = (report(label, runs[label][0], args.seconds) for label in ("before", "after"))
        print(f"ratio   {b / max(a, 60 / args.seconds):8.1f}x fewer (after counted as at least 1 request)")
        # The old code's ModelPool model refuses fields today's CRD defaults, so only "after" is checked.
        print(f"after followed {runs['after'][1]} of the 2 routing-table changes (a pod unready, then ready)")
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
