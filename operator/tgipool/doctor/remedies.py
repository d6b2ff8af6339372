"""PURE: the reference page's fixes made concrete with a pool's own numbers, from the capacity planner.

Every function returns lines a person can act on: the field, the value to set, and what the planner
says it buys (weights and KV cache per GPU, whole sequences of maxTotalTokens, GPUs per replica).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from tgipool.api.modelpool import ModelPool
from tgipool.planner import Plan, memory, plan
from tgipool.planner.fit import Fit
from tgipool.planner.plans import fit_for

UNKNOWN_SHAPE = (
    "set spec.model.architecture (numLayers, numKeyValueHeads, headDim, parametersB) and spec.gpu.memoryGiB: "
    "then the planner gives the numbers for each fix"
)
# Page's rule of thumb for the median size of a "short" request, when a pool is split in two.
SPLIT_FRACTION = 2


def gib(n: float) -> str:
    return f"{n / memory.GIB:.1f} GiB"


def _fit_text(f: Fit, total: int) -> str:
    return (
        f"weights {gib(f.weights_bytes_per_gpu)} and KV cache {gib(f.kv_budget_bytes_per_gpu)} per GPU, "
        f"{f.max_concurrent_sequences} sequences of {total} tokens"
    )


def _valid_shards(p: Plan) -> list[int]:
    """Shard counts above the pool's that split its KV heads evenly (TGI needs that)."""
    heads = p.architecture.num_key_value_heads or 1
    out = []
    for s in range(p.num_shard + 1, memory.MAX_SHARDS + 1):
        if heads % s == 0 or s % heads == 0:
            out.append(s)
    return out


def price_text(p: Plan, gpus: int) -> str:
    return f" (${p.hourly_price * gpus:.2f}/h per replica)" if p.hourly_price is not None else ""


def shard_fix(p: Plan) -> str | None:
    """The next shard count that fits, with what it buys."""
    for s in _valid_shards(p):
        f = fit_for(p, s, p.quantize, p.kv_cache_dtype)
        if f.feasible:
            fits = _fit_text(f, p.max_total_tokens)
            return f"engine.numShard {s} (from {p.num_shard}): {fits}{price_text(p, s)}"
    return None


def quantize_fixes(p: Plan) -> list[str]:
    """fp8 (INT8-class) and awq (INT4) where they shrink the weights, with what each buys."""
    out = []
    current = memory.weight_bytes_per_param(p.quantize, p.dtype)
    for q in memory.SUGGESTED_QUANTIZATIONS:
        if memory.weight_bytes_per_param(q) >= current:
            continue
        f = fit_for(p, p.num_shard, q, p.kv_cache_dtype)
        drop = " and remove engine.dtype" if p.dtype else ""
        verdict = _fit_text(f, p.max_total_tokens) if f.feasible else "still does not fit"
        out.append(f"engine.quantize {q}{drop} (a checkpoint quantized for it): {verdict}")
    return out


def kv_dtype_fix(p: Plan) -> str | None:
    if p.kv_cache_dtype is not None or p.kv_bytes_per_token is None:
        return None
    f = fit_for(p, p.num_shard, p.quantize, "fp8_e5m2")
    if not f.feasible:
        return None
    half = p.kv_bytes_per_token // 2
    return (
        f"engine.kvCacheDtype fp8_e5m2: KV bytes per token {p.kv_bytes_per_token} -> {half}, "
        f"{f.max_concurrent_sequences} sequences of {p.max_total_tokens} tokens"
    )


