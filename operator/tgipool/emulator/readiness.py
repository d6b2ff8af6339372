"""Readiness as a kubelet reports it, for pods whose kubelet is simulated (KWOK runs no prober).

Pure: the probe a container declares, and the pod status patch that reports the prober's verdicts.
On the local cluster KWOK makes TGI pool pods Running but not Ready (tools/kwok/stages.yaml) and
`tgipool sim` probes them (prober.py) and writes what a kubelet would: the `Ready` and
`ContainersReady` conditions and each container's `ready` (and `started`, which the startup probe
would have set by the first success).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Probe:
    """A container's readinessProbe (httpGet), resolved against the pod's address and ports."""

    container: str
    url: str
    timeout_seconds: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1
    period_seconds: float = 10.0


def _port(container: Mapping[str, Any], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    named = (p.get("containerPort") for p in container.get("ports", []) if p.get("name") == port)
    return next(named, None)


def readiness_probes(pod: Mapping[str, Any]) -> list[Probe]:
    """The httpGet readiness probes of a Running pod's containers (kubelet defaults filled in)."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return []
    out = []
    for c in (pod.get("spec") or {}).get("containers", []):
        rp = c.get("readinessProbe") or {}
        get = rp.get("httpGet")
        port = _port(c, get.get("port")) if get else None
        if get is None or port is None:
            continue
        path = get.get("path") or "/"
        out.append(
            Probe(
                container=c["name"],
                url=f"{get.get('scheme', 'HTTP').lower()}://{ip}:{port}{path}",
                timeout_seconds=float(rp.get("timeoutSeconds", 1)),
                failure_threshold=int(rp.get("failureThreshold", 3)),
                success_threshold=int(rp.get("successThreshold", 1)),
                period_seconds=float(rp.get("periodSeconds", 10)),
            )
        )
    return out


def container_started_at(pod: Mapping[str, Any], container: str) -> datetime | None:
    """When the container started running (else the pod's startTime): the start of loading."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        started = ((cs.get("state") or {}).get("running") or {}).get("startedAt")
        if cs.get("name") == container and started:
            return _time(started)
    return _time(status["startTime"]) if status.get("startTime") else None


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _condition(pod: Mapping[str, Any], ctype: str) -> Mapping[str, Any]:
    conds = (pod.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == ctype), {})


def status_patch(pod: Mapping[str, Any], verdicts: Mapping[str, bool], now: str) -> dict[str, Any] | None:
    """The strategic-merge patch of `pods/status` that reports `verdicts` (container -> ready), or
    None when the pod already says so. Containers without a readiness probe (no verdict) are ready
    while running, as the kubelet has it. `now` is the RFC 3339 time of a transition."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if not statuses:
        return None
    new_statuses = []
    for cs in statuses:
        ready = verdicts.get(cs["name"], "running" in (cs.get("state") or {}))
        # A first success is also the startup probe's: `started` turns true and stays so.
        new_statuses.append({**cs, "ready": ready, "started": bool(cs.get("started")) or ready})
    unready = sorted(cs["name"] for cs in new_statuses if not cs["ready"])
    want = "False" if unready else "True"
    if new_statuses == statuses and all(
        _condition(pod, t).get("status") == want for t in ("Ready", "ContainersReady")
    ):
        return None
    conditions = []
    for ctype in ("ContainersReady", "Ready"):
        old = _condition(pod, ctype)
        cond: dict[str, Any] = {"type": ctype, "status": want}
        same = old.get("status") == want
        cond["lastTransitionTime"] = old.get("lastTransitionTime") if same and old else now
        # The kubelet's own reason and message; `null` clears them in a strategic-merge patch.
        cond["reason"] = "ContainersNotReady" if unready else None
        cond["message"] = f"containers with unready status: [{' '.join(unready)}]" if unready else None
        conditions.append(cond)
    patch: dict[str, Any] = {"status": {"conditions": conditions, "containerStatuses": new_statuses}}
    version = (pod.get("metadata") or {}).get("resourceVersion")
    if version:  # a precondition: the patch applies only to the pod we judged (409 otherwise)
        patch["metadata"] = {"resourceVersion": version}
    return patch
