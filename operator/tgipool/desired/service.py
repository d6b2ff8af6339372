"""The Service in front of a pool's TGI pods."""

from __future__ import annotations

from typing import Any

from tgipool.api.modelpool import ModelPool
from tgipool.config import OperatorConfig
from tgipool.desired import names


def build_service(pool: ModelPool, cfg: OperatorConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": names.metadata(pool, pool.name),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector_labels(pool),
            "ports": [{"name": "http", "port": cfg.service_port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def endpoint(pool: ModelPool, cfg: OperatorConfig) -> str:
    return f"http://{pool.name}.{pool.namespace}.svc:{cfg.service_port}"
