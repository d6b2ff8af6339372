"""Limit presets per profile, from the reference page; explicit `spec.limits` values win."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class EffectiveLimits:
    max_input_tokens: int
    max_total_tokens: int
    max_batch_prefill_tokens: int
    max_concurrent_requests: int


class LimitsLike(Protocol):
    @property
    def max_input_tokens(self) -> int | None: ...
    @property
    def max_total_tokens(self) -> int | None: ...
    @property
    def max_batch_prefill_tokens(self) -> int | None: ...
    @property
    def max_concurrent_requests(self) -> int | None: ...


# short: strict SLO, aggressive batching (prefill budget = 2x a full prompt);
# balanced: the middle; long: 8192/12288 on their own GPUs, fewer concurrent sequences.
PRESETS: dict[str, EffectiveLimits] = {
    "short": EffectiveLimits(2048, 4096, 4096, 128),
    "balanced": EffectiveLimits(4096, 8192, 8192, 128),
    "long": EffectiveLimits(8192, 12288, 8192, 64),
}
# `custom` must give input and total tokens; the rest falls back to balanced.
CUSTOM_FALLBACK = PRESETS["balanced"]

# Default p95 objectives (end-to-end request latency, ms): short pools serve interactive chat under a
# strict SLO, long pools take long documents under a soft one. `spec.slo.p95LatencyMs` wins.
SLO_P95_MS: dict[str, int] = {"short": 3000, "balanced": 10000, "long": 30000}


def default_slo_p95_ms(profile: str) -> int:
    return SLO_P95_MS.get(profile, SLO_P95_MS["balanced"])


def effective_limits(profile: str, limits: LimitsLike) -> EffectiveLimits:
    base = PRESETS.get(profile, CUSTOM_FALLBACK)
    return EffectiveLimits(
        max_input_tokens=limits.max_input_tokens or base.max_input_tokens,
        max_total_tokens=limits.max_total_tokens or base.max_total_tokens,
        max_batch_prefill_tokens=limits.max_batch_prefill_tokens or base.max_batch_prefill_tokens,
        max_concurrent_requests=limits.max_concurrent_requests or base.max_concurrent_requests,
    )
