"""e2e fixtures: a real API server from KUBECONFIG (the local sim or any test cluster), the CRDs,
the operator as a process, and one namespace per test."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .cluster import ROOT, Operator, apply, kubectl, kubectl_bin

COMMIT = "5f0b02c75b57c5855da9ae460ce51323ea669d8a"  # prod pools pin a commit (spec.environment)
TEST_CONTEXT_HINTS = ("kwok", "kind", "e2e", "test", "minikube", "docker-desktop", "tgipool")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def cluster() -> None:
    """Refuses to run against a cluster that does not look like a test cluster."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        pytest.exit("e2e tests need KUBECONFIG (make e2e brings up the local cluster)", returncode=2)
    context = subprocess.run(
        [kubectl_bin(), "config", "current-context"], capture_output=True, text=True, check=False
    ).stdout.strip()
    local = Path(kubeconfig).resolve() == (ROOT / ".cluster/kubeconfig").resolve()
    if not (local or any(h in context for h in TEST_CONTEXT_HINTS) or os.environ.get("TGIPOOL_E2E_ALLOW")):
        pytest.exit(
            f"refusing to run e2e tests against context {context!r}: it does not look like a test cluster "
            f"(expected one of {TEST_CONTEXT_HINTS}, or set TGIPOOL_E2E_ALLOW=1)",
            returncode=2,
        )


@pytest.fixture(scope="session")
def crds() -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/modelpools.tgipool.io", "--timeout=60s")


@pytest.fixture(scope="session")
def operator(crds: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    # On the local cluster the operator reads its Prometheus (short window and rounds: fast tests).
    url = ROOT / ".cluster/prometheus-url"
    args = ["--prometheus-url", url.read_text().strip(), "--metrics-window", "30s", "--metrics-interval", "3"]
    op = Operator(tmp_path_factory.mktemp("operator"), args if url.exists() else [])
    op.start()
    op.wait_log(r"Starting|started|Resuming|watching", timeout=60)
    yield op
    op.stop()


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def pool_doc(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    """A small valid pool; keyword arguments replace top-level spec fields."""
    base: dict[str, Any] = {
        "model": {"id": "meta-llama/Meta-Llama-3-8B-Instruct", "revision": COMMIT, "servedName": "llama3"},
        "engine": {"numShard": 1, "dtype": "bfloat16"},
        "profile": "short",
        "gpu": {"product": "NVIDIA-H100-80GB-HBM3"},
        "replicas": {"min": 1, "max": 2},
        "cache": {"size": "20Gi"},
    }
    base.update(spec)
    return {
        "apiVersion": "tgipool.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": name, "namespace": ns},
        "spec": base,
    }


def apply_pool(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    doc = pool_doc(name, ns, **spec)
    apply(yaml.safe_dump(doc))
    return doc
