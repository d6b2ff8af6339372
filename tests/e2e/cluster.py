"""Helpers for e2e tests: kubectl, waits, the operator as a real process, API server write counts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def kubectl_bin() -> str:
    return os.environ.get("KUBECTL", "kubectl")


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
    proc = subprocess.run(
        [kubectl_bin(), *args], input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout if check else proc.stdout + proc.stderr


def apply(doc: dict[str, Any] | str, check: bool = True) -> subprocess.CompletedProcess[str]:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    proc = subprocess.run(
        [kubectl_bin(), "apply", "--server-side", "--field-manager=e2e", "-f", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"apply failed: {proc.stderr}")
    return proc


def get(kind: str, name: str, ns: str | None = None, check: bool = True) -> dict[str, Any] | None:
    args = ["get", kind, name, "-o", "json"] + (["-n", ns] if ns else [])
    proc = subprocess.run([kubectl_bin(), *args], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr or not check:
            return None
        raise AssertionError(proc.stderr)
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def items(kind: str, ns: str, selector: str | None = None) -> list[dict[str, Any]]:
    args = ["get", kind, "-n", ns, "-o", "json"] + (["-l", selector] if selector else [])
    out: list[dict[str, Any]] = json.loads(kubectl(*args))["items"]
    return out


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 120, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except AssertionError as e:
            last = e
        if last and not isinstance(last, AssertionError):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}")


def condition(pool: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((pool or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return {}


def add_node(name: str, gpus: int, product: str) -> None:
    text = Template((ROOT / "tools/nodes/node.yaml.tmpl").read_text()).substitute(
        NAME=name,
        GPU_COUNT=gpus,
        GPU_PRODUCT=product,
        GPU_MEMORY=23034,
        INSTANCE_TYPE="sim",
        CPU=96,
        MEMORY="384Gi",
    )
    kubectl("apply", "-f", "-", input=text)


WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION", "CREATE", "UPDATE"}
OPERATOR_RESOURCES = {
    "modelpools",
    "deployments",
    "services",
    "persistentvolumeclaims",
    "jobs",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
}
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def write_requests() -> dict[str, float]:
    """Write requests the API server has served, by resource[/subresource], from its own metrics.

    Subresources other than a pool's status are left out: controllers (HPA, Deployment, Job)
    write those all the time, the operator never does.
    """
    counts: dict[str, float] = {}
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels")))
        if labels.get("verb") not in WRITE_VERBS or labels.get("resource") not in OPERATOR_RESOURCES:
            continue
        sub = labels.get("subresource", "")
        if sub and not (labels["resource"] == "modelpools" and sub == "status"):
            continue
        key = labels["resource"] + (f"/{sub}" if sub else "")
        counts[key] = counts.get(key, 0.0) + float(m.group("value"))
    return counts


class Operator:
    """`tgipool run` as a real process, with its log captured to a file."""

    def __init__(self, log_dir: Path, args: list[str] | None = None) -> None:
        self.log_dir = log_dir
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_dir / "operator-0.log"
        self.starts = 0

    def start(self) -> None:
        self.log_path = self.log_dir / f"operator-{self.starts}.log"
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tgipool.cli", "run", "--verbose", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def wait_log(self, pattern: str, timeout: float = 60) -> None:
        wait_for(f"operator log /{pattern}/", lambda: re.search(pattern, self.log()), timeout=timeout)
