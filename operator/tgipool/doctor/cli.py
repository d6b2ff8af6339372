"""`tgipool doctor` and `tgipool check`: thin readers of the cluster around the pure findings and checklist.

doctor: for each pool, reads the ModelPool (conditions, metrics, lastActivation, checklist), its
inference-server pods, the namespace's events and the nodes, and prints `findings.diagnose`.
check: prints each pool's `status.checklist`, the operator's own list behind ProductionReady.

Exit codes: 0 nothing to fix (doctor: no warning or critical finding; check: every pool
ProductionReady), 1 something to fix, 2 a pool not found or the cluster not readable.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from typing import Any

from tgipool.api.checklist import PRODUCTION_READY
from tgipool.api.modelpool import GROUP, VERSION
from tgipool.desired import names
from tgipool.doctor.evidence import DEFAULT_NOT_READY_AFTER, Evidence, Finding, pool_events
from tgipool.doctor.findings import diagnose
from tgipool.manifest import Manifest

POOLS = f"{GROUP}/{VERSION}"
MARK = {"critical": "✗", "warning": "!", "info": "i"}


def _kube() -> Any:
    from tgipool.k8s.client import Kube

    return Kube.from_environment(field_manager="tgipool-doctor")


def _namespace(given: str | None) -> str:
    if given:
        return given
    import kubernetes

    try:
        _, active = kubernetes.config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        return str((active or {}).get("context", {}).get("namespace") or "default")
    except Exception:  # in a pod, or no kubeconfig: the API server's default
        return "default"


def _pools(kube: Any, namespace: str | None, wanted: Sequence[str]) -> tuple[list[Manifest], list[str]]:
    """The named pools (else every pool of the namespace, or of all), and the names not found."""
    from tgipool.k8s.client import ApplyError

    if not wanted:
        return sorted(kube.list(POOLS, "ModelPool", namespace=namespace), key=_key), []
    found, missing = [], []
    for name in wanted:
        try:
            found.append(kube.get(POOLS, "ModelPool", namespace or "default", name))
        except ApplyError as e:
            if e.status != 404:
                raise
            missing.append(name)
    return found, missing


def _key(pool: Manifest) -> tuple[str, str]:
    return (pool["metadata"].get("namespace", ""), pool["metadata"]["name"])


def gather(kube: Any, pools: list[Manifest], not_ready_after: float) -> list[Evidence]:
    """One Evidence per pool: one LIST of pods and events per namespace, one of nodes."""
    from tgipool.k8s.client import ApplyError

    selector = names.POOL_LABEL  # TGI's pods and the prefetch Jobs
    by_ns: dict[str, tuple[list[Manifest], list[Manifest]]] = {}
    for ns in sorted({p["metadata"].get("namespace", "default") for p in pools}):
        by_ns[ns] = (kube.list("v1", "Pod", selector, namespace=ns), kube.list("v1", "Event", namespace=ns))
    try:
        nodes: list[Manifest] | None = kube.list("v1", "Node")
    except ApplyError:
        nodes = None  # not allowed to list nodes: the findings do without
    now = datetime.datetime.now(datetime.UTC)
    out = []
    for pool in pools:
        name, ns = pool["metadata"]["name"], pool["metadata"].get("namespace", "default")
        pods, events = by_ns[ns]
        mine = [p for p in pods if (p["metadata"].get("labels") or {}).get(names.POOL_LABEL) == name]
        out.append(Evidence(pool, mine, pool_events(name, mine, events), nodes, now, not_ready_after))
    return out


def render(ev: Evidence, found: Sequence[Finding]) -> str:
    phase = ev.status.get("phase", "no status")
    lines = [f"{ev.namespace}/{ev.name}: {phase}"]
    if not found:
        lines.append("  no problem found")
    for f in found:
        lines.append(f"  {MARK[f.severity]} {f.severity.upper()} {f.code}: {f.title}")
        lines += [f"      evidence: {e}" for e in f.evidence]
        lines += [f"      fix: {x}" for x in f.fixes]
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace) -> int:
    kube = _kube()
    namespace = None if args.all_namespaces else _namespace(args.namespace)
    pools, missing = _pools(kube, namespace, args.pools)
    for name in missing:
        print(f"error: ModelPool {name} not found in namespace {namespace}", file=sys.stderr)
    report = [(ev, diagnose(ev)) for ev in gather(kube, pools, args.not_ready_after)]
    if args.json:
        doc = [
            {"namespace": ev.namespace, "pool": ev.name, "findings": [f.to_json() for f in found]}
            for ev, found in report
        ]
        print(json.dumps(doc, indent=2))
    else:
        print("\n\n".join(render(ev, found) for ev, found in report) or "no ModelPool found")
    if missing:
        return 2
    return int(any(f.severity != "info" for _, found in report for f in found))


def _ready(pool: Manifest) -> dict[str, Any]:
    conds = (pool.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == PRODUCTION_READY), {})


def cmd_check(args: argparse.Namespace) -> int:
    kube = _kube()
    namespace = None if args.all_namespaces else _namespace(args.namespace)
    pools, missing = _pools(kube, namespace, args.pools)
    for name in missing:
        print(f"error: ModelPool {name} not found in namespace {namespace}", file=sys.stderr)
    rows = []
    for pool in pools:
        ns, name = _key(pool)
        checklist = (pool.get("status") or {}).get("checklist")
        rows.append(
            {
                "namespace": ns,
                "pool": name,
                "productionReady": _ready(pool).get("status", "Unknown"),
                "checklist": checklist,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    if not rows and not args.json:
        print("no ModelPool found")
    for row in rows if not args.json else []:
        print(f"{row['namespace']}/{row['pool']}: {PRODUCTION_READY} {row['productionReady']}")
        if row["checklist"] is None:
            print("  no checklist in its status yet (is the operator running, and at this version?)")
        for item in row["checklist"] or []:
            print(f"  [{'x' if item.get('ok') else ' '}] {item.get('item')}: {item.get('detail')}")
    if missing or any(r["checklist"] is None for r in rows):
        return 2
    return int(any(r["productionReady"] != "True" for r in rows))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "pools", nargs="*", metavar="POOL", help="ModelPools (default: every pool of the namespace)"
    )
    p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("--json", action="store_true", help="JSON instead of text")


def add_parsers(subparsers: Any) -> None:
    doctor = subparsers.add_parser(
        "doctor",
        help="diagnose pools from the cluster's evidence; each finding with its fix in the pool's numbers",
    )
    _common(doctor)
    doctor.add_argument(
        "--not-ready-after",
        type=float,
        default=DEFAULT_NOT_READY_AFTER,
        metavar="SECONDS",
        help=f"a Running pod not Ready for this long never gets ready ({DEFAULT_NOT_READY_AFTER:g})",
    )
    doctor.set_defaults(func=cmd_doctor)
    check = subparsers.add_parser("check", help="the pre-production checklist of pools (status.checklist)")
    _common(check)
    check.set_defaults(func=cmd_check)
