"""What the operator bench reads besides the API: a process's CPU and RSS, the API server's audit log,
where pools wait."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Audit:
    """Write requests in the API server's audit log from a point on (the cluster logs writes only).

    The API server rotates the log at 100 MB (audit-<time>.log), several times in a run at 500 pools:
    the files from the one that was current at the start on are read, the first from its offset."""

    def __init__(self) -> None:
        self.path = ROOT / ".cluster/logs/audit.log"
        self.ino = self.path.stat().st_ino if self.path.exists() else None
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def _files(self) -> list[Path]:
        rotated = sorted(self.path.parent.glob("audit-*.log"))
        start = next((i for i, f in enumerate(rotated) if f.stat().st_ino == self.ino), None)
        return ([] if start is None else rotated[start:]) + [self.path]

    def writes(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for path in self._files():
            if not path.exists():
                continue
            with path.open("rb") as f:
                first = path.stat().st_ino == self.ino
                f.seek(self.offset if first else 0)
                for raw in f:
                    ev = json.loads(raw)
                    ref = ev.get("objectRef") or {}
                    res = ref.get("resource", "?") + (
                        f"/{ref['subresource']}" if ref.get("subresource") else ""
                    )
                    agent = (ev.get("userAgent") or "?").split("/")[0].split(" ")[0]
                    out[f"{agent} {ev.get('verb')} {res}"] += 1
        return out
        with self.path.open("rb") as f:
            if f.seek(0, 2) < self.offset:  # rotated: count what the new file has
                self.offset = 0
            f.seek(self.offset)
            for raw in f:
                ev = json.loads(raw)
                ref = ev.get("objectRef") or {}
                res = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                agent = (ev.get("userAgent") or "?").split("/")[0].split(" ")[0]
                out[f"{agent} {ev.get('verb')} {res}"] += 1
        return out


def where(pools: list[dict[str, Any]]) -> str:
    """The pools by phase and Progressing reason: where a slow convergence waits."""
    at: Counter[str] = Counter()
    for p in pools:
        status = p.get("status") or {}
        why = next(
            (c.get("reason") for c in status.get("conditions") or [] if c.get("type") == "Progressing"), ""
        )
        at[f"{status.get('phase', 'no status')}/{why}" if why else status.get("phase", "no status")] += 1
    return ", ".join(f"{k} {v}" for k, v in at.most_common())


def count_log(path: Path, pattern: str) -> int:
    return len(re.findall(pattern, path.read_text(errors="replace")))


def rolled_out(d: dict[str, Any]) -> bool:
    st, want = d.get("status") or {}, (d.get("spec") or {}).get("replicas", 1)
    return st.get("observedGeneration", 0) >= d["metadata"].get("generation", 1) and all(
        st.get(k, 0) == want for k in ("replicas", "updatedReplicas", "readyReplicas")
    )


def hpa_still(h: dict[str, Any]) -> bool:
    """At its desired count, or not scaling at all (ScalingActive False: a metric it cannot read; the
    HPA then reports desiredReplicas 0 and leaves the Deployment alone)."""
    st = h.get("status") or {}
    active = next((c for c in st.get("conditions") or [] if c.get("type") == "ScalingActive"), {})
    return active.get("status") == "False" or st.get("desiredReplicas") == st.get("currentReplicas")
