"""kopf's watch streams: without `metadata.managedFields`, and a pool's children taken by our caches.

Each object kopf lists or watches is held, decoded, by its worker until it is handled; at startup every
worker waits until all kinds are listed and indexed (kopf's `operator_indexed`), so a restart held every
pool's and child's body at once. managedFields is the bulk of an object (one entry per writer: ours, the
controllers', the scheduler's, the kubelet's) and nothing here reads it: the caches drop it anyway
(`indexes.slim`), and kopf's diffbase essence leaves metadata out. A pool's children and server pods
go no further than this stream: `child_caches` takes them (it says why).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from kopf._cogs.clients import watching  # kopf's stream of raw events (pinned kopf version)

from tgipool.handlers.child_caches import Tap

_kopf_watch = watching.infinite_watch
# (API group, plural) -> the tap that takes the kind's pool children (`install`)
_taps: Mapping[tuple[str, str], Tap] = {}


async def tapped(**kwargs: Any) -> AsyncIterator[Any]:
    """kopf's `infinite_watch`: each object without managedFields, a pool child's event taken by its
    kind's tap, and the end of a listing passed on once the tap holds it."""
    resource, stream = kwargs.get("resource"), kwargs.get("namespace")
    tap = _taps.get((getattr(resource, "group", ""), getattr(resource, "plural", "")))
    async for event in _kopf_watch(**kwargs):
        if not isinstance(event, dict):  # kopf's own marks (the end of a listing)
            if tap is not None and event is watching.Bookmark.LISTED:
                tap.listed(stream)
            yield event
            continue
        obj: Any = event.get("object")
        meta: Any = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
        if tap is not None and tap.take(stream, event):
            continue
        yield event


def install(taps: Mapping[tuple[str, str], Tap] | None = None) -> None:
    """Before kopf starts its watchers (a startup handler runs before them)."""
    global _taps  # noqa: PLW0603 (one set of taps per operator process, as kopf's stream is one)
    _taps = dict(taps or {})
    watching.infinite_watch = tapped
