"""kopf handlers: thin wrappers that hand a pool and its cached children to `reconcile`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import kopf
from kopf._cogs.structs.references import Selector  # not re-exported by kopf

from tgipool.api.modelpool import GROUP, PLURAL, VERSION
from tgipool.config import DEFAULT_CONFIG
from tgipool.desired import names
from tgipool.handlers import indexes, peering, watch_stream
from tgipool.handlers.child_caches import ChildCaches
from tgipool.handlers.live_metrics import LiveMetrics, PoolGauges
from tgipool.handlers.persistence import MemoryDiffBaseStorage, UnmarkedProgressStorage
from tgipool.handlers.reconcile import reconcile_latest
from tgipool.handlers.writer import Writer, posting_context
from tgipool.k8s.client import Kube
from tgipool.k8s.errors import RETRY_DELAY_SECONDS
from tgipool.monitoring.reader import PrometheusReader
from tgipool.monitoring.readings import Reading
from tgipool.options import RunOptions

# How often warm and cold pools (and hot ones in a namespace with a gateway) look at their idle time and
# routing; new rounds of the metrics loop (--metrics-interval) wake every pool at once.
TIMER_SECONDS = 3.0
# (the pool's numbers, the loop's error, the loaded alert groups, the gateways routing it, budget use)
Folded = tuple[
    dict[str, float], str | None, frozenset[str] | None, dict[str, frozenset[str]], tuple[int, int] | None
]


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """Every kopf setting in one place; the API client is made here, not at import."""
    prefix = "tgipool.io"
    settings.persistence.progress_storage = UnmarkedProgressStorage(prefix=prefix)
    # The last handled spec in memory, not an annotation: no PATCH of every pool on create (persistence.py).
    settings.persistence.diffbase_storage = memo.diffbase = MemoryDiffBaseStorage(prefix)
    settings.persistence.finalizer = f"{prefix}/finalizer"
    # Only warnings from kopf's own logs become Events; our own Events mark real writes.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "tgipool-operator"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 16
    # Children and pods are watched by our label, filtered by the API server: kopf would otherwise watch
    # (and keep memory for) every Service, Pod, Job and Lease of the cluster, node heartbeats included.
    managed = f"app.kubernetes.io/managed-by={names.MANAGED_BY}"
    for group, version, plural, _kind in indexes.CHILD_KINDS:
        settings.watching.label_selectors[Selector(group=group, version=version, plural=plural)] = managed
    # Of the pods, the inference servers only: not the fetch Jobs' pods, which no handler reads.
    server = f"{managed},{names.COMPONENT_LABEL}={names.SERVER}"
    settings.watching.label_selectors[Selector(group="", version="v1", plural="pods")] = server
    settings.networking.request_timeout = 60
    # Bodies without managedFields from here on, and a pool's children to our caches (watch_stream.py).
    memo.caches = ChildCaches()
    watch_stream.install(memo.caches.taps(lambda *event: child_changed(memo, logger, *event)))
    # An exception that is no answer of the API server (unreachable, connection cut) is passing trouble
    # like a 5xx: retried as soon (kopf's default waits 60 s).
    settings.execution.default_backoff = RETRY_DELAY_SECONDS
    memo.cfg = DEFAULT_CONFIG
    memo.writer = Writer(Kube.from_environment(field_manager=memo.cfg.field_manager))
    opts: RunOptions = getattr(memo, "options", None) or RunOptions()
    reader = PrometheusReader(opts.prometheus_url, opts.metrics_window) if opts.prometheus_url else None
    memo.live = LiveMetrics(reader, opts.metrics_interval)
    # A first round before any pool is reconciled: a restarted operator must not write a status
    # without its live numbers and then again with them (the read is bounded by its timeout).
    await memo.live.refresh()
    memo.live.start()
    memo.gauges = PoolGauges()
    memo.folded = {}  # pool key -> the metrics round and gateway routing its status last folded in
    memo.queued = set()  # pools with a reconcile from the caches waiting to start (`_refresh`)
    memo.settling = {}  # pool key -> the timer of its waiting status change (`_settle_later`)
    if opts.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(opts.metrics_port, addr=opts.metrics_address, registry=memo.gauges.registry)
    if opts.peering_identity and not settings.peering.standalone:
        # Before kopf lists its peers: so that replicas started together all see each other first.
        await peering.announce(memo.writer.kube, settings, opts.peering_identity, opts.namespaces, logger)
    # kopf passes its indexes to startup handlers too: live views, filled once kopf has listed. With our
    # child caches, every handler and task reads these, not a handler's kwargs (which hold its decoded
    # event and lack the child caches).
    memo.indexes = {**kwargs, **memo.caches.views()}
    memo.refreshing = set()  # child events' reconciles, running apart from kopf's workers
    # The context our own tasks run in (`_spawn`), taken by the first handler: a list, since kopf hands
    # each object a shallow copy of the memo (an attribute a handler sets stays in its object's copy).
    memo.posting = []
    memo.folder = asyncio.create_task(fold_pools(memo, logger, memo.indexes), name="tgipool-folder")


@kopf.on.cleanup()
async def stop_loops(memo: kopf.Memo, **_: Any) -> None:
    memo.folder.cancel()
    for task in list(memo.refreshing):
        task.cancel()
    await memo.live.stop()
    for task in list(memo.settling.values()):
        task.cancel()


# A status change no reader must see at once (a message, a count) waits until this long after the
# pool's last status write (`Writer.write_status`), and child events within CHILD_DEBOUNCE_SECONDS fold
# into one reconcile: while children come up, their watch events come in bursts.
SETTLE_SECONDS = 5.0
CHILD_DEBOUNCE_SECONDS = 0.3


async def _reconcile(
    key: indexes.Key,
    load: Callable[[], Mapping[str, Any] | None],
    memo: kopf.Memo,
    logger: kopf.Logger,
    kwargs: Mapping[str, Any],
) -> None:
    """Reconciles the pool `load` returns once the pool's lock is ours (None: gone), with its children
    from the caches as they are then."""

    def loaded() -> tuple[Mapping[str, Any], indexes.Snapshot] | None:
        raw = load()
        if raw is None:
            return None
        snap = indexes.snapshot(kwargs, key)
        # Every reconcile folds the round it reads: the pool's folder then has nothing to redo.
        memo.folded[key] = _folded(memo.live.reading, key, snap.routed_by, snap.budget)
        return raw, snap

    def reading() -> Reading:
        return memo.live.reading  # type: ignore[no-any-return]

    out = await reconcile_latest(key, loaded, memo.writer, memo.cfg, logger, reading, SETTLE_SECONDS)
    if out is None:
        return
    if out.pool is not None:
        # The operator's per-pool gauges follow what this reconcile saw (for the alerts).
        memo.gauges.set(out.pool, out.replicas)
    if out.status_due is not None:
        _settle_later(key, out.status_due, kwargs, memo, logger)


def _keep_posting(memo: kopf.Memo) -> None:
    if not memo.posting:
        memo.posting.append(posting_context())


def _spawn(memo: kopf.Memo, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A task of ours that outlives the handler or wake that starts it: it can post kopf events and
    holds no handler's decoded event (`posting_context`)."""
    return asyncio.create_task(coro, name=name, context=memo.posting[0].copy())


