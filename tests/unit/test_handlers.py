"""The handlers against an in-memory API server: what they write, what they never write twice, and
how refused writes end up on status and in kopf's retry logic."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting

from tgipool.config import DEFAULT_CONFIG
from tgipool.handlers.indexes import Snapshot
from tgipool.handlers.modelgateway import reconcile_gateway
from tgipool.handlers.reconcile import reconcile
from tgipool.handlers.writer import Writer
from tgipool.k8s.client import ApplyError

from .conftest import load_example

LOG = logging.getLogger("test")


class FakeKube:
    """Keeps objects by (kind, namespace, name), bumps resourceVersions, counts every request."""

    field_manager = "tgipool"

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.refuse: dict[str, int] = {}  # kind -> HTTP status the next applies of it get
        self.rv = 100

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        self.requests.append(("apply", f"{kind}/{name}"))
        if kind in self.refuse:
            raise ApplyError(kind, name, self.refuse[kind], "Refused", f"cannot create resource {kind}")
        return self._store(copy.deepcopy(manifest))

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        self.requests.append(("get", f"{kind}/{name}"))
        if (kind, namespace, name) not in self.objects:
            raise ApplyError(kind, name, 404, "NotFound", "not found")
        return copy.deepcopy(self.objects[(kind, namespace, name)])

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.requests.append(("delete", f"{kind}/{name}"))
        self.objects.pop((kind, namespace, name), None)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any], kind: str) -> dict[str, Any]:
        self.requests.append(("patch_status", f"{kind}/{name}"))
        obj = self.objects[(kind, namespace, name)]
        merged = {**obj.get("status", {}), **status}
        obj["status"] = {k: v for k, v in merged.items() if v is not None}
        self.last_status_patch = status
        return self._store(obj)

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "get"]


def run(step: Callable[[], Awaitable[Any]]) -> Any:
    """Runs a handler step with kopf's event posting wired to a queue (as inside the operator)."""

    async def main() -> Any:
        settings = kopf.OperatorSettings()
        posting.settings_var.set(settings)
        posting.event_queue_loop_var.set(asyncio.get_running_loop())
        posting.event_queue_var.set(asyncio.Queue())
        return await step()

    return asyncio.run(main())


def created(kube: FakeKube, doc: dict[str, Any]) -> dict[str, Any]:
    """The object as the watch first delivers it."""
    doc = copy.deepcopy(doc)
    doc["metadata"].setdefault("namespace", "ml")
    doc["metadata"].update(uid="uid-1", generation=1)
    return kube._store(doc)


def gateway_doc() -> dict[str, Any]:
    doc = load_example("gateway")
    doc["metadata"]["namespace"] = "ml"
    return doc


def ready_pool(name: str) -> dict[str, Any]:
    doc = load_example(name)
    doc["metadata"]["namespace"] = "ml"
    doc["status"] = {"readyReplicas": 1}
    return doc


def test_gateway_clears_its_default_pool_when_the_pool_leaves() -> None:
    """The bug: status patches cleared only a pool's status keys, so defaultPool stayed forever."""
    kube = FakeKube()
    writer = Writer(kube)  # type: ignore[arg-type]
    gw = created(kube, gateway_doc())
    default = gw["spec"]["defaultPool"]
    run(lambda: reconcile_gateway(gw, [ready_pool(default)], {}, writer, LOG, pods=[]))
    assert kube.objects[("ModelGateway", "ml", "main")]["status"]["defaultPool"] == default

    # The watch's copy still holds the old status; the pool is gone from the index.
    run(lambda: reconcile_gateway(gw, [], {}, writer, LOG, pods=[]))
    assert kube.last_status_patch.get("defaultPool", "kept") is None
    status = kube.objects[("ModelGateway", "ml", "main")]["status"]
    assert "defaultPool" not in status and status["routedPools"] == 0


