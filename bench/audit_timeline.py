"""When each kind of write happened in each bench namespace, from the API server's audit log.

For every (user agent, verb, resource) with at least --min writes in a namespace: how many, and the
seconds after the namespace's first write by which 10%, 50% and 90% of them, and the last, had come.
"LAST per object" rows take each object's last status write only: when each fetch Job completed, when
each pod was last made Ready. Side by side, the floor's and the operator's rows say which step of the
pipeline sets the pace (in the 500-pool runs: the binding of the cache claims, by kube-controller-manager).

    .venv/bin/python bench/audit_timeline.py .cluster/logs/audit-*.log .cluster/logs/audit.log
(the API server rotates its audit log at 100 MB: give the rotated file first, or a run's start is lost)
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path

LAST_OF = ("jobs/status", "pods/status")  # each object's last write of these: when it got there


def quantiles(values: list[float]) -> tuple[float, float, float, float]:
    v = sorted(values)

    def at(p: float) -> float:
        return v[min(len(v) - 1, int(p * len(v)))]

    return at(0.1), at(0.5), at(0.9), v[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="+", type=Path, help="audit log files, oldest first")
    ap.add_argument("--prefix", default="bench-", help="namespaces starting with this (default: bench-)")
    ap.add_argument("--min", type=int, default=50, help="leave out series with fewer writes (default: 50)")
    args = ap.parse_args()

    series: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    last: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
    for path in args.logs:
        with path.open() as f:
            for line in f:
                ev = json.loads(line)
                ref = ev.get("objectRef") or {}
                ns = ref.get("namespace") or ""
                if not ns.startswith(args.prefix):
                    continue
                t = datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
                agent = (ev.get("userAgent") or "").split("/")[0].split(" ")[0]
                resource = ref.get("resource", "") + (
                    f"/{ref['subresource']}" if ref.get("subresource") else ""
                )
                key = f"{agent} {ev['verb']} {resource}"
                series[ns][key].append(t)
                if resource in LAST_OF:
                    last[ns][(key, ref.get("name", ""))] = t

    for ns, by_key in series.items():
        t0 = min(min(v) for v in by_key.values())
        print(f"== {ns}  (n, then seconds after its first write: p10, p50, p90, last)")
        rows = [
            (quantiles([t - t0 for t in v]), key, len(v)) for key, v in by_key.items() if len(v) >= args.min
        ]
        for (p10, p50, p90, end), key, n in sorted(rows, key=lambda r: r[0][1]):
            print(f"  {key:62s} {n:6d} {p10:7.1f} {p50:7.1f} {p90:7.1f} {end:7.1f}")
        per_key: dict[str, list[float]] = defaultdict(list)
        for (key, _name), t in last[ns].items():
            per_key[key].append(t - t0)
        for key, v in per_key.items():
            p10, p50, p90, end = quantiles(v)
            print(f"  LAST per object: {key:45s} {len(v):6d} {p10:7.1f} {p50:7.1f} {p90:7.1f} {end:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
