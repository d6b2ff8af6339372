"""vLLM and SGLang pools on a real API server: refused fields at apply time, their children, and the
opt-in InferencePool (its CRD vendored in tests/e2e/crds) from absent CRD to pruned child."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tgipool.api import engine as engines

from .cluster import ROOT, Operator, apply, condition, get, kubectl, wait_for
from .conftest import apply_pool, pool_doc

INFERENCE_POOL_CRD = ROOT / "tests/e2e/crds/inference.networking.k8s.io_inferencepools.yaml"
CRD_NAME = "inferencepools.inference.networking.k8s.io"

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (
        "tgi-quantize-on-vllm",
        {"kind": "vllm", "quantize": "eetq"},
        engines.QUANTIZE_RULES["vllm"]["message"],
    ),
    (
        "vllm-typed-flag",
        {"kind": "vllm", "extraArgs": ["--max-model-len=9000"]},
        engines.EXTRA_ARGS_RULES["vllm"]["message"],
    ),
    (
        "sglang-typed-flag",
        {"kind": "sglang", "extraArgs": ["--tp-size=2"]},
        engines.EXTRA_ARGS_RULES["sglang"]["message"],
    ),
    ("memory-fraction-on-tgi", {"memoryFraction": 0.8}, engines.MEMORY_FRACTION_CEL["message"]),
    (
        "adapter-revision-on-sglang",
        {"kind": "sglang", "loraAdapters": [{"name": "a", "id": "org/a", "revision": "v1"}]},
        engines.LORA_REVISION_CEL["message"],
    ),
    (
        "tgi-image-on-vllm",
        {"kind": "vllm", "image": "ghcr.io/huggingface/text-generation-inference:3.3.6"},
        engines.TGI_IMAGE_ON_OTHER_CEL["message"],
    ),
]


@pytest.mark.parametrize(("name", "engine", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_api_server_refuses_what_an_engine_cannot_honour(
    crds: None, ns: str, name: str, engine: dict[str, Any], message: str
) -> None:
    proc = apply(pool_doc(name, ns, engine=engine), check=False)
    assert proc.returncode != 0, f"{name} was accepted"
    assert message in proc.stderr, proc.stderr
    assert get("modelpool", name, ns) is None
    # The same pool on an engine that honours it is accepted.
    fixed = {k: v for k, v in engine.items() if k not in ("quantize", "extraArgs", "loraAdapters", "image")}
    if "memoryFraction" in fixed:
        fixed["kind"] = "vllm"
    assert apply(pool_doc(name, ns, engine=fixed), check=False).returncode == 0


def _container(name: str, ns: str) -> dict[str, Any]:
    dep = wait_for(f"deployment {name}", lambda: get("deployment", name, ns), timeout=120)
    c: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return c


@pytest.mark.parametrize(
    ("kind", "port", "flags", "ready_path"),
    [
        ("vllm", 8000, ["--tensor-parallel-size=1", "--max-model-len=4096", "--max-num-seqs=128"], "/health"),
        (
            "sglang",
            30000,
            ["--tp-size=1", "--context-length=4096", "--max-running-requests=128", "--enable-metrics"],
            "/health_generate",
        ),
    ],
)
def test_engine_pool_children(
    operator: Operator, ns: str, kind: str, port: int, flags: list[str], ready_path: str
) -> None:
    apply_pool(kind, ns, engine={"kind": kind, "numShard": 1, "dtype": "bfloat16"})
    c = _container(kind, ns)
    assert (c["name"], c["image"]) == (kind, engines.ENGINES[kind].default_image)  # type: ignore[index]
    for flag in (
        *flags,
        "--served-model-name=llama3",
        f"--port={port}",
        "--host=0.0.0.0",
        "--dtype=bfloat16",
    ):
        assert flag in c["args"], (flag, c["args"])
    assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    probe = lambda name: {k: c[name]["httpGet"][k] for k in ("path", "port")}  # noqa: E731  (+ scheme)
    assert probe("startupProbe") == {"path": "/health", "port": "http"}
    assert probe("readinessProbe") == {"path": ready_path, "port": "http"}
    dep = get("deployment", kind, ns)
    assert dep is not None
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["tgipool.io/engine"] == kind
    svc = wait_for(f"service {kind}", lambda: get("service", kind, ns))
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    hpa = wait_for(f"hpa {kind}", lambda: get("horizontalpodautoscaler", kind, ns))
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": kind}
    pool = get("modelpool", kind, ns)
    assert pool is not None
    assert condition(pool, "CapacityFeasible")["status"] in ("True", "Unknown")
    for child in (dep, svc, hpa):
        assert child["metadata"]["ownerReferences"][0]["uid"] == pool["metadata"]["uid"]


def _inference_pool_condition(name: str, ns: str) -> dict[str, Any] | None:
    pool = get("modelpool", name, ns)
    return next(
        (c for c in (pool or {}).get("status", {}).get("conditions", []) if c["type"] == "InferencePool"),
        None,
    )


def test_inference_pool_from_absent_crd_to_pruned(operator: Operator, ns: str) -> None:
    kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=true", timeout=90)
    doc = apply_pool("ip", ns, engine={"kind": "vllm"}, routing={"inferencePool": True})

    # Without the CRD the pool still serves; the condition says what is missing.
    cond = wait_for(
        "InferencePool condition CRDNotInstalled",
        lambda: (c := _inference_pool_condition("ip", ns)) and c["reason"] == "CRDNotInstalled" and c,
    )
    assert cond["status"] == "False" and "inference.networking.k8s.io/v1" in cond["message"]
    assert wait_for("deployment ip", lambda: get("deployment", "ip", ns))

    kubectl("apply", "--server-side", "-f", str(INFERENCE_POOL_CRD))
    kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s", timeout=70)
    doc["spec"]["routing"]["priority"] = 1  # a spec change: the next reconcile applies it at once
    apply(yaml.safe_dump(doc))
    ip = wait_for("InferencePool ip", lambda: get("inferencepool", "ip", ns), timeout=120)
    pool = get("modelpool", "ip", ns)
    assert pool is not None
    (ref,) = ip["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("ModelPool", pool["metadata"]["uid"], True)
    assert ip["spec"]["selector"]["matchLabels"] == {
        "tgipool.io/pool": "ip",
        "app.kubernetes.io/component": "inference-server",
    }
    assert ip["spec"]["targetPorts"] == [{"number": 8000}]
    wait_for(
        "InferencePool condition Applied",
        lambda: (c := _inference_pool_condition("ip", ns)) and c["status"] == "True",
    )

    doc["spec"]["routing"]["inferencePool"] = False
    apply(yaml.safe_dump(doc))
    wait_for("InferencePool pruned", lambda: get("inferencepool", "ip", ns) is None, timeout=120)
    wait_for("condition gone", lambda: _inference_pool_condition("ip", ns) is None)
    assert get("deployment", "ip", ns) is not None
