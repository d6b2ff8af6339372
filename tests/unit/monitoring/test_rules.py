"""Rules, adapter rules and scrape config: the names the HPAs, the status and the dashboard rely on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tgipool.desired.autoscaling import P95_METRIC
from tgipool.monitoring.cli import render_local
from tgipool.monitoring.engine_metrics import hpa_queue_metric
from tgipool.monitoring.promql import pool_queries
from tgipool.monitoring.rules import RECORDS, adapter_rules, rule_groups
from tgipool.monitoring.scrape import pod_relabel_configs

ROOT = Path(__file__).resolve().parents[3]


def test_adapter_serves_exactly_the_hpa_metric_names() -> None:
    queues = [hpa_queue_metric(e) for e in ("tgi", "vllm", "sglang")]
    assert [r["name"]["as"] for r in adapter_rules()] == [*queues, P95_METRIC]
    assert queues == ["tgi_queue_size", "vllm_num_requests_waiting", "sglang_num_queue_reqs"]
    p95 = adapter_rules("45s")[-1]
    assert "histogram_quantile(0.95" in p95["metricsQuery"] and "[45s]" in p95["metricsQuery"]
    assert p95["resources"]["overrides"]["service"] == {"resource": "service"}


def test_records_are_the_operator_queries() -> None:
    records = {r["record"]: r["expr"] for r in rule_groups("2m")["groups"][0]["rules"]}
    for q in pool_queries("2m"):
        assert records[RECORDS[q.field]] == q.expr


def test_scrape_config_labels_pool_and_service_from_the_pool_label() -> None:
    targets = {c.get("target_label"): c for c in pod_relabel_configs()}
    assert targets["pool"]["source_labels"] == ["__meta_kubernetes_pod_label_tgipool_io_pool"]
    assert targets["service"]["source_labels"] == targets["pool"]["source_labels"]


def test_chart_podmonitor_labels_series_like_the_local_scrape() -> None:
    text = (ROOT / "charts/tgi-pool/templates/podmonitor.yaml").read_text()
    for label in ("pool", "service"):
        assert (
            f"sourceLabels: [__meta_kubernetes_pod_label_tgipool_io_pool]\n      targetLabel: {label}" in text
        )


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is not on PATH: run `make tools` and put `make print-bin` first on PATH"
    return path


def test_local_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    _config, rules, adapter = render_local(tmp_path, "/dev/null", "30s", "5s", "1m")
    out = subprocess.run(
        [_promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert yaml.safe_load(adapter.read_text())["rules"] == adapter_rules("30s")


@pytest.mark.parametrize("case", sorted((ROOT / "tests/promtool").glob("*_test.yaml")), ids=lambda p: p.name)
def test_alert_rules_with_promtool(case: Path) -> None:
    """`promtool test rules`: each alert fires on the series it is meant for, and stays quiet otherwise."""
    out = subprocess.run(
        [_promtool(), "test", "rules", case.name],
        cwd=case.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
