"""`plan(pool)`: every capacity number of a pool; `assess(pool)`: its `CapacityFeasible` verdict.

A pool is refused (status "False") when its weights, one `maxTotalTokens` sequence, or one
`maxBatchPrefillTokens` prefill cannot fit: TGI would fail at warm-up ("Not enough memory to handle
`max_total_tokens={n}`", "`max_batch_prefill_tokens` must be <= `max_batch_total_tokens`"). The
message names what would fit. Unknown architecture or GPU memory gives "Unknown", never "True".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tgipool.api.modelpool import CapacityStatus, Condition, ModelPool
from tgipool.planner import memory
from tgipool.planner.architecture import (
    ModelArchitecture,
    architecture_from_config,
    architecture_from_spec,
    merge,
)
from tgipool.planner.performance import Performance, performance

CONDITION_TYPE = "CapacityFeasible"
ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Fit:
    """The memory arithmetic of one GPU of a replica for one engine setting."""

    kv_bytes_per_token_per_gpu: int
    weights_bytes_per_gpu: int
    kv_budget_bytes_per_gpu: int
    block: int
    kv_tokens: int  # what TGI would take as max_batch_total_tokens
    max_concurrent_sequences: int
    weights_fit: bool
    sequence_fits: bool
    prefill_fits: bool

    @property
    def feasible(self) -> bool:
        return self.weights_fit and self.sequence_fits and self.prefill_fits


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
    cuda_memory_fraction: float
    wiggle_room: float
    max_input_tokens: int
    max_total_tokens: int
    max_batch_prefill_tokens: int
    max_concurrent_requests: int
    kv_bytes_per_token: int | None = None  # whole replica (all shards)
    weights_bytes_total: int | None = None
    fit: Fit | None = None
    notes: tuple[str, ...] = ()

    @property
    def gpus(self) -> int:
        return self.num_shard


@dataclass(frozen=True)
class Assessment:
    status: ConditionStatus
    reason: str
    message: str
    capacity: dict[str, int | None]
    plan: Plan
    reasons: tuple[str, ...] = field(default=())

    @property
    def feasible(self) -> bool:
        return self.status == "True"

    @property
    def refused(self) -> bool:
        """True when no GPU Deployment should be created for the pool."""
        return self.status == "False"

    def condition(self, observed_generation: int | None = None) -> Condition:
        return Condition(
            type=CONDITION_TYPE,
            status=self.status,
            reason=self.reason,
            message=self.message,
            observed_generation=observed_generation,
        )

    def capacity_status(self) -> CapacityStatus:
        return CapacityStatus(
            kv_bytes_per_token=self.capacity["kvBytesPerToken"],
            weights_bytes=self.capacity["weightsBytes"],
            max_concurrent_sequences=self.capacity["maxConcurrentSequences"],
        )


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


def fit(
    arch: ModelArchitecture,
    *,
    quantize: str | None,
    dtype: str | None,
    kv_cache_dtype: str | None,
    num_shard: int,
    memory_gib: float,
    fraction: float,
    wiggle_room: float,
    max_total_tokens: int,
    max_batch_prefill_tokens: int,
) -> Fit:
    """Memory of one GPU: weights, KV budget, KV tokens and whole `max_total_tokens` sequences."""
    assert arch.head_dim is not None
    kv_gpu = memory.kv_bytes_per_token(
        arch, memory.kv_element_bytes(kv_cache_dtype, dtype), memory.kv_heads_per_gpu(arch, num_shard)
    )
    weights = memory.weights_bytes_per_gpu(arch, quantize, dtype, num_shard)
    budget = memory.kv_budget_bytes(memory_gib, weights, fraction, wiggle_room)
    block = memory.block_size(arch.head_dim)
    blocks = budget // (kv_gpu * block)
    kv_tokens = blocks * block
    per_seq_blocks = memory.tokens_in_blocks(max_total_tokens, block) // block
    sequences = blocks // per_seq_blocks
    weights_fit = weights + memory.overhead_bytes() <= memory.usable_bytes(memory_gib, fraction)
    return Fit(
        kv_bytes_per_token_per_gpu=kv_gpu,
        weights_bytes_per_gpu=weights,
        kv_budget_bytes_per_gpu=budget,
        block=block,
        kv_tokens=kv_tokens,
        max_concurrent_sequences=sequences,
        weights_fit=weights_fit,
        sequence_fits=weights_fit and sequences >= 1,
        prefill_fits=weights_fit and kv_tokens >= max_batch_prefill_tokens,
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
    fraction, warn1 = _float_setting(
        pool, "--cuda-memory-fraction", "CUDA_MEMORY_FRACTION", memory.DEFAULT_CUDA_MEMORY_FRACTION
    )
    wiggle, warn2 = _float_setting(pool, None, "TGI_WIGGLE_ROOM", memory.DEFAULT_WIGGLE_ROOM)
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
        result = replace(result, fit=_fit_for(result, result.num_shard, quantize, result.kv_cache_dtype))
    return replace(result, notes=tuple(notes))


def _fit_for(p: Plan, shards: int, quantize: str | None, kv_cache_dtype: str | None) -> Fit:
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
    )


def _gib(n: int | float) -> str:
    return f"{n / memory.GIB:.2f} GiB"


def _alternatives(p: Plan) -> list[str]:
    """Settings that would make the whole pool fit, the smallest change first."""
    out: list[str] = []
    for shards in range(p.num_shard + 1, memory.MAX_SHARDS + 1):
        if _fit_for(p, shards, p.quantize, p.kv_cache_dtype).feasible:
            out.append(f"numShard {shards}")
            break
    if p.kv_cache_dtype is None and _fit_for(p, p.num_shard, p.quantize, "fp8_e4m3fn").feasible:
        out.append("kvCacheDtype fp8_e4m3fn")
    current = memory.weight_bytes_per_param(p.quantize, p.dtype)
    options: list[tuple[int, str]] = []
    for q in memory.SUGGESTED_QUANTIZATIONS:
        if memory.weight_bytes_per_param(q) >= current:
            continue
        for shards in range(p.num_shard, memory.MAX_SHARDS + 1):
            if _fit_for(p, shards, q, p.kv_cache_dtype).feasible:
                options.append((shards, q))
                break
    if options:
        shards, q = min(options, key=lambda o: o[0])  # fewest GPUs; fp8 before awq on a tie
        out.append(f"quantize {q}" if shards == p.num_shard else f"quantize {q} with numShard {shards}")
    return out


def _would_fit(p: Plan) -> str:
    alts = _alternatives(p)
    if not alts:
        return f"nothing up to numShard {memory.MAX_SHARDS} with fp8 or int4 weights fits on this GPU"
    return "would fit with " + ", or ".join(alts)


def _largest_total_tokens(f: Fit) -> int:
    return f.kv_tokens


def assess(pool: ModelPool, config: Mapping[str, Any] | None = None) -> Assessment:
    """The `CapacityFeasible` condition and `status.capacity` of `pool`."""
    p = plan(pool, config)
    arch = p.architecture
    capacity: dict[str, int | None] = {
        "kvBytesPerToken": p.kv_bytes_per_token,
        "weightsBytes": p.fit.weights_bytes_per_gpu if p.fit else None,
        "maxConcurrentSequences": p.fit.max_concurrent_sequences if p.fit else None,
    }
    if p.fit is None and p.weights_bytes_total is not None:
        capacity["weightsBytes"] = math.ceil(p.weights_bytes_total / p.num_shard)

    def verdict(status: ConditionStatus, reason: str, message: str) -> Assessment:
        return Assessment(status, reason, message, capacity, p, (message, *p.notes))

    if not arch.kv_known or arch.parameters is None:
        missing = ", ".join(arch.missing())
        return verdict(
            "Unknown",
            "ArchitectureUnknown",
            f"spec.model.architecture lacks {missing}: KV cache and weights not checked "
            "(set them, or run `tgipool plan --config config.json`)",
        )
    if p.fit is None:
        return verdict(
            "Unknown",
            "GpuMemoryUnknown",
            f"spec.gpu.memoryGiB is unset: weights need {_gib(capacity['weightsBytes'] or 0)} per GPU and "
            f"each token {p.kv_bytes_per_token} KV bytes, but GPU memory is unknown",
        )
    f = p.fit
    usable = memory.usable_bytes(p.memory_gib or 0, p.cuda_memory_fraction)
    if not f.weights_fit:
        return verdict(
            "False",
            "WeightsDoNotFit",
            f"weights need {_gib(f.weights_bytes_per_gpu)} per GPU (numShard {p.num_shard}, "
            f"{p.quantize or p.dtype or 'bfloat16'}) plus {memory.RUNTIME_OVERHEAD_GIB:g} GiB runtime "
            f"overhead, over the {_gib(usable)} usable of {p.memory_gib:g} GiB; {_would_fit(p)}",
        )
    if not f.sequence_fits:
        largest = _largest_total_tokens(f)
        hint = (
            f"the largest maxTotalTokens that fits is {largest}"
            if largest > p.max_input_tokens
            else f"only {largest} tokens fit, not more than maxInputTokens {p.max_input_tokens}"
        )
        return verdict(
            "False",
            "SequenceDoesNotFit",
            f"one sequence of maxTotalTokens {p.max_total_tokens} needs "
            f"{_gib(memory.tokens_in_blocks(p.max_total_tokens, f.block) * f.kv_bytes_per_token_per_gpu)} "
            f"of KV cache per GPU, over the {_gib(f.kv_budget_bytes_per_gpu)} left after weights; "
            f"{hint}; or the pool {_would_fit(p)}",
        )
    if not f.prefill_fits:
        return verdict(
            "False",
            "PrefillDoesNotFit",
            f"maxBatchPrefillTokens {p.max_batch_prefill_tokens} exceeds the {f.kv_tokens} tokens of KV "
            f"cache; the largest maxBatchPrefillTokens that fits is {f.kv_tokens}",
        )
    return verdict(
        "True",
        "Fits",
        f"{f.max_concurrent_sequences} sequences of maxTotalTokens {p.max_total_tokens} fit "
        f"({f.kv_tokens} KV tokens, {_gib(f.kv_budget_bytes_per_gpu)} KV cache and "
        f"{_gib(f.weights_bytes_per_gpu)} weights per GPU)",
    )


def batch_for(p: Plan) -> int:
    """Default batch: the concurrent sequences that fit, capped by maxConcurrentRequests."""
    if p.fit is None:
        return p.max_concurrent_requests
    return max(1, min(p.fit.max_concurrent_sequences, p.max_concurrent_requests))


def plan_performance(
    p: Plan,
    prefill_tps: float,
    decode_tps: float,
    *,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    batch: int | None = None,
    overhead_seconds: float = 0.0,
) -> tuple[Performance, int, int, int]:
    """Performance of one replica; defaults: a full prompt, the rest of maxTotalTokens, batch_for."""
    l_in = p.max_input_tokens if input_tokens is None else input_tokens
    l_out = p.max_total_tokens - p.max_input_tokens if output_tokens is None else output_tokens
    b = batch_for(p) if batch is None else batch
    perf = performance(l_in, l_out, prefill_tps, decode_tps, b, p.gpus, p.hourly_price, overhead_seconds)
    return perf, l_in, l_out, b
