"""Golden manifests for every builder, plus the properties a platform engineer relies on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tgipool.api.modelpool import ModelPool
from tgipool.config import DEFAULT_CONFIG
from tgipool.desired import build_children
from tgipool.desired.names import fetch_job_name

from .conftest import EXAMPLES, load_example

GOLDEN = Path(__file__).parent / "golden"
EXAMPLE_NAMES = sorted(p.stem for p in EXAMPLES.glob("*.yaml") if "kind: ModelPool" in p.read_text())


def pool_of(doc: dict[str, Any]) -> ModelPool:
    doc["metadata"].setdefault("namespace", "ml")
    doc["metadata"].setdefault("uid", "0000-1111")
    return ModelPool.model_validate(doc)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_children_match_golden(name: str) -> None:
    children = build_children(pool_of(load_example(name)), DEFAULT_CONFIG).all()
    text = yaml.safe_dump_all(children, sort_keys=False)
    golden = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs; review and rerun with UPDATE_GOLDEN=1"


def test_every_example_has_all_children() -> None:
    for name in EXAMPLE_NAMES:
        pool = pool_of(load_example(name))
        kinds = [m["kind"] for m in build_children(pool, DEFAULT_CONFIG).all()]
        optional = ["InferencePool"] if pool.spec.routing.inference_pool else []
        assert kinds == [
            "Service",
            "PersistentVolumeClaim",
            "Job",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            *optional,
        ], name


def _deployment(doc: dict[str, Any]) -> dict[str, Any]:
    dep = build_children(pool_of(doc), DEFAULT_CONFIG).deployment
    assert dep is not None
    return dep


def test_deployment_runs_tgi_with_typed_flags(short_pool: dict[str, Any]) -> None:
    short_pool["spec"]["engine"]["extraArgs"] = ["--max-waiting-tokens=10"]
    short_pool["spec"]["engine"]["loraAdapters"] = [
        {"name": "legal", "id": "org/legal-lora", "revision": "v2"},
        {"name": "local", "id": "/data/adapters/local"},
    ]
    c = _deployment(short_pool)["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == [
        "--model-id=meta-llama/Meta-Llama-3-8B-Instruct",
        "--revision=5f0b02c75b57c5855da9ae460ce51323ea669d8a",
        "--num-shard=1",
        "--max-input-tokens=2048",
        "--max-total-tokens=4096",
        "--max-batch-prefill-tokens=4096",
        "--max-concurrent-requests=128",
        "--port=8080",
        "--dtype=bfloat16",
        "--lora-adapters=org/legal-lora@v2,local=/data/adapters/local",
        "--max-waiting-tokens=10",
    ]


def test_gpus_requests_equal_limits_and_follow_num_shard(short_pool: dict[str, Any]) -> None:
    short_pool["spec"]["engine"]["numShard"] = 4
    short_pool["spec"]["podTemplate"] = {
        "resources": {"requests": {"cpu": "8"}, "limits": {"memory": "64Gi"}}
    }
    spec = _deployment(short_pool)["spec"]["template"]["spec"]
    res = spec["containers"][0]["resources"]
    assert res == {
        "requests": {"cpu": "8", "nvidia.com/gpu": "4"},
        "limits": {"memory": "64Gi", "nvidia.com/gpu": "4"},
    }
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"name": "NUM_SHARD", "value": "4"} in spec["containers"][0]["env"]


def test_token_only_from_secret_and_pod_hygiene(short_pool: dict[str, Any]) -> None:
    spec = _deployment(short_pool)["spec"]["template"]["spec"]
    env = spec["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in env
    assert all("value" not in e for e in env if e["name"] == "HF_TOKEN")
    assert {"name": "USAGE_STATS", "value": "off"} in env
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in env
    assert spec["enableServiceLinks"] is False
    assert spec["terminationGracePeriodSeconds"] > 90
    shm = next(v for v in spec["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["weights"] == {"name": "weights", "mountPath": "/data", "readOnly": True}
    c = spec["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1200
    assert "livenessProbe" not in c


def test_pod_template_is_merged_without_losing_ours(short_pool: dict[str, Any]) -> None:
    short_pool["spec"]["podTemplate"] = {
        "labels": {"team": "ml", "tgipool.io/pool": "hijack"},
        "nodeSelector": {"zone": "a"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
        "priorityClassName": "inference",
    }
    tpl = _deployment(short_pool)["spec"]["template"]
    assert tpl["metadata"]["labels"]["team"] == "ml"
    assert tpl["metadata"]["labels"]["tgipool.io/pool"] == "llama3-8b-ru-short"
    assert tpl["spec"]["nodeSelector"] == {"zone": "a", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert [t["key"] for t in tpl["spec"]["tolerations"]] == ["nvidia.com/gpu", "dedicated"]
    assert tpl["spec"]["priorityClassName"] == "inference"


def test_hot_leaves_replicas_to_hpa_warm_idles_at_zero(short_pool: dict[str, Any]) -> None:
    assert "replicas" not in _deployment(short_pool)["spec"]
    short_pool["spec"]["tier"] = "warm"
    short_pool["spec"]["replicas"] = {"min": 0, "max": 3}
    resting = build_children(pool_of(short_pool), DEFAULT_CONFIG)
    assert resting.deployment is not None and resting.deployment["spec"]["replicas"] == 0
    assert resting.hpa is None  # nothing may hold a resting pool above zero
    assert resting.fetch_job is not None and resting.cache is not None
    assert resting.demand is not None and resting.demand["metadata"]["name"] == "llama3-8b-ru-short-demand"
    assert resting.demand["spec"] == {"leaseDurationSeconds": 900}
    awake = build_children(pool_of(short_pool), DEFAULT_CONFIG, awake=True)
    # Awake: the operator lets go of replicas (reset to 1, the wake), the HPA takes 1 .. max.
    assert awake.deployment is not None and "replicas" not in awake.deployment["spec"]
    assert awake.hpa is not None and awake.hpa["spec"]["minReplicas"] == 1


def test_cold_pool_at_rest_is_only_its_demand_lease(short_pool: dict[str, Any]) -> None:
    short_pool["spec"]["tier"] = "cold"
    short_pool["spec"]["replicas"] = {"min": 0, "max": 2}
    resting = build_children(pool_of(short_pool), DEFAULT_CONFIG).all()
    assert [m["kind"] for m in resting] == ["Lease"]
    awake = build_children(pool_of(short_pool), DEFAULT_CONFIG, awake=True).all()
    assert [m["kind"] for m in awake] == [
        "Lease", "Service", "PersistentVolumeClaim", "Job", "Deployment", "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]  # fmt: skip
    hot_doc = {**short_pool, "spec": {**short_pool["spec"], "tier": "hot", "replicas": {"min": 1}}}
    assert build_children(pool_of(hot_doc), DEFAULT_CONFIG).demand is None


def test_hpa_metrics_and_behaviour(short_pool: dict[str, Any]) -> None:
    hpa = build_children(pool_of(short_pool), DEFAULT_CONFIG).hpa
    assert hpa is not None
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    metrics = hpa["spec"]["metrics"]
    assert metrics[0]["pods"]["metric"]["name"] == "tgi_queue_size"
    assert metrics[0]["pods"]["target"]["averageValue"] == "8"
    assert metrics[1]["object"]["metric"]["name"] == "tgipool_request_latency_p95_ms"
    assert metrics[1]["object"]["target"]["value"] == "2500"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_fetch_job_name_follows_what_it_downloads(short_pool: dict[str, Any]) -> None:
    before = fetch_job_name(pool_of(short_pool))
    short_pool["spec"]["limits"] = {"maxTotalTokens": 3000, "maxInputTokens": 1000}
    assert fetch_job_name(pool_of(short_pool)) == before, "limits do not change the weights"
    short_pool["spec"]["model"]["revision"] = "0" * 40
    after = fetch_job_name(pool_of(short_pool))
    assert after != before and len(after) <= 63


def test_owner_reference_is_controller(short_pool: dict[str, Any]) -> None:
    for m in build_children(pool_of(short_pool), DEFAULT_CONFIG).all():
        (ref,) = m["metadata"]["ownerReferences"]
        assert ref["uid"] == "0000-1111" and ref["controller"] is True and ref["kind"] == "ModelPool"
        assert m["metadata"]["labels"]["tgipool.io/pool"] == "llama3-8b-ru-short"


def _hpa_metrics(doc: dict[str, Any]) -> list[str]:
    hpa = build_children(pool_of(doc), DEFAULT_CONFIG).hpa
    assert hpa is not None
    return [m[m["type"].lower()]["metric"]["name"] for m in hpa["spec"]["metrics"]]


def test_every_hpa_scales_on_queue_and_p95_unless_latency_is_off(short_pool: dict[str, Any]) -> None:
    assert _hpa_metrics(short_pool) == ["tgi_queue_size", "tgipool_request_latency_p95_ms"]
    doc = {**short_pool, "spec": {**short_pool["spec"], "autoscaling": {"scaleOnLatency": False}}}
    assert _hpa_metrics(doc) == ["tgi_queue_size"]
    # No explicit target: the profile's objective (short: strict, long: soft).
    for profile, target in (("short", "3000"), ("long", "30000")):
        doc = {**short_pool, "spec": {**short_pool["spec"], "profile": profile, "slo": {}, "autoscaling": {}}}
        hpa = build_children(pool_of(doc), DEFAULT_CONFIG).hpa
        assert hpa is not None and hpa["spec"]["metrics"][1]["object"]["target"]["value"] == target


def test_a_shared_gpu_budget_caps_the_hpa_at_what_the_others_leave(short_pool: dict[str, Any]) -> None:
    from tgipool.api.budget import ceiling
    from tgipool.desired.autoscaling import build_hpa

    # 8 GPUs, the others hold 5, 2 GPUs per replica: 1 replica more fits; never below min, never above max.
    assert ceiling(own_max=4, own_min=1, gpus_per_replica=2, budget_gpus=8, others_gpus=5) == 1
    assert ceiling(own_max=4, own_min=2, gpus_per_replica=2, budget_gpus=8, others_gpus=8) == 2
    assert ceiling(own_max=3, own_min=1, gpus_per_replica=1, budget_gpus=100, others_gpus=0) == 3
    pool = ModelPool.model_validate(short_pool)
    assert build_hpa(pool, DEFAULT_CONFIG, 1)["spec"]["maxReplicas"] == 1
    assert build_hpa(pool, DEFAULT_CONFIG)["spec"]["maxReplicas"] == pool.spec.replicas.ceiling
