"""Latency, throughput and cost of one replica from measured prefill and decode rates.

P: prefill rate, prompt tokens per second for one replica.
D: decode rate, one replica's aggregate decode throughput (tokens/s over its whole batch), so one
   sequence in a batch of B decodes at D / B tokens/s.
T = L_in / P + L_out / (D / B) + overhead;  QPS = B / T;  tokens per hour = D x 3600;
cost per 1M tokens = hourly price x GPUs per replica / (tokens per hour / 1e6).
`plan_performance` applies them to a pool's plan, with defaults taken from its limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from tgipool.planner.plans import Plan


@dataclass(frozen=True)
class Performance:
    latency_seconds: float
    qps: float
    tokens_per_hour: float
    cost_per_million_tokens: float | None


def latency_seconds(
    input_tokens: int,
    output_tokens: int,
    prefill_tps: float,
    decode_tps: float,
    batch: int,
    overhead_seconds: float = 0.0,
) -> float:
    if prefill_tps <= 0 or decode_tps <= 0 or batch < 1:
        raise ValueError("rates must be > 0 and the batch >= 1")
    return input_tokens / prefill_tps + output_tokens / (decode_tps / batch) + overhead_seconds


def qps(batch: int, latency: float) -> float:
    return batch / latency


def tokens_per_hour(decode_tps: float) -> float:
    return decode_tps * 3600


def cost_per_million_tokens(hourly_price: float, gpus: int, decode_tps: float) -> float:
    return hourly_price * gpus / (tokens_per_hour(decode_tps) / 1e6)


def performance(
    input_tokens: int,
    output_tokens: int,
    prefill_tps: float,
    decode_tps: float,
    batch: int,
    gpus: int,
    hourly_price: float | None,
    overhead_seconds: float = 0.0,
) -> Performance:
    t = latency_seconds(input_tokens, output_tokens, prefill_tps, decode_tps, batch, overhead_seconds)
    cost = None if hourly_price is None else cost_per_million_tokens(hourly_price, gpus, decode_tps)
    return Performance(t, qps(batch, t), tokens_per_hour(decode_tps), cost)


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
