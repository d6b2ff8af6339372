"""Every write of the handlers, and the one judge of whether the cluster is current.

The watch caches (kopf indexes, `child_caches`) lag behind our own writes under load; comparing against
a stale copy would write the same child or status again at every event that arrives in between. So each
write keeps the API server's answer, and a reconcile compares against the newer of that answer and
the cached copy: an object we wrote and that nobody changed since is never written again.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import kopf
from kopf._core.engines import posting as kopf_posting  # where kopf keeps its event queue: not re-exported
from pydantic import BaseModel

from tgipool.api.modelpool import ModelPool
from tgipool.handlers.indexes import Packed, pack, slim
from tgipool.k8s import errors
from tgipool.k8s.client import NAMESPACE_TERMINATING, ApplyError, Kube
from tgipool.k8s.compare import needs_apply, stamped
from tgipool.manifest import Manifest
from tgipool.status import must_write_now, status_patch

Key = tuple[str, str, str]  # kind, namespace, name
# How long a namespace found terminating is left alone before a reconcile tries it again (a namespace of
# the same name may come back once the old one is gone).
TERMINATING_SECONDS = 60.0
T = TypeVar("T")


def event_target(raw: Mapping[str, Any]) -> kopf.Body:
    return kopf.Body(cast("kopf.RawBody", dict(raw)))


# kopf.event() and kopf.warn() read these: kopf sets them for each object's handlers only.
_POSTING_VARS: tuple[contextvars.ContextVar[Any], ...] = (
    kopf_posting.settings_var,
    kopf_posting.event_queue_var,
    kopf_posting.event_queue_loop_var,
)


def posting_context() -> contextvars.Context:
    """A context holding just what kopf needs to post events; call it from a handler (LookupError elsewhere).

    Tasks that outlive a handler run in a copy of it: one started at startup has no event queue (kopf's
    events from it fail), and one that inherits a handler's context pins kopf's cause, the decoded
    watch event, for as long as the task waits."""
    values = [(var, var.get()) for var in _POSTING_VARS]
    ctx = contextvars.Context()
    for var, value in values:
        ctx.run(var.set, value)
    return ctx


def normal_event(target: kopf.Body, *, reason: str, message: str) -> None:
    """A Normal event: kopf.info() is dropped below `settings.posting.level` (WARNING, which keeps
    kopf's own chatter out of the events); what we post marks a real write or a wake."""
    kopf.event(target, type="Normal", reason=reason, message=message)


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


def fresher(cached: Manifest | None, written: Manifest | None) -> Manifest | None:
    """The newer of the watch cache's copy of an object and the API server's answer to our write.

    etcd-backed resourceVersions increase, so the larger one is the newer state (a hand edit after
    our write wins, and is reverted).
    """
    if written is None:
        return cached
    if cached is not None and _rv(cached) >= _rv(written):
        return cached
    return written


@dataclass
class Outcome:
    """The writes of one reconcile."""

    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False
    # A status change that waits (`Writer.write_status`'s settle): when it is due (time.monotonic()).
    status_due: float | None = None
    errors: list[ApplyError] = field(default_factory=list)
    # A pool's reconcile: the parsed pool and its Deployment's replicas (for the operator's gauges).
    pool: ModelPool | None = None
    replicas: int = 0

    @property
    def writes(self) -> int:
        return len(self.applied) + len(self.deleted) + int(self.status_written)


# Children without state that server-side apply cannot always merge a hand edit back into: a Service's
# ports are keyed by port number, so an edited number leaves our entry next to the edited one under one
# name, and every apply is refused (422). Deleting and recreating them is the way back to the spec.
RECREATE_WHEN_INVALID = frozenset({"Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"})


class Writer:
    """Applies children, deletes them and patches status; remembers the answers (children, and the
    pools and gateways whose status we wrote), and keeps one lock per reconciled object."""

    def __init__(self, kube: Kube, threads: int = 16) -> None:
        self.kube = kube
        # Answers the watch caches have not caught up with yet (and those of kinds we do not watch).
        self._answers: dict[Key, Packed] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        # Deployments we scaled 0 -> 1, with the resourceVersion they had at 0.
        self._woken: dict[Key, str | None] = {}
        # When we last wrote each object's status (time.monotonic()).
        self._status_at: dict[Key, float] = {}
        # Namespaces being deleted, when a create there was refused (time.monotonic()).
        self._terminating: dict[str, float] = {}
        # The client's calls block: as many threads as it has connections (asyncio's default executor
        # has cores + 4, which capped the operator's writes in flight well below the API server's pace).
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kube")
        # Reconciles past the lock of their object that may render and write at once (`turn`).
        self._turns = asyncio.Semaphore(threads * 2)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """One blocking API call in the writer's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args))

    def current(self, kind: str, namespace: str, name: str, cached: Manifest | None) -> Manifest | None:
        """What the cluster holds now, as far as we know."""
        key = (kind, namespace, name)
        packed = self._answers.get(key)
        if packed is None:
            return cached
        written = packed.get()
        if cached is not None and _rv(cached) >= _rv(written):
            del self._answers[key]  # the watch caught up: no second copy of the object to keep
            return cached
        return written

    def known(self, kind: str, namespace: str, name: str) -> bool:
        return (kind, namespace, name) in self._answers

    def remember(self, answer: Manifest) -> None:
        """Keep the API server's answer to a write (or to a read of a kind we do not watch)."""
        meta = answer["metadata"]
        self._answers[(answer["kind"], meta.get("namespace", ""), meta["name"])] = pack(slim(answer))

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """The object was deleted: the next reconcile must see it missing, whatever we wrote before."""
        self._answers.pop((kind, namespace, name), None)

    def forget_status(self, kind: str, namespace: str, name: str) -> None:
        """The object (a pool or a gateway) is gone: the time of its last status write, its lock if
        free, and our last answer for it go too (memory in proportion to the objects that exist)."""
        key = (kind, namespace, name)
        self._status_at.pop(key, None)
        self._answers.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    def terminating(self, namespace: str) -> bool:
        """The namespace is being deleted: its controller deletes the children, then the pools, and a
        reconcile that re-made the children would be refused (a 403 per child and per child event)."""
        since = self._terminating.get(namespace)
        if since is not None and time.monotonic() - since > TERMINATING_SECONDS:
            del self._terminating[namespace]
            return False
        return since is not None

    def lock(self, kind: str, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((kind, namespace, name), asyncio.Lock())

    def turn(self) -> asyncio.Semaphore:
        """A turn to render and write: twice the threads, so the threads never wait for a render.

        A thousand new pools are a thousand reconciles at once; each held its rendered children and their
        diffs while it waited for a thread, and that burst set the operator's memory for good (freed
        small objects leave the allocator's arenas fragmented, not returned)."""
        return self._turns

    async def apply(
        self,
        manifests: Iterable[Manifest],
        cached: Callable[[str, str], Manifest | None],
        out: Outcome,
    ) -> None:
        """Server-side applies each manifest that differs from the cluster; refusals go to `out`.

        The applies of one call go out together (no child waits for another's answer: a pod waits for
        its claim by itself), and land in `out` in the order given."""
        todo = []
        for manifest in manifests:
            kind, meta = manifest["kind"], manifest["metadata"]
            current = self.current(kind, meta["namespace"], meta["name"], cached(kind, meta["name"]))
            if needs_apply(manifest, current):
                todo.append(self._apply_one(manifest, current))
        for one in await asyncio.gather(*todo):
            out.applied += one.applied
            out.deleted += one.deleted
            out.errors += one.errors

    async def _apply_one(self, manifest: Manifest, current: Manifest | None) -> Outcome:
        kind, meta = manifest["kind"], manifest["metadata"]
        out = Outcome()
        try:
            self.remember(await self.call(self.kube.apply, stamped(manifest)))
            out.applied.append(f"{kind}/{meta['name']}")
        except ApplyError as e:
            if e.status == 422 and kind in RECREATE_WHEN_INVALID and current is not None:
                await self._recreate(manifest, out)
            else:
                out.errors.append(e)
            if e.reason == NAMESPACE_TERMINATING:
                self._terminating[meta["namespace"]] = time.monotonic()
        return out

    async def _recreate(self, manifest: Manifest, out: Outcome) -> None:
        """A stateless child that a hand edit left in a shape our apply cannot merge back into: made anew."""
        kind, meta = manifest["kind"], manifest["metadata"]
        refused = len(out.errors)
        await self.delete(manifest, out)
        if len(out.errors) > refused:  # the delete itself was refused: report that, don't re-apply
            return
        try:
            self.remember(await self.call(self.kube.apply, stamped(manifest)))
            out.applied.append(f"{kind}/{meta['name']} (recreated)")
        except ApplyError as e:
            out.errors.append(e)

    async def delete(self, child: Manifest, out: Outcome) -> None:
        kind, meta = child["kind"], child["metadata"]
        try:
            await self.call(self.kube.delete, child["apiVersion"], kind, meta["namespace"], meta["name"])
        except ApplyError as e:
            out.errors.append(e)
            return
        self.forget(kind, meta["namespace"], meta["name"])
        out.deleted.append(f"{kind}/{meta['name']}")

    async def wake(self, deployment: Manifest, out: Outcome) -> None:
        """0 -> 1 for a resting pool with fresh demand, once per Deployment revision we saw at 0 (the
        watch may lag behind our own write; the HPA owns every replica after this one)."""
        meta = deployment["metadata"]
        key = ("Deployment/scale", meta["namespace"], meta["name"])
        if self._woken.get(key) == meta.get("resourceVersion"):
            return
        try:
            await self.call(self.kube.scale, "apps/v1", "Deployment", meta["namespace"], meta["name"], 1)
        except ApplyError as e:
            out.errors.append(e)
            return
        self._woken[key] = meta.get("resourceVersion")
        out.applied.append(f"Deployment/{meta['name']} (scaled 0 -> 1)")

    async def write_status(
        self, raw: Mapping[str, Any], new: BaseModel, out: Outcome, settle: float = 0.0
    ) -> None:
        """Patches the status of `raw` (a pool or a gateway) to `new`, unless it already is `new`.

        `settle`: a change no reader must see at once (`status.must_write_now`: no phase, generation or
        condition turned; a message, a count) waits until `settle` seconds after this object's last
        status write; `out.status_due` says when. While children come up their statuses change every
        few seconds, and each change was a write of the pool's status (6 per pool to converge)."""
        kind, meta = raw["kind"], raw["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        current = self.current(kind, namespace, name, dict(raw)) or raw
        old = current.get("status") or {}
        patch = status_patch(new, old)
        if patch is None:
            return
        key = (kind, namespace, name)
        last = self._status_at.get(key)
        if settle and last is not None and not must_write_now(new, old):
            due = last + settle
            if time.monotonic() < due:
                out.status_due = due
                return
        try:
            answer = await self.call(self.kube.patch_status, namespace, name, patch, kind)
        except ApplyError as e:
            raise errors.handler_error([e], f"{kind} {namespace}/{name}") from e
        self.remember(answer)
        self._status_at[key] = time.monotonic()
        out.status_written = True


def report(raw: Mapping[str, Any], out: Outcome, logger: kopf.Logger) -> None:
    """Events and a log line for what was written; the kopf error for what was refused."""
    kind, meta = raw["kind"], raw["metadata"]
    what = f"{kind} {meta.get('namespace', '')}/{meta['name']}"
    if out.applied or out.deleted:
        done = ", ".join(out.applied + [f"deleted {d}" for d in out.deleted])
        normal_event(event_target(raw), reason="Reconciled", message=f"server-side applied {done}")
        logger.info("reconciled %s writes=%d %s", what, out.writes, done)
    else:
        logger.debug("%s unchanged; no writes", what)
    for refused in out.errors:
        kopf.warn(event_target(raw), reason=errors.refused(refused).reason, message=str(refused))
    if out.errors:
        raise errors.handler_error(out.errors, what)
