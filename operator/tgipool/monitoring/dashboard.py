"""The Grafana dashboard of the pools: latency quantiles, throughput, queue, batch, errors, cost, replicas."""

from __future__ import annotations

from typing import Any

from tgipool.monitoring.rules import GPU_COST_GAUGE, MAX_REPLICAS_GAUGE, RECORDS, REPLICAS_GAUGE

POOL_FILTER = 'namespace=~"$namespace", pool=~"$pool"'
# Cost per 1M generated tokens: GPU-hours per second of the pool over its tokens per second.
COST_EXPR = (
    f"sum by (namespace, pool) ({GPU_COST_GAUGE}{{{POOL_FILTER}}}) / 3600 * 1e6 "
    f"/ ({RECORDS['tokensPerSecond']}{{{POOL_FILTER}}} > 0)"
)


def _panel(pid: int, title: str, unit: str, exprs: list[tuple[str, str]], x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


def _rec(field: str) -> str:
    return f"{RECORDS[field]}{{{POOL_FILTER}}}"


def dashboard() -> dict[str, Any]:
    legend = "{{namespace}}/{{pool}}"
    panels = [
        ("Latency p50 / p95 / p99", "ms", [(_rec(f"p{q}LatencyMs"), f"{legend} p{q}") for q in (50, 95, 99)]),
        ("Generated tokens per second", "short", [(_rec("tokensPerSecond"), legend)]),
        ("Queue (TGI)", "short", [(_rec("queueDepth"), legend)]),
        (
            "Batch size (TGI)",
            "short",
            [(f"sum by (namespace, pool) (tgi_batch_current_size{{{POOL_FILTER}}})", legend)],
        ),
        ("Error rate", "percentunit", [(_rec("errorRate"), legend)]),
        ("Cost per 1M generated tokens", "currencyUSD", [(COST_EXPR, legend)]),
        (
            "Replicas",
            "short",
            [
                (f"{REPLICAS_GAUGE}{{{POOL_FILTER}}}", f"{legend} replicas"),
                (f"{MAX_REPLICAS_GAUGE}{{{POOL_FILTER}}}", f"{legend} max"),
            ],
        ),
        (
            "Gateway time to first token p95",
            "s",
            [
                (
                    "histogram_quantile(0.95, sum by (pool, le) "
                    '(rate(tgipool_gateway_ttft_seconds_bucket{pool=~"$pool"}[5m])))',
                    "{{pool}}",
                )
            ],
        ),
    ]
    variable = {
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "includeAll": True,
        "multi": True,
        "refresh": 2,
    }
    return {
        "uid": "tgipool-pools",
        "title": "tgi-pool: pools",
        "tags": ["tgipool", "tgi"],
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {
                    **variable,
                    "name": "namespace",
                    "query": f"label_values({RECORDS['queueDepth']}, namespace)",
                },
                {**variable, "name": "pool", "query": f"label_values({RECORDS['queueDepth']}, pool)"},
            ]
        },
        "panels": [
            _panel(i + 1, title, unit, exprs, 12 * (i % 2), 8 * (i // 2))
            for i, (title, unit, exprs) in enumerate(panels)
        ],
    }
