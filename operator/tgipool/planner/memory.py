"""Bytes: per KV-cache element, per weight parameter, per GPU; the KV budget TGI will find at warm-up.

Assumptions, each a named constant:
* Unquantized weights and the KV cache are in the model dtype: float16/bfloat16, 2 bytes (TGI's default
  dtype is one of the two). `--kv-cache-dtype fp8_e4m3fn|fp8_e5m2` stores the cache in 1 byte.
* `--quantize` bytes per parameter of the quantized (linear) layers:
  - fp8, eetq (int8 per channel), bitsandbytes (LLM.int8): 1 byte; their per-channel scales are
    one value per output row, under 0.1% here and left out.
  - awq, gptq, marlin, exl2, compressed-tensors: 4-bit integers with groups of 128 sharing one fp16
    scale (2 bytes) and one 4-bit zero point: 0.5 + 2.5/128 = 0.51953125 byte. A config.json
    `quantization_config` with `bits`/`group_size` (or compressed-tensors `num_bits`) replaces the
    4 and the 128; exl2's `bits` may be fractional (bits per weight).
  - bitsandbytes-nf4/fp4: 4 bits plus bitsandbytes' double-quantized absmax: one 8-bit absmax per
    64 weights and one fp32 per 256 blocks: 0.5 + 1/64 + 4/16384 = 0.515869140625 byte.
  The token embedding and the LM head stay 16-bit in every TGI quantization; they are counted apart
  when the config tells their size (a spec-only architecture quantizes all parameters: a lower bound).
* Tensor parallelism splits every weight (embedding and head included) over `numShard` GPUs, and the
  KV heads too: each GPU caches ceil(kvHeads / numShard) heads (heads are replicated when fewer
  than shards).
* TGI warm-up (server/.../flash_causal_lm.py): free = total x `--cuda-memory-fraction` - used, then
  KV blocks = free x TGI_WIGGLE_ROOM (0.90) / block bytes. "used" is the weights plus a runtime
  overhead that this planner takes as RUNTIME_OVERHEAD_GIB per GPU (CUDA context, cuBLAS/NCCL
  workspaces, CUDA graphs, warm-up activations).
* vLLM (`gpu_memory_utilization`, rendered as --gpu-memory-utilization, default 0.9): the engine may
  use total x fraction; its profiling run subtracts the weights and the peak of activations, CUDA graphs
  and non-torch memory (RUNTIME_OVERHEAD_GIB here) and gives the rest to the KV cache, whole, in
  blocks of 16 tokens.
* SGLang (`mem_fraction_static`, rendered as --mem-fraction-static, default 0.85): total x fraction
  holds the weights and the KV pool; activations and CUDA graphs live in the remaining 1 - fraction.
  What it measures as free after loading already lacks the CUDA context and NCCL buffers
  (SGLANG_CONTEXT_GIB), so KV = total x fraction - weights - context, in pages of 1 token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tgipool.api.engine import EngineKind
from tgipool.planner.architecture import ModelArchitecture

GIB = 1 << 30
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
KV_DTYPE_BYTES = {"fp8_e4m3fn": 1, "fp8_e5m2": 1}
DEFAULT_CUDA_MEMORY_FRACTION = 1.0
DEFAULT_WIGGLE_ROOM = 0.90
RUNTIME_OVERHEAD_GIB = 2.0
SGLANG_CONTEXT_GIB = 1.0
VLLM_BLOCK_TOKENS = 16
SGLANG_PAGE_TOKENS = 1
MAX_SHARDS = 8


@dataclass(frozen=True)
class EngineMemory:
    """How one engine splits a GPU: see the module docstring."""

    fraction_flag: str | None  # the extraArgs flag of the fraction when it is not a typed field
    fraction_env: str | None
    wiggle_env: str | None  # None: the KV budget is taken whole
    default_wiggle: float
    overhead_gib: float  # inside the fraction, besides the weights
    block_tokens: int | None  # None: by head_dim (TGI's rule)


ENGINE_MEMORY: dict[EngineKind, EngineMemory] = {
    "tgi": EngineMemory(
        "--cuda-memory-fraction",
        "CUDA_MEMORY_FRACTION",
        "TGI_WIGGLE_ROOM",
        DEFAULT_WIGGLE_ROOM,
        RUNTIME_OVERHEAD_GIB,
        None,
    ),
    "vllm": EngineMemory(None, None, None, 1.0, RUNTIME_OVERHEAD_GIB, VLLM_BLOCK_TOKENS),
    "sglang": EngineMemory(None, None, None, 1.0, SGLANG_CONTEXT_GIB, SGLANG_PAGE_TOKENS),
}

INT4_GROUP_SIZE = 128
INT_FORMATS = ("awq", "gptq", "marlin", "exl2", "compressed-tensors")
ONE_BYTE_FORMATS = ("fp8", "eetq", "bitsandbytes")
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# The quantizations suggested, smallest change first, when weights do not fit.
SUGGESTED_QUANTIZATIONS = ("fp8", "awq")
KNOWN_QUANTIZATIONS = (*ONE_BYTE_FORMATS, *INT_FORMATS, "bitsandbytes-nf4", "bitsandbytes-fp4")


def kv_element_bytes(kv_cache_dtype: str | None, dtype: str | None = None) -> int:
    """Bytes of one cached K or V element: the KV dtype if set, else the model dtype (2 bytes)."""
    if kv_cache_dtype:
        return KV_DTYPE_BYTES[kv_cache_dtype]
    return DTYPE_BYTES.get(dtype or "bfloat16", 2)


def kv_bytes_per_token(arch: ModelArchitecture, element_bytes: int, kv_heads: int | None = None) -> int:
    """K and V, every layer, every cached head: 2 x layers x kv_heads x head_dim x bytes."""
    assert arch.num_layers and arch.num_key_value_heads and arch.head_dim, "architecture unknown"
    heads = arch.num_key_value_heads if kv_heads is None else kv_heads
    return 2 * arch.num_layers * heads * arch.head_dim * element_bytes


def kv_heads_per_gpu(arch: ModelArchitecture, num_shard: int) -> int:
    assert arch.num_key_value_heads
    return math.ceil(arch.num_key_value_heads / num_shard)


def weight_bytes_per_param(
    quantize: str | None,
    dtype: str | None = None,
    bits: float | None = None,
    group_size: int | None = None,
) -> float:
    """Bytes per parameter of the (quantizable) linear layers; see the module docstring."""
    if quantize is None:
        return float(DTYPE_BYTES.get(dtype or "bfloat16", 2))
    if quantize in ONE_BYTE_FORMATS:
        return 1.0
    if quantize in ("bitsandbytes-nf4", "bitsandbytes-fp4"):
        return NF4_BYTES
    if quantize in INT_FORMATS:
        b = bits if bits is not None else 4.0
        group = group_size if group_size is not None else INT4_GROUP_SIZE
        overhead = (2 + b / 8) / group if group > 0 else 0.0
        return b / 8 + overhead
    raise ValueError(f"unknown quantization {quantize!r}")


def weights_bytes_total(
    arch: ModelArchitecture,
    quantize: str | None,
    dtype: str | None = None,
) -> int:
    """All weights of one replica: quantized layers at their rate, embedding/head at 16-bit."""
    assert arch.parameters is not None, "parameter count unknown"
    # A checkpoint's own quantization_config sets bits/group only when it matches --quantize
    # (marlin repacks gptq/awq checkpoints and keeps their bits).
    same = quantize == arch.quant_method or (quantize == "marlin" and arch.quant_method in ("gptq", "awq"))
    bits = arch.quant_bits if same else None
    group = arch.quant_group_size if same else None
    per_param = weight_bytes_per_param(quantize, dtype, bits, group)
    if quantize is None or arch.embedding_parameters is None:
        return math.ceil(arch.parameters * per_param)
    body = arch.parameters - arch.embedding_parameters
    return math.ceil(body * per_param) + arch.embedding_parameters * 2


def weights_bytes_per_gpu(
    arch: ModelArchitecture, quantize: str | None, dtype: str | None, shards: int
) -> int:
    return math.ceil(weights_bytes_total(arch, quantize, dtype) / shards)


def gpu_bytes(memory_gib: float) -> int:
    return int(memory_gib * GIB)


def usable_bytes(memory_gib: float, fraction: float = DEFAULT_CUDA_MEMORY_FRACTION) -> int:
    """What TGI may use on one GPU: total x --cuda-memory-fraction."""
    return int(gpu_bytes(memory_gib) * fraction)


def overhead_bytes(gib: float = RUNTIME_OVERHEAD_GIB) -> int:
    return int(gib * GIB)


def kv_budget_bytes(
    memory_gib: float,
    weights_per_gpu: int,
    fraction: float = DEFAULT_CUDA_MEMORY_FRACTION,
    wiggle_room: float = DEFAULT_WIGGLE_ROOM,
    overhead_gib: float = RUNTIME_OVERHEAD_GIB,
) -> int:
    """KV cache bytes per GPU: (usable - weights - overhead) x wiggle room, never negative."""
    free = usable_bytes(memory_gib, fraction) - weights_per_gpu - overhead_bytes(overhead_gib)
    return max(0, math.floor(free * wiggle_room))


def block_size(head_dim: int, engine_block: int | None = None) -> int:
    """Tokens per KV block: the engine's own; TGI's is 1 with flashinfer (its default for head_dim
    64/128/256), else 256."""
    if engine_block is not None:
        return engine_block
    return 1 if head_dim in (64, 128, 256) else 256


def tokens_in_blocks(tokens: int, block: int) -> int:
    """Tokens a sequence occupies: rounded up to whole blocks."""
    return math.ceil(tokens / block) * block
