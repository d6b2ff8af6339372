"""`fit(...)`: the memory arithmetic of one GPU of a replica for one engine setting."""

from __future__ import annotations

from dataclasses import dataclass

from tgipool.planner import memory
from tgipool.planner.architecture import ModelArchitecture


@dataclass(frozen=True)
class Fit:
    """Weights, KV budget, KV tokens and whole sequences on one GPU of a replica."""

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
    overhead_gib: float = memory.RUNTIME_OVERHEAD_GIB,
    block_tokens: int | None = None,
) -> Fit:
    """Memory of one GPU: weights, KV budget, KV tokens and whole `max_total_tokens` sequences."""
    assert arch.head_dim is not None
    kv_gpu = memory.kv_bytes_per_token(
        arch, memory.kv_element_bytes(kv_cache_dtype, dtype), memory.kv_heads_per_gpu(arch, num_shard)
    )
    weights = memory.weights_bytes_per_gpu(arch, quantize, dtype, num_shard)
    budget = memory.kv_budget_bytes(memory_gib, weights, fraction, wiggle_room, overhead_gib)
    block = memory.block_size(arch.head_dim, block_tokens)
    blocks = budget // (kv_gpu * block)
    kv_tokens = blocks * block
    per_seq_blocks = memory.tokens_in_blocks(max_total_tokens, block) // block
    sequences = blocks // per_seq_blocks
    weights_fit = weights + memory.overhead_bytes(overhead_gib) <= memory.usable_bytes(memory_gib, fraction)
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