def test_unchanged_gateway_makes_no_writes_and_reads_unwatched_children_once() -> None:
    kube = FakeKube()
    writer = Writer(kube)  # type: ignore[arg-type]
    gw = created(kube, gateway_doc())
    pools = [ready_pool("llama3-8b-ru-short")]
    run(lambda: reconcile_gateway(gw, pools, {}, writer, LOG, pods=[]))
    assert len(kube.writes()) == 7, "six children and the status"
    assert sorted(r for r in kube.requests if r[0] == "get") == [
        ("get", "Role/main-gateway"),
        ("get", "RoleBinding/main-gateway"),
        ("get", "ServiceAccount/main-gateway"),
    ]
    before = len(kube.requests)
    # Watch lag: neither the children nor the new status have reached the caches yet.
    run(lambda: reconcile_gateway(gw, pools, {}, writer, LOG, pods=[]))
    assert kube.requests[before:] == []


def pool_doc() -> dict[str, Any]:
    return load_example("llama3-8b-ru-short")


def test_unchanged_pool_makes_no_writes_under_watch_lag() -> None:
    kube = FakeKube()
    writer = Writer(kube)  # type: ignore[arg-type]
    pool = created(kube, pool_doc())
    empty = Snapshot(children={}, pods=[])
    first = run(lambda: reconcile(pool, empty, writer, DEFAULT_CONFIG, LOG))
    kinds = [a.split("/")[0] for a in first.applied]
    assert kinds == ["Service", "PersistentVolumeClaim", "Job"], "no Deployment until the weights are fetched"
    assert first.status_written
    second = run(lambda: reconcile(pool, empty, writer, DEFAULT_CONFIG, LOG))
    assert second.writes == 0


def test_a_refused_write_is_a_condition_and_a_permanent_error() -> None:
    kube = FakeKube()
    kube.refuse["Role"] = 403
    writer = Writer(kube)  # type: ignore[arg-type]
    gw = created(kube, gateway_doc())
    with pytest.raises(kopf.PermanentError, match="cannot create resource Role"):
        run(lambda: reconcile_gateway(gw, [], {}, writer, LOG, pods=[]))
    status = kube.objects[("ModelGateway", "ml", "main")]["status"]
    ready = status["conditions"][0]
    assert (status["phase"], ready["status"], ready["reason"]) == ("Degraded", "False", "ApplyRefused")
    assert ("apply", "Deployment/main-gateway") in kube.requests, "the other children are still applied"


def test_a_server_error_is_retried_soon() -> None:
    kube = FakeKube()
    kube.refuse["Service"] = 503
    writer = Writer(kube)  # type: ignore[arg-type]
    pool = created(kube, pool_doc())
    with pytest.raises(kopf.TemporaryError) as err:
        run(lambda: reconcile(pool, Snapshot(children={}, pods=[]), writer, DEFAULT_CONFIG, LOG))
    assert err.value.delay == 10
    degraded = {
        c["type"]: c for c in kube.objects[("ModelPool", "ml", "llama3-8b-ru-short")]["status"]["conditions"]
    }
    assert (degraded["Degraded"]["status"], degraded["Degraded"]["reason"]) == ("True", "ApplyFailed")


def test_status_details_settle_but_turns_are_written_at_once() -> None:
    """While children come up, a message or a count waits `settle` seconds after the pool's last status
    write; a phase or a condition that turns is written at once."""
    kube = FakeKube()
    writer = Writer(kube)  # type: ignore[arg-type]
    pool = created(kube, pool_doc())
    name = pool["metadata"]["name"]

    def status_writes() -> int:
        return sum(1 for verb, _ in kube.requests if verb == "patch_status")

    def step(children: dict[tuple[str, str], Any]) -> Any:
        return run(lambda: reconcile(pool, Snapshot(children, []), writer, DEFAULT_CONFIG, LOG, settle=5.0))

    first = step({})
    assert first.status_written and status_writes() == 1
    status = kube.objects[("ModelPool", "ml", name)]["status"]
    # Our own answer for the Job counts: it exists, so the weights are being fetched (not FetchPending).
    assert {c["type"]: c["reason"] for c in status["conditions"]}["WeightsCached"] == "Fetching"
    job = next(a for a in first.applied if a.startswith("Job/")).split("/")[1]
    done = {"kind": "Job", "metadata": {"name": job, "resourceVersion": "100000"}, "status": {"succeeded": 1}}

    def deployment(ready: int, rv: str) -> dict[str, Any]:
        return {
            "kind": "Deployment",
            "metadata": {"name": name, "generation": 1, "resourceVersion": rv},
            "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": ready},
        }

    assert step({("Job", job): done}).status_written, "WeightsCached turned True"
    assert status_writes() == 2
    # The Deployment we applied is rolling out; now it is scaling up (1/2 ready): only a message and counts.
    waiting = step({("Job", job): done, ("Deployment", name): deployment(1, "100001")})
    assert not waiting.status_written and waiting.status_due is not None and status_writes() == 2
    assert 4.0 < waiting.status_due - time.monotonic() <= 5.0
    # Ready turns True: at once, whatever waited.
    ready = step({("Job", job): done, ("Deployment", name): deployment(2, "100002")})
    assert ready.status_written and status_writes() == 3
    assert kube.objects[("ModelPool", "ml", name)]["status"]["phase"] == "Ready"
    # Nothing changed: no status written, nothing waits (the hand-made children are applied again).
    again = step({("Job", job): done, ("Deployment", name): deployment(2, "100002")})
    assert not again.status_written and again.status_due is None and status_writes() == 3


