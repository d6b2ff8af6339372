"""The simulated cluster's volume provisioner: one kubectl call per poll for all the PVs it makes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import sim_provisioner as prov  # noqa: E402  (a script in tools/, not a package)


def claim(name: str, phase: str = "Pending", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ml", "name": name, "uid": f"uid-{name}"},
        "spec": {
            "storageClassName": prov.STORAGE_CLASS,
            "resources": {"requests": {"storage": "5Gi"}},
            **spec,
        },
        "status": {"phase": phase},
    }


class FakeKubectl(prov.Kube):
    """Answers the two raw LISTs from memory and records every other kubectl call."""

    def __init__(self, pvcs: list[dict[str, Any]], pvs: list[dict[str, Any]], refuse: str = "") -> None:
        super().__init__("kubectl", "kubeconfig")
        self.lists = {"/api/v1/persistentvolumeclaims": pvcs, "/api/v1/persistentvolumes": pvs}
        self.calls: list[tuple[list[str], Any]] = []
        self.refuse = refuse

    def run(self, args: list[str], stdin: str | None = None) -> str:
        if args[:2] == ["get", "--raw"]:
            return json.dumps({"kind": "List", "items": self.lists[args[2]]})
        self.calls.append((args, json.loads(stdin) if stdin else None))
        if self.refuse:
            raise prov.KubectlError(self.refuse)
        return ""


def test_every_missing_pv_is_made_in_one_call(tmp_path: Path) -> None:
    bound = claim("bound", phase="Bound", volumeName="pvc-uid-bound")
    racing = claim("racing")  # its PV exists: the PV controller binds the pair
    pvs = [prov.build_pv(racing, tmp_path)]
    kube = FakeKubectl([claim("a"), claim("b"), bound, racing, claim("other", storageClassName="fast")], pvs)
    prov.reconcile(kube, tmp_path)
    assert len(kube.calls) == 1
    args, doc = kube.calls[0]
    assert args == ["create", "-f", "-"] and doc["kind"] == "List"
    assert [pv["spec"]["claimRef"]["name"] for pv in doc["items"]] == ["a", "b"]
    assert all((tmp_path / f"ml-{n}").is_dir() for n in ("a", "b"))


def test_a_pv_made_meanwhile_is_no_error_but_a_refusal_is(tmp_path: Path) -> None:
    exists = 'Error from server (AlreadyExists): persistentvolumes "pvc-uid-a" already exists'
    prov.reconcile(FakeKubectl([claim("a"), claim("b")], [], refuse=exists), tmp_path)
    forbidden = 'Error from server (Forbidden): persistentvolumes "pvc-uid-b" is forbidden'
    with pytest.raises(prov.KubectlError, match="Forbidden"):
        prov.reconcile(FakeKubectl([claim("a"), claim("b")], [], refuse=f"{exists}\n{forbidden}"), tmp_path)


def test_released_pvs_go_in_one_call_with_their_directories(tmp_path: Path) -> None:
    pvs = []
    for name, phase in (("a", "Released"), ("b", "Failed"), ("c", "Bound")):
        pv = prov.build_pv(claim(name), tmp_path)
        pv["status"] = {"phase": phase}
        Path(pv["spec"]["hostPath"]["path"]).mkdir(parents=True)
        pvs.append(pv)
    kube = FakeKubectl([], pvs)
    prov.reconcile(kube, tmp_path)
    assert kube.calls == [
        (["delete", "pv", "pvc-uid-a", "pvc-uid-b", "--wait=false", "--ignore-not-found"], None)
    ]
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["ml-c"]
