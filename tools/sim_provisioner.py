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

Standard library only; talks to the API server through ``kubectl`` (one
``kubectl get pvc,pv -A -o json`` per poll). Transient API errors are logged and
retried on the next poll. It exits by itself when the kubeconfig file disappears
(the cluster was torn down), on SIGTERM/SIGINT, or after --max-errors consecutive
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

    def get_json(self, args: list[str]) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run([*args, "-o", "json"]))
        return data


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
    items = kube.get_json(["get", "pvc,pv", "--all-namespaces"]).get("items", [])
    pvcs = [i for i in items if i.get("kind") == "PersistentVolumeClaim"]
    pvs = [i for i in items if i.get("kind") == "PersistentVolume"]
    claimed = {(pv["spec"].get("claimRef") or {}).get("uid") for pv in pvs}
    existing = {pv["metadata"]["name"] for pv in pvs}

    for pvc in pvcs:
        if not wants_volume(pvc):
            continue
        meta = pvc["metadata"]
        if meta["uid"] in claimed or pv_name(pvc) in existing:
            continue  # PV exists; the PV controller binds it
        pv = build_pv(pvc, volumes_dir)
        Path(pv["spec"]["hostPath"]["path"]).mkdir(parents=True, exist_ok=True)
        try:
            kube.run(["create", "-f", "-"], stdin=json.dumps(pv))
            log(
                f"created PV {pv['metadata']['name']} ({pv['spec']['capacity']['storage']}) "
                f"for PVC {meta['namespace']}/{meta['name']}"
            )
        except KubectlError as e:
            if "AlreadyExists" not in str(e):
                raise

    for pv in pvs:
        spec = pv.get("spec", {})
        phase = pv.get("status", {}).get("phase")
        if spec.get("storageClassName") != STORAGE_CLASS or phase not in ("Released", "Failed"):
            continue
        if pv["metadata"].get("deletionTimestamp"):
            continue
        name = pv["metadata"]["name"]
        try:
            kube.run(["delete", "pv", name, "--wait=false", "--ignore-not-found"])
        except KubectlError as e:
            log(f"delete PV {name} failed (will retry): {e}")
            continue
        path = (spec.get("hostPath") or {}).get("path", "")
        if path and Path(path).resolve().is_relative_to(volumes_dir.resolve()):
            shutil.rmtree(path, ignore_errors=True)
        log(f"deleted {phase} PV {name}")


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
