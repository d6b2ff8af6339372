"""The planner's KV formula against the real `past_key_values` of transformers models, byte for byte.

Randomly initialised Llama, Mistral and Qwen2 models are built on the CPU from the published
configs (no weights are downloaded), run one forward pass with `use_cache=True`, and the bytes of
every cached K and V tensor are added up and compared with `kv_bytes_per_token x batch x tokens`.

Two shapes per architecture:
* "ratio": the real query/KV head ratio and the real model type, scaled down (2 layers, head_dim 16);
* "geometry": the real number of layers, KV heads, attention heads and head_dim, with a tiny hidden
  size, MLP and vocabulary so that it runs in about a second.

Needs torch and transformers (see the report in the planner's pins). This test never skips on its
own: without them it fails. Set TGIPOOL_SKIP_TRANSFORMERS=1 to skip it explicitly.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

if os.environ.get("TGIPOOL_SKIP_TRANSFORMERS") == "1":
    pytest.skip(
        "TGIPOOL_SKIP_TRANSFORMERS=1: transformers cross-check skipped on request", allow_module_level=True
    )

try:
    import torch
    import transformers
except ImportError as err:  # pragma: no cover - a clear failure, not a skip
    raise ImportError(
        "the KV cross-check needs torch and transformers (pip install torch==2.15.0 transformers==4.57.6); "
        "set TGIPOOL_SKIP_TRANSFORMERS=1 to skip it explicitly"
    ) from err

from tgipool.planner import memory
from tgipool.planner.architecture import architecture_from_config

from .configs import LLAMA_3_8B, LLAMA_3_70B, MISTRAL_7B, QWEN2_5_7B

MODELS = {
    "llama": transformers.LlamaForCausalLM,
    "mistral": transformers.MistralForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM,
}
CONFIG_CLASSES = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
}
PUBLISHED = {
    "Llama-3-8B": LLAMA_3_8B,
    "Llama-3-70B": LLAMA_3_70B,
    "Mistral-7B": MISTRAL_7B,
    "Qwen2.5-7B": QWEN2_5_7B,
}
TINY = {"vocab_size": 256, "intermediate_size": 32, "max_position_embeddings": 512}


def ratio_config(published: dict[str, Any]) -> dict[str, Any]:
    """The real model type and query/KV head ratio; 2 layers, head_dim 16."""
    group = published["num_attention_heads"] // published["num_key_value_heads"]
    kv_heads = 2 if group <= 4 else 1
    heads = kv_heads * group
    return {**published, **TINY, "num_hidden_layers": 2, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "hidden_size": heads * 16}  # fmt: skip


def geometry_config(published: dict[str, Any]) -> dict[str, Any]:
    """The real layers, KV heads, attention heads and head_dim; a 64-wide residual stream."""
    head_dim = published["hidden_size"] // published["num_attention_heads"]
    return {**published, **TINY, "hidden_size": 64, "head_dim": head_dim}


def cached_pairs(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (K, V) tensors of every layer of a transformers cache (4.5x and 5.x layouts)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    return [(k, v) for k, v in cache]


def nbytes(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in pairs)


def forward_cache(cfg: dict[str, Any], dtype: torch.dtype, batch: int, tokens: int) -> Any:
    model_type = cfg["model_type"]
    config = CONFIG_CLASSES[model_type](**{k: v for k, v in cfg.items() if k != "architectures"})
    torch.manual_seed(0)
    model = MODELS[model_type](config).to(dtype).eval()
    ids = torch.randint(0, cfg["vocab_size"], (batch, tokens))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    return out.past_key_values


@pytest.mark.parametrize("shape", [ratio_config, geometry_config], ids=["ratio", "geometry"])
@pytest.mark.parametrize("name", list(PUBLISHED))
@pytest.mark.parametrize(
    ("dtype", "planner_dtype"), [(torch.bfloat16, "bfloat16"), (torch.float16, "float16")]
)
def test_kv_bytes_match_past_key_values(
    name: str, shape: Any, dtype: torch.dtype, planner_dtype: str
) -> None:
    cfg = shape(PUBLISHED[name])
    batch, tokens = 3, 7
    cache = forward_cache(cfg, dtype, batch, tokens)
    pairs = cached_pairs(cache)
    measured = nbytes(pairs)
    assert {t.dtype for kv in pairs for t in kv} == {dtype}
    arch = architecture_from_config(cfg)
    assert len(pairs) == arch.num_layers
    per_token = memory.kv_bytes_per_token(arch, memory.kv_element_bytes(None, planner_dtype))
    assert measured == per_token * batch * tokens

    # The fp8 KV cache: TGI stores K and V cast to float8; the planner's factor must be that size.
    for kv_dtype, torch_fp8 in (("fp8_e5m2", torch.float8_e5m2), ("fp8_e4m3fn", torch.float8_e4m3fn)):
        fp8_bytes = nbytes([(k.to(torch_fp8), v.to(torch_fp8)) for k, v in pairs])
        assert (
            fp8_bytes == memory.kv_bytes_per_token(arch, memory.kv_element_bytes(kv_dtype)) * batch * tokens
        )
        assert fp8_bytes * 2 == measured


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_geometry_is_the_published_one(name: str) -> None:
    """The "geometry" models have the published KV shape, so their bytes are the published model's."""
    real = architecture_from_config(PUBLISHED[name])
    small = architecture_from_config(geometry_config(PUBLISHED[name]))
    assert (small.num_layers, small.num_key_value_heads, small.head_dim) == (
        real.num_layers,
        real.num_key_value_heads,
        real.head_dim,
    )
    assert memory.kv_bytes_per_token(small, 2) == memory.kv_bytes_per_token(real, 2)


def test_the_planner_reads_the_config_transformers_writes() -> None:
    """config.to_dict() of a transformers config, as saved in config.json, parses the same."""
    config = transformers.Qwen2Config(**{k: v for k, v in QWEN2_5_7B.items() if k != "architectures"})
    arch = architecture_from_config(config.to_dict())
    # 2 x 28 x 4 x 128 x 2 = 57344
    assert memory.kv_bytes_per_token(arch, 2) == 57344
    assert arch.parameters == 7_615_616_512