def _live_pool(kwargs: Mapping[str, Any], key: indexes.Key) -> Callable[[], Mapping[str, Any] | None]:
    def load() -> Mapping[str, Any] | None:
        raw = indexes.pool(kwargs, key)
        return None if raw is None or raw["metadata"].get("deletionTimestamp") else raw

    return load


async def _refresh(
    key: indexes.Key,
    kwargs: Mapping[str, Any],
    memo: kopf.Memo,
    logger: kopf.Logger,
    delay: float = CHILD_DEBOUNCE_SECONDS,
) -> None:
    """A reconcile from the caches, asked by an event of another object (a child, a settle timer). While
    one waits for the pool, further requests are part of it: it reads the caches once it runs."""
    queued: set[indexes.Key] = memo.queued
    if key in queued:
        return
    queued.add(key)
    load_pool, taken = _live_pool(kwargs, key), False

    def load() -> Mapping[str, Any] | None:
        nonlocal taken
        queued.discard(key)  # from here on, an event asks for the next reconcile
        taken = True
        return load_pool()

    try:
        await asyncio.sleep(delay)
        await _reconcile(key, load, memo, logger, kwargs)
    except (kopf.PermanentError, kopf.TemporaryError) as e:
        logger.info("reconcile of %s/%s from a child event: %s", *key, e)
        _retry_later(key, e, kwargs, memo, logger)
    finally:
        if not taken:
            queued.discard(key)


def _retry_later(
    key: indexes.Key,
    error: kopf.PermanentError | kopf.TemporaryError,
    kwargs: Mapping[str, Any],
    memo: kopf.Memo,
    logger: kopf.Logger,
) -> None:
    """A reconcile no kopf handler runs (a child event's, a metrics round's) whose writes the API server
    refused for now (5xx, 409, 429): once more after the error's delay, as kopf retries its handlers.
    Without it the pool's status kept what the failed write would have changed until some other event
    (a rollout's end lost to an etcd restart left a pool `Progressing` for good). A permanent refusal
    waits for a change, as kopf's does."""
    if isinstance(error, kopf.TemporaryError):
        _settle_later(key, time.monotonic() + (error.delay or RETRY_DELAY_SECONDS), kwargs, memo, logger)


