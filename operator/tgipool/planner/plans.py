"""`plan(pool)`: every capacity number of a pool, from its spec and, when at hand, config.json."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tgipool.api.modelpool import ModelPool
from tgipool.planner import memory
from tgipool.planner.architecture import (
    ModelArchitecture,
    architecture_from_config,
    architecture_from_spec,
    merge,
)
from tgipool.planner.fit import Fit, fit


@dataclass(frozen=True)
class Plan:
    name: str
    namespace: str
    model_id: str
    architecture: ModelArchitecture
    quantize: str | None
    dtype: str | None
    kv_cache_dtype: str | None
    num_shard: int
    memory_gib: float | None
    hourly_price: float | None
    cuda_memory_fraction: float  # the engine's share of each GPU (TGI --cuda-memory-fraction, vLLM
    # --gpu-memory-utilization, SGLang --mem-fraction-static)
    wiggle_room: float
    max_input_tokens: int
    max_total_tokens: int
    max_batch_prefill_tokens: int
    max_concurrent_requests: int
    engine: str = "tgi"
    overhead_gib: float = memory.RUNTIME_OVERHEAD_GIB
    block_tokens: int | None = None  # None: TGI's rule by head_dim
    kv_bytes_per_token: int | None = None  # whole replica (all shards)
    weights_bytes_total: int | None = None
    fit: Fit | None = None
    notes: tuple[str, ...] = ()

    @property
    def gpus(self) -> int:
        return self.num_shard


def _flag_value(args: Sequence[str], flag: str | None) -> str | None:
    if flag is None:
        return None
    for i, arg in enumerate(args):
        parts = arg.split(None, 1) if arg.startswith(flag + " ") else arg.split("=", 1)
        if parts[0] == flag:
            if len(parts) == 2:
                return parts[1].strip()
            if i + 1 < len(args):
                return args[i + 1]
    return None


def _float_setting(pool: ModelPool, flag: str | None, env: str, default: float) -> tuple[float, str | None]:
    raw = _flag_value(pool.spec.engine.extra_args, flag)
    if raw is None:
        raw = next((e.value for e in pool.spec.engine.env if e.name == env and e.value is not None), None)
    if raw is None:
        return default, None
    try:
        return float(raw), None
    except ValueError:
        return default, f"{flag or env} value {raw!r} is not a number; {default} assumed"


def fit_for(p: Plan, shards: int, quantize: str | None, kv_cache_dtype: str | None) -> Fit:
    """The plan's GPU with another shard count, quantization or KV dtype (what would fit instead)."""
    assert p.memory_gib is not None
    return fit(
        p.architecture,
        quantize=quantize,
        dtype=p.dtype,
        kv_cache_dtype=kv_cache_dtype,
        num_shard=shards,
        memory_gib=p.memory_gib,
        fraction=p.cuda_memory_fraction,
        wiggle_room=p.wiggle_room,
        max_total_tokens=p.max_total_tokens,
        max_batch_prefill_tokens=p.max_batch_prefill_tokens,
        overhead_gib=p.overhead_gib,
        block_tokens=p.block_tokens,
    )


def plan(pool: ModelPool, config: Mapping[str, Any] | None = None) -> Plan:
    """Every capacity number of `pool`; `config` is the model's config.json, when at hand."""
    spec = pool.spec
    arch, notes = merge(
        architecture_from_spec(spec.model.architecture),
        architecture_from_config(config) if config is not None else None,
    )
    quantize: str | None = spec.engine.quantize
    if quantize is None and arch.quant_method:
        if arch.quant_method in memory.KNOWN_QUANTIZATIONS:
            quantize = arch.quant_method
            notes.append(f"quantize {quantize} taken from config.json quantization_config, as TGI does")
        else:
            notes.append(f"config.json quant_method {arch.quant_method!r} not modelled: weights at 16-bit")
    mem = memory.ENGINE_MEMORY[spec.engine.kind]
    typed = spec.engine.effective_memory_fraction  # rendered on the engines that type it
    fraction, warn1 = (
        (typed, None)
        if typed is not None
        else _float_setting(
            pool, mem.fraction_flag, mem.fraction_env or "", memory.DEFAULT_CUDA_MEMORY_FRACTION
        )
    )
    wiggle, warn2 = (
        _float_setting(pool, None, mem.wiggle_env, mem.default_wiggle)
        if mem.wiggle_env
        else (mem.default_wiggle, None)
    )
    notes += [w for w in (warn1, warn2) if w]
    limits = pool.limits
    shards = spec.engine.num_shard
    result = Plan(
        name=pool.name,
        namespace=pool.namespace,
        model_id=spec.model.id,
        architecture=arch,
        quantize=quantize,
        dtype=spec.engine.dtype,
        kv_cache_dtype=spec.engine.kv_cache_dtype,
        num_shard=shards,
        memory_gib=spec.gpu.memory_gi_b,
        hourly_price=spec.gpu.hourly_price,
        cuda_memory_fraction=fraction,
        wiggle_room=wiggle,
        engine=spec.engine.kind,
        overhead_gib=mem.overhead_gib,
        block_tokens=mem.block_tokens,
        max_input_tokens=limits.max_input_tokens,
        max_total_tokens=limits.max_total_tokens,
        max_batch_prefill_tokens=limits.max_batch_prefill_tokens,
        max_concurrent_requests=limits.max_concurrent_requests,
    )
    if not arch.kv_known:
        return replace(result, notes=tuple(notes))
    kv_heads = arch.num_key_value_heads
    assert kv_heads is not None
    if kv_heads % shards and shards % kv_heads:
        notes.append(f"numShard {shards} neither divides nor is a multiple of {kv_heads} KV heads")
    if arch.num_attention_heads and arch.num_attention_heads % shards:
        notes.append(f"numShard {shards} does not divide {arch.num_attention_heads} attention heads")
    element = memory.kv_element_bytes(spec.engine.kv_cache_dtype, spec.engine.dtype)
    result = replace(result, kv_bytes_per_token=memory.kv_bytes_per_token(arch, element))
    if arch.parameters is None:
        return replace(result, notes=tuple(notes))
    weights = memory.weights_bytes_total(arch, quantize, spec.engine.dtype)
    result = replace(result, weights_bytes_total=weights)
    if result.memory_gib is not None:
        result = replace(result, fit=fit_for(result, result.num_shard, quantize, result.kv_cache_dtype))
    return replace(result, notes=tuple(notes))
