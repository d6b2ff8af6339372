"""The PromQL for a pool's live numbers, one query per metric for every pool of every engine at once.

Series carry `namespace` and `pool` (the pod label `tgipool.io/pool`, relabelled by the local
Prometheus, the chart's PodMonitor and the documented kube-prometheus-stack scrape config). Metric
names come from the engine table (`engine_metrics.py`): each engine's query reads its own names, every
name a signal had across versions, newest first; a field's query is the union (`or`) of the engines'
queries (a pool runs one engine, so their series never collide).
"""

from __future__ import annotations

from dataclasses import dataclass

from tgipool.api.modelpool import EngineKind
from tgipool.monitoring.engine_metrics import ENGINES, MetricName, Signal, names

BY = "namespace, pool"
POOL_SERIES = 'pool!=""'
# Quantiles of the engine's end-to-end request duration (TGI's buckets stop at 145.6 s; the gateway
# measures past it).
QUANTILES = {"p50LatencyMs": 0.5, "p95LatencyMs": 0.95, "p99LatencyMs": 0.99}
FIELDS = (*QUANTILES, "queueDepth", "tokensPerSecond", "requestsPerSecond", "errorRate")


@dataclass(frozen=True)
class Query:
    """One status field and the instant query that gives it for every pool."""

    field: str
    expr: str


def selector(m: MetricName, suffix: str = "", base: str = POOL_SERIES) -> str:
    matchers = ", ".join(x for x in (base, m.matchers) if x)
    return f"{m.name}{suffix}{{{matchers}}}"


def quantile_ms(q: float, window: str, by: str = BY, series: str = "") -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({series}[{window}]))) * 1000"


def _newest_first(exprs: list[str]) -> str | None:
    """The first name that has series wins: a pool exports one version's names at a time."""
    if not exprs:
        return None
    return exprs[0] if len(exprs) == 1 else " or ".join(f"({e})" for e in exprs)


def _signal(engine: EngineKind, signal: Signal, expr: str) -> str | None:
    """`expr` with `{}` replaced by each name's selector, newest first."""
    return _newest_first([expr.format(selector(m)) for m in names(engine, signal)])


def engine_queries(engine: EngineKind, window: str) -> dict[str, str]:
    """Each status field's query for the pools of one engine (fields it cannot give are left out)."""
    rate = f"[{window}]"
    out: dict[str, str | None] = {
        field: _newest_first(
            [quantile_ms(q, window, series=selector(m, "_bucket")) for m in names(engine, "e2e")]
        )
        for field, q in QUANTILES.items()
    }
    out["queueDepth"] = _signal(engine, "queue", f"sum by ({BY}) ({{}})")
    out["tokensPerSecond"] = _signal(engine, "generated_tokens", f"sum by ({BY}) (rate({{}}{rate}))")
    requests = _signal(engine, "requests", f"sum by ({BY}) (rate({{}}{rate}))")
    failures = _signal(engine, "failures", f"sum by ({BY}) (rate({{}}{rate}))")
    out["requestsPerSecond"] = requests
    if requests is not None and failures is not None:
        # A pool that served nothing has no error rate (0/0), not a perfect one.
        out["errorRate"] = f"({failures} or ({requests} * 0)) / ({requests} > 0)"
    return {k: v for k, v in out.items() if v is not None}


def pool_queries(window: str) -> list[Query]:
    """The batched queries of the metrics loop; `window` is the rate window (a Prometheus duration)."""
    per_engine = [engine_queries(e, window) for e in ENGINES]
    out = []
    for field in FIELDS:
        exprs = [q[field] for q in per_engine if field in q]
        out.append(Query(field, exprs[0] if len(exprs) == 1 else " or ".join(f"({e})" for e in exprs)))
    return out
