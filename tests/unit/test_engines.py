"""Engines: each maps the typed spec to its own flags, image, port and probes; what one cannot honour
is refused naming the field and the engine, in Python and in the CRD's CEL alike."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tgipool.api import engine as engines
from tgipool.api.crd import modelpool_crd
from tgipool.api.modelgateway import ModelGateway
from tgipool.api.modelpool import ModelPool
from tgipool.api.parse import describe_validation_error
from tgipool.config import DEFAULT_CONFIG
from tgipool.desired import build_children
from tgipool.desired.engines import ENGINE_RENDER

from .conftest import EXAMPLES, load_example


def pool_with(kind: str, **engine: Any) -> dict[str, Any]:
    doc = copy.deepcopy(load_example("llama3-8b-ru-short"))
    doc["metadata"].update(namespace="ml", uid="0000-1111")
    spec = doc["spec"]["engine"]
    spec.pop("image", None)
    if "quantize" in engine:
        spec.pop("dtype", None)  # exclusive
    spec.update(kind=kind, **engine)
    return doc


def error_of(doc: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as exc:
        ModelPool.model_validate(doc)
    return describe_validation_error(exc.value)


def container(doc: dict[str, Any]) -> dict[str, Any]:
    dep = build_children(ModelPool.model_validate(doc), DEFAULT_CONFIG).deployment
    assert dep is not None
    c: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return c


REFUSED = [
    # (name, kind, engine fields, words the message must hold)
    ("TGI-only quantize on vLLM", "vllm", {"quantize": "eetq"}, ["spec.engine.quantize", "vllm", "'eetq'"]),
    ("TGI-only quantize on SGLang", "sglang", {"quantize": "exl2"}, ["spec.engine.quantize", "sglang"]),
    ("bitsandbytes is TGI's int8", "vllm", {"quantize": "bitsandbytes-nf4"}, ["not supported by vllm"]),
    (
        "vLLM typed flag in extraArgs",
        "vllm",
        {"extraArgs": ["--max-model-len=4096"]},
        ["spec.engine.extraArgs", "typed field on vllm", "--max-model-len"],
    ),
    (
        "SGLang typed flag in extraArgs",
        "sglang",
        {"extraArgs": ["--tp-size=2"]},
        ["spec.engine.extraArgs", "typed field on sglang", "'--tp-size=2'"],
    ),
    (
        "SGLang's metrics switch is ours",
        "sglang",
        {"extraArgs": ["--enable-metrics"]},
        ["typed field on sglang", "--enable-metrics"],
    ),
    (
        "memoryFraction on TGI",
        "tgi",
        {"memoryFraction": 0.8},
        ["spec.engine.memoryFraction", "not supported by tgi", "--cuda-memory-fraction"],
    ),
    (
        "adapter revision on vLLM",
        "vllm",
        {"loraAdapters": [{"name": "a", "id": "org/a", "revision": "v2"}]},
        ["spec.engine.loraAdapters[].revision", "vllm/sglang"],
    ),
    (
        "TGI image on SGLang",
        "sglang",
        {"image": "ghcr.io/huggingface/text-generation-inference:3.3.6"},
        ["spec.engine.image", "TGI's image", "not tgi"],
    ),
    ("latest vLLM", "vllm", {"image": "vllm/vllm-openai:latest"}, ["spec.engine.image", ":latest"]),
]


@pytest.mark.parametrize(("name", "kind", "fields", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_in_python_with_field_and_engine(
    name: str, kind: str, fields: dict[str, Any], words: list[str]
) -> None:
    message = error_of(pool_with(kind, **fields))
    for w in words:
        assert w in message, f"{name}: {w!r} not in {message!r}"


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("vllm", {"quantize": "awq", "extraArgs": ["--enable-prefix-caching", "--max-lora-rank=64"]}),
        ("sglang", {"quantize": "fp8", "extraArgs": ["--schedule-policy=lpm"], "memoryFraction": 0.8}),
        # TGI keeps what it always allowed: its own flags of other engines are no typed flags of TGI.
        ("tgi", {"quantize": "eetq", "extraArgs": ["--max-model-len=4096", "--cuda-memory-fraction=0.9"]}),
        ("vllm", {"loraAdapters": [{"name": "a", "id": "org/a"}, {"name": "b", "id": "/data/b"}]}),
    ],
)
def test_what_each_engine_honours_is_accepted(kind: str, fields: dict[str, Any]) -> None:
    assert ModelPool.model_validate(pool_with(kind, **fields)).spec.engine.kind == kind


def test_crd_carries_each_engine_rule_with_the_python_message() -> None:
    spec = modelpool_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    engine = spec["properties"]["engine"]
    cel = {r["message"]: r for r in engine["x-kubernetes-validations"]}
    for kind in ("vllm", "sglang"):
        assert engines.QUANTIZE_RULES[kind]["message"] in cel
    for rule in engines.EXTRA_ARGS_RULES.values():
        assert rule["message"] in cel and cel[rule["message"]]["rule"] == rule["rule"]
    for rule in (engines.MEMORY_FRACTION_CEL, engines.LORA_REVISION_CEL, engines.TGI_IMAGE_ON_OTHER_CEL):
        assert rule["message"] in cel
    # The default image follows the kind: the CRD must not default it (that would be TGI's on vLLM).
    assert "default" not in engine["properties"]["image"]
    assert engine["properties"]["kind"]["enum"] == ["tgi", "vllm", "sglang"]


def test_default_image_follows_the_kind_and_is_pinned() -> None:
    for kind, facts in engines.ENGINES.items():
        image = ModelPool.model_validate(pool_with(kind)).spec.engine.image
        assert image == facts.default_image
        assert not image.endswith(":latest") and ":" in image


def test_vllm_container() -> None:
    doc = pool_with(
        "vllm",
        numShard=2,
        quantize="awq",
        kvCacheDtype="fp8_e4m3fn",
        loraAdapters=[{"name": "legal", "id": "org/legal-lora"}, {"name": "local", "id": "/data/ad/local"}],
        extraArgs=["--enable-prefix-caching"],
    )
    c = container(doc)
    assert (c["name"], c["image"], c["command"]) == ("vllm", "vllm/vllm-openai:v0.30.0", ["vllm", "serve"])
    assert c["args"] == [
        "--model=meta-llama/Meta-Llama-3-8B-Instruct",
        "--revision=5f0b02c75b57c5855da9ae460ce51323ea669d8a",
        "--served-model-name=llama3-8b-ru",
        "--tensor-parallel-size=2",
        "--max-model-len=4096",
        "--max-num-batched-tokens=4096",
        "--max-num-seqs=128",
        "--gpu-memory-utilization=0.9",
        "--host=0.0.0.0",
        "--port=8000",
        "--quantization=awq",
        "--kv-cache-dtype=fp8_e4m3",
        "--enable-lora",
        "--lora-modules",
        "legal=org/legal-lora",
        "local=/data/ad/local",
        "--enable-prefix-caching",
    ]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert (
        c["startupProbe"]["httpGet"] == c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    )
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HF_HOME"] == "/data" and env["HF_HUB_OFFLINE"] == "1" and "NUM_SHARD" not in env
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_sglang_container() -> None:
    c = container(pool_with("sglang", memoryFraction=0.8, loraAdapters=[{"name": "sql", "id": "org/sql"}]))
    assert (c["name"], c["image"]) == ("sglang", "lmsysorg/sglang:v0.5.21")
    assert c["command"] == ["python3", "-m", "sglang.launch_server"]
    assert c["args"] == [
        "--model-path=meta-llama/Meta-Llama-3-8B-Instruct",
        "--revision=5f0b02c75b57c5855da9ae460ce51323ea669d8a",
        "--served-model-name=llama3-8b-ru",
        "--tp-size=1",
        "--context-length=4096",
        "--max-prefill-tokens=4096",
        "--chunked-prefill-size=4096",
        "--max-running-requests=128",
        "--mem-fraction-static=0.8",
        "--host=0.0.0.0",
        "--port=30000",
        "--enable-metrics",
        "--dtype=bfloat16",
        "--lora-paths",
        "sql=org/sql",
    ]
    assert c["ports"][0] == {"name": "http", "containerPort": 30000, "protocol": "TCP"}
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health_generate"


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_other_engines_label_pods_and_scrape_their_port(kind: str) -> None:
    children = build_children(ModelPool.model_validate(pool_with(kind)), DEFAULT_CONFIG)
    assert children.deployment is not None and children.service is not None
    tpl = children.deployment["spec"]["template"]
    assert tpl["metadata"]["labels"]["tgipool.io/engine"] == kind
    assert tpl["metadata"]["labels"]["app.kubernetes.io/name"] == ENGINE_RENDER[kind].app_name
    port = tpl["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert tpl["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    # The Service and the gateway reach every engine the same way: port 80 -> the container port "http".
    assert children.service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert children.hpa is not None and children.hpa["spec"]["scaleTargetRef"]["name"] == "llama3-8b-ru-short"


def test_tgi_pods_carry_no_engine_label() -> None:
    children = build_children(ModelPool.model_validate(pool_with("tgi")), DEFAULT_CONFIG)
    assert children.deployment is not None
    labels = children.deployment["spec"]["template"]["metadata"]["labels"]
    assert (
        "tgipool.io/engine" not in labels and labels["app.kubernetes.io/name"] == "text-generation-inference"
    )


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_prefetch_uses_the_engines_image_and_huggingface_hub(kind: str) -> None:
    job = build_children(
        ModelPool.model_validate(pool_with(kind, loraAdapters=[{"name": "a", "id": "org/a"}])), DEFAULT_CONFIG
    ).fetch_job
    assert job is not None
    pod = job["spec"]["template"]["spec"]
    model, adapter = pod["containers"][0], pod["initContainers"][0]
    assert model["image"] == engines.ENGINES[kind].default_image  # type: ignore[index]
    assert model["command"][:2] == ["python3", "-c"] and "snapshot_download" in model["command"][2]
    assert model["args"] == [
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "5f0b02c75b57c5855da9ae460ce51323ea669d8a",
    ]
    assert adapter["args"] == ["org/a"]
    # hf_transfer is TGI's; huggingface_hub refuses the switch when the package is missing.
    assert "HF_HUB_ENABLE_HF_TRANSFER" not in {e["name"] for e in model["env"]}


def test_inference_pool_is_opt_in_and_selects_the_pools_pods() -> None:
    doc = pool_with("vllm")
    assert build_children(ModelPool.model_validate(doc), DEFAULT_CONFIG).inference_pool is None
    doc["spec"].setdefault("routing", {})["inferencePool"] = True
    children = build_children(ModelPool.model_validate(doc), DEFAULT_CONFIG)
    ip, svc = children.inference_pool, children.service
    assert ip is not None and svc is not None
    assert (ip["apiVersion"], ip["kind"], ip["metadata"]["name"]) == (
        "inference.networking.k8s.io/v1",
        "InferencePool",
        "llama3-8b-ru-short",
    )
    assert ip["metadata"]["ownerReferences"][0]["kind"] == "ModelPool"
    assert ip["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert ip["spec"]["targetPorts"] == [{"number": 8000}]
    assert ip in children.all()


def test_a_cold_pool_at_rest_has_no_inference_pool() -> None:
    doc = pool_with("sglang")
    doc["spec"].update(tier="cold", replicas={"min": 0, "max": 1}, routing={"inferencePool": True})
    assert build_children(ModelPool.model_validate(doc), DEFAULT_CONFIG).inference_pool is None


def test_migration_example_is_two_pools_of_one_served_name_behind_one_gateway() -> None:
    folder = EXAMPLES / "migrate-to-vllm"
    docs = [yaml.safe_load((folder / f"{n}.yaml").read_text()) for n in ("tgi-pool", "vllm-pool", "gateway")]
    tgi, vllm = (ModelPool.model_validate(d) for d in docs[:2])
    gw = ModelGateway.model_validate(docs[2])
    assert (tgi.spec.engine.kind, vllm.spec.engine.kind) == ("tgi", "vllm")
    assert tgi.served_name == vllm.served_name and tgi.limits == vllm.limits
    assert tgi.spec.routing.priority > vllm.spec.routing.priority  # step 1: TGI takes new requests
    assert (tgi.spec.routing.fallback_pool, vllm.spec.routing.fallback_pool) == (vllm.name, tgi.name)
    selector = gw.spec.pool_selector.match_labels
    assert all(p.metadata.labels.items() >= selector.items() for p in (tgi, vllm))
