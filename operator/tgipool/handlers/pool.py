"""kopf handlers: thin wrappers that hand a pool and its cached children to `reconcile`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kopf._cogs.structs.references import Selector  # not re-exported by kopf

from tgipool.api.modelpool import GROUP, PLURAL, VERSION
from tgipool.config import DEFAULT_CONFIG
from tgipool.desired import names
from tgipool.handlers import indexes
from tgipool.handlers.live_metrics import LiveMetrics, PoolGauges
from tgipool.handlers.peering import announce
from tgipool.handlers.reconcile import reconcile
from tgipool.handlers.writer import Writer
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
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Every kopf setting in one place; the API client is made here, not at import."""
    prefix = "tgipool.io"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{prefix}/finalizer"
    # Only warnings from kopf's own logs become Events; our own Events mark real writes.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "tgipool-operator"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 16
    # Children and pods are watched by our label, filtered by the API server: kopf would otherwise watch
    # (and keep memory for) every Service, Pod, Job and Lease of the cluster, node heartbeats included.
    for group, version, plural, _kind in [*indexes.CHILD_KINDS, ("", "v1", "pods", "Pod")]:
        selector = Selector(group=group, version=version, plural=plural)
        settings.watching.label_selectors[selector] = f"app.kubernetes.io/managed-by={names.MANAGED_BY}"
    settings.networking.request_timeout = 60
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
    if opts.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(opts.metrics_port, addr=opts.metrics_address, registry=memo.gauges.registry)
    if opts.peering_identity and not settings.peering.standalone:
        # Before kopf lists its peers: so that replicas started together all see each other first.
        await announce(memo.writer.kube, settings, opts.peering_identity, opts.namespaces, logger)


@kopf.on.cleanup()
async def stop_loops(memo: kopf.Memo, **_: Any) -> None:
    await memo.live.stop()


async def _reconcile(
    raw: Mapping[str, Any], snap: indexes.Snapshot, memo: kopf.Memo, logger: kopf.Logger, reading: Reading
) -> None:
    key = (raw["metadata"].get("namespace", ""), raw["metadata"]["name"])
    # Every reconcile folds the round it read: the pool's folder then has nothing to redo.
    memo.folded[key] = _folded(reading, key, snap.routed_by, snap.budget)
    out = await reconcile(raw, snap, memo.writer, memo.cfg, logger, reading)
    if out.pool is not None:
        # The operator's per-pool gauges follow what this reconcile saw (for the alerts).
        memo.gauges.set(out.pool, out.replicas)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def pool_changed(
    body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    snap = indexes.snapshot(kwargs, (namespace or "", name))
    await _reconcile(indexes.slim(body), snap, memo, logger, memo.live.reading)


def _folded(
    reading: Reading, key: indexes.Key, routed: Mapping[str, frozenset[str]], budget: tuple[int, int] | None
) -> Folded:
    """What a pool's status takes from the metrics loop and the gateways: its own numbers, the loop's
    error and the loaded alert rules, the gateways routing it, and a shared GPU budget's use by the other
    pools. A round that leaves these as they were leaves the pool as it was (observedAt moves only with a
    value)."""
    return (dict(reading.of(*key)), reading.error, reading.rule_groups, dict(routed), budget)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=1.0, initial_delay=TIMER_SECONDS)
async def pool_folder(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    logger: kopf.Logger,
    stopped: kopf.DaemonStopped,
    **kwargs: Any,
) -> None:
    """Folds each new round of the metrics loop and each change of the gateways routing the pool into
    its status, and puts idle warm and cold pools back to rest (all through `reconcile`, which writes
    only what changed).

    Event-driven: a hot pool wakes only on a new metrics round (or, in a namespace with a gateway, every
    TIMER_SECONDS to see its routing), and does nothing when its share of the round is unchanged. Warm
    and cold pools also wake every TIMER_SECONDS: they rest once their demand is older than
    activation.idleAfterSeconds, which no event announces. (A kopf timer on every pool every 3 s was a
    handler run and a log line per pool per tick: CPU in proportion to the pools, all the time.)
    """
    key = (namespace or "", name)
    live: LiveMetrics = memo.live
    while True:
        spec = body.get("spec") or {}
        hot = spec.get("tier", "hot") == "hot"
        # A shared GPU budget's other pools scale without an event of this pool: look every few seconds.
        polls = key[0] in kwargs["gateway_index"] or "gpuBudget" in (spec.get("autoscaling") or {})
        await live.next_round(None if hot and not polls else TIMER_SECONDS, stopped.wait())
        if stopped or body.get("metadata", {}).get("deletionTimestamp"):
            return
        reading = live.reading
        hot = (body.get("spec") or {}).get("tier", "hot") == "hot"
        raw = indexes.pool(kwargs, key)
        if raw is None:
            continue
        budget = indexes.budget_use(kwargs, key, raw)
        folded = _folded(reading, key, indexes.routing(kwargs, key), budget)
        if hot and memo.folded.get(key) == folded:
            continue
        try:
            await _reconcile(raw, indexes.snapshot(kwargs, key), memo, logger, reading)
        except (kopf.PermanentError, kopf.TemporaryError) as e:
            logger.debug("metrics round for %s/%s: %s", *key, e)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def pool_deleted(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.gauges.forget(namespace or "", name)
    memo.folded.pop((namespace or "", name), None)


async def child_changed(
    type: str,  # kopf's name for the watch event type
    body: kopf.Body,
    namespace: str | None,
    labels: Mapping[str, str],
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """A child changed (drift, deletion, status): re-run the owner's reconcile from the caches."""
    key = (namespace or "", labels[names.POOL_LABEL])
    if type == "DELETED":
        memo.writer.forget(body.get("kind", ""), key[0], body["metadata"]["name"])
    pool = indexes.pool(kwargs, key)
    if pool is None or pool["metadata"].get("deletionTimestamp"):
        return
    try:
        await _reconcile(pool, indexes.snapshot(kwargs, key), memo, logger, memo.live.reading)
    except (kopf.PermanentError, kopf.TemporaryError) as e:
        # The pool's own handler retries; a child event only refreshes.
        logger.info("reconcile of %s/%s from a child event: %s", *key, e)


for _group, _version, _plural, _kind in indexes.CHILD_KINDS:
    kopf.on.event(_group, _version, _plural, labels=indexes.MANAGED, id=f"{_plural}_changed")(child_changed)
kopf.on.event(
    "", "v1", "pods", labels={**indexes.MANAGED, names.COMPONENT_LABEL: names.SERVER}, id="pods_changed"
)(child_changed)