def test_settled_status_is_written_when_due() -> None:
    kube = FakeKube()
    writer = Writer(kube)  # type: ignore[arg-type]
    pool = created(kube, pool_doc())
    run(lambda: reconcile(pool, Snapshot({}, []), writer, DEFAULT_CONFIG, LOG, settle=5.0))
    key = ("ModelPool", "ml", pool["metadata"]["name"])
    current = kube.objects[key]
    current["status"]["ready"] = "stale"  # a detail that differs from what the operator computes
    pool = {**pool, "status": current["status"], "metadata": {**pool["metadata"], "resourceVersion": "99999"}}
    writer.forget(*key)
    early = run(lambda: reconcile(pool, Snapshot({}, []), writer, DEFAULT_CONFIG, LOG, settle=5.0))
    assert not early.status_written and early.status_due is not None
    writer._status_at[key] -= 5.0  # the last write is 5 s old
    due = run(lambda: reconcile(pool, Snapshot({}, []), writer, DEFAULT_CONFIG, LOG, settle=5.0))
    assert due.status_written and due.status_due is None


def test_child_events_fold_into_one_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of child events is one reconcile, from the caches as they are when it starts; an event
    after it started asks for one more."""
    from tgipool.handlers import pool as pool_handlers
    from tgipool.handlers.indexes import pack

    key = ("ml", "p")
    kwargs = {"pool_index": {key: [pack({"metadata": {"name": "p", "namespace": "ml", "generation": 1}})]}}
    loaded: list[int] = []

    async def fake_reconcile(key: Any, load: Any, memo: Any, logger: Any, kwargs: Any) -> None:
        raw = load()
        loaded.append(raw["metadata"]["generation"])
        await asyncio.sleep(0.05)

    monkeypatch.setattr(pool_handlers, "_reconcile", fake_reconcile)
    memo = kopf.Memo(queued=set())

    async def main() -> None:
        burst = [pool_handlers._refresh(key, kwargs, memo, LOG, delay=0.02) for _ in range(10)]
        first = asyncio.gather(*burst)
        await asyncio.sleep(0.03)  # the reconcile runs; the caches change meanwhile
        kwargs["pool_index"][key] = [pack({"metadata": {"name": "p", "namespace": "ml", "generation": 2}})]
        await pool_handlers._refresh(key, kwargs, memo, LOG, delay=0.0)
        await first

    asyncio.run(main())
    assert loaded == [1, 2] and memo.queued == set()


@pytest.mark.parametrize("error", ["temporary", "permanent"])
def test_a_child_events_reconcile_refused_for_now_is_retried(
    monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    """A reconcile asked by a child event whose write the API server refuses for now (an etcd restart's
    500) runs again after the error's delay; no kopf handler would retry it, and the pool's status would
    keep what the write was to change (CI: a rollout's end, a pool left `Progressing`). A permanent
    refusal waits for a change."""
    from tgipool.handlers import pool as pool_handlers
    from tgipool.handlers.indexes import pack

    key = ("ml", "p")
    kwargs = {"pool_index": {key: [pack({"metadata": {"name": "p", "namespace": "ml", "generation": 1}})]}}
    calls: list[float] = []

    async def refusing_once(key: Any, load: Any, memo: Any, logger: Any, kwargs: Any) -> None:
        load()
        calls.append(time.monotonic())
        if len(calls) == 1:
            if error == "temporary":
                raise kopf.TemporaryError("ModelPool ml/p: 1 write(s) refused, first 500", delay=0.2)
            raise kopf.PermanentError("ModelPool ml/p: 1 write(s) refused, first 403")

    monkeypatch.setattr(pool_handlers, "_reconcile", refusing_once)
    memo = kopf.Memo(queued=set(), settling={}, posting=[contextvars.copy_context()])

    async def main() -> None:
        await pool_handlers._refresh(key, kwargs, memo, LOG, delay=0.0)
        await asyncio.sleep(0.6)

    asyncio.run(main())
    if error == "temporary":
        assert len(calls) == 2, calls
        assert 0.15 <= calls[1] - calls[0] < 0.5, "retried after the error's delay"
    else:
        assert len(calls) == 1, "a permanent refusal is not repeated"
    assert memo.settling == {}


def test_a_tapped_child_event_asks_for_its_pools_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a kind's tap calls (`child_changed`): nothing before any handler ran (each pool's first reconcile
    reads the caches), then one refresh per pool at a time; a deletion is forgotten by the writer."""
    import contextvars

    from tgipool.handlers import pool as pool_handlers

    refreshed: list[tuple[str, str]] = []

    async def fake_refresh(key: Any, kwargs: Any, memo: Any, logger: Any) -> None:
        refreshed.append(key)

    forgotten: list[tuple[str, str, str]] = []

    class Writer:
        def forget(self, kind: str, namespace: str, name: str) -> None:
            forgotten.append((kind, namespace, name))

    monkeypatch.setattr(pool_handlers, "_refresh", fake_refresh)
    memo = kopf.Memo(queued=set(), refreshing=set(), posting=[], indexes={}, writer=Writer())

    async def main() -> None:
        pool_handlers.child_changed(memo, LOG, "MODIFIED", "Deployment", "ml", "p", ("ml", "p"))
        assert not memo.refreshing  # no handler has run yet
        memo.posting.append(contextvars.copy_context())
        pool_handlers.child_changed(memo, LOG, "DELETED", "Service", "ml", "p-svc", ("ml", "p"))
        memo.queued.add(("ml", "q"))  # a reconcile of q waits to read the caches: it will see this
        pool_handlers.child_changed(memo, LOG, "MODIFIED", "Job", "ml", "q-fetch", ("ml", "q"))
        await asyncio.gather(*memo.refreshing)

    asyncio.run(main())
    assert refreshed == [("ml", "p")]
    assert forgotten == [("Service", "ml", "p-svc")]


class SlowKube(FakeKube):
    """Each apply takes a while in its thread, as against a busy API server."""

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.01)
        return super().apply(manifest)


