"""Recording and alert rules (Prometheus rule-file groups) and the custom-metrics adapter rules.

The alerts are the reference page's watch list. Besides TGI's own series they read the operator's
per-pool gauges (`tgipool_pool_*`, see `handlers/pool_metrics.py`), the gateway's metrics, and
kube-state-metrics' pod series (part of kube-prometheus-stack) for restarts and OOM kills.
"""

from __future__ import annotations

from typing import Any

from tgipool.desired.autoscaling import P95_METRIC
from tgipool.desired.engines import ENGINE_RENDER
from tgipool.monitoring.engine_metrics import ENGINES, hpa_queue_metric, names
from tgipool.monitoring.promql import POOL_SERIES, pool_queries, quantile_ms

# Record names for each status field: dashboards and alerts read these.
RECORDS = {
    "p50LatencyMs": "tgipool:request_latency_ms:p50",
    "p95LatencyMs": "tgipool:request_latency_ms:p95",
    "p99LatencyMs": "tgipool:request_latency_ms:p99",
    "queueDepth": "tgipool:queue_depth",
    "tokensPerSecond": "tgipool:generated_tokens_per_second",
    "requestsPerSecond": "tgipool:requests_per_second",
    "errorRate": "tgipool:error_rate",
}
SLO_GAUGE = "tgipool_pool_slo_p95_latency_ms"
REPLICAS_GAUGE = "tgipool_pool_replicas"
MAX_REPLICAS_GAUGE = "tgipool_pool_replicas_max"
GPU_COST_GAUGE = "tgipool_pool_gpu_hourly_cost"
COLD_START = "tgipool_gateway_cold_start_wait_seconds"
COLD_START_LIMIT_SECONDS = 600
ON_POOL = "on (namespace, pool)"
# The alert group's name: the ProductionReady checklist asks Prometheus whether it is loaded.
ALERTS_GROUP = "tgipool.alerts"


