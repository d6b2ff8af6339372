"""The gateway inside the cluster: its configuration follows a ModelGateway, the ModelPools it
selects and their ready Pods, live, without a restart.

Endpoints come from the pools' Pods (label selector and readiness), as the Gateway API inference
extension's endpoint picker does, not from Services or EndpointSlices (which refuse the loopback
pod addresses of the simulated cluster).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import yaml
from pydantic import ValidationError

from tgipool.api.modelgateway import ModelGateway
from tgipool.api.modelpool import ModelPool
from tgipool.desired import names
from tgipool.gateway.config import ConfigError, GatewayConfig, parse_config
from tgipool.k8s.client import Kube
from tgipool.manifest import Manifest

log = logging.getLogger("tgipool.gateway")


def selects(gw: ModelGateway, pool: Manifest) -> bool:
    labels = pool.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in gw.spec.pool_selector.match_labels.items())


def ready_endpoints(pool: ModelPool, pods: list[Manifest]) -> list[str]:
    """URLs of the pool's Ready, not terminating pods, on the TGI container's port."""
    out = []
    for pod in pods:
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        if (meta.get("labels") or {}).get(names.POOL_LABEL) != pool.name or meta.get("deletionTimestamp"):
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        if not ready or not status.get("podIP"):
            continue
        port = 8080
        for c in pod.get("spec", {}).get("containers", []):
            for p in c.get("ports") or []:
                if p.get("name") == "http":
                    port = int(p["containerPort"])
        out.append(f"http://{status['podIP']}:{port}")
    return sorted(out)


def build_config(
    gw: ModelGateway, pools: list[Manifest], pods: list[Manifest], tenants: list[Manifest]
) -> GatewayConfig:
    """PURE: the gateway configuration for a ModelGateway and what the cluster holds now.

    Pools that do not parse are left out (the operator reports them on the pool itself); a
    fallbackPool or defaultPool that is not in the routing table is dropped rather than failing
    the whole table.
    """
    parsed: list[ModelPool] = []
    for raw in pools:
        if not selects(gw, raw):
            continue
        try:
            parsed.append(ModelPool.model_validate(raw))
        except ValidationError:
            continue
    known = {p.name for p in parsed}
    entries = []
    for pool in sorted(parsed, key=lambda p: p.name):
        lim = pool.limits
        fallback = pool.spec.routing.fallback_pool
        entries.append(
            {
                "name": pool.name,
                "servedName": pool.served_name,
                "maxInputTokens": lim.max_input_tokens,
                "maxTotalTokens": lim.max_total_tokens,
                "maxConcurrentRequests": lim.max_concurrent_requests,
                "priority": pool.spec.routing.priority,
                "fallbackPool": fallback if fallback in known else None,
                "endpoints": ready_endpoints(pool, pods),
            }
        )
    allowed = [{**t, "pools": [p for p in t.get("pools", []) if p in known]} for t in tenants]
    default = gw.spec.default_pool if gw.spec.default_pool in known else None
    return parse_config(
        {
            "defaultPool": default,
            "queueTimeoutSeconds": gw.spec.queue_timeout_seconds,
            "maxQueueLength": gw.spec.max_queue_length,
            "pools": entries,
            "tenants": allowed,
        },
        source=f"ModelGateway {gw.metadata.namespace}/{gw.metadata.name}",
    )


class ClusterSource:
    """Polls the API server and hands each changed configuration to `apply`."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.current: GatewayConfig | None = None

    def read(self) -> GatewayConfig:
        raw = self.kube.get("tgipool.io/v1alpha1", "ModelGateway", self.namespace, self.name)
        gw = ModelGateway.model_validate(raw)
        pools = self.kube.list("tgipool.io/v1alpha1", "ModelPool", namespace=self.namespace)
        selector = f"{names.COMPONENT_LABEL}={names.SERVER}"
        pods = self.kube.list("v1", "Pod", selector=selector, namespace=self.namespace)
        tenants: list[Manifest] = []
        ref = gw.spec.tenants_secret_ref
        if ref is not None:
            secret = self.kube.get("v1", "Secret", self.namespace, ref.name)
            data = (secret.get("data") or {}).get(ref.key)
            if data is None:
                raise ConfigError(f"Secret {ref.name} has no key {ref.key}")
            tenants = yaml.safe_load(base64.b64decode(data)) or []
        return build_config(gw, pools, pods, tenants)

    async def follow(self, apply: Any, interval: float) -> None:
        while True:
            try:
                config = await asyncio.to_thread(self.read)
                if config != self.current:
                    apply(config)
                    self.current = config
                    log.warning(
                        "routing table: %s",
                        ", ".join(f"{p.name}({len(p.endpoints)} endpoints)" for p in config.pools) or "empty",
                    )
            except Exception as e:  # keep serving the last good table on any error
                log.error("cannot refresh the routing table, keeping the last one: %s", e)
            await asyncio.sleep(interval)
