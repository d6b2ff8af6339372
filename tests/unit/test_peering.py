"""The record a replica writes before kopf lists its peers: kopf must read it as that replica's own."""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import kopf
from kopf._core.engines.peering import Peer

from tgipool.handlers.peering import announce, own_identity, peering_urls, record


def test_record_reads_as_a_live_kopf_peer() -> None:
    now = datetime.datetime.now(datetime.UTC)
    peer = Peer(identity="me", **record(priority=20, lifetime=60, now=now))
    assert (peer.priority, peer.is_dead, peer.lastseen) == (20, False, now)


def test_urls_cluster_wide_or_per_watched_namespace() -> None:
    assert peering_urls("p", True, ["a"]) == ["/apis/kopf.dev/v1/clusterkopfpeerings/p"]
    assert peering_urls("p", False, ["a", "b"]) == [
        "/apis/kopf.dev/v1/namespaces/a/kopfpeerings/p",
        "/apis/kopf.dev/v1/namespaces/b/kopfpeerings/p",
    ]


def test_identity_is_the_pod_name_when_given(monkeypatch: Any) -> None:
    monkeypatch.setenv("POD_ID", "tgipool-operator-abc")
    assert own_identity() == "tgipool-operator-abc"
    monkeypatch.delenv("POD_ID")
    assert own_identity() != own_identity() or "@" in own_identity()


class FakeKube:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []

    def merge_patch(self, url: str, body: dict[str, Any]) -> None:
        self.patches.append((url, body))


def test_announce_writes_the_own_record_under_the_identity() -> None:
    settings = kopf.OperatorSettings()
    settings.peering.name, settings.peering.priority, settings.peering.clusterwide = "ring", 7, True
    kube = FakeKube()
    asyncio.run(announce(kube, settings, "me@host/1/abc", [], logging.getLogger("t"), settle=0))  # type: ignore[arg-type]
    ((url, body),) = kube.patches
    assert url == "/apis/kopf.dev/v1/clusterkopfpeerings/ring"
    assert set(body["status"]) == {"me@host/1/abc"}
    assert body["status"]["me@host/1/abc"]["priority"] == 7
