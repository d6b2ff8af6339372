"""The InferencePool of a pool (`spec.routing.inferencePool: true`): the Gateway API inference
extension's view of the pool's pods, for users who run an inference gateway of their own.

`inference.networking.k8s.io/v1` (GA): `spec.selector.matchLabels` picks pods in the pool's namespace,
`spec.targetPorts` their serving port. One per pool, which serves one base model (its adapters ride
on it). No `endpointPickerRef`: the endpoint picker is the user's gateway's choice.
"""

from __future__ import annotations

from tgipool.api.modelpool import ModelPool
from tgipool.config import OperatorConfig
from tgipool.desired import names
from tgipool.desired.engines import container_port
from tgipool.manifest import Manifest

API_VERSION = "inference.networking.k8s.io/v1"
KIND = "InferencePool"


def build_inference_pool(pool: ModelPool, cfg: OperatorConfig) -> Manifest | None:
    if not pool.spec.routing.inference_pool:
        return None
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": names.metadata(pool, pool.name),
        "spec": {
            "selector": {"matchLabels": names.selector_labels(pool)},
            "targetPorts": [{"number": container_port(pool, cfg)}],
            "appProtocol": "http",
        },
    }
