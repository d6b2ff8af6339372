"""A traffic description: request rate, classes with token-length histograms and p95 targets, the budget.

A YAML file (`tgipool plan --traffic FILE`), camelCase like the CRDs:

    ratePerSecond: 40
    gpuBudget: 4
    classes:
      - name: short
        share: 0.8
        p95Seconds: 3
        inputTokens: [{tokens: 256, weight: 1}, {tokens: 1024, weight: 1}]
        outputTokens: [{tokens: 128, weight: 1}]

`replica` is the latency model of one replica, as the emulator's flags (defaults: the emulator's, with the
KV token budget of one H100 80GB serving an 8B model).
"""

from __future__ import annotations

import random
from bisect import bisect
from itertools import accumulate

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Bin(_Model):
    tokens: int = Field(ge=1, le=1_048_576)
    weight: float = Field(default=1.0, gt=0)


class TrafficClass(_Model):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    share: float = Field(gt=0, le=1, description="Fraction of requests in this class.")
    p95_seconds: float = Field(gt=0, le=3600, description="Target end-to-end p95 for the class.")
    input_tokens: list[Bin] = Field(min_length=1, max_length=256)
    output_tokens: list[Bin] = Field(min_length=1, max_length=256)

    @property
    def max_input(self) -> int:
        return max(b.tokens for b in self.input_tokens)

    @property
    def max_total(self) -> int:
        return self.max_input + max(b.tokens for b in self.output_tokens)

    def mean_input(self) -> float:
        return _mean(self.input_tokens)

    def mean_output(self) -> float:
        return _mean(self.output_tokens)


class Replica(_Model):
    """One replica's latency model: the emulator's flags of the same names."""

    gpus: int = Field(default=1, ge=1, le=8)
    prefill_tokens_per_second: float = Field(default=20000.0, gt=0)
    decode_step_ms: float = Field(default=20.0, ge=0)
    decode_step_growth_ms: float = Field(default=0.1, ge=0)
    # KV cache of an H100 80GB after an 8B model's bf16 weights, at 131,072 bytes per token (`tgipool plan`).
    max_batch_total_tokens: int = Field(default=400_000, ge=1)
    max_batch_prefill_tokens: int = Field(default=4096, ge=1)
    max_concurrent_requests: int = Field(default=128, ge=1, description="The gateway's in-flight cap.")


class Traffic(_Model):
    rate_per_second: float = Field(gt=0, le=100_000)
    gpu_budget: int = Field(ge=1, le=4096)
    classes: list[TrafficClass] = Field(min_length=1, max_length=8)
    replica: Replica = Field(default_factory=Replica)

    @model_validator(mode="after")
    def _check(self) -> Traffic:
        total = sum(c.share for c in self.classes)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"classes[*].share must add up to 1 (got {total:g})")
        if len({c.name for c in self.classes}) != len(self.classes):
            raise ValueError("classes[*].name must be unique")
        if self.gpu_budget < self.replica.gpus:
            raise ValueError(
                f"gpuBudget ({self.gpu_budget}) is less than one replica ({self.replica.gpus} GPUs)"
            )
        return self

    @property
    def replicas(self) -> int:
        return self.gpu_budget // self.replica.gpus

    def scaled(self, rate: float) -> Traffic:
        return self.model_copy(update={"rate_per_second": rate})


def _mean(bins: list[Bin]) -> float:
    return sum(b.tokens * b.weight for b in bins) / sum(b.weight for b in bins)


class Sampler:
    """Seeded draws from a histogram (the same seed gives the same requests to every candidate split)."""

    def __init__(self, bins: list[Bin]) -> None:
        self._tokens = [b.tokens for b in bins]
        self._cum = list(accumulate(b.weight for b in bins))

    def draw(self, rng: random.Random) -> int:
        return self._tokens[min(bisect(self._cum, rng.random() * self._cum[-1]), len(self._tokens) - 1)]
