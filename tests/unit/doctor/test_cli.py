"""The thin readers around the pure parts: `tgipool doctor` and `tgipool check` against an in-memory cluster,
the metrics loop's question to Prometheus about its rules, and the gateways a pool's snapshot finds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tgipool import cli
from tgipool.doctor import cli as doctor_cli
from tgipool.handlers.indexes import CHILD_KINDS, pack, snapshot
from tgipool.k8s.client import ApplyError
from tgipool.monitoring.reader import PrometheusReader

from .test_findings import POOL, event, pending_pod, pod, pool_doc


class FakeKube:
    def __init__(
        self, pools: list[dict[str, Any]], pods: list[dict[str, Any]], events: list[dict[str, Any]]
    ) -> None:
        self.pools, self.pods, self.events = pools, pods, events
        self.calls: list[tuple[str, str | None]] = []

    def list(
        self, api_version: str, kind: str, selector: str | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        self.calls.append((kind, namespace))
        if kind == "Node":
            raise ApplyError("Node", "", 403, "Forbidden", "nodes is forbidden")
        return {"ModelPool": self.pools, "Pod": self.pods, "Event": self.events}[kind]

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        for p in self.pools:
            if p["metadata"]["name"] == name:
                return p
        raise ApplyError(kind, name, 404, "NotFound", "not found")


def run(monkeypatch: pytest.MonkeyPatch, kube: FakeKube, argv: list[str]) -> int:
    monkeypatch.setattr(doctor_cli, "_kube", lambda: kube)
    return cli.main(argv)


def test_doctor_prints_each_pools_findings_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    msg = "0/6 nodes are available: 6 Insufficient nvidia.com/gpu."
    other = pod(name="x-0")
    other["metadata"]["labels"]["tgipool.io/pool"] = "other"
    events = [
        event("FailedScheduling", "Pod", "p-0", msg),
        event("FailedScheduling", "Pod", "x-0", "not ours"),
    ]
    kube = FakeKube([pool_doc()], [pending_pod(msg), other], events)
    assert run(monkeypatch, kube, ["doctor", "-n", "ml"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"ml/{POOL}: Ready\n  ✗ CRITICAL Unschedulable: pods cannot be scheduled: {msg}")
    assert "evidence: event FailedScheduling on Pod/p-0" in out and "not ours" not in out
    # One LIST per kind and namespace; nodes unreadable (403) and the finding still made.
    assert kube.calls == [("ModelPool", "ml"), ("Pod", "ml"), ("Event", "ml"), ("Node", None)]

    assert run(monkeypatch, kube, ["doctor", POOL, "-n", "ml", "--json"]) == 1
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["pool"] == POOL and doc["findings"][0]["code"] == "Unschedulable"


def test_doctor_healthy_missing_and_not_ready_after(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kube = FakeKube([pool_doc()], [pod()], [])
    assert run(monkeypatch, kube, ["doctor", POOL, "-n", "ml"]) == 0
    assert capsys.readouterr().out == f"ml/{POOL}: Ready\n  no problem found\n"
    assert run(monkeypatch, kube, ["doctor", "nope", "-n", "ml"]) == 2
    assert "ModelPool nope not found in namespace ml" in capsys.readouterr().err
    stuck = FakeKube([pool_doc()], [pod(started_ago=1e9, ready=False)], [])
    assert run(monkeypatch, stuck, ["doctor", "-n", "ml", "--not-ready-after", "5"]) == 1
    assert "NeverReady" in capsys.readouterr().out


def test_check_prints_status_checklist(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = pool_doc()
    doc["status"]["conditions"].append(
        {"type": "ProductionReady", "status": "False", "reason": "ChecklistIncomplete"}
    )
    doc["status"]["checklist"] = [
        {"item": "SLO set", "ok": True, "detail": "spec.slo.p95LatencyMs 3000 ms"},
        {"item": "limits set", "ok": False, "detail": "spec.limits.maxTotalTokens is unset"},
    ]
    kube = FakeKube([doc], [], [])
    assert run(monkeypatch, kube, ["check", "-n", "ml"]) == 1
    assert capsys.readouterr().out == (
        f"ml/{POOL}: ProductionReady False\n"
        "  [x] SLO set: spec.slo.p95LatencyMs 3000 ms\n"
        "  [ ] limits set: spec.limits.maxTotalTokens is unset\n"
    )
    assert run(monkeypatch, kube, ["check", POOL, "-n", "ml", "--json"]) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert row["productionReady"] == "False" and row["checklist"] == doc["status"]["checklist"]
    doc["status"]["conditions"][-1]["status"] = "True"
    assert run(monkeypatch, kube, ["check", "-n", "ml"]) == 0
    capsys.readouterr()
    assert run(monkeypatch, FakeKube([], [], []), ["check", "-n", "ml"]) == 0
    assert capsys.readouterr().out == "no ModelPool found\n"
    doc["status"].pop("checklist")
    assert run(monkeypatch, kube, ["check", "-n", "ml"]) == 2
    assert "no checklist in its status yet" in capsys.readouterr().out


class FakeResponse:
    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body

    def raise_for_status(self) -> None:
        if self.status >= 400:
            raise RuntimeError(f"HTTP {self.status}")

    def json(self) -> Any:
        return self.body


def test_reader_asks_prometheus_for_its_rule_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = PrometheusReader("http://prom:9090/")
    asked: list[tuple[str, Any]] = []

    def get(url: str, params: Any = None, timeout: float = 0) -> FakeResponse:
        asked.append((url, params))
        return FakeResponse(200, {"data": {"groups": [{"name": "tgipool.alerts", "rules": []}]}})

    monkeypatch.setattr(reader._prom._session, "get", get)
    assert reader.rule_groups() == frozenset({"tgipool.alerts"})
    assert asked == [("http://prom:9090/api/v1/rules", {"type": "alert"})]
    monkeypatch.setattr(reader._prom._session, "get", lambda *a, **k: FakeResponse(503, {}))
    assert reader.rule_groups() is None


def test_snapshot_finds_the_gateways_that_route_the_pool() -> None:
    def meta(name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "ml", "labels": labels}}

    gw = {**meta("main", {}), "spec": {"poolSelector": {"matchLabels": {"tgipool.io/gateway": "main"}}}}
    kwargs: dict[str, Any] = {f"{plural}_index": {} for _, _, plural, _ in CHILD_KINDS}
    kwargs["pods_index"] = {}
    routed, alone = meta("a", {"tgipool.io/gateway": "main"}), meta("b", {})
    pools = {("ml", "a"): routed, ("ml", "b"): alone, ("other", "c"): meta("c", {})}
    kwargs["pool_index"] = {key: [pack(body)] for key, body in pools.items()}
    kwargs["pool_names"] = {"ml": ["a", "b"], "other": ["c"]}
    kwargs["gateway_index"] = {"ml": [pack(gw)]}
    assert snapshot(kwargs, ("ml", "a")).routed_by == {"main": frozenset({"a"})}
    assert snapshot(kwargs, ("ml", "b")).routed_by == {}
