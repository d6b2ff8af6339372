"""Once `watch_stream` is installed, kopf's per-object workers get no pool child, and no managedFields."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from kopf._cogs.aiokits.aiotoggles import ToggleSet
from kopf._cogs.clients import watching
from kopf._cogs.structs.references import Resource
from kopf._core.reactor import queueing

from tgipool.desired import names
from tgipool.handlers import watch_stream
from tgipool.handlers.child_caches import ChildCaches
from tgipool.handlers.indexes import unpack


def _deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "labels": {"a": "b"},
            "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {"f:status": {}}}],
        },
        "spec": {"replicas": 1},
    }


def test_kopf_workers_get_bodies_without_managed_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    listed, modified = _deployment("listed"), _deployment("changed")
    events: list[Any] = [
        {"type": None, "object": listed},
        watching.Bookmark.LISTED,
        {"type": "MODIFIED", "object": modified},
    ]

    async def api_stream(**_: Any) -> AsyncIterator[Any]:  # what kopf's own stream would yield
        for event in events:
            yield event

    monkeypatch.setattr(watch_stream, "_kopf_watch", api_stream)
    monkeypatch.setattr(watching, "infinite_watch", watching.infinite_watch)  # undone after the test
    watch_stream.install()
    seen: list[dict[str, Any]] = []

    async def processor(*, raw_event: dict[str, Any], **_: Any) -> None:  # kopf's event processing
        seen.append(raw_event)

    resource = Resource(group="apps", version="v1", plural="deployments", namespaced=True)
    settings = kopf.OperatorSettings()
    settings.queueing.idle_timeout = 0.05  # a worker with nothing left ends soon after
    watcher = queueing.watcher(namespace=None, settings=settings, resource=resource, processor=processor)
    asyncio.run(asyncio.wait_for(watcher, 10))  # the stream ends: the watcher lets its workers finish
    assert [e["object"]["metadata"]["name"] for e in seen] == ["listed", "changed"]
    for event in seen:
        meta = event["object"]["metadata"]
        assert "managedFields" not in meta
        assert meta["labels"] == {"a": "b"} and meta["uid"].startswith("uid-")  # the rest as it was
    assert seen[0]["type"] is None and seen[1]["type"] == "MODIFIED"


def _pool_child(name: str) -> dict[str, Any]:
    body = _deployment(name)
    body["metadata"]["labels"] = {names.POOL_LABEL: "p"}
    return body


def test_a_pool_childs_events_go_to_its_cache_not_to_kopfs_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf's watcher gets a gateway's child (no pool label) and the end of the listing; a pool's children
    stay in the cache, which holds the listing before kopf hears that it is over."""
    events: list[Any] = [
        {"type": None, "object": _pool_child("p")},
        {"type": None, "object": _deployment("gateway")},
        watching.Bookmark.LISTED,
        {"type": "MODIFIED", "object": _pool_child("p")},
        {"type": "ADDED", "object": _pool_child("p-2")},
    ]

    async def api_stream(**_: Any) -> AsyncIterator[Any]:
        for event in events:
            yield event

    caches, told = ChildCaches(), []
    index = caches.kinds["deployments"]
    cached_when_listed: list[int] = []
    monkeypatch.setattr(watch_stream, "_kopf_watch", api_stream)
    monkeypatch.setattr(watching, "infinite_watch", watching.infinite_watch)  # undone after the test
    watch_stream.install(caches.taps(lambda *e: told.append(e[0])))
    seen: list[dict[str, Any]] = []

    async def processor(
        *, raw_event: Any, resource_indexed: Any = None, operator_indexed: Any = None, **_: Any
    ) -> None:
        seen.append(raw_event)
        if operator_indexed is not None and resource_indexed is not None:  # as kopf's processor does
            await operator_indexed.drop_toggle(resource_indexed)

    async def main() -> None:
        toggles = ToggleSet(all)
        resource_indexed = await toggles.make_toggle(name="deployments")

        async def gate() -> None:  # what kopf's pool workers wait for
            await toggles.wait_for(True)
            cached_when_listed.append(len(index))

        waiter = asyncio.create_task(gate())
        resource = Resource(group="apps", version="v1", plural="deployments", namespaced=True)
        settings = kopf.OperatorSettings()
        settings.queueing.idle_timeout = 0.05
        await queueing.watcher(
            namespace=None,
            settings=settings,
            resource=resource,
            processor=processor,
            operator_indexed=toggles,
            resource_indexed=resource_indexed,
        )
        await asyncio.wait_for(waiter, 5)

    asyncio.run(asyncio.wait_for(main(), 10))
    assert [e["object"]["metadata"]["name"] for e in seen] == ["gateway"]
    assert cached_when_listed and cached_when_listed[0] >= 1  # the listed child was cached before
    assert sorted(m["metadata"]["name"] for m in unpack(index.get(("ns", "p")))) == ["p", "p-2"]
    assert "managedFields" not in unpack(index.get(("ns", "p")))[0]["metadata"]
    assert told == ["MODIFIED", "ADDED"]  # the listing told nothing; the watch events did
