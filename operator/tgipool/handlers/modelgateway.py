"""kopf handlers for ModelGateway: apply its children, publish the routing table it serves."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from tgipool.api.modelgateway import GATEWAY_PLURAL, ModelGateway
from tgipool.api.modelpool import GROUP, VERSION, ModelPool
from tgipool.api.parse import describe_validation_error
from tgipool.desired.gateway_children import build_gateway_children, child_name, gateway_endpoint
from tgipool.handlers import indexes
from tgipool.handlers.reconcile import event_target, now_rfc3339, status_patch
from tgipool.k8s.client import ApplyError, Kube
from tgipool.k8s.compare import needs_apply, stamped
from tgipool.manifest import Manifest
from tgipool.status import Verdict, set_condition

GATEWAY_STATUS_KEYS = (
    "observedGeneration",
    "phase",
    "endpoint",
    "conditions",
    "pools",
    "routedPools",
    "defaultPool",
)


def routing_table(gw: ModelGateway, pools: list[Manifest]) -> list[Manifest]:
    """PURE: the pools the gateway selects, as its status shows them."""
    rows = []
    for raw in pools:
        labels = raw.get("metadata", {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in gw.spec.pool_selector.match_labels.items()):
            continue
        try:
            pool = ModelPool.model_validate(raw)
        except ValidationError:
            continue
        row = {
            "name": pool.name,
            "servedName": pool.served_name,
            "maxInputTokens": pool.limits.max_input_tokens,
            "maxTotalTokens": pool.limits.max_total_tokens,
            "priority": pool.spec.routing.priority,
            "readyEndpoints": int((raw.get("status") or {}).get("readyReplicas") or 0),
        }
        if pool.spec.routing.fallback_pool:
            row["fallbackPool"] = pool.spec.routing.fallback_pool
        rows.append(row)
    return sorted(rows, key=lambda r: (r["servedName"], r["maxTotalTokens"], r["name"]))


def _get(kube: Kube, manifest: Manifest) -> Manifest | None:
    meta = manifest["metadata"]
    try:
        return kube.get(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
    except ApplyError as e:
        if e.status == 404:
            return None
        raise


async def reconcile_gateway(
    raw: Mapping[str, Any], pools: list[Manifest], kube: Kube, logger: kopf.Logger
) -> None:
    meta = raw["metadata"]
    old: Mapping[str, Any] = raw.get("status") or {}
    previous = list(old.get("conditions") or [])
    gen = meta.get("generation")
    try:
        gw = ModelGateway.model_validate({"metadata": meta, "spec": raw.get("spec") or {}})
    except ValidationError as err:
        message = describe_validation_error(err)
        bad = Verdict("False", "InvalidSpec", message)
        new: Manifest = {
            "observedGeneration": gen,
            "phase": "Invalid",
            "conditions": [set_condition(previous, "Ready", bad, gen, now_rfc3339())],
        }
        patch = status_patch(new, old)
        if patch:
            await asyncio.to_thread(kube.patch_status, meta["namespace"], meta["name"], patch, "ModelGateway")
        raise kopf.PermanentError(f"invalid ModelGateway: {message}") from err

    applied = []
    deployment: Manifest | None = None
    for manifest in build_gateway_children(gw):
        observed = await asyncio.to_thread(_get, kube, manifest)
        if manifest["kind"] == "Deployment":
            deployment = observed
        if needs_apply(manifest, observed):
            await asyncio.to_thread(kube.apply, stamped(manifest))
            applied.append(f"{manifest['kind']}/{manifest['metadata']['name']}")

    ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    table = routing_table(gw, pools)
    verdict = (
        Verdict("True", "GatewayReady", f"{ready} gateway replica(s) ready, routing {len(table)} pool(s)")
        if ready
        else Verdict("False", "WaitingForReplicas", f"Deployment {child_name(gw)} has no ready replica yet")
    )
    default = gw.spec.default_pool if any(r["name"] == gw.spec.default_pool for r in table) else None
    new = {
        "observedGeneration": gen,
        "phase": "Ready" if ready else "Progressing",
        "endpoint": gateway_endpoint(gw),
        "conditions": [set_condition(previous, "Ready", verdict, gen, now_rfc3339())],
        "pools": table,
        "routedPools": len(table),
        "defaultPool": default,
    }
    patch = status_patch({k: v for k, v in new.items() if v is not None}, old)
    if patch:
        await asyncio.to_thread(kube.patch_status, meta["namespace"], meta["name"], patch, "ModelGateway")
    if applied:
        kopf.info(event_target(raw), reason="Reconciled", message=f"server-side applied {', '.join(applied)}")
        logger.info("reconciled gateway=%s/%s %s", meta["namespace"], meta["name"], ", ".join(applied))


def _pools_in(namespace: str, kwargs: Mapping[str, Any]) -> list[Manifest]:
    index = kwargs["pool_index"]
    return [body for (ns, _name), store in index.items() if ns == namespace for body in store]


@kopf.on.resume(GROUP, VERSION, GATEWAY_PLURAL)
@kopf.on.create(GROUP, VERSION, GATEWAY_PLURAL)
@kopf.on.update(GROUP, VERSION, GATEWAY_PLURAL, field="spec")
async def gateway_changed(
    body: kopf.Body, namespace: str | None, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    await reconcile_gateway(indexes.slim(body), _pools_in(namespace or "", kwargs), memo.kube, logger)


@kopf.timer(GROUP, VERSION, GATEWAY_PLURAL, interval=5, initial_delay=5)
async def gateway_refresh(
    body: kopf.Body, namespace: str | None, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """Pools come and go and change readiness: keep the published routing table current."""
    try:
        await reconcile_gateway(indexes.slim(body), _pools_in(namespace or "", kwargs), memo.kube, logger)
    except kopf.PermanentError:
        return
