"""Peering settled before a replica acts.

kopf pauses or resumes a replica on each event of its peering object, from the first listing on. Two
replicas started at the same instant race: one lists the object before the other's first keep-alive
has landed, sees no peer, resumes, and handles pools until the other's record arrives a moment later
(on the e2e cluster: 3 of 4 simultaneous starts, and every start with the standby 0.5 s ahead). So at
startup, before kopf watches anything, each replica writes its own record, what kopf's keep-alive
writes under the same identity, and waits `SETTLE_SECONDS`: a replica started within that time of
another is in the other's first listing, and only the highest priority resumes. A replica started
later finds the others' records at once; a higher-priority newcomer pauses the active one with its
first record and acts only after the wait.
"""

from __future__ import annotations

import asyncio
import datetime
import getpass
import os
import random
import socket
from collections.abc import Sequence
from typing import Any

import kopf
from kopf._cogs.aiokits.aiotoggles import ToggleSet  # kopf's pause state: not re-exported
from kopf._core.engines import daemons as kopf_daemons

from tgipool.k8s.client import ApplyError, Kube

SETTLE_SECONDS = 5.0


def own_identity() -> str:
    """An identity in kopf's own form: the pod's name when POD_ID is set, else user@host/time/random."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")
    rnd = "".join(random.choices("abcdefhijklmnopqrstuvwxyz0123456789", k=3))  # noqa: S311  not a secret
    return f"{getpass.getuser()}@{socket.gethostname()}/{now}/{rnd}"


def record(priority: int, lifetime: int, now: datetime.datetime) -> dict[str, Any]:
    """One peer's entry in the peering object's status, as kopf's keep-alive writes it."""
    return {"priority": priority, "lifetime": lifetime, "lastseen": now.isoformat()}


def peering_urls(name: str, clusterwide: bool, namespaces: Sequence[str]) -> list[str]:
    if clusterwide:
        return [f"/apis/kopf.dev/v1/clusterkopfpeerings/{name}"]
    return [f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings/{name}" for ns in namespaces]


async def announce(
    kube: Kube,
    settings: kopf.OperatorSettings,
    identity: str,
    namespaces: Sequence[str],
    logger: kopf.Logger,
    settle: float = SETTLE_SECONDS,
) -> None:
    """Writes this replica's peering record, then waits for the other replicas' to arrive."""
    peering = settings.peering
    entry = record(peering.priority, peering.lifetime, datetime.datetime.now(datetime.UTC))
    for url in peering_urls(peering.name, peering.clusterwide, namespaces):
        try:
            await asyncio.to_thread(kube.merge_patch, url, {"status": {identity: entry}})
        except ApplyError as e:  # a missing peering object: kopf itself says so and stays paused
            logger.warning("peering record not written to %s: %s", url, e)
    logger.info("peering: waiting %.0f s for replicas started at the same time to show up", settle)
    await asyncio.sleep(settle)


# kopf pauses its watches and daemons while a peer outranks this replica, but tells no other task. The
# one set of pause toggles it hands its daemon killer at start is the state our own tasks read.
_pause: dict[str, ToggleSet] = {}
_daemon_killer = kopf_daemons.daemon_killer


async def _watching_daemon_killer(*, operator_paused: ToggleSet, **kwargs: Any) -> None:
    _pause["operator"] = operator_paused
    await _daemon_killer(operator_paused=operator_paused, **kwargs)


kopf_daemons.daemon_killer = _watching_daemon_killer


def paused() -> bool:
    """Whether kopf has paused this replica (a peer of higher priority, no peering object)."""
    toggles = _pause.get("operator")
    return toggles is not None and toggles.is_on()
