"""Operator convergence and API writes, measured side by side in one run on a real API server.

Two operators reconcile the same N pools on the local simulated cluster (or $KUBECONFIG):
  - tgipool as shipped: a child is server-side applied only when it differs from the cache;
  - "always apply": the same code with the diff turned off (what many operators do: SSA every
    child on every reconcile; the API server then drops the no-op, but the request is still made).
For each: seconds until all N pools are Ready, write requests during convergence, and write
requests during a restart (every pool resumed, nothing changed). Writes are counted by the API
server itself (`apiserver_request_total`).

    make cluster-up && .venv/bin/python bench/operator_bench.py --pools 100
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from string import Template

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.e2e.cluster import kubectl, write_requests  # noqa: E402  (shared API-server helpers)

ALWAYS_APPLY = (
    "import tgipool.handlers.writer as r; r.needs_apply = lambda desired, observed: True; "
    "from tgipool.cli import main; main(['run'])"
)
SHIPPED = "from tgipool.cli import main; main(['run'])"


def nodes(count: int, prefix: str) -> None:
    tmpl = Template((ROOT / "tools/nodes/node.yaml.tmpl").read_text())
    docs = [
        tmpl.substitute(
            NAME=f"{prefix}-{i}",
            GPU_COUNT=8,
            GPU_PRODUCT="NVIDIA-H100-80GB-HBM3",
            GPU_MEMORY=81559,
            INSTANCE_TYPE="bench",
            CPU=96,
            MEMORY="1Ti",
        )
        for i in range(count)
    ]
    kubectl("apply", "-f", "-", input="\n---\n".join(docs))


def pools(ns: str, n: int) -> str:
    docs = []
    for i in range(n):
        docs.append(
            {
                "apiVersion": "tgipool.io/v1alpha1",
                "kind": "ModelPool",
                "metadata": {"name": f"p{i:04d}", "namespace": ns},
                "spec": {
                    "model": {"id": "org/m", "servedName": f"m{i}"},
                    "profile": "short",
                    "gpu": {"product": "NVIDIA-H100-80GB-HBM3"},
                    "replicas": {"min": 1, "max": 2},
                    "cache": {"size": "10Gi"},
                },
            }
        )
    return yaml.safe_dump_all(docs)


def ready_count(ns: str) -> int:
    out = kubectl(
        "get",
        "modelpools",
        "-n",
        ns,
        "-o",
        "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{'\\n'}{end}",
    )
    return out.split().count("True")


def total(counts: dict[str, float]) -> float:
    return sum(counts.values())


def run_variant(label: str, code: str, n: int, log_dir: Path) -> dict[str, float]:
    ns = f"bench-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", ns)
    log = (log_dir / f"{label}.log").open("wb")
    op = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        time.sleep(3)
        before = total(write_requests())
        t0 = time.monotonic()
        kubectl("apply", "--server-side", "-f", "-", input=pools(ns, n))
        while ready_count(ns) < n:
            if time.monotonic() - t0 > 600:
                raise SystemExit(f"{label}: not converged after 600 s")
            time.sleep(1)
        converge_s = time.monotonic() - t0
        time.sleep(5)
        converge_writes = total(write_requests()) - before
        op.terminate()
        op.wait(timeout=30)
        # Restart: every pool is resumed; nothing changed, so ideally nothing is written.
        before = total(write_requests())
        op = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        t1 = time.monotonic()
        time.sleep(20)
        resume_writes = total(write_requests()) - before
        return {
            "converge_s": converge_s,
            "converge_writes": converge_writes,
            "resume_writes": resume_writes,
            "resume_window_s": time.monotonic() - t1,
        }
    finally:
        op.terminate()
        op.wait(timeout=30)
        # Wait until the namespace is gone: its deletes must not count against the next variant.
        kubectl("delete", "namespace", ns, "--timeout=300s", timeout=320)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pools", type=int, default=100)
    args = ap.parse_args()
    os.environ.setdefault("KUBECONFIG", str(ROOT / ".cluster/kubeconfig"))
    log_dir = Path(tempfile.gettempdir()) / "tgipool-bench"
    log_dir.mkdir(exist_ok=True)
    prefix = f"bench-gpu-{uuid.uuid4().hex[:4]}"
    nodes(args.pools // 8 + 2, prefix)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    try:
        results = {}
        for label, code in (("shipped", SHIPPED), ("always-apply", ALWAYS_APPLY)):
            print(f"== {label}: {args.pools} pools ...", flush=True)
            results[label] = run_variant(label, code, args.pools, log_dir)
            print("   ", {k: round(v, 1) for k, v in results[label].items()}, flush=True)
    finally:
        kubectl("delete", "nodes", "-l", "node.kubernetes.io/instance-type=bench", "--wait=false")
    s, a = results["shipped"], results["always-apply"]
    print(f"\n{args.pools} pools, one run, same cluster (writes counted by the API server):")
    print(f"{'':22}{'shipped':>12}{'always-apply':>14}{'ratio':>8}")
    for key, name in (
        ("converge_s", "converge seconds"),
        ("converge_writes", "writes to converge"),
        ("resume_writes", "writes on restart"),
    ):
        ratio = s[key] / a[key] if a[key] else float("nan")
        print(f"{name:22}{s[key]:>12.1f}{a[key]:>14.1f}{ratio:>8.2f}")
    print(f"writes per pool to converge: {s['converge_writes'] / args.pools:.1f} (shipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
