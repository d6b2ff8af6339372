"""Operator at scale: time to converge, API writes and memory, against the floor, in one run.

N pools on a local simulated cluster with M KWOK GPU nodes (`tools/cluster.sh nodes M`), measured
side by side in one run, each variant on a fresh cluster (`fresh_cluster`; --same-cluster for one):
  - floor: no operator. A plain asyncio client server-side applies the pools and every pool's
    children, rendered by the operator's own pure builders (`build_children`), CONCURRENCY requests
    at a time, with the one ordering the design imposes (a pool's Deployment, HPA and PDB once its
    fetch Job has completed), then waits for every Deployment to have a ready replica. It writes no
    status: the operator's status writes are part of what it is measured for.
  - operator: `tgipool run` as shipped; the same pools applied by the same client; converged when
    every pool's Ready condition is True. Then its RSS, then a restart with nothing changed: every
    pool resumed (kopf logs each), writes counted until 10 s after the last one.
  - always-apply (--always-apply): the same operator with the diff turned off (SSA every child on
    every reconcile), to show what the diff saves.
Writes are counted by the API server itself (`apiserver_request_total`, the resources the operator
writes: tests/e2e/cluster.py's `write_requests`); the restart's writes are also broken down by
user agent and resource from the audit log, to say who wrote.

    make cluster-up && .venv/bin/python bench/operator_bench.py --pools 500 --nodes 1000
    .venv/bin/python bench/operator_bench.py --quick      # smoke: 20 pools, 20 nodes
Results: bench/results/operator.md and operator.json (--out to change).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))
from tests.e2e.cluster import kubectl, write_requests  # noqa: E402  (shared API-server helpers)

from tgipool.api.parse import parse_pool  # noqa: E402
from tgipool.config import DEFAULT_CONFIG  # noqa: E402
from tgipool.desired import build_children  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from kube_api import Api, bounded  # noqa: E402
from operator_report import table  # noqa: E402
from operator_watch import Audit, count_log, cpu_s, hpa_still, rolled_out, rss_mb, where  # noqa: E402

SHIPPED = "from tgipool.cli import main; main(['run'])"
ALWAYS_APPLY = (
    "import tgipool.handlers.writer as r; r.needs_apply = lambda desired, observed: True; "
    "from tgipool.cli import main; main(['run'])"
)
COMMIT = "5f0b02c75b57c5855da9ae460ce51323ea669d8a"  # prod pools pin a commit (spec.environment)
CONVERGE_TIMEOUT = 900.0
# Converged: every pool (floor: every Deployment) has been Ready, not all at one instant. The simulated
# cluster's readiness prober (`tgipool sim`: one process serves and probes every pool pod) lags past the
# probes' timeout at hundreds of pods and flips Ready pods back (87 flips at 500 pools, more at 1000):
# "all Ready at once" then waits for a lull of the simulator, not for the operator or the floor.


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pool_docs(ns: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "tgipool.io/v1alpha1",
            "kind": "ModelPool",
            "metadata": {"name": f"p{i:04d}", "namespace": ns},
            "spec": {
                "model": {"id": "org/m", "revision": COMMIT, "servedName": f"m{i}"},
                "profile": "short",
                "gpu": {"product": "NVIDIA-H100-80GB-HBM3"},
                "replicas": {"min": 1, "max": 2},
                "cache": {"size": "10Gi"},
            },
        }
        for i in range(n)
    ]


def _true(obj: dict[str, Any], ctype: str) -> bool:
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == ctype and c.get("status") == "True" for c in conds)


async def wait_until(
    what: str, check: Callable[[], Awaitable[bool]], t0: float, interval: float = 1.0
) -> float:
    """Seconds from t0 until `check` holds (bounded)."""
    while not await check():
        if time.monotonic() - t0 > CONVERGE_TIMEOUT:
            raise SystemExit(f"{what}: not reached after {CONVERGE_TIMEOUT:.0f} s")
        await asyncio.sleep(interval)
    return time.monotonic() - t0


async def wait_still(api: Api, ns: str, label: str, quiet: float = 10.0) -> float:
    """Seconds until the fleet is still: every HPA at its desired count, every Deployment rolled out, and no
    write of the kinds the operator writes for `quiet` s. Ready pools still move (HPAs scale new pools up,
    new pods start); a restart measured before that would count writes that follow real changes."""
    t0 = time.monotonic()
    last, since = -1.0, t0
    while True:
        total = sum(write_requests().values())
        hpas = await api.list("autoscaling/v2", "horizontalpodautoscalers", ns)
        deps = await api.list("apps/v1", "deployments", ns)
        still = all(hpa_still(h) for h in hpas) and all(rolled_out(d) for d in deps)
        now = time.monotonic()
        if total != last or not still:
            last, since = total, now
        elif now - since >= quiet:
            return now - t0
        if now - t0 > CONVERGE_TIMEOUT:
            raise SystemExit(f"{label}: the fleet was not still after {CONVERGE_TIMEOUT:.0f} s")
        await asyncio.sleep(1)


# ---------------------------------------------------------------- floor


async def run_floor(api: Api, ns: str, n: int) -> dict[str, Any]:
    before = sum(write_requests().values())
    audit = Audit()
    t0 = time.monotonic()
    pools = await bounded(api.apply(doc) for doc in pool_docs(ns, n))
    # The operator's own renderer; the API server's copy (with its defaults and uid) is what it reads too.
    children = {p["metadata"]["name"]: build_children(parse_pool(p), DEFAULT_CONFIG) for p in pools}

    async def first(name: str) -> None:
        c = children[name]
        for m in (c.demand, c.service, c.cache, c.fetch_job):
            if m is not None:
                await api.apply(m)

    await bounded(first(name) for name in children)
    second_done: set[str] = set()

    async def second(name: str) -> None:
        c = children[name]
        for m in (c.deployment, c.hpa, c.pdb):
            if m is not None:
                await api.apply(m)
        second_done.add(name)

    # A pool's Deployment once its fetch Job completed (what the operator's gate does).
    pending = set(children)
    while pending:
        if time.monotonic() - t0 > CONVERGE_TIMEOUT:
            raise SystemExit("floor: fetch Jobs not complete")
        jobs = await api.list("batch/v1", "jobs", ns)
        done = {j["metadata"]["labels"].get("tgipool.io/pool") for j in jobs if _true(j, "Complete")}
        ready = pending & done
        pending -= ready
        if ready:
            await bounded(second(name) for name in sorted(ready))
        else:
            await asyncio.sleep(0.5)
    applied_s = time.monotonic() - t0

    been_ready: set[str] = set()

    async def all_ready() -> bool:  # each once (see CONVERGE_TIMEOUT)
        deps = await api.list("apps/v1", "deployments", ns)
        been_ready.update(d["metadata"]["name"] for d in deps if (d.get("status") or {}).get("readyReplicas"))
        return len(been_ready) >= n

    ready_s = await wait_until("floor", all_ready, t0)
    await asyncio.sleep(5)
    return {
        "children_s": applied_s,
        "converge_s": ready_s,
        "converge_writes": sum(write_requests().values()) - before,
        "converge_writes_audit": dict(audit.writes()),
    }


# ---------------------------------------------------------------- operator


async def run_operator(
    api: Api,
    label: str,
    code: str,
    ns: str,
    n: int,
    log_dir: Path,
    profile: Path | None,
    src: Path = ROOT,
    cleanup: bool = True,
) -> dict[str, Any]:
    """`src`: the checkout whose operator/ runs (another one for a before/after comparison); `cleanup`:
    delete the namespace after (not when the cluster goes next)."""
    log_path = log_dir / f"{label}.log"
    env = {**os.environ, "PYTHONPATH": str(src / "operator")}
    argv = [sys.executable, "-c", code]

    def start() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    op = start()
    spy: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.sleep(3)
        if profile is not None:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(op.pid), "-o", str(profile),
                 "-f", "speedscope", "-r", "50", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )  # fmt: skip
        before = sum(write_requests().values())
        cpu0 = cpu_s(op.pid)
        converge_audit = Audit()
        t0 = time.monotonic()
        await bounded(api.apply(doc) for doc in pool_docs(ns, n))
        seen_children = 0.0

        last_shown, been_ready = 0.0, set()

        async def all_ready() -> bool:
            nonlocal seen_children, last_shown
            pools = await api.list("tgipool.io/v1alpha1", "modelpools", ns)
            if not seen_children:
                deps = await api.list("apps/v1", "deployments", ns)
                if len(deps) >= n:
                    seen_children = time.monotonic() - t0
            ready = {p["metadata"]["name"] for p in pools if _true(p, "Ready")}
            been_ready.update(ready)  # each once (see CONVERGE_TIMEOUT)
            if len(been_ready) < n and time.monotonic() - last_shown > 30:  # where the others are
                last_shown = time.monotonic()
                took, rss, cpu = last_shown - t0, rss_mb(op.pid), cpu_s(op.pid) - cpu0
                log(f"{label}: {len(ready)}/{n} Ready ({len(been_ready)} have been) after {took:.0f} s; "
                    f"{where(pools)}; RSS {rss:.0f} MB, CPU {cpu:.0f} s")  # fmt: skip
            return len(been_ready) >= n

        converge_s = await wait_until(label, all_ready, t0)
        await asyncio.sleep(5)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
            spy = None
        converge_writes = sum(write_requests().values()) - before
        converged_audit = dict(converge_audit.writes())
        rss, cpu = rss_mb(op.pid), cpu_s(op.pid) - cpu0
        if os.environ.get("TGIPOOL_HEAPDUMP"):  # the operator writes what its heap holds there
            op.send_signal(signal.SIGUSR1)
            await asyncio.sleep(10)
        if os.environ.get("BENCH_RSS_ONLY"):  # a throwaway cluster: no restart, no cleanup
            log(f"{label}: converged in {converge_s:.1f} s, {converge_writes:.0f} writes, RSS {rss:.0f} MB")
            ns = ""
            return {
                "converge_s": converge_s,
                "converge_writes": converge_writes,
                "rss_mb": rss,
                "converge_cpu_s": cpu,
                "converge_writes_audit": converged_audit,
            }
        still_s = await wait_still(api, ns, label)
        log(f"{label}: the fleet is still {still_s:.0f} s after converging; restarting the operator")
        op.terminate()
        op.wait(timeout=60)
        # Restart: every pool is resumed; nothing changed, so nothing should be written.
        resumed_before = count_log(log_path, r"Resuming is processed")
        before_by = write_requests()
        audit = Audit()
        op = start()
        t1 = time.monotonic()
        while count_log(log_path, r"Resuming is processed") - resumed_before < n:
            if time.monotonic() - t1 > 600:
                raise SystemExit(f"{label}: not every pool resumed after 600 s")
            await asyncio.sleep(1)
        resumed_s = time.monotonic() - t1
        await asyncio.sleep(10)  # child events and timers after the resumes
        after_by = write_requests()
        delta = {k: after_by[k] - before_by.get(k, 0) for k in after_by if after_by[k] != before_by.get(k, 0)}
        rss_restart = rss_mb(op.pid)
        return {
            "children_s": seen_children,
            "converge_s": converge_s,
            "converge_writes": converge_writes,
            "converge_writes_audit": converged_audit,
            "converge_cpu_s": cpu,
            "rss_mb": rss,
            "still_s": still_s,
            "resume_s": resumed_s,
            "resume_writes": sum(delta.values()),
            "resume_writes_by_resource": delta,
            "resume_writes_audit": dict(audit.writes()),
            "rss_after_restart_mb": rss_restart,
        }
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
        # With the operator still running: its timers put a finalizer on every pool.
        if ns and cleanup:
            log(f"{label}: deleting {ns}")
            delete_namespace(ns)
        op.terminate()
        op.wait(timeout=60)


# ---------------------------------------------------------------- driver


def delete_namespace(ns: str) -> None:
    # Wait until it is gone, and its volumes too (the provisioner deletes released PVs): its deletes
    # must not count against, nor hold up, the next variant.
    kubectl("delete", "namespace", ns, "--timeout=600s", timeout=620)
    deadline = time.monotonic() + 300
    claims = "jsonpath={range .items[*]}{.spec.claimRef.namespace} {end}"
    while (left := kubectl("get", "pv", "-o", claims).split().count(ns)) and time.monotonic() < deadline:
        time.sleep(2)
    if left:
        log(f"{left} PVs of {ns} still there after 300 s")


def fresh_cluster(nodes: int) -> None:
    """A new cluster with `nodes` bulk nodes and the CRDs. Each variant gets one of the same age: on one
    cluster kept through the run, the same code converged in 176 s first and 293 s third (KWOK's
    heartbeats of every node come in one burst every 10 minutes, and what earlier variants left in etcd
    and in the controllers stays), so a variant's place in the run weighed more than its code."""
    cluster = str(ROOT / "tools/cluster.sh")
    log(f"a fresh cluster with {nodes} bulk nodes (tools/cluster.sh down, up, nodes {nodes}) ...")
    subprocess.run([cluster, "down"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([cluster, "up"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([cluster, "nodes", str(nodes)], check=True, stdout=subprocess.DEVNULL)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))


async def run_all(args: argparse.Namespace, log_dir: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    variants = ["floor"] + (["before"] if args.before else []) + ["operator"]
    variants += ["always-apply"] if args.always_apply else []
    if args.only:  # in the order given (with --same-cluster, a variant's place in the run matters)
        variants = [v for v in args.only.split(",") if v in variants]
    api = await Api.connect() if args.same_cluster else None
    try:
        for label in variants:
            if not args.same_cluster:
                if api is not None:
                    await api.close()
                fresh_cluster(args.nodes)
                api = await Api.connect()
            assert api is not None
            ns = f"bench-{label[:5]}-{uuid.uuid4().hex[:4]}"
            kubectl("create", "namespace", ns)
            log(f"{label}: {args.pools} pools in {ns} ...")
            if label == "floor":
                try:
                    results[label] = await run_floor(api, ns, args.pools)
                finally:
                    if args.same_cluster:
                        log(f"{label}: deleting {ns}")
                        delete_namespace(ns)
            else:
                code = ALWAYS_APPLY if label == "always-apply" else SHIPPED
                prof = {"operator": args.profile, "before": args.profile_before}.get(label)
                src = args.before if label == "before" else ROOT
                results[label] = await run_operator(
                    api, label, code, ns, args.pools, log_dir, prof, src, cleanup=args.same_cluster
                )
            shown = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in results[label].items()}
            log(f"{label}: {shown}")
    finally:
        if api is not None:
            await api.close()
        # The last variant's pools go with its cluster; the benches after this one get a new one.
        if not args.same_cluster:
            fresh_cluster(0)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pools", type=int, default=500)
    ap.add_argument(
        "--nodes", type=int, default=1000, help="bulk simulated 8x H100 nodes (tools/cluster.sh nodes)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 pools on 20 nodes")
    ap.add_argument("--always-apply", action="store_true", help="also run the operator with the diff off")
    ap.add_argument(
        "--before", type=Path, help="also run the operator of this checkout (a worktree of an older commit)"
    )
    ap.add_argument(
        "--only", help="run only these variants, in this order (comma-separated: floor,before,operator)"
    )
    ap.add_argument("--profile-before", type=Path, help="py-spy profile of the --before operator")
    ap.add_argument(
        "--profile", type=Path, help="py-spy profile of the operator while it converges (speedscope)"
    )
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench/results/operator", help="writes OUT.md and OUT.json"
    )
    ap.add_argument(
        "--keep-nodes", action="store_true", help="with --same-cluster: leave the bulk nodes for the next run"
    )
    ap.add_argument(
        "--same-cluster",
        action="store_true",
        help="every variant on the cluster as it is (default: a fresh cluster for each, see fresh_cluster)",
    )
    args = ap.parse_args()
    if args.quick:
        args.pools, args.nodes = 20, 20
    os.environ.setdefault("KUBECONFIG", str(ROOT / ".cluster/kubeconfig"))
    log_dir = Path(tempfile.gettempdir()) / f"tgipool-bench-{ROOT.name}"  # one per checkout
    log_dir.mkdir(exist_ok=True)
    if args.same_cluster:
        log(f"{args.nodes} bulk nodes (tools/cluster.sh nodes {args.nodes}) ...")
        subprocess.run([str(ROOT / "tools/cluster.sh"), "nodes", str(args.nodes)], check=True)
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    try:
        results = asyncio.run(run_all(args, log_dir))
    finally:
        if args.same_cluster and not args.keep_nodes:
            subprocess.run([str(ROOT / "tools/cluster.sh"), "nodes", "0"], check=False)
    text = table(args, results)
    cmd = "bench/operator_bench.py " + " ".join(sys.argv[1:])
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.with_suffix(".md").write_text(f"# Operator at scale\n\n`{cmd}` ({when})\n\n{text}\n")
    payload = {"command": cmd, "when": when, "pools": args.pools, "nodes": args.nodes, "results": results}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
