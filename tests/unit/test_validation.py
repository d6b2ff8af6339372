"""Every validation rule: a valid and an invalid case, in the models and in the CRD's CEL."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tgipool.api import rules
from tgipool.api.crd import modelpool_crd
from tgipool.api.modelpool import ModelPool
from tgipool.api.parse import describe_validation_error
from tgipool.api.profiles import PRESETS


def validate(doc: dict[str, Any]) -> ModelPool:
    return ModelPool.model_validate(doc)


def error_of(doc: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as exc:
        validate(doc)
    return describe_validation_error(exc.value)


def with_spec(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for path, value in changes.items():
        node = doc["spec"]
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return doc


CASES = [
    # (name, valid changes, invalid changes, words the message must hold)
    (
        "input below total",
        {"limits": {"maxInputTokens": 4095, "maxTotalTokens": 4096}},
        {"limits": {"maxInputTokens": 4096, "maxTotalTokens": 4096}},
        ["spec.limits.maxInputTokens (4096)", "spec.limits.maxTotalTokens (4096)"],
    ),
    (
        "input below the profile's total",
        {"limits": {"maxInputTokens": 4000}},
        {"limits": {"maxInputTokens": 5000}},
        ["(5000)", "(4096)", "profile"],
    ),
    (
        "replicas min <= max",
        {"replicas": {"min": 2, "max": 2}},
        {"replicas": {"min": 3, "max": 2}},
        ["spec.replicas.min", "spec.replicas.max"],
    ),
    (
        "hot needs a replica",
        {"tier": "warm", "replicas": {"min": 0, "max": 2}},
        {"tier": "hot", "replicas": {"min": 0, "max": 2}},
        ["spec.replicas.min", "at least 1", "hot"],
    ),
    (
        "quantize xor dtype",
        {"engine": {"quantize": "bitsandbytes-nf4", "dtype": "bfloat16"}},
        {"engine": {"quantize": "awq", "dtype": "bfloat16"}},
        ["spec.engine.quantize", "spec.engine.dtype", "exclusive"],
    ),
    ("numShard up to 8", {"engine": {"numShard": 8}}, {"engine": {"numShard": 9}}, ["numShard", "8"]),
    ("numShard at least 1", {"engine": {"numShard": 1}}, {"engine": {"numShard": 0}}, ["numShard", "1"]),
    (
        "extraArgs may not repeat a typed flag",
        {"engine": {"extraArgs": ["--max-waiting-tokens=20"]}},
        {"engine": {"extraArgs": ["--num-shard=2"]}},
        ["spec.engine.extraArgs", "--num-shard"],
    ),
    (
        "image pinned",
        {"engine": {"image": "ghcr.io/huggingface/text-generation-inference:3.3.5"}},
        {"engine": {"image": "ghcr.io/huggingface/text-generation-inference:latest"}},
        ["spec.engine.image", ":latest"],
    ),
    (
        "no literal token in env",
        {"engine": {"env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}},
        {"engine": {"env": [{"name": "HF_TOKEN", "value": "hf_abc"}]}},
        ["spec.engine.env", "hfTokenSecretRef"],
    ),
    (
        "custom profile needs limits",
        {"profile": "custom", "limits": {"maxInputTokens": 100, "maxTotalTokens": 200}},
        {"profile": "custom", "limits": {}},
        ["spec.profile custom", "maxInputTokens", "maxTotalTokens"],
    ),
    (
        "p95 objective above 0",
        {"slo": {"p95LatencyMs": 1}},
        {"slo": {"p95LatencyMs": 0}},
        ["p95LatencyMs", "1"],
    ),
    (
        "p95 scaling target above 0",
        {"autoscaling": {"p95LatencyMs": 500}},
        {"autoscaling": {"p95LatencyMs": 0}},
        ["autoscaling", "p95LatencyMs"],
    ),
    (
        "queue target above 0",
        {"autoscaling": {"queuePerReplica": 1}},
        {"autoscaling": {"queuePerReplica": 0}},
        ["autoscaling", "queuePerReplica"],
    ),
    (
        "activation hold at least 1 s",
        {"tier": "warm", "replicas": {"min": 0}, "activation": {"holdSeconds": 1}},
        {"tier": "warm", "replicas": {"min": 0}, "activation": {"holdSeconds": 0}},
        ["activation", "holdSeconds"],
    ),
    (
        "activation idle at least 10 s",
        {"tier": "cold", "replicas": {"min": 0}, "activation": {"idleAfterSeconds": 10}},
        {"tier": "cold", "replicas": {"min": 0}, "activation": {"idleAfterSeconds": 5}},
        ["activation", "idleAfterSeconds"],
    ),
    (
        "prod pins the revision to a commit",
        {"model": {"id": "org/m", "revision": "main"}, "environment": "staging"},
        {"model": {"id": "org/m", "revision": "main"}},
        ["spec.model.revision", "commit", "prod", "'main'"],
    ),
    (
        "prod pins the image to a version",
        {"engine": {"image": "ghcr.io/huggingface/text-generation-inference@sha256:" + "a" * 64}},
        {"engine": {"image": "ghcr.io/huggingface/text-generation-inference:3"}},
        ["spec.engine.image", "prod", "sha-<commit>"],
    ),
    (
        "staging runs a floating image",
        {"environment": "staging", "engine": {"image": "registry:5000/tgi:nightly"}},
        {"environment": "qa"},
        ["spec.environment", "prod", "staging"],
    ),
    (
        "overload cap states its cap",
        {"routing": {"overload": {"policy": "cap", "capMaxNewTokens": 256}}},
        {"routing": {"overload": {"policy": "cap"}}},
        ["spec.routing.overload.capMaxNewTokens", "cap"],
    ),
    (
        "overload spare names its pool",
        {"routing": {"overload": {"policy": "spare", "sparePool": "small"}}},
        {"routing": {"overload": {"policy": "spare"}}},
        ["spec.routing.overload.sparePool", "spare"],
    ),
    (
        "overload policy is known",
        {"routing": {"overload": {"policy": "reject"}}},
        {"routing": {"overload": {"policy": "drop"}}},
        ["spec.routing.overload.policy", "spill", "reject"],
    ),
    (
        "unknown field",
        {"gpu": {"product": "NVIDIA-L4"}},
        {"gpu": {"prodcut": "NVIDIA-L4"}},
        ["spec.gpu.prodcut"],
    ),
]


@pytest.mark.parametrize(("name", "good", "bad", "words"), CASES, ids=[c[0] for c in CASES])
def test_rule(
    short_pool: dict[str, Any], name: str, good: dict[str, Any], bad: dict[str, Any], words: list[str]
) -> None:
    validate(with_spec(short_pool, **good))
    message = error_of(with_spec(short_pool, **bad))
    for w in words:
        assert w in message, f"{name}: {w!r} not in {message!r}"


def test_name_length_limit(short_pool: dict[str, Any]) -> None:
    short_pool["metadata"]["name"] = "a" * rules.MAX_POOL_NAME
    validate(short_pool)
    short_pool["metadata"]["name"] = "a" * (rules.MAX_POOL_NAME + 1)
    message = error_of(short_pool)
    assert "metadata.name" in message and str(rules.MAX_POOL_NAME) in message and "63" in message


def test_typed_flag_detection() -> None:
    assert rules.typed_flag_of("--max-total-tokens=10") == "--max-total-tokens"
    assert rules.typed_flag_of("--max-total-tokens") == "--max-total-tokens"
    assert rules.typed_flag_of("--max-total-tokens-x") is None
    assert rules.typed_flag_of("--cuda-graphs=0") is None


@pytest.mark.parametrize("profile", ["short", "balanced", "long"])
def test_profiles_fill_limits_and_explicit_wins(short_pool: dict[str, Any], profile: str) -> None:
    short_pool["spec"]["profile"] = profile
    lim = validate(short_pool).limits
    assert (lim.max_input_tokens, lim.max_total_tokens) == (
        PRESETS[profile].max_input_tokens,
        PRESETS[profile].max_total_tokens,
    )
    short_pool["spec"]["limits"] = {"maxTotalTokens": 20000, "maxConcurrentRequests": 7}
    lim = validate(short_pool).limits
    assert (lim.max_total_tokens, lim.max_concurrent_requests) == (20000, 7)
    assert lim.max_input_tokens == PRESETS[profile].max_input_tokens


def test_reference_figures() -> None:
    assert (PRESETS["short"].max_input_tokens, PRESETS["short"].max_total_tokens) == (2048, 4096)
    assert (PRESETS["balanced"].max_input_tokens, PRESETS["balanced"].max_total_tokens) == (4096, 8192)
    assert (PRESETS["long"].max_input_tokens, PRESETS["long"].max_total_tokens) == (8192, 12288)


def _walk(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found += node.get("x-kubernetes-validations", [])
        for v in node.values():
            found += _walk(v)
    elif isinstance(node, list):
        for v in node:
            found += _walk(v)
    return found


def test_crd_carries_every_cel_rule_with_the_model_message() -> None:
    crd = modelpool_crd()
    cel = _walk(crd)
    messages = {r["message"] for r in cel}
    for rule in (
        rules.TOKENS_CEL,
        rules.HOT_MIN_CEL,
        rules.CUSTOM_LIMITS_CEL,
        rules.REPLICAS_CEL,
        rules.QUANTIZE_DTYPE_CEL,
        rules.IMAGE_CEL,
        rules.EXTRA_ARGS_CEL,
        rules.ENV_TOKEN_CEL,
        rules.NAME_CEL,
        rules.PROD_REVISION_CEL,
        rules.PROD_IMAGE_CEL,
        rules.OVERLOAD_CAP_CEL,
        rules.OVERLOAD_SPARE_CEL,
    ):
        assert rule["message"] in messages
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    engine = spec["properties"]["engine"]["properties"]
    assert (engine["numShard"]["minimum"], engine["numShard"]["maximum"]) == (1, 8)
    assert "awq" in engine["quantize"]["enum"]
    assert spec["properties"]["engine"]["default"] == {}
    assert spec["required"] == ["model"]


def test_crd_is_structural() -> None:
    """No unions, refs or JSON-Schema-2020 keywords the API server rejects."""

    def check(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for bad in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "const"):
                assert bad not in node, f"{path} has {bad}"
            if node.get("type") == "object":
                has_props = "properties" in node
                assert not (has_props and "additionalProperties" in node), path
            for k, v in node.items():
                check(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                check(v, f"{path}[{i}]")

    check(modelpool_crd()["spec"]["versions"][0]["schema"], "schema")
    version = modelpool_crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas.min"
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Model",
        "Tier",
        "Shards",
        "Ready",
        "Phase",
        "P95",
        "Age",
    ]


def test_activation_defaults_follow_the_tier(short_pool: dict[str, Any]) -> None:
    warm = validate(with_spec(short_pool, tier="warm", replicas={"min": 0, "max": 2}))
    cold = validate(with_spec(short_pool, tier="cold", replicas={"min": 0}, activation={"holdSeconds": 42}))
    assert warm.activation is not None and cold.activation is not None
    assert (warm.activation.idle_after_seconds, warm.activation.hold_seconds) == (900, 600)
    assert (cold.activation.hold_seconds, cold.activation.max_pending_requests) == (42, 100)
    assert validate(short_pool).activation is None  # hot pools never sleep


def test_environment_examples_are_a_valid_pair() -> None:
    from .conftest import EXAMPLES

    prod, staging = (
        validate(yaml.safe_load((EXAMPLES / "environments" / f"llama3-8b-ru-{e}.yaml").read_text()))
        for e in ("prod", "staging")
    )
    assert (prod.spec.environment, staging.spec.environment) == ("prod", "staging")
    assert prod.served_name == staging.served_name
    assert staging.spec.model.revision == "main"  # only staging may run a branch
