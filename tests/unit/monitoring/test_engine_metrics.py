"""The engine metric table: one name per signal and version, and every consumer reading it."""

from __future__ import annotations

from typing import Any

import pytest

from tgipool.api.modelpool import ModelPool
from tgipool.config import DEFAULT_CONFIG
from tgipool.desired import build_children
from tgipool.monitoring.engine_metrics import (
    CURRENT_VERSION,
    ENGINES,
    SIGNALS,
    TABLE,
    exported,
    hpa_queue_metric,
    names,
    parse_version,
)
from tgipool.monitoring.promql import engine_queries, pool_queries
from tgipool.monitoring.rules import adapter_rules


def test_versions_parse_release_numbers_only() -> None:
    assert parse_version("0.11.0") == (0, 11, 0)
    assert parse_version("v0.10.2rc1") == (0, 10, 2)
    assert parse_version("3.3.6-dev0") == (3, 3, 6)
    assert parse_version("0.9") < parse_version("0.10.0")


def test_vllm_renames_follow_the_version() -> None:
    def kv(version: str) -> set[str]:
        return {m.name for m in exported("vllm", version) if m.signal == "kv_usage"}

    assert kv("0.9.2") == {"vllm:gpu_cache_usage_perc"}
    assert kv("0.10.1") == {"vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"}  # deprecation release
    assert kv("0.11.0") == kv(CURRENT_VERSION["vllm"]) == {"vllm:kv_cache_usage_perc"}
    itl = {m.name for m in exported("vllm") if m.signal == "itl"}
    assert itl == {"vllm:inter_token_latency_seconds"}
    # Queries read the newest name first, and the old one after it.
    assert [m.name for m in names("vllm", "kv_usage")] == [
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
    ]


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_has_the_signals_the_status_and_hpa_need(engine: Any) -> None:
    for signal in (
        "queue",
        "running",
        "itl",
        "e2e",
        "generated_tokens",
        "prompt_tokens",
        "requests",
        "failures",
    ):
        assert names(engine, signal), (engine, signal)
        # The current version exports a name for it.
        assert any(m.signal == signal for m in exported(engine)), (engine, signal)
    assert set(engine_queries(engine, "1m")) == {
        "p50LatencyMs",
        "p95LatencyMs",
        "p99LatencyMs",
        "queueDepth",
        "tokensPerSecond",
        "requestsPerSecond",
        "errorRate",
    }


def test_each_row_is_one_signal_of_one_engine_with_a_known_kind() -> None:
    assert {m.signal for m in TABLE} <= set(SIGNALS)
    assert all(m.kind in ("gauge", "counter", "histogram") for m in TABLE)
    prefixes = {"tgi": "tgi_", "vllm": "vllm:", "sglang": "sglang:"}
    assert all(m.name.startswith(prefixes[m.engine]) for m in TABLE)


def test_a_field_query_reads_each_engine_once_and_tgi_alone_is_unchanged() -> None:
    queries = {q.field: q.expr for q in pool_queries("2m")}
    assert (
        "vllm:num_requests_waiting" in queries["queueDepth"]
        and "sglang:num_queue_reqs" in queries["queueDepth"]
    )
    # TGI's own part is the query the operator always ran.
    assert engine_queries("tgi", "2m")["queueDepth"] == 'sum by (namespace, pool) (tgi_queue_size{pool!=""})'
    assert queries["queueDepth"].startswith('(sum by (namespace, pool) (tgi_queue_size{pool!=""})) or ')


def _pool(engine: str) -> ModelPool:
    return ModelPool.model_validate(
        {
            "apiVersion": "tgipool.io/v1alpha1",
            "kind": "ModelPool",
            "metadata": {"name": "p", "namespace": "ml", "uid": "u"},
            "spec": {
                "model": {"id": "org/model"},
                "environment": "staging",
                "engine": {"kind": engine},
                "gpu": {"product": "NVIDIA-L4"},
                "tier": "hot",
                "replicas": {"min": 1, "max": 3},
            },
        }
    )


@pytest.mark.parametrize(
    ("engine", "metric"),
    [("tgi", "tgi_queue_size"), ("vllm", "vllm_num_requests_waiting"), ("sglang", "sglang_num_queue_reqs")],
)
def test_hpa_scales_on_the_engines_queue_as_the_adapter_serves_it(engine: str, metric: str) -> None:
    hpa = build_children(_pool(engine), DEFAULT_CONFIG).hpa
    assert hpa is not None
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == metric == hpa_queue_metric(engine)  # type: ignore[arg-type]
    served = {r["name"]["as"]: r for r in adapter_rules()}
    assert served[metric]["seriesQuery"].startswith(names(engine, "queue")[0].name)  # type: ignore[arg-type]
