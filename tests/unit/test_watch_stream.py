"""kopf's per-object workers get bodies without managedFields once `watch_stream` is installed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import watching
from kopf._cogs.structs.references import Resource
from kopf._core.reactor import queueing

from tgipool.handlers import watch_stream


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
