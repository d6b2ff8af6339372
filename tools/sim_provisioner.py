#!/usr/bin/env python3
"""Tiny dynamic volume provisioner for the simulated (KWOK) cluster.

There is no kubelet and no CSI driver on the simulated cluster, so nothing would ever
provision a PersistentVolume. This loop plays the external provisioner for the storage
class ``tgipool-sim`` (provisioner ``tgipool.io/sim``):

* every Pending PVC of that class (storageClassName unset is assigned the default class
  by kube-controller-manager, then picked up here) with no volume yet gets a PV with the
  requested capacity, access modes and volume mode, a ``hostPath`` under
  ``<volumes-dir>/<namespace>-<pvc>`` and a ``claimRef`` (namespace, name, uid) so the PV
  controller binds the pair;
* every PV of that class in phase Released or Failed is deleted (reclaimPolicy Delete),
  together with its directory.

Standard library only; talks to the API server through ``kubectl``: per poll, two raw LISTs
(``kubectl get --raw``: kubectl passes the API server's JSON through instead of decoding and
printing thousands of objects), then at most one ``kubectl create`` for every PV to make and one
``kubectl delete`` for every PV to remove. (With a kubectl process per PV, the 500-pool operator
bench's floor converged in 203 s; with one call per poll, in 162 s: one run each.) Transient API
errors are logged and retried on the next poll. It exits by itself when the kubeconfig file
disappears (the cluster was torn down), on SIGTERM/SIGINT, or after --max-errors consecutive
failures if that is set.

Usage: sim_provisioner.py --kubeconfig .cluster/kubeconfig [--kubectl PATH]
       [--volumes-dir .cluster/volumes] [--interval 1] [--once]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STORAGE_CLASS = "tgipool-sim"
PROVISIONER = "tgipool.io/sim"

_stop = {"requested": False}


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} sim-provisioner: {msg}", flush=True)


class KubectlError(RuntimeError):
    pass


class Kube:
    def __init__(self, kubectl: str, kubeconfig: str, timeout: float = 15.0) -> None:
        self.kubectl = kubectl
        self.kubeconfig = kubeconfig
        self.timeout = timeout

    def run(self, args: list[str], stdin: str | None = None) -> str:
        cmd = [
            self.kubectl,
            "--kubeconfig",
            self.kubeconfig,
            f"--request-timeout={int(self.timeout)}s",
            *args,
        ]
        try:
            p = subprocess.run(
                cmd, input=stdin, capture_output=True, text=True, timeout=self.timeout + 5, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise KubectlError(f"timeout: {' '.join(args)}") from e
        if p.returncode != 0:
            raise KubectlError(p.stderr.strip() or f"exit {p.returncode}: {' '.join(args)}")
        return str(p.stdout)

    def items(self, path: str) -> list[dict[str, Any]]:
        """The items of a LIST, as the API server sends them."""
        items: list[dict[str, Any]] = json.loads(self.run(["get", "--raw", path])).get("items") or []
        return items


def pv_name(pvc: dict[str, Any]) -> str:
    return "pvc-" + str(pvc["metadata"]["uid"])


def volume_dir(volumes_dir: Path, ns: str, name: str) -> Path:
    return volumes_dir / f"{ns}-{name}"


def wants_volume(pvc: dict[str, Any]) -> bool:
    spec, status = pvc.get("spec", {}), pvc.get("status", {})
    if pvc["metadata"].get("deletionTimestamp"):
        return False
    if status.get("phase", "Pending") != "Pending" or spec.get("volumeName"):
        return False
    # An unset class gets the default class (tgipool-sim) from kube-controller-manager's
    # retroactive default assignment; "" explicitly means "no dynamic provisioning".
    return bool(spec.get("storageClassName") == STORAGE_CLASS)


def build_pv(pvc: dict[str, Any], volumes_dir: Path) -> dict[str, Any]:
    meta, spec = pvc["metadata"], pvc["spec"]
    ns, name = meta["namespace"], meta["name"]
    storage = spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")
    pv_spec: dict[str, Any] = {
        "capacity": {"storage": storage},
        "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Delete",
        "storageClassName": STORAGE_CLASS,
        "volumeMode": spec.get("volumeMode", "Filesystem"),
        "hostPath": {"path": str(volume_dir(volumes_dir, ns, name)), "type": "DirectoryOrCreate"},
        "claimRef": {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": ns,
            "name": name,
            "uid": meta["uid"],
        },
    }
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name(pvc),
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            "labels": {"tgipool.io/sim-volume": "true"},
        },
        "spec": pv_spec,
    }


def reconcile(kube: Kube, volumes_dir: Path) -> None:
    pvcs = kube.items("/api/v1/persistentvolumeclaims")
    pvs = kube.items("/api/v1/persistentvolumes")
    claimed = {(pv["spec"].get("claimRef") or {}).get("uid") for pv in pvs}
    existing = {pv["metadata"]["name"] for pv in pvs}

    wanted = [
        build_pv(pvc, volumes_dir)
        for pvc in pvcs
        if wants_volume(pvc) and pvc["metadata"]["uid"] not in claimed and pv_name(pvc) not in existing
    ]
    if wanted:
        for pv in wanted:
            Path(pv["spec"]["hostPath"]["path"]).mkdir(parents=True, exist_ok=True)
        create(kube, wanted)

    released = [
        pv
        for pv in pvs
        if pv.get("spec", {}).get("storageClassName") == STORAGE_CLASS
        and pv.get("status", {}).get("phase") in ("Released", "Failed")
        and not pv["metadata"].get("deletionTimestamp")
    ]
    if not released:
        return
    names = [pv["metadata"]["name"] for pv in released]
    try:
        kube.run(["delete", "pv", *names, "--wait=false", "--ignore-not-found"])
    except KubectlError as e:
        log(f"deleting {len(names)} PV(s) failed (will retry): {e}")
        return
    for pv in released:
        path = (pv["spec"].get("hostPath") or {}).get("path", "")
        if path and Path(path).resolve().is_relative_to(volumes_dir.resolve()):
            shutil.rmtree(path, ignore_errors=True)
        log(f"deleted {pv['status']['phase']} PV {pv['metadata']['name']}")


def create(kube: Kube, pvs: list[dict[str, Any]]) -> None:
    """Every PV in one kubectl call; one that exists already (a poll that raced ours) is no error."""
    try:
        kube.run(["create", "-f", "-"], stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": pvs}))
    except KubectlError as e:
        refused = [line for line in str(e).splitlines() if line.strip() and "AlreadyExists" not in line]
        if refused:
            raise KubectlError("\n".join(refused)) from e
    for pv in pvs:
        claim = pv["spec"]["claimRef"]
        log(
            f"created PV {pv['metadata']['name']} ({pv['spec']['capacity']['storage']}) "
            f"for PVC {claim['namespace']}/{claim['name']}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument(
        "--volumes-dir", default=None, help="root of the hostPath dirs (default: <kubeconfig dir>/volumes)"
    )
    ap.add_argument("--interval", type=float, default=1.0, help="poll period in seconds")
    ap.add_argument("--once", action="store_true", help="reconcile once and exit")
    ap.add_argument(
        "--max-errors", type=int, default=0, help="exit after this many consecutive failed polls (0 = never)"
    )
    args = ap.parse_args()

    kubeconfig = Path(args.kubeconfig).absolute()
    volumes_dir = Path(args.volumes_dir or kubeconfig.parent / "volumes").absolute()
    volumes_dir.mkdir(parents=True, exist_ok=True)
    kube = Kube(args.kubectl, str(kubeconfig))

    def on_signal(_signum: int, _frame: Any) -> None:
        _stop["requested"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log(f"started pid={os.getpid()} class={STORAGE_CLASS} volumes={volumes_dir}")
    errors = 0
    last_err = ""
    while not _stop["requested"]:
        if not kubeconfig.exists():
            log(f"{kubeconfig} is gone; cluster torn down, exiting")
            return 0
        try:
            reconcile(kube, volumes_dir)
            if errors:
                log(f"recovered after {errors} failed poll(s)")
            errors, last_err = 0, ""
        except (KubectlError, json.JSONDecodeError, KeyError, OSError) as e:
            errors += 1
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if msg != last_err or errors % 30 == 1:  # don't flood the log
                log(f"poll failed ({errors}x): {msg}")
            last_err = msg
            if args.max_errors and errors >= args.max_errors:
                log("too many consecutive errors, exiting")
                return 1
        if args.once:
            return 0 if errors == 0 else 1
        deadline = time.monotonic() + args.interval
        while not _stop["requested"] and time.monotonic() < deadline:
            time.sleep(min(0.2, args.interval))
    log("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