def test_a_burst_of_pools_renders_and_writes_a_few_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty new pools at once: no more reconciles hold rendered children than twice the writer's threads
    (all twenty did, and a thousand new pools set the operator's memory for good)."""
    from tgipool.desired import build_children

    kube = SlowKube()
    writer = Writer(kube, threads=2)  # type: ignore[arg-type]
    active, peak = 0, 0
    write_status = writer.write_status

    def rendering(*args: Any, **kwargs: Any) -> Any:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        return build_children(*args, **kwargs)

    async def done(*args: Any, **kwargs: Any) -> None:
        nonlocal active
        try:
            await write_status(*args, **kwargs)
        finally:
            active -= 1

    monkeypatch.setattr("tgipool.handlers.reconcile.build_children", rendering)
    monkeypatch.setattr(writer, "write_status", done)
    pools = []
    for i in range(20):
        doc = pool_doc()
        doc["metadata"]["name"] = f"p{i}"
        pools.append(created(kube, doc))
    empty = Snapshot(children={}, pods=[])

    async def burst() -> list[Any]:
        return await asyncio.gather(*(reconcile(p, empty, writer, DEFAULT_CONFIG, LOG) for p in pools))

    outs = run(burst)
    assert all(out.status_written for out in outs)
    assert peak == 4
