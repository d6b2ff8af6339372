"""The HPA and PodDisruptionBudget of a pool.

HPA metric names are a contract with the Prometheus adapter rules (README, "Autoscaling metrics"):
- Pods metric: the engine's own queue gauge, averaged over the pool's pods, under the name the adapter
  serves it (`engine_metrics.hpa_queue_metric`: `tgi_queue_size`, `vllm_num_requests_waiting`, ...);
- Object metric `tgipool_request_latency_p95_ms` on the pool's Service: the pool-wide p95.
"""

from __future__ import annotations

from tgipool.api.modelpool import ModelPool
from tgipool.config import OperatorConfig
from tgipool.desired import names
from tgipool.manifest import Manifest
from tgipool.monitoring.engine_metrics import hpa_queue_metric

P95_METRIC = "tgipool_request_latency_p95_ms"


def p95_target_ms(pool: ModelPool) -> int | None:
    """The HPA's p95 target: explicit, else the pool's objective; None when latency scaling is off."""
    scaling = pool.spec.autoscaling
    if not scaling.scale_on_latency:
        return None
    return scaling.p95_latency_ms or pool.slo_p95_ms


def build_hpa(pool: ModelPool, cfg: OperatorConfig, max_replicas: int | None = None) -> Manifest:
    """`max_replicas`: the ceiling a shared GPU budget leaves the pool now (`api/budget.py`)."""
    scaling = pool.spec.autoscaling
    metrics: list[Manifest] = [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": hpa_queue_metric(pool.spec.engine.kind)},
                "target": {"type": "AverageValue", "averageValue": str(scaling.queue_per_replica)},
            },
        }
    ]
    p95 = p95_target_ms(pool)
    if p95 is not None:
        metrics.append(
            {
                "type": "Object",
                "object": {
                    "describedObject": {"apiVersion": "v1", "kind": "Service", "name": pool.name},
                    "metric": {"name": P95_METRIC},
                    "target": {"type": "Value", "value": str(p95)},
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": names.metadata(pool, pool.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": pool.name},
            # The HPA cannot hold zero; warm pools scale 0 <-> 1 through the operator.
            "minReplicas": max(1, pool.spec.replicas.min),
            "maxReplicas": pool.spec.replicas.ceiling if max_replicas is None else max_replicas,
            "metrics": metrics,
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds},
            },
        },
    }


def build_pdb(pool: ModelPool, cfg: OperatorConfig) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": names.metadata(pool, pool.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": names.selector_labels(pool)}},
    }
