"""The gateway inside the cluster: its configuration follows a ModelGateway, the ModelPools it selects,
their ready Pods and its tenants Secret, live, by watch (`kube_watch.py`), without a restart.

Which pools route where, with which limits and endpoints, is `tgipool.routes` (the operator publishes the
same rows in the ModelGateway's status).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Iterable

import yaml

from tgipool.api.modelgateway import GATEWAY_PLURAL, ModelGateway, TenantsSecretRef
from tgipool.api.modelpool import GROUP, PLURAL, VERSION
from tgipool.desired import names
from tgipool.gateway.config import ConfigError, GatewayConfig, parse_config
from tgipool.gateway.kube_watch import RESYNC_SECONDS, Informer, KubeApi
from tgipool.manifest import Manifest
from tgipool.routes import routes

log = logging.getLogger("tgipool.gateway")


def build_config(
    gw: ModelGateway, pools: Iterable[Manifest], pods: Iterable[Manifest], tenants: list[Manifest]
) -> GatewayConfig:
    """PURE: the gateway configuration for a ModelGateway and what the cluster holds now.

    A defaultPool, or a tenant's pool, that is not in the routing table is dropped rather than failing
    the whole table.
    """
    table = routes(gw, pools, pods)
    known = {r.name for r in table}
    allowed = [{**t, "pools": [p for p in t.get("pools", []) if p in known]} for t in tenants]
    default = gw.spec.default_pool if gw.spec.default_pool in known else None
    return parse_config(
        {
            "defaultPool": default,
            "queueTimeoutSeconds": gw.spec.queue_timeout_seconds,
            "maxQueueLength": gw.spec.max_queue_length,
            "connectTimeoutSeconds": gw.spec.connect_timeout_seconds,
            "responseTimeoutSeconds": gw.spec.response_timeout_seconds,
            "streamIdleTimeoutSeconds": gw.spec.stream_idle_timeout_seconds,
            "clientTimeoutSeconds": gw.spec.client_timeout_seconds,
            "pools": table,
            "tenants": allowed,
        },
        source=f"ModelGateway {gw.metadata.namespace}/{gw.metadata.name}",
    )


def tenants_in(secret: Manifest | None, ref: TenantsSecretRef) -> list[Manifest]:
    if secret is None:
        raise ConfigError(f"Secret {ref.name} not found")
    data = (secret.get("data") or {}).get(ref.key)
    if data is None:
        raise ConfigError(f"Secret {ref.name} has no key {ref.key}")
    return yaml.safe_load(base64.b64decode(data)) or []


class ClusterSource:
    """Watches the API server and hands each changed configuration to `apply`."""

    def __init__(
        self, api: KubeApi, namespace: str, name: str, resync_seconds: float = RESYNC_SECONDS
    ) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.resync_seconds = resync_seconds
        self.current: GatewayConfig | None = None
        self._changed = asyncio.Event()
        crd = f"{GROUP}/{VERSION}"
        self.gateway = self._informer(crd, GATEWAY_PLURAL, fieldSelector=f"metadata.name={name}")
        self.pools = self._informer(crd, PLURAL)
        self.pods = self._informer("v1", "pods", labelSelector=f"{names.COMPONENT_LABEL}={names.SERVER}")
        self.secret: Informer | None = None  # while the ModelGateway names a tenants Secret
        self.secret_name: str | None = None
        self._tasks: dict[Informer, asyncio.Task[None]] = {}

    def _informer(self, api_version: str, plural: str, **params: str) -> Informer:
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        path = f"{prefix}/namespaces/{self.namespace}/{plural}"
        return Informer(self.api, path, params, self._changed.set, self.resync_seconds)

    def _start(self, informer: Informer) -> None:
        self._tasks[informer] = asyncio.get_running_loop().create_task(informer.run())

    def _follow_secret(self, name: str | None) -> None:
        """Watch the tenants Secret the ModelGateway names now (only that one: the Role allows no other)."""
        if name == self.secret_name:
            return
        if self.secret is not None:
            self._tasks.pop(self.secret).cancel()
            self.secret = None
        self.secret_name = name
        if name is not None:
            self.secret = self._informer("v1", "secrets", fieldSelector=f"metadata.name={name}")
            self._start(self.secret)

    def _rebuild(self) -> GatewayConfig | None:
        """The configuration the watched objects make now; None until each informer has listed."""
        if not (self.gateway.synced and self.pools.synced and self.pods.synced):
            return None
        raw = self.gateway.items.get(self.name)
        if raw is None:
            raise ConfigError(f"ModelGateway {self.namespace}/{self.name} not found")
        gw = ModelGateway.model_validate(raw)
        ref = gw.spec.tenants_secret_ref
        self._follow_secret(ref.name if ref else None)
        tenants: list[Manifest] = []
        if ref is not None:
            assert self.secret is not None
            if not self.secret.synced:
                return None
            tenants = tenants_in(self.secret.items.get(ref.name), ref)
        return build_config(gw, self.pools.items.values(), self.pods.items.values(), tenants)

    async def follow(self, apply: Callable[[GatewayConfig], None], interval: float) -> None:
        """Applies each new configuration: at most one rebuild per `interval` seconds, however many events."""
        for informer in (self.gateway, self.pools, self.pods):
            self._start(informer)
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                try:
                    config = self._rebuild()
                    if config is not None and config != self.current:
                        apply(config)
                        self.current = config
                        log.warning(
                            "routing table: %s",
                            ", ".join(f"{p.name}({len(p.endpoints)} endpoints)" for p in config.pools)
                            or "empty",
                        )
                except Exception as e:  # keep serving the last good table on any error
                    log.error("cannot refresh the routing table, keeping the last one: %s", e)
                await asyncio.sleep(interval)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
