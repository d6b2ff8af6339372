"""The operator's memory over the creation burst of N pools, for variants side by side on one cluster.

Each variant is an operator confined to a namespace of its own (`--namespace`), started fresh; the bench
applies N pools there, samples the operator's RSS until every pool has a status and 30 s more, then has
it write its heap dump (TGIPOOL_HEAPDUMP: resident pages by kind, pymalloc arenas, malloc, objects by
type). RSS after a burst stays: freed small objects leave pymalloc's arenas fragmented, so the burst's
peak live set is what the operator keeps. Then it restarts the operator with the pools in place (kopf
lists every pool and child at once and resumes each pool), samples its RSS until every pool is resumed
and 30 s more, and has it write a second heap dump: a restarted operator keeps that RSS from there on.

Variants: `current` (this checkout), `before=PATH` (the operator of another checkout, e.g. a worktree of
an older commit), `no-folders` (this checkout without its folder, which folds metrics rounds into the
pools: what it costs; not a configuration that serves).

Run against the local cluster (`make cluster-up`; the bulk nodes: `tools/cluster.sh nodes N`). The pools
stay in their namespaces: on a reused cluster the later variants share the API server with the earlier
variants' objects, so alternate the order when comparing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

from kube_api import Api, bounded  # noqa: E402
from operator_bench import log, pool_docs  # noqa: E402
from operator_watch import count_log, cpu_s, rss_mb  # noqa: E402
from tests.e2e.cluster import kubectl  # noqa: E402

NO_FOLDERS = (
    "import asyncio, tgipool.handlers.pool as p; p.fold_pools = lambda *a, **k: asyncio.Event().wait(); "
)
TIMEOUT = 600.0


async def dump_heap(op: subprocess.Popen[bytes], dump: Path) -> None:
    dump.unlink(missing_ok=True)
    op.send_signal(signal.SIGUSR1)
    for _ in range(120):  # the dump takes a moment at this size
        await asyncio.sleep(1)
        if dump.exists() and dump.stat().st_size:
            return


async def one(label: str, src: Path, prelude: str, n: int, out: Path) -> dict[str, float]:
    ns = f"mem-{label}-{int(time.time()) % 100000}"
    kubectl("create", "namespace", ns)
    dump = out / f"heap-{label}.txt"
    oplog = out / f"operator-{label}.log"
    oplog.unlink(missing_ok=True)
    code = f"{prelude}from tgipool.cli import main; main(['run', '--namespace', '{ns}'])"

    def start(heap: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(src / "operator"), "TGIPOOL_HEAPDUMP": str(heap)}
        with oplog.open("ab") as logf:
            return subprocess.Popen(
                [sys.executable, "-c", code], stdout=logf, stderr=subprocess.STDOUT, env=env
            )

    op = start(dump)
    api = await Api.connect()
    try:
        await asyncio.sleep(4)
        t0 = time.monotonic()
        await bounded(api.apply(doc) for doc in pool_docs(ns, n))
        peak, all_at = 0.0, None
        while all_at is None or time.monotonic() - all_at < 30:
            if time.monotonic() - t0 > TIMEOUT:
                raise SystemExit(f"{label}: not every pool has a status after {TIMEOUT:.0f} s")
            peak = max(peak, rss_mb(op.pid))
            await asyncio.sleep(3)
            pools = await api.list("tgipool.io/v1alpha1", "modelpools", ns)
            if all_at is None and sum(1 for p in pools if p.get("status")) >= n:
                all_at = time.monotonic()
        rss, cpu = rss_mb(op.pid), cpu_s(op.pid)
        await dump_heap(op, dump)
        # A restart with the pools in place: kopf lists every pool and child at once and resumes each pool.
        # A restarted operator serves from there on, so its RSS then is what it keeps as much as the burst's.
        op.terminate()
        op.wait(60)
        resumed0, t1, peak2 = count_log(oplog, "Resuming is processed"), time.monotonic(), 0.0
        restart_dump = dump.with_name(f"heap-{label}-restart.txt")
        op = start(restart_dump)
        while count_log(oplog, "Resuming is processed") - resumed0 < n:
            if time.monotonic() - t1 > TIMEOUT:
                raise SystemExit(f"{label}: not every pool resumed after {TIMEOUT:.0f} s")
            peak2 = max(peak2, rss_mb(op.pid))
            await asyncio.sleep(1)
        resume_s = time.monotonic() - t1
        for _ in range(10):  # child events and timers after the resumes
            peak2 = max(peak2, rss_mb(op.pid))
            await asyncio.sleep(3)
        rss2 = rss_mb(op.pid)
        await dump_heap(op, restart_dump)
    finally:
        await api.close()
        op.kill()
        op.wait(30)
    result = {
        "status_s": all_at - t0,
        "rss_mb": rss,
        "peak_rss_mb": max(peak, rss),
        "cpu_s": cpu,
        "resume_s": resume_s,
        "restart_rss_mb": rss2,
        "restart_peak_rss_mb": max(peak2, rss2),
    }
    log(f"{label}: every pool has a status after {result['status_s']:.0f} s; RSS {rss:.0f} MB 30 s later "
        f"(peak {result['peak_rss_mb']:.0f}), CPU {cpu:.0f} s; restarted: all resumed after "
        f"{resume_s:.0f} s, RSS {rss2:.0f} MB 30 s later (peak {result['restart_peak_rss_mb']:.0f}); "
        f"heaps in {out}")  # fmt: skip
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="current | before=PATH | no-folders (run in the order given)")
    ap.add_argument("--pools", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "tgipool-operator-memory")
    args = ap.parse_args()
    os.environ.setdefault("KUBECONFIG", str(ROOT / ".cluster/kubeconfig"))
    args.out.mkdir(parents=True, exist_ok=True)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    rows = []
    for variant in args.variants:
        name, _, path = variant.partition("=")
        if name not in ("current", "before", "no-folders") or (name == "before") != bool(path):
            raise SystemExit(f"unknown variant {variant!r}: current | before=PATH | no-folders")
        src = Path(path).resolve() if path else ROOT
        result = asyncio.run(one(name, src, NO_FOLDERS if name == "no-folders" else "", args.pools, args.out))
        rows.append((variant, result))
    print(f"\n{args.pools} pools created at once; RSS 30 s after every pool has a status; then a restart\n")
    print(
        "| variant | s until every pool has a status | RSS MB | peak RSS MB | CPU s "
        "| restart: s until all resumed | RSS MB 30 s later | peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    keys = ("status_s", "rss_mb", "peak_rss_mb", "cpu_s", "resume_s", "restart_rss_mb", "restart_peak_rss_mb")
    for variant, r in rows:
        cells = [f"{r[k]:.0f}" for k in keys]
        print(f"| {variant} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
