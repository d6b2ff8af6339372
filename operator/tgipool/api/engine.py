"""`spec.engine`: which inference server runs a pool (TGI, vLLM or SGLang) and its typed settings.

One table, `ENGINES`, says what each engine honours: its default image, the `quantize` values it
has, the flags its typed fields set (refused in `extraArgs`), and its memory knob. The refusals
are generated from it twice, as CEL on the CRD and as the Python check, with one message each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from tgipool.api import rules

EngineKind = Literal["tgi", "vllm", "sglang"]
Quantize = Literal[
    "awq",
    "compressed-tensors",
    "eetq",
    "exl2",
    "gptq",
    "marlin",
    "bitsandbytes",
    "bitsandbytes-nf4",
    "bitsandbytes-fp4",
    "fp8",
]
Dtype = Literal["float16", "bfloat16"]
KvCacheDtype = Literal["fp8_e4m3fn", "fp8_e5m2"]

TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.6"
TGI_REPOSITORY = TGI_IMAGE.rsplit(":", 1)[0]
_ALL_QUANTIZE: tuple[str, ...] = get_args(Quantize)
# Launcher flags the typed spec sets on TGI; repeating them in extraArgs would make two sources of truth.
TGI_TYPED_FLAGS = rules.TYPED_FLAGS


@dataclass(frozen=True)
class EngineFacts:
    """What the API layer must know of one engine to refuse what it cannot honour."""

    kind: EngineKind
    default_image: str
    quantize: tuple[str, ...]  # spec.engine.quantize values the engine has (same name, same format)
    typed_flags: tuple[str, ...]  # flags the typed fields set (without the leading --)
    memory_flag: str | None  # the flag spec.engine.memoryFraction sets; None: not typed on this engine
    default_memory_fraction: float | None  # rendered when memoryFraction is unset (None: engine's own)
    lora_revision: bool  # an adapter may name a Hub revision


# Images: vLLM and SGLang releases seen in public deployments (2026-11); pinned, never :latest.
ENGINES: dict[EngineKind, EngineFacts] = {
    "tgi": EngineFacts(
        kind="tgi",
        default_image=TGI_IMAGE,
        quantize=_ALL_QUANTIZE,
        typed_flags=TGI_TYPED_FLAGS,
        memory_flag=None,  # TGI's --cuda-memory-fraction stays in extraArgs (the planner reads it there)
        default_memory_fraction=None,
        lora_revision=True,
    ),
    "vllm": EngineFacts(
        kind="vllm",
        default_image="vllm/vllm-openai:v0.30.0",
        quantize=("awq", "gptq", "fp8", "compressed-tensors"),
        typed_flags=(
            "model",
            "revision",
            "tensor-parallel-size",
            "quantization",
            "dtype",
            "kv-cache-dtype",
            "max-model-len",
            "max-num-batched-tokens",
            "max-num-seqs",
            "enable-lora",
            "lora-modules",
            "gpu-memory-utilization",
            "served-model-name",
            "host",
            "port",
            "download-dir",
        ),
        memory_flag="gpu-memory-utilization",
        # Rendered explicitly: vLLM's own default moved (0.9, later 0.92), the planner must know it.
        default_memory_fraction=0.9,
        lora_revision=False,
    ),
    "sglang": EngineFacts(
        kind="sglang",
        default_image="lmsysorg/sglang:v0.5.21",
        quantize=("awq", "gptq", "fp8", "compressed-tensors"),
        typed_flags=(
            "model-path",
            "model",
            "revision",
            "tp-size",
            "tp",
            "tensor-parallel-size",
            "quantization",
            "dtype",
            "kv-cache-dtype",
            "context-length",
            "max-prefill-tokens",
            "chunked-prefill-size",
            "max-running-requests",
            "lora-paths",
            "mem-fraction-static",
            "served-model-name",
            "host",
            "port",
            "enable-metrics",
        ),
        memory_flag="mem-fraction-static",
        # SGLang sizes its own default from the GPU's memory; rendered so the planner knows it.
        default_memory_fraction=0.85,
        lora_revision=False,
    ),
}
ENGINE_KINDS: tuple[EngineKind, ...] = tuple(ENGINES)


def typed_flag_regex(kind: EngineKind) -> str:
    return "^--(" + "|".join(ENGINES[kind].typed_flags) + ")(=.*)?$"


def typed_flag_of(kind: EngineKind, arg: str) -> str | None:
    m = re.match(typed_flag_regex(kind), arg)
    return f"--{m.group(1)}" if m else None


def _is(kind: EngineKind) -> str:
    """CEL: the engine object is of `kind` (kind defaults to tgi)."""
    return (
        "(!has(self.kind) || self.kind == 'tgi')"
        if kind == "tgi"
        else f"(has(self.kind) && self.kind == '{kind}')"
    )


def _quantize_rule(kind: EngineKind) -> rules.Rule:
    allowed = ENGINES[kind].quantize
    refused = [q for q in _ALL_QUANTIZE if q not in allowed]
    return {
        "rule": f"!{_is(kind)} || !has(self.quantize) || self.quantize in {list(allowed)}",
        "message": (
            f"spec.engine.quantize {'/'.join(refused)} is not supported by {kind}: "
            f"{kind} honours {', '.join(allowed)}"
        ),
        "fieldPath": ".quantize",
    }


def _extra_args_rule(kind: EngineKind) -> rules.Rule:
    message = (
        rules.EXTRA_ARGS_CEL["message"]  # the message TGI pools always had
        if kind == "tgi"
        else f"spec.engine.extraArgs may not set a flag that has a typed field on {kind} ("
        + ", ".join("--" + f for f in ENGINES[kind].typed_flags)
        + ")"
    )
    return {
        "rule": f"!{_is(kind)} || !has(self.extraArgs) || "
        f"self.extraArgs.all(a, !a.matches('{typed_flag_regex(kind)}'))",
        "message": message,
        "fieldPath": ".extraArgs",
    }


# TGI honours every value (its rule would be always true, and is left out of the CRD).
QUANTIZE_RULES: dict[EngineKind, rules.Rule] = {k: _quantize_rule(k) for k in ENGINE_KINDS}
EXTRA_ARGS_RULES = {k: _extra_args_rule(k) for k in ENGINE_KINDS}
_NO_MEMORY_FLAG = [k for k in ENGINE_KINDS if ENGINES[k].memory_flag is None]
MEMORY_FRACTION_CEL: rules.Rule = {
    "rule": "!has(self.memoryFraction) || (" + " && ".join(f"!{_is(k)}" for k in _NO_MEMORY_FLAG) + ")",
    "message": (
        f"spec.engine.memoryFraction is not supported by {'/'.join(_NO_MEMORY_FLAG)}: "
        "set --cuda-memory-fraction in spec.engine.extraArgs"
    ),
    "fieldPath": ".memoryFraction",
}
_NO_LORA_REVISION = [k for k in ENGINE_KINDS if not ENGINES[k].lora_revision]
LORA_REVISION_CEL: rules.Rule = {
    "rule": (
        "(" + " && ".join(f"!{_is(k)}" for k in _NO_LORA_REVISION) + ") || "
        "!has(self.loraAdapters) || self.loraAdapters.all(a, !has(a.revision))"
    ),
    "message": (
        f"spec.engine.loraAdapters[].revision is not supported by {'/'.join(_NO_LORA_REVISION)}: they load "
        "an adapter by repo id or path (use a path in the weight cache to pin one)"
    ),
    "fieldPath": ".loraAdapters",
}
TGI_IMAGE_ON_OTHER_CEL: rules.Rule = {
    "rule": f"{_is('tgi')} || !has(self.image) || !self.image.startsWith('{TGI_REPOSITORY}')",
    "message": (
        "spec.engine.image is TGI's image but spec.engine.kind is not tgi: leave image unset for the "
        "engine's default, or name one of its images"
    ),
    "fieldPath": ".image",
}
ENGINE_RULES: list[rules.Rule] = [
    rules.QUANTIZE_DTYPE_CEL,
    *(r for k, r in QUANTIZE_RULES.items() if ENGINES[k].quantize != _ALL_QUANTIZE),
    *EXTRA_ARGS_RULES.values(),
    MEMORY_FRACTION_CEL,
    LORA_REVISION_CEL,
    TGI_IMAGE_ON_OTHER_CEL,
]


class LoraAdapter(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=128, description="Adapter name.")
    id: str = Field(min_length=1, max_length=256, description="HF repo id, or an absolute path in the cache.")
    revision: str | None = Field(
        default=None, max_length=128, description="Revision of a HF adapter (TGI only)."
    )


class EnvVar(BaseModel):
    """A container env var (Kubernetes EnvVar); valueFrom is passed through unchanged."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=256)
    value: str | None = None
    value_from: dict[str, Any] | None = Field(default=None, alias="valueFrom")


