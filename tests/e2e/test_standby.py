"""Two operator replicas with the chart's kopf peering: one active, one standby that takes over."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .cluster import ROOT, Operator, kubectl
from .conftest import apply_pool
from .test_reconcile import wait_ready

PEERING = "standby-test"


@pytest.fixture
def alone(request: pytest.FixtureRequest, crds: None) -> Iterator[None]:
    """The suite's standalone operator would reconcile everything itself: stop it meanwhile."""
    shared: Operator = request.getfixturevalue("operator")
    shared.stop()
    yield
    shared.start()
    shared.wait_log(r"Starting|started|Resuming|watching", timeout=60)


def chart_peering() -> str:
    """The chart's own peering manifests (kopf's CRDs and the ClusterKopfPeering), as helm renders them."""
    return subprocess.run(
        [
            "helm",
            "template",
            "t",
            str(ROOT / "charts/tgi-pool"),
            "--set",
            "replicas=2",
            "--set",
            f"peering.name={PEERING}",
            "--show-only",
            "templates/peering.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_standby_replica_takes_over(alone: None, ns: str, tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(chart_peering()) if d]
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(crds))
    kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all([d for d in docs if d not in crds]))
    replicas = []
    for name, priority in (("active", "20"), ("standby", "10")):
        (tmp_path / name).mkdir()
        replicas.append(Operator(tmp_path / name, ["--peering", PEERING, "--priority", priority]))
    active, standby = replicas
    active.start()
    try:
        active.wait_log(r"Resuming operations after the pause", timeout=60)
        # The standby starts paused (kopf holds every watch until it has read the peering object)
        # and, seeing a live peer of higher priority, stays paused.
        standby.start()
        standby.wait_log(r"watch-stream for clusterkopfpeerings", timeout=60)
        apply_pool("one", ns)
        wait_ready("one", ns)
        assert "Resuming operations" not in standby.log(), "the standby must stay paused"
        assert f"{ns}/one" not in standby.log(), "the standby must not touch pools while paused"
        active.stop(signal.SIGTERM)  # a graceful exit removes its peering record at once
        standby.wait_log(r"Resuming operations after the pause", timeout=90)
        apply_pool("two", ns)
        wait_ready("two", ns)
    finally:
        active.stop()
        standby.stop()
        kubectl("delete", "clusterkopfpeering", PEERING, "--ignore-not-found")
