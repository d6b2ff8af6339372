"""Scrape configuration for a Prometheus that discovers the pool and gateway pods itself.

The chart's PodMonitor does the same for the Prometheus Operator; both keep the pods of tgipool's
inference servers and gateways and give their series `namespace`, `pod`, `pool` and `service`.
"""

from __future__ import annotations

from typing import Any

from tgipool.desired import names

COMPONENTS = f"{names.SERVER}|gateway"


def _label(name: str) -> str:
    return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in name)


def pod_relabel_configs() -> list[dict[str, Any]]:
    """Keep the metrics port of tgipool's pods; label the series the way the adapter and rules expect."""
    pool = _label(names.POOL_LABEL)
    return [
        {
            "source_labels": [_label("app.kubernetes.io/managed-by")],
            "regex": names.MANAGED_BY,
            "action": "keep",
        },
        {"source_labels": [_label(names.COMPONENT_LABEL)], "regex": COMPONENTS, "action": "keep"},
        # TGI serves /metrics on its `http` port; a gateway on `metrics` (no tenant key needed there).
        {
            "source_labels": [_label(names.COMPONENT_LABEL), "__meta_kubernetes_pod_container_port_name"],
            "regex": f"{names.SERVER};http|gateway;metrics",
            "action": "keep",
        },
        {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": [pool], "target_label": "pool"},
        # The pool's Service has the pool's name: the adapter maps p95 onto it.
        {"source_labels": [pool], "target_label": "service"},
    ]


def prometheus_config(
    kubeconfig: str, rule_files: list[str], file_sd: str, interval: str = "5s"
) -> dict[str, Any]:
    """A whole prometheus.yml: pods by Kubernetes discovery, local processes from `file_sd` files."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": rule_files,
        "scrape_configs": [
            {
                "job_name": "tgipool-pods",
                "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": kubeconfig}],
                "relabel_configs": pod_relabel_configs(),
            },
            {
                # The operator and gateways run as plain processes on the simulated cluster.
                "job_name": "tgipool-processes",
                "file_sd_configs": [{"files": [file_sd], "refresh_interval": "5s"}],
            },
        ],
    }