def _settle_later(
    key: indexes.Key, due: float, kwargs: Mapping[str, Any], memo: kopf.Memo, logger: kopf.Logger
) -> None:
    """One reconcile of the pool when its waiting status change is due (one timer per pool)."""
    timers: dict[indexes.Key, asyncio.Task[None]] = memo.settling
    if key in timers:
        return

    async def later() -> None:
        try:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            timers.pop(key, None)
        try:
            await _refresh(key, kwargs, memo, logger, delay=0.0)
        except Exception:  # a task nobody awaits: say what failed
            logger.exception("status of %s/%s", *key)

    timers[key] = _spawn(memo, later(), f"tgipool-settle-{key[0]}/{key[1]}")


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def pool_changed(
    body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    _keep_posting(memo)
    await _reconcile((namespace or "", name), lambda: indexes.slim(body), memo, logger, memo.indexes)


def _folded(
    reading: Reading, key: indexes.Key, routed: Mapping[str, frozenset[str]], budget: tuple[int, int] | None
) -> Folded:
    """What a pool's status takes from the metrics loop and the gateways: its own numbers, the loop's
    error and the loaded alert rules, the gateways routing it, and a shared GPU budget's use by the other
    pools. A round that leaves these as they were leaves the pool as it was (observedAt moves only with a
    value)."""
    return (dict(reading.of(*key)), reading.error, reading.rule_groups, dict(routed), budget)


async def fold_pools(memo: kopf.Memo, logger: kopf.Logger, kwargs: Mapping[str, Any]) -> None:
    """One task for every pool: folds each new round of the metrics loop and each change of the gateways
    routing a pool into its status, and puts idle warm and cold pools back to rest (all through
    `reconcile`, which writes only what changed).

    It wakes on each new round and every TIMER_SECONDS (routing, a shared GPU budget's use, and the idle
    time of warm and cold pools, which no event announces). A hot pool whose share of the round, routing
    and budget are unchanged is left alone; warm and cold pools are reconciled on each wake. Only pools a
    reconcile has seen since the start (`memo.folded`) are folded: by then kopf's caches are filled. While
    kopf is paused by a peer, nothing is folded. Each fold runs in a handler's posting context (`_spawn`):
    the BackToRest and Woken events come from here. (A kopf daemon per pool did this before: each pinned its
    pool's body and a dozen coroutines, about 53 KB per pool, 53 MB at 1,000 pools.)
    """
    live: LiveMetrics = memo.live
    busy: set[indexes.Key] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def fold(key: indexes.Key) -> None:
        try:
            await _reconcile(key, _live_pool(kwargs, key), memo, logger, kwargs)
        except (kopf.PermanentError, kopf.TemporaryError) as e:
            logger.debug("metrics round for %s/%s: %s", *key, e)
            _retry_later(key, e, kwargs, memo, logger)
        except Exception:  # a task nobody awaits: say what failed, keep folding the others
            logger.exception("folding the metrics round into %s/%s", *key)
        finally:
            busy.discard(key)

    while True:
        await live.next_round(TIMER_SECONDS)
        if peering.paused() or not memo.posting:  # (none: no handler has run, so nothing to fold)
            continue
        for key in list(memo.folded):
            if key in busy:
                continue
            raw = indexes.pool(kwargs, key)
            if raw is None or raw["metadata"].get("deletionTimestamp"):
                continue
            hot = (raw.get("spec") or {}).get("tier", "hot") == "hot"
            folded = _folded(
                live.reading, key, indexes.routing(kwargs, key), indexes.budget_use(kwargs, key, raw)
            )
            if hot and memo.folded.get(key) == folded:
                continue
            busy.add(key)
            task = _spawn(memo, fold(key), f"tgipool-fold-{key[0]}/{key[1]}")
            tasks.add(task)
            task.add_done_callback(tasks.discard)


def _deleted(type: str, **_: Any) -> bool:  # kopf's name for the watch event type
    return type == "DELETED"


@kopf.on.event(GROUP, VERSION, PLURAL, id="pool_gone", when=_deleted)  # no run (nor log line) per event
async def pool_gone(type: str, namespace: str | None, name: str, uid: str, memo: kopf.Memo, **_: Any) -> None:
    """A deleted pool: what the operator kept for it goes (the folder stops at its `memo.folded`)."""
    key = (namespace or "", name)
    memo.diffbase.forget(uid)
    memo.gauges.forget(*key)
    memo.folded.pop(key, None)
    memo.writer.forget_status("ModelPool", *key)


def child_changed(
    memo: kopf.Memo, logger: kopf.Logger, type_: str, kind: str, namespace: str, name: str, key: indexes.Key
) -> None:
    """A child changed (drift, deletion, status), as its kind's tap in `watch_stream` saw it: re-run the
    owner's reconcile from the caches, in a task of its own (the stream goes on at once)."""
    if type_ == "DELETED":
        memo.writer.forget(kind, namespace, name)
    if not memo.posting or key in memo.queued:
        # No handler has run yet: every pool's first reconcile is to come, and reads the caches then.
        # Or a reconcile that has not read the caches yet will see this change.
        return
    running: set[asyncio.Task[None]] = memo.refreshing
    task = _spawn(memo, _refresh(key, memo.indexes, memo, logger), f"tgipool-refresh-{key[1]}")
    running.add(task)
    task.add_done_callback(running.discard)
