"""Caches of every pool's children and inference-server pods, fed straight from kopf's watch streams.

kopf hands each watched object to a worker of its own and keeps a memory per object for good; at startup
each worker holds its decoded body until every kind is listed. At 1,000 pools that was about 5,300
children and pods besides the pools, and most of a restarted operator's memory. Their events are taken
where kopf's stream is read (`watch_stream`): the cache is updated and the pool's reconcile asked for;
kopf's workers never see them.
Objects without a pool label (a gateway's children share the streams) go on to kopf as before.

The caches answer like kopf's indexes (`get(key)`: the packed objects of one pool), so `indexes` reads both
alike. kopf still gates its handlers on these kinds being listed: each kind keeps an index registration
(`indexes.register_gates`), and the stream's "listed" mark reaches kopf only after the cache holds the
listing, so a pool's first reconcile after a restart sees every child.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from tgipool.desired import names
from tgipool.handlers.indexes import CHILD_KINDS, Key, Packed, pack, pod_view

log = logging.getLogger(__name__)

# (event type: ADDED, MODIFIED or DELETED; kind; namespace; name; the pool's key)
Changed = Callable[[str, str, str, str, Key], None]


def as_streamed(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """A child as cached: as `watch_stream` hands it over, managedFields dropped already."""
    return body


class Index:
    """One kind's cache: a pool's key -> its objects of the kind, packed."""

    def __init__(self) -> None:
        self._by_key: dict[Key, dict[str, Packed]] = {}
        self._key_of: dict[tuple[str, str], Key] = {}  # (namespace, name) -> pool key
        self._pools: dict[str, set[str]] = {}  # namespace -> pools with at least one object

    def get(self, key: Key, default: Collection[Packed] | None = None) -> Collection[Packed] | None:
        entries = self._by_key.get(key)
        return entries.values() if entries else default

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return len(self._key_of)

    def packed(self, namespace: str, name: str) -> Packed | None:
        key = self._key_of.get((namespace, name))
        return None if key is None else self._by_key[key].get(name)

    def pools(self, namespace: str) -> set[str]:
        return self._pools.get(namespace, set())

    def objects(self, namespace: str | None) -> list[tuple[str, str]]:
        """(namespace, name) of every cached object, of one namespace or (None) all."""
        return [ref for ref in self._key_of if namespace is None or ref[0] == namespace]

    def put(self, namespace: str, name: str, key: Key, value: Packed) -> None:
        old = self._key_of.get((namespace, name))
        if old is not None and old != key:  # its pool label changed
            self.remove(namespace, name)
        self._key_of[(namespace, name)] = key
        self._by_key.setdefault(key, {})[name] = value
        self._pools.setdefault(key[0], set()).add(key[1])

    def remove(self, namespace: str, name: str) -> Key | None:
        """Drops the object; returns the key of the pool it was cached for (None: it was not)."""
        key = self._key_of.pop((namespace, name), None)
        if key is None:
            return None
        entries = self._by_key[key]
        entries.pop(name, None)
        if not entries:
            del self._by_key[key]
            pools = self._pools[key[0]]
            pools.discard(key[1])
            if not pools:
                del self._pools[key[0]]
        return key


@dataclass(frozen=True)
class PoolsWithObjects:
    """namespace -> the pools with objects in `index` (kopf's `pod_pools` index answered the same)."""

    index: Index

    def get(self, namespace: str, default: Collection[str] | None = None) -> Collection[str] | None:
        return self.index.pools(namespace) or default


@dataclass
class Tap:
    """Takes one kind's stream: every object with a pool label goes to `index`, and `changed` hears of
    each change once the kind has been listed (the listing itself: the pools' own first reconciles read
    it). Returns False for an object kopf must see (no pool label)."""

    kind: str
    index: Index
    view: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    changed: Changed
    # stream namespace (None: cluster-wide) -> objects listed since its listing began
    _listing: dict[str | None, set[tuple[str, str]]] = field(default_factory=dict)
    _listed: set[str | None] = field(default_factory=set)  # streams listed at least once

    def take(self, stream: str | None, event: Mapping[str, Any]) -> bool:
        type_, obj = event.get("type"), event.get("object") or {}
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if not isinstance(meta, dict) or type_ not in (None, "ADDED", "MODIFIED", "DELETED"):
            return False
        namespace, name = meta.get("namespace") or "", meta.get("name", "")
        pool = (meta.get("labels") or {}).get(names.POOL_LABEL)
        if pool is None or type_ == "DELETED":
            gone = self.index.remove(namespace, name)
            if gone is not None:
                self._tell("DELETED", namespace, name, gone)
            return pool is not None
        key = (namespace, pool)
        value = pack(self.view(obj))
        if type_ is None:
            self._listing.setdefault(stream, set()).add((namespace, name))
            if stream not in self._listed:  # the first listing: no reconcile to ask for
                self.index.put(namespace, name, key, value)
                return True
            if self.index.packed(namespace, name) == value:  # a relisting: unchanged
                return True
        self.index.put(namespace, name, key, value)
        self._tell(type_ or "MODIFIED", namespace, name, key)
        return True

    def listed(self, stream: str | None) -> None:
        """The stream's listing is complete: what it did not list is gone (missed while disconnected)."""
        seen = self._listing.pop(stream, set())
        if stream in self._listed:
            for namespace, name in self.index.objects(stream):
                if (namespace, name) not in seen and (gone := self.index.remove(namespace, name)):
                    self._tell("DELETED", namespace, name, gone)
        self._listed.add(stream)

    def _tell(self, type_: str, namespace: str, name: str, key: Key) -> None:
        try:
            self.changed(type_, self.kind, namespace, name, key)
        except Exception:  # the stream must go on: one bad callback must not stop kopf's watcher
            log.exception("handling a %s event of %s %s/%s", type_, self.kind, namespace, name)


@dataclass
class ChildCaches:
    """One cache per child kind and one of the server pods, with the views `indexes` reads."""

    kinds: dict[str, Index] = field(default_factory=lambda: {kind[2]: Index() for kind in CHILD_KINDS})
    pods: Index = field(default_factory=Index)

    def views(self) -> dict[str, Any]:
        """The caches by the names kopf's indexes had (`indexes.snapshot` and the others read these)."""
        out: dict[str, Any] = {f"{plural}_index": index for plural, index in self.kinds.items()}
        out["pods_index"] = self.pods
        out["pod_pools"] = PoolsWithObjects(self.pods)
        return out

    def taps(self, changed: Changed) -> dict[tuple[str, str], Tap]:
        """(API group, plural) -> the tap of that kind's stream."""
        out = {
            (group, plural): Tap(kind, self.kinds[plural], as_streamed, changed)
            for group, _version, plural, kind in CHILD_KINDS
        }
        out[("", "pods")] = Tap("Pod", self.pods, pod_view, changed)
        return out
