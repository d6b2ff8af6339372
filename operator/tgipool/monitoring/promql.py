"""The PromQL for a pool's live numbers, one query per metric for every pool at once.

Series carry `namespace` and `pool` (the pod label `tgipool.io/pool`, relabelled by the local
Prometheus, the chart's PodMonitor and the documented kube-prometheus-stack scrape config).
TGI's counters have no `_total` suffix (TGI.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass

BY = "namespace, pool"
POOL_SERIES = 'pool!=""'
# Quantiles of TGI's end-to-end request duration (buckets up to 145.6 s; the gateway measures past it).
QUANTILES = {"p50LatencyMs": 0.5, "p95LatencyMs": 0.95, "p99LatencyMs": 0.99}


@dataclass(frozen=True)
class Query:
    """One status field and the instant query that gives it for every pool."""

    field: str
    expr: str


DURATION_BUCKETS = f"tgi_request_duration_bucket{{{POOL_SERIES}}}"


def quantile_ms(q: float, window: str, by: str = BY, series: str = DURATION_BUCKETS) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({series}[{window}]))) * 1000"


def pool_queries(window: str) -> list[Query]:
    """The batched queries of the metrics loop; `window` is the rate window (a Prometheus duration)."""
    rate = f"[{window}]"
    requests = f"sum by ({BY}) (rate(tgi_request_count{{{POOL_SERIES}}}{rate}))"
    failures = f"sum by ({BY}) (rate(tgi_request_failure{{{POOL_SERIES}}}{rate}))"
    return [
        *(Query(name, quantile_ms(q, window)) for name, q in QUANTILES.items()),
        Query("queueDepth", f"sum by ({BY}) (tgi_queue_size{{{POOL_SERIES}}})"),
        Query(
            "tokensPerSecond",
            f"sum by ({BY}) (rate(tgi_request_generated_tokens_sum{{{POOL_SERIES}}}{rate}))",
        ),
        Query("requestsPerSecond", requests),
        # A pool that served nothing has no error rate (0/0), not a perfect one.
        Query("errorRate", f"({failures} or ({requests} * 0)) / ({requests} > 0)"),
    ]
