"""Split a GPU budget into one pool per traffic class, sized so each class meets its p95 target.

Pools of a split are independent (each class goes to its own pool), so a class's p95 on `r` replicas is a
curve of its own traffic alone (`simulate`, the emulator's model). The split is the division of the budget
with the smallest worst ratio p95 / target over the classes (then the smallest sum); it is feasible when
every ratio is at most 1. The one mixed pool of the same budget is simulated for comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tgipool.sizing.simulate import ClassResult, PoolLayout, simulate
from tgipool.sizing.traffic import Traffic, TrafficClass


@dataclass(frozen=True)
class PoolPlan:
    name: str
    max_input_tokens: int
    max_total_tokens: int
    replicas: int
    requests_per_second: float
    target_p95: float
    p50: float
    p95: float
    attainment: float

    @property
    def ratio(self) -> float:
        return self.p95 / self.target_p95


@dataclass(frozen=True)
class Recommendation:
    pools: list[PoolPlan]
    mixed: dict[str, ClassResult]
    budget_replicas: int
    gpus_per_replica: int

    @property
    def feasible(self) -> bool:
        return all(p.ratio <= 1 for p in self.pools)

    @property
    def worst_ratio(self) -> float:
        return max(p.ratio for p in self.pools)

    @property
    def mixed_worst_ratio(self) -> float:
        return max(self.mixed[p.name].p95 / p.target_p95 for p in self.pools)

    @property
    def split_wins(self) -> bool:
        """The split is recommended when its worst class is closer to (or within) its target than the
        mixed pool's worst class; otherwise one mixed pool of the same budget serves this traffic better."""
        return self.worst_ratio <= self.mixed_worst_ratio


def _alone(traffic: Traffic, c: TrafficClass) -> Traffic:
    return traffic.model_copy(
        update={
            "rate_per_second": traffic.rate_per_second * c.share,
            "classes": [c.model_copy(update={"share": 1.0})],
        }
    )


def class_layout(c: TrafficClass, replicas: int) -> PoolLayout:
    return PoolLayout(c.name, c.max_input, c.max_total, replicas)


def mixed_layout(traffic: Traffic) -> PoolLayout:
    widest_in = max(c.max_input for c in traffic.classes)
    return PoolLayout("mixed", widest_in, max(c.max_total for c in traffic.classes), traffic.replicas)


def compositions(n: int, parts: int) -> list[tuple[int, ...]]:
    """Every way to give `n` replicas to `parts` pools, one at least each (bounded: the CLI's budgets)."""
    if parts == 1:
        return [(n,)]
    return [
        (first, *rest) for first in range(1, n - parts + 2) for rest in compositions(n - first, parts - 1)
    ]


def recommend(traffic: Traffic, seconds: float = 60.0, seed: int = 1) -> Recommendation:
    n = traffic.replicas
    if len(traffic.classes) > 4 or n > 64:
        raise ValueError("sizing covers up to 4 classes and 64 replicas per budget")
    if n < len(traffic.classes):
        raise ValueError(
            f"gpuBudget {traffic.gpu_budget} gives {n} replicas, "
            f"fewer than the {len(traffic.classes)} classes"
        )
    curves: dict[str, dict[int, ClassResult]] = {c.name: {} for c in traffic.classes}

    def result(c: TrafficClass, r: int) -> ClassResult:
        if r not in curves[c.name]:
            curves[c.name][r] = simulate(_alone(traffic, c), [class_layout(c, r)], seconds, seed)[c.name]
        return curves[c.name][r]

    def score(alloc: tuple[int, ...]) -> tuple[float, float]:
        ratios = [result(c, r).p95 / c.p95_seconds for c, r in zip(traffic.classes, alloc, strict=True)]
        return max(ratios), sum(ratios)

    best = min(compositions(n, len(traffic.classes)), key=score)
    alloc = {c.name: r for c, r in zip(traffic.classes, best, strict=True)}
    pools = []
    for c in traffic.classes:
        res = result(c, alloc[c.name])
        pools.append(
            PoolPlan(
                name=c.name,
                max_input_tokens=c.max_input,
                max_total_tokens=c.max_total,
                replicas=alloc[c.name],
                requests_per_second=traffic.rate_per_second * c.share,
                target_p95=c.p95_seconds,
                p50=res.p50,
                p95=res.p95,
                attainment=res.attainment,
            )
        )
    mixed = simulate(traffic, [mixed_layout(traffic)], seconds, seed)
    return Recommendation(pools, mixed, n, traffic.replica.gpus)


def fmt_seconds(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.2f}"
