"""The operator's per-pool gauges: what the chart's alerts compare the pools' live numbers against."""

from __future__ import annotations

from typing import Any

from tgipool.api.modelpool import ModelPool
from tgipool.handlers.live_metrics import PoolGauges


def test_gauges_follow_the_pool_and_go_with_it(short_pool: dict[str, Any]) -> None:
    pool = ModelPool.model_validate(short_pool)
    gauges = PoolGauges()
    gauges.set(pool, replicas=3)
    labels = {"namespace": "ml", "pool": pool.name}
    value = gauges.registry.get_sample_value
    assert value("tgipool_pool_slo_p95_latency_ms", labels) == pool.slo_p95_ms == 3000
    assert value("tgipool_pool_replicas", labels) == 3
    assert value("tgipool_pool_replicas_max", labels) == pool.spec.replicas.ceiling
    # 3 replicas x 1 GPU x the pool's hourly price.
    assert value("tgipool_pool_gpu_hourly_cost", labels) == 3 * pool.spec.gpu.hourly_price
    gauges.forget("ml", pool.name)
    assert value("tgipool_pool_replicas", labels) is None
