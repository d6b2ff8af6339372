"""The plain asyncio Kubernetes client of the operator bench's floor: server-side apply and LIST, bounded."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Awaitable, Iterable
from typing import Any

import aiohttp
import kubernetes

CONCURRENCY = 16  # the floor client's requests in flight (the operator's API client pool is as large)
PLURAL_OF = {
    "Lease": "leases",
    "Service": "services",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Job": "jobs",
    "Deployment": "deployments",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "ModelPool": "modelpools",
}


class Api:
    """A plain asyncio Kubernetes client: server-side apply and LIST, nothing else."""

    def __init__(self, session: aiohttp.ClientSession, host: str, headers: dict[str, str]) -> None:
        self.session, self.host, self.headers = session, host.rstrip("/"), headers

    @classmethod
    async def connect(cls) -> Api:
        conf = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=os.environ["KUBECONFIG"], client_configuration=conf)
        ctx = ssl.create_default_context(cafile=conf.ssl_ca_cert)
        if conf.cert_file:
            ctx.load_cert_chain(conf.cert_file, conf.key_file)
        headers = {"User-Agent": "bench-floor"}
        token = conf.api_key.get("authorization") or conf.api_key.get("BearerToken")
        if token:
            headers["Authorization"] = token if token.startswith("Bearer") else f"Bearer {token}"
        conn = aiohttp.TCPConnector(ssl=ctx, limit=CONCURRENCY)
        return cls(aiohttp.ClientSession(connector=conn), conf.host, headers)

    @staticmethod
    def path(manifest: dict[str, Any]) -> str:
        api, meta = manifest["apiVersion"], manifest["metadata"]
        prefix = "/api/v1" if api == "v1" else f"/apis/{api}"
        return f"{prefix}/namespaces/{meta['namespace']}/{PLURAL_OF[manifest['kind']]}/{meta['name']}"

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """One server-side apply; passing trouble (429, 5xx, a cut connection) is retried, as clients do."""
        url = self.host + self.path(manifest)
        headers = {**self.headers, "Content-Type": "application/apply-patch+yaml"}
        params = {"fieldManager": "bench-floor", "force": "true"}
        for attempt in range(8):
            try:
                async with self.session.patch(
                    url, data=json.dumps(manifest), headers=headers, params=params
                ) as r:
                    body = await r.json(content_type=None)
                    if r.status < 300:
                        return dict(body)
                    if r.status not in (409, 429) and r.status < 500:
                        raise RuntimeError(f"apply {self.path(manifest)}: {r.status} {body.get('message')}")
            except (aiohttp.ClientError, TimeoutError):
                if attempt == 7:
                    raise
            await asyncio.sleep(0.2 * 2**attempt)
        raise RuntimeError(f"apply {self.path(manifest)}: no success after 8 attempts")

    async def list(self, api: str, plural: str, ns: str) -> list[dict[str, Any]]:
        prefix = "/api/v1" if api == "v1" else f"/apis/{api}"
        async with self.session.get(
            f"{self.host}{prefix}/namespaces/{ns}/{plural}", headers=self.headers
        ) as r:
            r.raise_for_status()
            return list((await r.json())["items"])

    async def close(self) -> None:
        await self.session.close()


async def bounded(jobs: Iterable[Awaitable[Any]], limit: int = CONCURRENCY) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(job: Awaitable[Any]) -> Any:
        async with sem:
            return await job

    return list(await asyncio.gather(*(one(j) for j in jobs)))
