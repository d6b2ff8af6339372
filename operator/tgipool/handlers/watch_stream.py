"""kopf's watch streams without `metadata.managedFields`.

Each object kopf lists or watches is held, decoded, by its worker until it is handled; at startup every
worker waits until all kinds are listed and indexed (kopf's `operator_indexed`), so a restart holds every
pool's and child's body at once. managedFields is the bulk of a child (one entry per writer: ours, the
controllers', the scheduler's, the kubelet's) and nothing here reads it: the caches drop it anyway
(`indexes.slim`), and kopf's diffbase essence leaves metadata out. Dropping it where kopf's stream is
read keeps it out of every held body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from kopf._cogs.clients import watching  # kopf's stream of raw events (pinned kopf version)

_kopf_watch = watching.infinite_watch


async def without_managed_fields(**kwargs: Any) -> AsyncIterator[Any]:
    """kopf's `infinite_watch`, each event's object without managedFields (bookmarks pass as they are)."""
    async for event in _kopf_watch(**kwargs):
        obj: Any = event.get("object") if isinstance(event, dict) else None
        meta: Any = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
        yield event


def install() -> None:
    """Before kopf starts its watchers (a startup handler runs before them)."""
    watching.infinite_watch = without_managed_fields
