"""`assess(pool)`: the `CapacityFeasible` verdict of a pool, and what would fit instead.

A pool is refused (status "False") when its weights, one `maxTotalTokens` sequence, or one
`maxBatchPrefillTokens` prefill cannot fit: TGI would fail at warm-up ("Not enough memory to handle
`max_total_tokens={n}`", "`max_batch_prefill_tokens` must be <= `max_batch_total_tokens`"). The
message names what would fit. Unknown architecture or GPU memory gives "Unknown", never "True".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tgipool.api.modelpool import CapacityStatus, Condition, ModelPool
from tgipool.planner import memory
from tgipool.planner.plans import Plan, fit_for, plan

CONDITION_TYPE = "CapacityFeasible"
ConditionStatus = Literal["True", "False", "Unknown"]


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


def _gib(n: int | float) -> str:
    return f"{n / memory.GIB:.2f} GiB"


def _alternatives(p: Plan) -> list[str]:
    """Settings that would make the whole pool fit, the smallest change first."""
    out: list[str] = []
    for shards in range(p.num_shard + 1, memory.MAX_SHARDS + 1):
        if fit_for(p, shards, p.quantize, p.kv_cache_dtype).feasible:
            out.append(f"numShard {shards}")
            break
    if p.kv_cache_dtype is None and fit_for(p, p.num_shard, p.quantize, "fp8_e4m3fn").feasible:
        out.append("kvCacheDtype fp8_e4m3fn")
    current = memory.weight_bytes_per_param(p.quantize, p.dtype)
    options: list[tuple[int, str]] = []
    for q in memory.SUGGESTED_QUANTIZATIONS:
        if memory.weight_bytes_per_param(q) >= current:
            continue
        for shards in range(p.num_shard, memory.MAX_SHARDS + 1):
            if fit_for(p, shards, q, p.kv_cache_dtype).feasible:
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
            f"{p.quantize or p.dtype or 'bfloat16'}) plus {p.overhead_gib:g} GiB runtime "
            f"overhead, over the {_gib(usable)} usable of {p.memory_gib:g} GiB; {_would_fit(p)}",
        )
    if not f.sequence_fits:
        # The KV tokens that fit are the largest maxTotalTokens one sequence could have.
        largest = f.kv_tokens
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
