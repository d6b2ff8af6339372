"""PURE: what `tgipool doctor` reads about one pool, what it finds, and the facts it picks out of
Kubernetes objects.

The CLI (`doctor/cli.py`) gathers an `Evidence` per pool from the cluster; `findings.py` turns it into
`Finding`s. Everything here takes plain dicts as the API server returns them.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tgipool.activation import parse_time
from tgipool.desired.names import COMPONENT_LABEL, SERVER
from tgipool.manifest import Manifest

TGI_CONTAINER = "tgi"
# A TGI pod Running this long without turning Ready is "never ready" (weights load from the local
# cache in well under a minute; the startup probe would allow 30 minutes).
DEFAULT_NOT_READY_AFTER = 600.0
Severity = Literal["critical", "warning", "info"]
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    """One problem, the evidence that shows it, and the fixes with the pool's own numbers."""

    code: str  # CamelCase, stable: OutOfMemory, Unschedulable, NeverReady, HighP95, ...
    severity: Severity
    title: str
    evidence: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "title": self.title,
            "evidence": list(self.evidence),
            "fixes": list(self.fixes),
        }


@dataclass(frozen=True)
class Evidence:
    pool: Manifest  # the ModelPool as read: spec and status
    pods: Sequence[Manifest] = ()  # its inference-server pods
    events: Sequence[Manifest] = ()  # events about the pool, its pods, Deployment and ReplicaSets
    nodes: Sequence[Manifest] | None = None  # None: the nodes could not be read
    now: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    not_ready_after: float = DEFAULT_NOT_READY_AFTER

    @property
    def name(self) -> str:
        return str(self.pool["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.pool["metadata"].get("namespace", "default"))

    @property
    def status(self) -> Mapping[str, Any]:
        return self.pool.get("status") or {}

    def condition(self, ctype: str) -> Mapping[str, Any]:
        return next((c for c in self.status.get("conditions") or [] if c.get("type") == ctype), {})


def pod_name(pod: Manifest) -> str:
    return str(pod.get("metadata", {}).get("name", "?"))


def live(pods: Iterable[Manifest]) -> list[Manifest]:
    return [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]


def is_server(pod: Manifest) -> bool:
    """A TGI pod of the pool (not one of its prefetch Job's)."""
    return bool(((pod.get("metadata") or {}).get("labels") or {}).get(COMPONENT_LABEL, SERVER) == SERVER)


def servers(pods: Iterable[Manifest]) -> list[Manifest]:
    return [p for p in live(pods) if is_server(p)]


def tgi_status(pod: Manifest) -> Mapping[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((cs for cs in statuses if cs.get("name") == TGI_CONTAINER), {})


def all_statuses(pod: Manifest) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def terminations(cs: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The container's current and last termination, newest first."""
    out = []
    for key in ("state", "lastState"):
        t = (cs.get(key) or {}).get("terminated")
        if t:
            out.append(t)
    return out


def waiting_reason(cs: Mapping[str, Any]) -> tuple[str, str] | None:
    w = (cs.get("state") or {}).get("waiting")
    return (str(w.get("reason", "")), str(w.get("message", ""))) if w else None


def unschedulable(pod: Manifest) -> str | None:
    """The scheduler's reason a pod is Pending, from its PodScheduled condition."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return str(c.get("message") or c.get("reason") or "unschedulable")
    return None


def is_ready(pod: Manifest) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def running_since(pod: Manifest) -> datetime.datetime | None:
    """When the TGI container started running, for a Running pod whose container runs."""
    if (pod.get("status") or {}).get("phase") != "Running":
        return None
    running = (tgi_status(pod).get("state") or {}).get("running")
    if not running:
        return None
    return parse_time(running.get("startedAt")) or parse_time((pod.get("status") or {}).get("startTime"))


def memory_limit(pod: Manifest) -> str | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == TGI_CONTAINER:
            return ((c.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def about(events: Iterable[Manifest], kind: str, names: Iterable[str]) -> list[Manifest]:
    wanted = set(names)
    return [
        e
        for e in events
        if (e.get("involvedObject") or {}).get("kind") == kind
        and (e.get("involvedObject") or {}).get("name") in wanted
    ]


def pool_events(name: str, pods: Iterable[Manifest], events: Iterable[Manifest]) -> list[Manifest]:
    """The events of a pool, its pods, its Deployment and ReplicaSets, oldest first."""
    pod_names = {pod_name(p) for p in pods}
    out = []
    for e in events:
        obj = e.get("involvedObject") or {}
        kind, obj_name = obj.get("kind"), str(obj.get("name", ""))
        if (
            (kind == "ModelPool" and obj_name == name)
            or (kind == "Pod" and (obj_name in pod_names or obj_name.startswith(f"{name}-")))
            or (kind == "Deployment" and obj_name == name)
            or (kind == "ReplicaSet" and obj_name.startswith(f"{name}-"))
        ):
            out.append(e)
    return sorted(out, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))


def event_line(e: Manifest) -> str:
    obj = e.get("involvedObject") or {}
    count = int(e.get("count") or 1)
    times = f" (x{count})" if count > 1 else ""
    return (
        f"event {e.get('reason', '?')} on {obj.get('kind')}/{obj.get('name')}{times}: {e.get('message', '')}"
    )


def gpu_nodes(nodes: Sequence[Manifest], resource: str, product_label: str) -> dict[str, list[int]]:
    """GPU product -> the allocatable GPUs of each node that has some."""
    out: dict[str, list[int]] = {}
    for n in nodes:
        raw = ((n.get("status") or {}).get("allocatable") or {}).get(resource)
        try:
            count = int(str(raw))
        except ValueError:
            continue
        if count <= 0:
            continue
        product = ((n.get("metadata") or {}).get("labels") or {}).get(product_label, "(no product label)")
        out.setdefault(product, []).append(count)
    return out
