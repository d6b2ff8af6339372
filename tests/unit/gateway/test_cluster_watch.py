"""The gateway follows the cluster by LIST+WATCH: against a loopback aiohttp server that speaks the
API server's list and watch protocol (resourceVersions, bookmarks, 410 Gone, timeoutSeconds)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from kubernetes.config import kube_config

from tgipool.gateway import kube_watch
from tgipool.gateway.cluster_source import ClusterSource
from tgipool.gateway.config import GatewayConfig
from tgipool.gateway.kube_watch import Informer, KubeApi

NS = "ml"
POOLS = f"/apis/tgipool.io/v1alpha1/namespaces/{NS}/modelpools"
GATEWAYS = f"/apis/tgipool.io/v1alpha1/namespaces/{NS}/modelgateways"
PODS = f"/api/v1/namespaces/{NS}/pods"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"


class FakeApiServer:
    """Objects by collection path; every write bumps one resourceVersion and wakes the watchers."""

    def __init__(self) -> None:
        self.version = 1
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (version, path, type, object)
        self.requests: list[tuple[str, str]] = []  # (LIST | WATCH, path)
        self.tokens: set[str | None] = set()
        self.failures: list[int | str] = []  # the next requests fail: an HTTP status, "gone" or "early"
        self.changed = asyncio.Condition()
        self.app = web.Application()
        self.app.router.add_get("/{tail:.*}", self.handle)

    async def put(self, path: str, obj: dict[str, Any], kind: str = "MODIFIED") -> None:
        self.version += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}
        store = self.objects.setdefault(path, {})
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            store.pop(name, None)
        else:
            kind = "MODIFIED" if name in store and kind != "ADDED" else "ADDED"
            store[name] = obj
        self.history.append((self.version, path, kind, obj))
        async with self.changed:
            self.changed.notify_all()

    @staticmethod
    def _matches(obj: dict[str, Any], query: Any) -> bool:
        field = query.get("fieldSelector")
        if field and obj["metadata"]["name"] != field.removeprefix("metadata.name="):
            return False
        label = query.get("labelSelector")
        if label:
            key, value = label.split("=")
            return bool((obj["metadata"].get("labels") or {}).get(key) == value)
        return True

    async def handle(self, request: web.Request) -> web.StreamResponse:
        watch = request.query.get("watch") == "1"
        self.requests.append(("WATCH" if watch else "LIST", request.path))
        self.tokens.add(request.headers.get("Authorization"))
        failure = self.failures.pop(0) if self.failures else None
        if isinstance(failure, int):
            return web.json_response({"message": "injected"}, status=failure)
        if not watch:
            items = [
                o for o in self.objects.get(request.path, {}).values() if self._matches(o, request.query)
            ]
            return web.json_response({"metadata": {"resourceVersion": str(self.version)}, "items": items})
        since = int(request.query["resourceVersion"])
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if failure == "early":  # a proxy cutting the stream: no event, no error
            return resp
        if failure == "gone":  # how the API server says the version was compacted away
            gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
            await resp.write(json.dumps(gone).encode() + b"\n")
            return resp
        deadline = asyncio.get_running_loop().time() + float(request.query["timeoutSeconds"])
        while True:
            for version, path, kind, obj in self.history:
                if version > since and path == request.path and self._matches(obj, request.query):
                    await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            since = self.version
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), left)
        bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(self.version)}}}
        await resp.write(json.dumps(bookmark).encode() + b"\n")
        return resp

    def count(self, verb: str, path: str) -> int:
        return sum(1 for r in self.requests if r == (verb, path))


@contextlib.asynccontextmanager
async def serving(
    api_for: Callable[[str], KubeApi] = KubeApi,
) -> AsyncIterator[tuple[FakeApiServer, KubeApi]]:
    fake = FakeApiServer()
    runner = web.AppRunner(fake.app, handler_cancellation=True)  # a client gone ends its watch
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with api_for(f"http://127.0.0.1:{port}") as api:
        yield fake, api
    await runner.cleanup()


def endpoints(cfg: GatewayConfig) -> dict[str, list[str]]:
    return {p.name: p.endpoints for p in cfg.pools}


async def until(what: str, check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def pool(name: str, **routing: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS, "labels": {"tgipool.io/gateway": "main"}},
        "spec": {
            "model": {"id": "org/m", "revision": "a" * 40, "servedName": "m"},
            "profile": "short",
            "routing": routing,
        },
    }


def pod(pool: str, ip: str, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{pool}-{ip}",
            "labels": {"tgipool.io/pool": pool, "app.kubernetes.io/component": "inference-server"},
        },
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def secret(tenants: list[dict[str, Any]]) -> dict[str, Any]:
    data = base64.b64encode(yaml.safe_dump(tenants).encode()).decode()
    return {"metadata": {"name": "keys", "namespace": NS}, "data": {"tenants.yaml": data}}


GATEWAY = {
    "metadata": {"name": "main", "namespace": NS},
    "spec": {
        "poolSelector": {"matchLabels": {"tgipool.io/gateway": "main"}},
        "defaultPool": "short",
        "tenantsSecretRef": {"name": "keys"},
    },
}


def test_cluster_source_follows_pools_pods_gateway_and_secret() -> None:
    asyncio.run(_follows())


async def _follows() -> None:
    async with serving() as (fake, api):
        await fake.put(GATEWAYS, GATEWAY)
        await fake.put(GATEWAYS, {**GATEWAY, "metadata": {"name": "other", "namespace": NS}})
        await fake.put(POOLS, pool("short", fallbackPool="long"))
        await fake.put(PODS, pod("short", "10.0.0.1"))
        await fake.put(SECRETS, secret([{"name": "a", "apiKey": "key-aaaaaaaa", "pools": ["short"]}]))
        applied: list[GatewayConfig] = []
        source = ClusterSource(api, NS, "main")
        task = asyncio.create_task(source.follow(applied.append, 0.01))
        try:
            await until("the first table", lambda: bool(applied))
            cfg = applied[-1]
            assert [(p.name, p.endpoints, p.fallback_pool) for p in cfg.pools] == [
                ("short", ["http://10.0.0.1:8080"], None)
            ]
            assert cfg.default_pool == "short" and [t.name for t in cfg.tenants] == ["a"]

            def last(check: Callable[[GatewayConfig], bool]) -> Callable[[], bool]:
                return lambda: check(applied[-1])

            await fake.put(POOLS, pool("long"), "ADDED")
            await until(
                "the fallback pool",
                last(lambda c: {p.name: p.fallback_pool for p in c.pools} == {"long": None, "short": "long"}),
            )
            await fake.put(PODS, pod("long", "10.0.0.2"), "ADDED")
            await until("a new ready pod", last(lambda c: endpoints(c)["long"] == ["http://10.0.0.2:8080"]))
            await fake.put(PODS, pod("short", "10.0.0.1", ready=False))
            await until("a pod turned unready", last(lambda c: endpoints(c)["short"] == []))
            await fake.put(SECRETS, secret([{"name": "b", "apiKey": "key-bbbbbbbb"}]))
            await until("rotated tenants", last(lambda c: [t.name for t in c.tenants] == ["b"]))
            await fake.put(POOLS, pool("long"), "DELETED")
            await until("a deleted pool", last(lambda c: [p.name for p in c.pools] == ["short"]))
            await fake.put(GATEWAYS, {**GATEWAY, "spec": {**GATEWAY["spec"], "tenantsSecretRef": None}})
            await until("no tenants", last(lambda c: c.tenants == []))
            # Other gateways' objects and the Secret watched by name only: one watch query each, by selector.
            assert {p for _, p in fake.requests} == {GATEWAYS, POOLS, PODS, SECRETS}
            assert all(fake.count("LIST", p) == 1 for p in (GATEWAYS, POOLS, PODS, SECRETS)), fake.requests
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_a_broken_gateway_keeps_the_last_table() -> None:
    asyncio.run(_keeps_last())


async def _keeps_last() -> None:
    async with serving() as (fake, api):
        await fake.put(GATEWAYS, {**GATEWAY, "spec": {**GATEWAY["spec"], "tenantsSecretRef": None}})
        await fake.put(POOLS, pool("short"))
        applied: list[GatewayConfig] = []
        task = asyncio.create_task(ClusterSource(api, NS, "main").follow(applied.append, 0.01))
        try:
            await until("the first table", lambda: bool(applied))
            await fake.put(GATEWAYS, GATEWAY)  # names a Secret that does not exist
            await fake.put(GATEWAYS, GATEWAY, "DELETED")
            await asyncio.sleep(0.2)
            assert len(applied) == 1 and [p.name for p in applied[0].pools] == ["short"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_informer_rewatches_relists_on_gone_and_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_watch, "MIN_BACKOFF_SECONDS", 0.05)
    asyncio.run(_rewatches())


async def _rewatches() -> None:
    async with serving() as (fake, api):
        await fake.put(PODS, pod("p", "10.0.0.1"))
        changes: list[int] = []
        informer = Informer(api, PODS, {}, lambda: changes.append(1), resync_seconds=3600, watch_seconds=1)
        task = asyncio.create_task(informer.run())
        try:
            await until("the list", lambda: informer.synced)
            # The server ends each watch after timeoutSeconds: watch again from the version, no list.
            await until("a second watch", lambda: fake.count("WATCH", PODS) >= 2, timeout=4)
            assert fake.count("LIST", PODS) == 1
            await fake.put(PODS, pod("p", "10.0.0.2"), "ADDED")
            await until("the added pod", lambda: "p-10.0.0.2" in informer.items)
            fake.failures.append("gone")  # the next watch: 410 Gone, so a fresh list at once
            await until("a relist after Gone", lambda: fake.count("LIST", PODS) == 2, timeout=3)
            fake.failures.append(500)  # the next request fails: back off, then list again
            await fake.put(PODS, pod("p", "10.0.0.1"), "DELETED")
            await until("a relist after an error", lambda: fake.count("LIST", PODS) == 3, timeout=3)
            await until("the deleted pod", lambda: set(informer.items) == {"p-10.0.0.2"})
            fake.failures.append("early")  # a watch cut short is a failure too, not a reason to spin
            await until("a relist after a cut watch", lambda: fake.count("LIST", PODS) == 4, timeout=3)
            assert fake.count("WATCH", PODS) < 12
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_informer_resyncs() -> None:
    asyncio.run(_resyncs())


async def _resyncs() -> None:
    async with serving() as (fake, api):
        informer = Informer(api, POOLS, {}, lambda: None, resync_seconds=0.3, watch_seconds=1)
        task = asyncio.create_task(informer.run())
        try:
            await until("two relists", lambda: fake.count("LIST", POOLS) >= 3, timeout=5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_credentials_come_from_the_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    def from_kubeconfig(server: str) -> KubeApi:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": server}}],
            "users": [{"name": "u", "user": {"token": "sa-token-123"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
        # kubernetes reads $KUBECONFIG once, when first imported
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
        return KubeApi.from_environment()

    async def scenario() -> None:
        async with serving(from_kubeconfig) as (fake, api):
            assert await api.list(PODS, {}) == ([], "1")
            assert fake.tokens == {"Bearer sa-token-123"}

    asyncio.run(scenario())