def _no_default(schema: dict[str, Any]) -> None:
    """The CRD must not default the image: the default follows spec.engine.kind (filled in Python)."""
    schema.pop("default", None)
    schema["x-kubernetes-validations"] = [rules.IMAGE_CEL]


class Engine(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        json_schema_extra={"x-kubernetes-validations": [*ENGINE_RULES]},
    )
    kind: EngineKind = Field(default="tgi", description="Inference server: tgi (default), vllm or sglang.")
    image: str = Field(
        default=TGI_IMAGE,
        min_length=1,
        max_length=512,
        pattern=r"^[^\s]+(:[^\s:]+|@sha256:[a-f0-9]{64})$",
        description=(
            "Engine image, pinned by tag or digest; ':latest' is refused. Default by kind: "
            + ", ".join(f"{k} {f.default_image}" for k, f in ENGINES.items())
            + "."
        ),
        json_schema_extra=_no_default,
    )
    num_shard: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Tensor-parallel shards = GPUs per replica (1..8): TGI --num-shard, vLLM "
        "--tensor-parallel-size, SGLang --tp-size.",
    )
    quantize: Quantize | None = Field(
        default=None,
        description="TGI --quantize, vLLM/SGLang --quantization (awq, gptq, fp8, compressed-tensors only).",
    )
    dtype: Dtype | None = Field(default=None, description="--dtype; exclusive with quantize.")
    kv_cache_dtype: KvCacheDtype | None = Field(
        default=None, description="--kv-cache-dtype (vLLM and SGLang name fp8_e4m3fn fp8_e4m3)."
    )
    memory_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Share of each GPU's memory the engine takes: vLLM --gpu-memory-utilization (default "
        "0.9), SGLang --mem-fraction-static (weights + KV cache, default 0.85). Not on TGI.",
    )
    lora_adapters: list[LoraAdapter] = Field(
        default_factory=list, max_length=32, description="Adapters loaded at start; a change rolls pods."
    )
    extra_args: list[Annotated[str, Field(max_length=512)]] = Field(
        default_factory=list,
        max_length=64,
        description="Extra engine flags; may not repeat a flag that has a typed field.",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Extra environment; HF tokens only through model.hfTokenSecretRef.",
        json_schema_extra={"x-kubernetes-validations": [rules.ENV_TOKEN_CEL]},
    )

    @model_validator(mode="before")
    @classmethod
    def _default_image(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("image"):
            kind = data.get("kind") or "tgi"
            if kind in ENGINES:
                return {**data, "image": ENGINES[kind].default_image}
        return data

    @model_validator(mode="after")
    def _check(self) -> Engine:
        facts = ENGINES[self.kind]
        if self.quantize and self.dtype and not self.quantize.startswith("bitsandbytes"):
            raise ValueError(rules.QUANTIZE_DTYPE_CEL["message"])
        if self.quantize and self.quantize not in facts.quantize:
            raise ValueError(f"{QUANTIZE_RULES[self.kind]['message']} (got {self.quantize!r})")
        if self.image.endswith(":latest"):
            raise ValueError(rules.IMAGE_CEL["message"])
        if self.kind != "tgi" and self.image.startswith(TGI_REPOSITORY):
            raise ValueError(TGI_IMAGE_ON_OTHER_CEL["message"])
        for arg in self.extra_args:
            if typed_flag_of(self.kind, arg):
                raise ValueError(f"{EXTRA_ARGS_RULES[self.kind]['message']} (got {arg!r})")
        if self.memory_fraction is not None and facts.memory_flag is None:
            raise ValueError(MEMORY_FRACTION_CEL["message"])
        if not facts.lora_revision and any(a.revision for a in self.lora_adapters):
            raise ValueError(LORA_REVISION_CEL["message"])
        for env in self.env:
            if env.name in rules.TOKEN_ENV_NAMES and env.value is not None:
                raise ValueError(rules.ENV_TOKEN_CEL["message"])
        return self

    @property
    def facts(self) -> EngineFacts:
        return ENGINES[self.kind]

    @property
    def effective_memory_fraction(self) -> float | None:
        """What the engine's memory flag is rendered with (None: the flag is not rendered)."""
        return (
            self.memory_fraction if self.memory_fraction is not None else self.facts.default_memory_fraction
        )
