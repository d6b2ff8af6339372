"""The operator bench's report: its table, where the writes went while converging, and issue 14's goals."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from kube_api import CONCURRENCY

ROWS = [
    ("children_s", "seconds until every child exists", "{:.1f}"),
    ("converge_s", "seconds to converge (all Ready)", "{:.1f}"),
    ("converge_writes", "writes to converge", "{:.0f}"),
    ("converge_cpu_s", "operator CPU seconds while converging", "{:.1f}"),
    ("rss_mb", "operator RSS after converging, MB", "{:.0f}"),
    ("still_s", "seconds from converged to still (HPAs, rollouts, writes)", "{:.1f}"),
    ("resume_s", "restart: seconds until all resumed", "{:.1f}"),
    ("resume_writes", "restart: writes, nothing changed", "{:.0f}"),
    ("rss_after_restart_mb", "operator RSS after restart, MB", "{:.0f}"),
]


def table(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> str:
    cols = list(results)
    others = [c for c in cols if c != "floor"] if "floor" in results else []
    lines = [
        f"{args.pools} pools on {args.nodes} simulated GPU nodes, one run, in this order, "
        + ("on one cluster " if args.same_cluster else "each on a fresh cluster ")
        + f"(writes counted by the API server; floor: plain SSA client, {CONCURRENCY} in flight)",
        "",
        "| | " + " | ".join(cols) + "".join(f" | {c} / floor" for c in others) + " |",
        "|---|" + "---:|" * (len(cols) + len(others)),
    ]
    for key, name, fmt in ROWS:
        cells = [fmt.format(results[c][key]) if key in results[c] else "-" for c in cols]
        f = results.get("floor", {}).get(key)
        ratios = [
            f"{results[c][key] / f:.2f}x" if f and results[c].get(key) is not None else "" for c in others
        ]
        lines.append(f"| {name} | " + " | ".join(cells + ratios) + " |")
    lines += converge_audit_table(results)
    for label in cols:
        audit = results[label].get("resume_writes_audit")
        if audit:
            lines += ["", f"{label}: restart writes by user agent, verb, resource (audit log):", ""]
            lines += [f"- {k}: {v}" for k, v in sorted(audit.items(), key=lambda kv: -kv[1])]
    return "\n".join([*lines, "", "Goals (issue 14):", "", *goals(args, results)])


def goals(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> list[str]:
    """Issue 14's operator goals, judged on this run: converge within 1.5x the floor, no write on a
    restart with nothing changed, at most 150 MB RSS at 1,000 pools (the queries' batching is a unit test)."""
    op, floor = results.get("operator", {}), results.get("floor", {})
    out = []
    if "converge_s" in op and floor.get("converge_s"):
        x = op["converge_s"] / floor["converge_s"]
        out.append(f"- converge within 1.5x the floor: {x:.2f}x: {'met' if x <= 1.5 else 'NOT met'}")
    if "resume_writes" in op:
        n = op["resume_writes"]
        out.append(f"- no write on a restart with nothing changed: {n:.0f}: {'met' if n == 0 else 'NOT met'}")
    if "rss_mb" in op:
        rss, verdict = op["rss_mb"], "not judged (the goal is at 1,000 pools)"
        if args.pools >= 1000:
            verdict = "met" if rss <= 150 else "NOT met"
        out.append(f"- at most 150 MB RSS at 1,000 pools: {rss:.0f} MB at {args.pools} pools: {verdict}")
    return out or ["- no operator run: nothing to judge"]


def converge_audit_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """Every write while converging (all resources, events and controllers' writes included), by user
    agent, verb and resource: where a variant's writes above the floor go."""
    cols = [c for c in results if results[c].get("converge_writes_audit")]
    if not cols:
        return []
    audits = {c: Counter(results[c]["converge_writes_audit"]) for c in cols}
    keys = sorted(set().union(*audits.values()), key=lambda k: (-max(a[k] for a in audits.values()), k))
    lines = [
        "",
        "writes while converging, by user agent, verb, resource (audit log, every resource):",
        "",
        "| user agent, verb, resource | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    lines += [f"| {k} | " + " | ".join(str(audits[c][k]) for c in cols) + " |" for k in keys]
    lines.append("| total | " + " | ".join(str(sum(audits[c].values())) for c in cols) + " |")
    return lines
