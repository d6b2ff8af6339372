"""PURE: whether a warm or cold pool is awake, from its demand Lease, and how its last wake went.

A pool is awake while the gateways' last demand (the Lease's renewTime) is younger than
`activation.idleAfterSeconds`; hot pools always are. The last wake's phases come from the Lease
(when demand began), the prefetch Job and the pods' condition timestamps.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tgipool.api.modelpool import ActivationStatus, ModelPool
from tgipool.manifest import Manifest


def parse_time(value: str | None) -> datetime.datetime | None:
    """RFC 3339 (conditions) or MicroTime (Lease) to an aware datetime."""
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _rfc3339(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Demand:
    requested_at: datetime.datetime | None = None  # acquireTime: the first request of this wake
    last_at: datetime.datetime | None = None  # renewTime: the latest request or in-flight renewal


def demand_of(lease: Manifest | None) -> Demand:
    spec = (lease or {}).get("spec") or {}
    return Demand(parse_time(spec.get("acquireTime")), parse_time(spec.get("renewTime")))


def is_awake(pool: ModelPool, demand: Demand, now: datetime.datetime) -> bool:
    activation = pool.activation
    if activation is None:
        return True
    if demand.last_at is None:
        return False
    return (now - demand.last_at).total_seconds() < activation.idle_after_seconds


def _condition_time(obj: Mapping[str, Any], ctype: str) -> datetime.datetime | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return parse_time(c.get("lastTransitionTime"))
    return None


def _seconds(start: datetime.datetime | None, end: datetime.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, (end - start).total_seconds()), 1)


def last_activation(
    demand: Demand,
    pods: Sequence[Manifest],
    job: Manifest | None,
    previous: Mapping[str, Any] | None,
) -> ActivationStatus | None:
    """The wake that began at `demand.requested_at`: kept as is once complete, else measured anew."""
    kept = ActivationStatus.model_validate(previous) if previous else None
    if demand.requested_at is None:
        return kept
    # Pod and Job times have whole seconds: compare at that resolution.
    start = demand.requested_at.replace(microsecond=0)
    if kept is not None and kept.ready_at and kept.requested_at == _rfc3339(start):
        return kept
    since = [p for p in pods if (_condition_time(p, "PodScheduled") or start) >= start]
    ready = sorted((t, p) for p in since if (t := _condition_time(p, "Ready")) is not None and t >= start)
    ready_at, first = (ready[0][0], ready[0][1]) if ready else (None, None)
    scheduled = [t for p in since if (t := _condition_time(p, "PodScheduled")) is not None]
    running_at = parse_time(((first or {}).get("status") or {}).get("startTime"))
    job_status = (job or {}).get("status") or {}
    job_start = parse_time(job_status.get("startTime"))
    weights, fetched_at = None, None
    if job_start is not None and job_start >= start:  # fetched during this wake (cold pools)
        fetched_at = parse_time(job_status.get("completionTime"))
        weights = _seconds(job_start, fetched_at)
    return ActivationStatus(
        requested_at=_rfc3339(start),
        ready_at=_rfc3339(ready_at) if ready_at else None,
        seconds=_seconds(start, ready_at),
        # From demand (or the weights in place) to a node bound: the operator's and scheduler's part.
        scheduling_seconds=_seconds(fetched_at or start, min(scheduled)) if scheduled else None,
        weights_seconds=weights,
        loading_seconds=_seconds(running_at, ready_at),
    )