def prefill_fix(p: Plan) -> str | None:
    """Halve maxBatchPrefillTokens (TGI's own advice at a warm-up OOM), never below maxInputTokens."""
    cur = p.max_batch_prefill_tokens
    target = max(p.max_input_tokens, cur // 2)
    if p.fit is not None and not p.fit.prefill_fits:
        target = min(target, p.fit.kv_tokens)
    if target >= cur:
        return None
    return (
        f"limits.maxBatchPrefillTokens {target} (from {cur}): the warm-up runs one prefill of that many "
        "tokens, and its activations come on top of weights and KV cache"
    )


def length_fix(p: Plan) -> str:
    """Halve the length limits: what TGI allocates per sequence, and the prefill it must warm up."""
    total = max(2, p.max_total_tokens // 2)
    inp = max(1, min(p.max_input_tokens // 2, total - 1))
    now = f"{p.max_input_tokens} / {p.max_total_tokens}"
    text = f"limits.maxInputTokens {inp} / maxTotalTokens {total} (from {now})"
    if p.fit is not None and p.memory_gib is not None:
        f = fit_for(
            replace(p, max_total_tokens=total, max_input_tokens=inp),
            p.num_shard,
            p.quantize,
            p.kv_cache_dtype,
        )
        text += f": {f.max_concurrent_sequences} sequences fit instead of {p.fit.max_concurrent_sequences}"
    return text + "; send longer requests to a long pool (routing.fallbackPool)"


def concurrency_fix(p: Plan) -> str | None:
    if p.fit is None or p.max_concurrent_requests <= p.fit.max_concurrent_sequences:
        return None
    seqs = max(1, p.fit.max_concurrent_sequences)
    return (
        f"limits.maxConcurrentRequests {seqs} (from {p.max_concurrent_requests}): only {seqs} sequences of "
        f"{p.max_total_tokens} tokens fit in the KV cache"
    )


def memory_fixes(pool: ModelPool) -> list[str]:
    """Fixes for a GPU out of memory, the smallest change first: prefill, concurrency, lengths, KV
    dtype, quantization, shards."""
    p = plan(pool)
    fixes = [f for f in (prefill_fix(p), concurrency_fix(p)) if f]
    if p.max_batch_prefill_tokens <= p.max_input_tokens:
        fixes.append(length_fix(p))
    if p.fit is None:
        return [*fixes, UNKNOWN_SHAPE]
    fixes += [f for f in (kv_dtype_fix(p),) if f]
    fixes += quantize_fixes(p)
    shard = shard_fix(p)
    if shard:
        fixes.append(shard)
    return fixes


def fewest_gpus(pool: ModelPool, max_gpus: int) -> str | None:
    """The smallest numShard <= max_gpus (with the pool's quantization, else fp8 or awq) that fits."""
    p = plan(pool)
    if p.fit is None:
        return None
    current = memory.weight_bytes_per_param(p.quantize, p.dtype)
    smaller = [q for q in memory.SUGGESTED_QUANTIZATIONS if memory.weight_bytes_per_param(q) < current]
    heads = p.architecture.num_key_value_heads or 1
    for shards in range(1, max_gpus + 1):
        if heads % shards and shards % heads:
            continue
        for q in (p.quantize, *smaller):
            f = fit_for(p, shards, q, p.kv_cache_dtype)
            if f.feasible:
                how = f"engine.numShard {shards}" + (f" with engine.quantize {q}" if q != p.quantize else "")
                return f"{how}: {_fit_text(f, p.max_total_tokens)}{price_text(p, shards)}"
    return None


def hpa_replicas(replicas: int, p95_ms: float, target_ms: float, queue: float, queue_per_replica: int) -> int:
    """What the pool's HPA computes from the same numbers: the larger of its two metric rules."""
    by_latency = math.ceil(max(1, replicas) * p95_ms / target_ms) if target_ms > 0 else replicas
    by_queue = math.ceil(queue / queue_per_replica) if queue_per_replica > 0 else 0
    return max(replicas, by_latency, by_queue)


def replicas_fix(pool: ModelPool, replicas: int, wanted: int) -> str:
    ceiling = pool.spec.replicas.ceiling
    if wanted > ceiling:
        return (
            f"replicas.max {wanted} (from {ceiling}): the HPA wants {wanted} replicas but stops at {ceiling}"
            + _gpu_cost(pool, wanted - ceiling)
        )
    if wanted > replicas:
        return (
            f"more replicas: the HPA's rules ask for {wanted} (now {replicas}, max {ceiling}); if it stays "
            f"at {replicas}, `kubectl describe hpa {pool.name}` shows which metric it cannot read"
        )
    return f"replicas are not the limit ({replicas} of max {ceiling}): shorten requests or split the pool"


def _gpu_cost(pool: ModelPool, extra_replicas: int) -> str:
    price = pool.spec.gpu.hourly_price
    if price is None:
        return ""
    return f", +${price * pool.spec.engine.num_shard * extra_replicas:.2f}/h"


def split_fix(pool: ModelPool) -> str:
    limits = pool.limits
    short_total = max(2, limits.max_total_tokens // SPLIT_FRACTION)
    short_input = max(1, min(limits.max_input_tokens // SPLIT_FRACTION, short_total - 1))
    return (
        f"split short and long: a short pool (maxInputTokens {short_input}, maxTotalTokens {short_total}) "
        f"for the common requests and a long one ({limits.max_input_tokens}/{limits.max_total_tokens}) as "
        "its routing.fallbackPool, both serving the same servedName; the gateway sends each request to the "
        "smallest pool that fits"
    )


def tighten_fix(pool: ModelPool) -> str:
    p = plan(pool)
    return "tighten " + length_fix(p)


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """`--flag=V` or `--flag V` among a pool's extraArgs."""
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def batch_capacity(pool: ModelPool) -> tuple[int, str]:
    """How many sequences one replica may run at once, and what bounds it."""
    p = plan(pool)
    bounds = [(p.max_concurrent_requests, "limits.maxConcurrentRequests")]
    if p.fit is not None:
        bounds.append((max(1, p.fit.max_concurrent_sequences), "the KV cache"))
    raw = flag_value(pool.spec.engine.extra_args, "--max-batch-size")
    if raw is not None and raw.isdigit():
        bounds.append((int(raw), "--max-batch-size"))
    return min(bounds)


def capacity_fixes(pool: ModelPool, reason: str) -> list[str]:
    """What would make a pool the planner refuses fit, by the planner's reason."""
    p = plan(pool)
    if p.fit is None:
        return [UNKNOWN_SHAPE]
    if reason == "PrefillDoesNotFit":
        return [f for f in (prefill_fix(p),) if f]
    fixes = [length_fix(p)] if reason == "SequenceDoesNotFit" else []
    fixes += [f for f in (kv_dtype_fix(p),) if f] if reason == "SequenceDoesNotFit" else []
    fixes += [f for f in quantize_fixes(p) if "still does not fit" not in f]
    shard = shard_fix(p)
    return [*fixes, shard] if shard else fixes
