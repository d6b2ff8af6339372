"""kopf handlers for ModelGateway: apply its children, publish the routing table it serves.

Its Service, Deployment and HPA come from kopf indexes; its ServiceAccount, Role and RoleBinding
are not watched (the chart grants no list/watch on them), so each is read once and afterwards
known from our own writes. Pool events refresh the routing tables of their namespace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from tgipool.api.modelgateway import GATEWAY_PLURAL
from tgipool.api.modelpool import GROUP, PLURAL, VERSION
from tgipool.api.parse import describe_validation_error, parse_gateway
from tgipool.desired.gateway_children import (
    GATEWAY_LABEL,
    build_gateway_children,
    child_name,
    gateway_endpoint,
)
from tgipool.handlers import indexes
from tgipool.handlers.writer import Outcome, Writer, report
from tgipool.k8s import errors
from tgipool.k8s.client import ApplyError
from tgipool.manifest import Manifest
from tgipool.routes import routes, status_row
from tgipool.status import gateway_status, invalid_gateway_status, now_rfc3339

WATCHED = {kind for _group, _version, _plural, kind in indexes.GATEWAY_CHILD_KINDS}


async def _read_once(writer: Writer, manifest: Manifest) -> None:
    """Learn an unwatched child's state once; from then on our own writes keep it known."""
    kind, meta = manifest["kind"], manifest["metadata"]
    if writer.known(kind, meta["namespace"], meta["name"]):
        return
    try:
        found = await writer.call(
            writer.kube.get, manifest["apiVersion"], kind, meta["namespace"], meta["name"]
        )
    except ApplyError:
        return  # missing or unreadable: the apply that follows settles it
    writer.remember(found)


async def reconcile_gateway(
    raw: Mapping[str, Any],
    pools: list[Manifest],
    children: Mapping[tuple[str, str], Manifest],
    writer: Writer,
    logger: kopf.Logger,
    *,
    pods: list[Manifest],
) -> Outcome:
    """`pods`: the namespace's inference-server Pods, whose readiness makes the routes' endpoints."""
    meta = raw["metadata"]
    async with writer.lock("ModelGateway", meta.get("namespace", ""), meta["name"]):
        return await _reconcile_gateway(raw, pools, pods, children, writer, logger)


async def _reconcile_gateway(
    raw: Mapping[str, Any],
    pools: list[Manifest],
    pods: list[Manifest],
    children: Mapping[tuple[str, str], Manifest],
    writer: Writer,
    logger: kopf.Logger,
) -> Outcome:
    out = Outcome()
    meta = raw["metadata"]
    namespace, gen = meta.get("namespace", ""), meta.get("generation")
    current = writer.current("ModelGateway", namespace, meta["name"], dict(raw)) or raw
    previous = list((current.get("status") or {}).get("conditions") or [])
    try:
        gw = parse_gateway(raw)
    except ValidationError as err:
        message = describe_validation_error(err)
        await writer.write_status(raw, invalid_gateway_status(gen, message, previous, now_rfc3339()), out)
        raise kopf.PermanentError(f"invalid ModelGateway: {message}") from err

    table = routes(gw, pools, pods)
    manifests = build_gateway_children(gw, [r.demand_lease for r in table if r.demand_lease])
    for manifest in manifests:
        if manifest["kind"] not in WATCHED:
            await _read_once(writer, manifest)
    await writer.apply(manifests, lambda kind, name: children.get((kind, name)), out)

    name = child_name(gw)
    deployment = writer.current("Deployment", namespace, name, children.get(("Deployment", name)))
    new = gateway_status(
        gen,
        previous,
        now_rfc3339(),
        deployment=name,
        ready_replicas=int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0),
        endpoint=gateway_endpoint(gw),
        table=[status_row(r) for r in table],  # exactly the gateway's own table
        default_pool=gw.spec.default_pool,
        refused=errors.refused(out.errors[0]) if out.errors else None,
    )
    await writer.write_status(raw, new, out)
    report(raw, out, logger)
    return out


