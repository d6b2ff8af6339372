"""The CRD on a real API server: installed, documented, and refusing bad pools at apply time."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tgipool.api import rules

from .cluster import apply, kubectl, wait_for
from .conftest import pool_doc


def test_crd_installs_and_explain_documents_fields(crds: None) -> None:
    # The API server publishes a new CRD's OpenAPI a moment after it is Established.
    def explained() -> str | None:
        out = kubectl("explain", "modelpool.spec", check=False)
        return out if "engine" in out else None

    out = wait_for("kubectl explain to know ModelPool", explained, timeout=60)
    for field in ("engine", "limits", "replicas", "tier", "autoscaling", "cache", "routing", "podTemplate"):
        assert field in out
    engine = kubectl("explain", "modelpool.spec.engine.numShard")
    assert "GPUs per replica" in engine
    names = kubectl("api-resources", "--api-group=tgipool.io")
    assert "modelpools" in names and "mp" in names


BAD: list[tuple[str, dict[str, Any], str]] = [
    (
        "input-not-below-total",
        {"limits": {"maxInputTokens": 4096, "maxTotalTokens": 4096}},
        rules.TOKENS_CEL["message"],
    ),
    (
        "input-over-profile",
        {"limits": {"maxInputTokens": 5000}},
        rules.TOKENS_CEL["message"],
    ),
    (
        "min-over-max",
        {"replicas": {"min": 3, "max": 2}},
        rules.REPLICAS_CEL["message"],
    ),
    ("hot-zero", {"tier": "hot", "replicas": {"min": 0, "max": 2}}, rules.HOT_MIN_CEL["message"]),
    (
        "quantize-dtype",
        {"engine": {"quantize": "awq", "dtype": "bfloat16"}},
        rules.QUANTIZE_DTYPE_CEL["message"],
    ),
    ("shards-9", {"engine": {"numShard": 9}}, "should be less than or equal to 8"),
    ("shards-0", {"engine": {"numShard": 0}}, "should be greater than or equal to 1"),
    (
        "extra-typed-flag",
        {"engine": {"extraArgs": ["--max-total-tokens=9000"]}},
        rules.EXTRA_ARGS_CEL["message"],
    ),
    (
        "latest-image",
        {"engine": {"image": "ghcr.io/huggingface/text-generation-inference:latest"}},
        rules.IMAGE_CEL["message"],
    ),
    (
        "literal-token",
        {"engine": {"env": [{"name": "HF_TOKEN", "value": "hf_secret"}]}},
        rules.ENV_TOKEN_CEL["message"],
    ),
    ("custom-no-limits", {"profile": "custom"}, rules.CUSTOM_LIMITS_CEL["message"]),
    ("bad-quantize", {"engine": {"quantize": "int3"}}, 'Unsupported value: "int3"'),
    ("bad-tier", {"tier": "lukewarm"}, 'Unsupported value: "lukewarm"'),
    ("slo-p95-0", {"slo": {"p95LatencyMs": 0}}, "spec.slo.p95LatencyMs: Invalid value: 0"),
    ("hpa-p95-0", {"autoscaling": {"p95LatencyMs": 0}}, "spec.autoscaling.p95LatencyMs: Invalid value: 0"),
    (
        "queue-0",
        {"autoscaling": {"queuePerReplica": 0}},
        "spec.autoscaling.queuePerReplica: Invalid value: 0",
    ),
    (
        "hold-0",
        {"tier": "warm", "replicas": {"min": 0}, "activation": {"holdSeconds": 0}},
        "spec.activation.holdSeconds: Invalid value: 0",
    ),
    (
        "prod-branch",
        {"model": {"id": "org/m", "revision": "main"}},
        rules.PROD_REVISION_CEL["message"],
    ),
    (
        "prod-floating-image",
        {"engine": {"image": "ghcr.io/huggingface/text-generation-inference:3"}},
        rules.PROD_IMAGE_CEL["message"],
    ),
    ("bad-environment", {"environment": "qa"}, 'Unsupported value: "qa"'),
    ("cap-no-value", {"routing": {"overload": {"policy": "cap"}}}, rules.OVERLOAD_CAP_CEL["message"]),
    ("spare-no-pool", {"routing": {"overload": {"policy": "spare"}}}, rules.OVERLOAD_SPARE_CEL["message"]),
    ("bad-overload", {"routing": {"overload": {"policy": "drop"}}}, 'Unsupported value: "drop"'),
    (
        "idle-5s",
        {"tier": "cold", "replicas": {"min": 0}, "activation": {"idleAfterSeconds": 5}},
        "spec.activation.idleAfterSeconds: Invalid value: 5",
    ),
]


@pytest.mark.parametrize(("case", "spec", "message"), BAD, ids=[b[0] for b in BAD])
def test_invalid_pool_is_refused_by_apply(
    crds: None, ns: str, case: str, spec: dict[str, Any], message: str
) -> None:
    proc = apply(yaml.safe_dump(pool_doc(f"bad-{case}", ns, **spec)), check=False)
    assert proc.returncode != 0, f"{case} was accepted"
    assert message in proc.stderr, proc.stderr
    assert "literal" not in case or "hf_secret" not in proc.stderr


def test_name_too_long_is_refused(crds: None, ns: str) -> None:
    name = "a" * (rules.MAX_POOL_NAME + 1)
    proc = apply(yaml.safe_dump(pool_doc(name, ns)), check=False)
    assert proc.returncode != 0
    assert rules.NAME_CEL["message"] in proc.stderr
    ok = apply(yaml.safe_dump(pool_doc("a" * rules.MAX_POOL_NAME, ns)), check=False)
    assert ok.returncode == 0, ok.stderr


def test_unknown_field_is_refused(crds: None, ns: str) -> None:
    doc = pool_doc("typo", ns)
    doc["spec"]["gpu"]["prodcut"] = "NVIDIA-L4"
    proc = apply(yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0 and "prodcut" in proc.stderr


def test_defaults_are_filled_by_the_api_server(crds: None, ns: str) -> None:
    doc = {
        "apiVersion": "tgipool.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": "minimal", "namespace": ns},
        "spec": {"model": {"id": "org/m"}, "environment": "staging"},  # staging: revision main is allowed
    }
    apply(yaml.safe_dump(doc))
    spec = yaml.safe_load(kubectl("get", "mp", "minimal", "-n", ns, "-o", "yaml"))["spec"]
    assert spec["engine"]["numShard"] == 1
    # The image's default follows spec.engine.kind: the models fill it, the API server must not (it would
    # store TGI's image in a pool that later switches to vLLM).
    assert spec["engine"]["kind"] == "tgi" and "image" not in spec["engine"]
    assert spec["profile"] == "balanced" and spec["tier"] == "hot"
    assert spec["replicas"]["min"] == 1 and spec["model"]["revision"] == "main"
    kubectl("delete", "mp", "minimal", "-n", ns)
    pinned = pool_doc(
        "pinned", ns, engine={"image": "ghcr.io/huggingface/text-generation-inference@sha256:" + "b" * 64}
    )
    apply(yaml.safe_dump(pinned))
    assert (
        yaml.safe_load(kubectl("get", "mp", "pinned", "-n", ns, "-o", "yaml"))["spec"]["environment"]
        == "prod"
    )