def _alert(
    name: str, expr: str, duration: str, severity: str, summary: str, description: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": duration,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    }


def rule_groups(window: str = "2m", alert_for: str = "5m") -> dict[str, Any]:
    """A Prometheus rule file: the pool records, then the alerts that read them."""
    records = [{"record": RECORDS[q.field], "expr": q.expr} for q in pool_queries(window)]
    p95, queue, errors = RECORDS["p95LatencyMs"], RECORDS["queueDepth"], RECORDS["errorRate"]
    # The engine container of a pool pod, whichever engine (kube-state-metrics series).
    pod = f'container=~"{"|".join(sorted({r.container for r in ENGINE_RENDER.values()}))}"'
    alerts = [
        _alert(
            "TGIPoolP95AboveSLO",
            f"{p95} > {ON_POOL} {SLO_GAUGE}",
            alert_for,
            "warning",
            "Pool {{ $labels.namespace }}/{{ $labels.pool }}: p95 latency above its SLO",
            "Tighten max_total_tokens, split short and long requests, or add short replicas.",
        ),
        _alert(
            "TGIPoolErrorRateHigh",
            f"{errors} > 0.05",
            alert_for,
            "warning",
            "Pool {{ $labels.namespace }}/{{ $labels.pool }}: more than 5% of requests fail",
            "Failed requests (the engine's failure counter: tgipool.monitoring.engine_metrics) are above "
            "5% of all requests over the rate window.",
        ),
        _alert(
            "TGIPoolQueueGrowing",
            f"{queue} > 0 and deriv({queue}[{alert_for}]) > 0",
            alert_for,
            "warning",
            "Pool {{ $labels.namespace }}/{{ $labels.pool }}: the queue keeps growing",
            "Requests wait and the queue grows: the pool cannot keep up.",
        ),
        _alert(
            "TGIPoolAtMaxReplicasSLOFailing",
            f"({REPLICAS_GAUGE} >= {ON_POOL} {MAX_REPLICAS_GAUGE}) and {ON_POOL} "
            f"({p95} > {ON_POOL} {SLO_GAUGE})",
            alert_for,
            "critical",
            "Pool {{ $labels.namespace }}/{{ $labels.pool }}: at replicas.max and still missing its SLO",
            "The HPA cannot add replicas: raise replicas.max, add GPUs, or shed load to a fallback pool.",
        ),
        _alert(
            "TGIPoolPodRestarting",
            f"increase(kube_pod_container_status_restarts_total{{{pod}}}[15m]) > 2",
            "0m",
            "warning",
            "Inference server pod {{ $labels.namespace }}/{{ $labels.pod }} restarts",
            "More than 2 restarts in 15 minutes: see `kubectl describe pod`.",
        ),
        _alert(
            "TGIPoolPodOOMKilled",
            f'kube_pod_container_status_last_terminated_reason{{{pod}, reason="OOMKilled"}} == 1',
            "0m",
            "critical",
            "Inference server pod {{ $labels.namespace }}/{{ $labels.pod }} was OOMKilled",
            "Lower the length limits or max_batch_prefill_tokens, quantize, or add shards.",
        ),
        _alert(
            "TGIPoolColdStartSlow",
            f"histogram_quantile(0.95, sum by (pool, le) (rate({COLD_START}_bucket[30m]))) "
            f"> {COLD_START_LIMIT_SECONDS}",
            "0m",
            "warning",
            "Pool {{ $labels.pool }}: cold starts take over 10 minutes",
            "p95 of the gateway's wait for a waking pool is over 10 minutes. Keep the model warm or "
            "hot, or put the weight cache on local NVMe.",
        ),
        _alert(
            "TGIPoolGateway5xx",
            'sum by (namespace) (rate(tgipool_gateway_requests_total{code=~"5.."}[5m])) '
            "/ sum by (namespace) (rate(tgipool_gateway_requests_total[5m])) > 0.01",
            alert_for,
            "critical",
            "Gateway in {{ $labels.namespace }} answers more than 1% of requests with 5xx",
            "More than 1% of the gateway's answers are 5xx over 5 minutes.",
        ),
    ]
    return {
        "groups": [
            {"name": "tgipool.records", "rules": records},
            {"name": ALERTS_GROUP, "rules": alerts},
        ]
    }


def _names_regex(names_: list[str]) -> str:
    return "|".join(names_)


def adapter_rules(window: str = "2m") -> list[dict[str, Any]]:
    """prometheus-adapter `rules`: the metric names the pools' HPAs ask for.

    One queue rule per engine, named as `engine_metrics.hpa_queue_metric` says (every name the
    engine's queue gauge had, served under the current one); one p95 rule over every engine's
    end-to-end histogram (a pool's Service has one engine's series).
    """
    rules: list[dict[str, Any]] = []
    for engine in ENGINES:
        queue = [m.name for m in names(engine, "queue")]
        labels = f'namespace!="",pod!="",{POOL_SERIES}'
        if len(queue) == 1:  # one name: the plain form (TGI's rule as it always was)
            series, matches = f"{queue[0]}{{{labels}}}", f"^{queue[0]}$"
        else:
            series = f'{{__name__=~"^({_names_regex(queue)})$",{labels}}}'
            matches = f"^({_names_regex(queue)})$"
        rules.append(
            {
                "seriesQuery": series,
                "resources": {
                    "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
                },
                "name": {"matches": matches, "as": hpa_queue_metric(engine)},
                "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
            }
        )
    buckets = _names_regex([f"{m.name}_bucket" for e in ENGINES for m in names(e, "e2e")])
    rules.append(
        {
            # `service` is the pool's Service: the scrape config copies the pool label into it.
            "seriesQuery": f'{{__name__=~"^({buckets})$",namespace!="",service!=""}}',
            "resources": {
                "overrides": {"namespace": {"resource": "namespace"}, "service": {"resource": "service"}}
            },
            "name": {"matches": f"^({buckets})$", "as": P95_METRIC},
            # Every engine's buckets by name, not `<<.Series>>`: the adapter keeps one series name per
            # metric, and the p95 of a pool must read whichever engine it runs.
            "metricsQuery": quantile_ms(
                0.95,
                window,
                by="<<.GroupBy>>",
                series=f'{{__name__=~"{buckets}",<<.LabelMatchers>>}}',
            ),
        }
    )
    return rules


def adapter_chart_values(window: str = "2m") -> dict[str, Any]:
    """Values for the prometheus-community/prometheus-adapter chart (kube-prometheus-stack users)."""
    return {"rules": {"default": False, "custom": adapter_rules(window)}}