async def _refresh(
    raw: Mapping[str, Any], kwargs: Mapping[str, Any], writer: Writer, logger: kopf.Logger
) -> None:
    """A reconcile from an event of another object: its failure is logged; the gateway's own
    handlers retry."""
    if raw["metadata"].get("deletionTimestamp"):
        return
    namespace = raw["metadata"].get("namespace", "")
    key = (namespace, raw["metadata"]["name"])
    try:
        await reconcile_gateway(
            raw,
            indexes.pools_in(kwargs, namespace),
            indexes.gateway_children(kwargs, key),
            writer,
            logger,
            pods=indexes.server_pods(kwargs, namespace),
        )
    except (kopf.PermanentError, kopf.TemporaryError) as e:
        logger.info("reconcile of gateway %s/%s: %s", *key, e)


@kopf.on.resume(GROUP, VERSION, GATEWAY_PLURAL)
@kopf.on.create(GROUP, VERSION, GATEWAY_PLURAL)
@kopf.on.update(GROUP, VERSION, GATEWAY_PLURAL, field="spec")
async def gateway_changed(
    body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    key, caches = (namespace or "", name), memo.indexes  # kopf's indexes and our child caches
    children = indexes.gateway_children(caches, key)
    # The namespace's pools look at their routing from now on (see handlers/pool.py's folder).
    memo.live.wake()
    await reconcile_gateway(
        indexes.slim(body),
        indexes.pools_in(caches, key[0]),
        children,
        memo.writer,
        logger,
        pods=indexes.server_pods(caches, key[0]),
    )


# Pool events come in bursts (hundreds of pools converging at once), and each refreshed every gateway of
# its namespace: a reconcile over all the namespace's pools per pool event, n^2 for n pools. Requests
# within ROUTES_DEBOUNCE_SECONDS fold into one refresh, made from the caches as they are then.
ROUTES_DEBOUNCE_SECONDS = 0.5


@kopf.on.event(GROUP, VERSION, PLURAL, id="pool_routes_changed")
async def pool_routes_changed(
    namespace: str | None, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A pool came, went or changed (spec or readiness): refresh the routing tables of its namespace."""
    ns = namespace or ""
    if ns not in kwargs["gateway_index"]:
        return
    pending: dict[str, asyncio.Task[None]] = memo.setdefault("routes_pending", {})
    if ns not in pending:  # one refresh per namespace in the making; the pool's own handlers go on
        pending[ns] = asyncio.create_task(_refresh_namespace(ns, pending, memo.indexes, memo.writer, logger))


async def _refresh_namespace(
    ns: str,
    pending: dict[str, asyncio.Task[None]],
    kwargs: Mapping[str, Any],
    writer: Writer,
    logger: kopf.Logger,
) -> None:
    try:
        await asyncio.sleep(ROUTES_DEBOUNCE_SECONDS)
    finally:
        pending.pop(ns, None)  # an event from now on asks for the next refresh
    for gw in indexes.unpack(kwargs["gateway_index"].get(ns)):  # the indexes are live views
        await _refresh(gw, kwargs, writer, logger)


async def gateway_child_changed(
    type: str,  # kopf's name for the watch event type
    body: kopf.Body,
    namespace: str | None,
    labels: Mapping[str, str],
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """A child changed (drift, deletion, readiness): re-run its gateway's reconcile from the caches."""
    if type == "DELETED":
        memo.writer.forget(body.get("kind", ""), namespace or "", body["metadata"]["name"])
    gw = indexes.gateway(memo.indexes, (namespace or "", labels[GATEWAY_LABEL]))
    if gw is not None:
        await _refresh(gw, memo.indexes, memo.writer, logger)


for _group, _version, _plural, _kind in indexes.GATEWAY_CHILD_KINDS:
    kopf.on.event(_group, _version, _plural, labels=indexes.GATEWAY_MANAGED, id=f"gateway_{_plural}_changed")(
        gateway_child_changed
    )
