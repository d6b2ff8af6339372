"""Faults that the emulator and `tgipool sim` reproduce, so that a pool can fail as TGI does on a
simulated cluster (and `tgipool doctor` be tested against it). PURE: settings and pod status patches.

The knob: the pod annotation `sim.tgipool.io/fault` (a pool puts it on its pods through
`spec.podTemplate.annotations`), or `tgipool emulate --fault`:

* `oom`: TGI dies at warm-up, out of memory. Under the sim the pod's TGI container is reported as a
  kubelet would: terminated with reason OOMKilled (exit 137), restarted with the kubelet's back-off
  (10 s, doubling to 5 min), waiting in CrashLoopBackOff in between, never Ready. `tgipool emulate
  --fault oom` loads for `--load-seconds`, prints TGI's warm-up error and exits 1.
* `slow`: a slow model: prefill and every decode step 10 times slower (`slow=F`: F times).
* `never-ready`: TGI never finishes loading: nothing listens on the pod's port, so its readiness
  probe fails for ever (the pod stays Running, not Ready).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from tgipool.emulator.settings import EmulatorSettings

FAULT_ANNOTATION = "sim.tgipool.io/fault"
KINDS = ("oom", "slow", "never-ready")
DEFAULT_SLOW_FACTOR = 10.0
OOM_EXIT_CODE = 137  # SIGKILL from the kernel's OOM killer
BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 10, 300  # the kubelet's crash-loop back-off
TGI_CONTAINER = "tgi"


@dataclass(frozen=True)
class Fault:
    kind: Literal["oom", "slow", "never-ready"]
    factor: float = DEFAULT_SLOW_FACTOR


def parse(value: str) -> Fault:
    """`oom`, `never-ready`, `slow` or `slow=F`; anything else is a ValueError naming the choices."""
    kind, _, arg = value.strip().partition("=")
    if kind == "slow":
        factor = float(arg) if arg else DEFAULT_SLOW_FACTOR
        if not factor >= 1:
            raise ValueError(f"slow=F needs a factor F >= 1, got {arg!r}")
        return Fault("slow", factor)
    if kind == "oom" and not arg:
        return Fault("oom")
    if kind == "never-ready" and not arg:
        return Fault("never-ready")
    raise ValueError(f"unknown fault {value!r}: one of oom, slow, slow=F, never-ready")


def of_pod(pod: Mapping[str, Any]) -> Fault | None:
    """The pod's fault, if its annotation names a known one (an unknown value is ignored)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(FAULT_ANNOTATION)
    if not raw:
        return None
    try:
        return parse(raw)
    except ValueError:
        return None


def slowed(settings: EmulatorSettings, factor: float) -> EmulatorSettings:
    """The same emulator with prefill and decode `factor` times slower."""
    return replace(
        settings,
        prefill_tokens_per_second=settings.prefill_tokens_per_second / factor,
        decode_step_ms=settings.decode_step_ms * factor,
        decode_step_growth_ms=settings.decode_step_growth_ms * factor,
    )


def served(fault: Fault | None, settings: EmulatorSettings) -> EmulatorSettings | None:
    """What the sim serves on a pod with `fault`: None when TGI would not be listening at all."""
    if fault is None:
        return settings
    if fault.kind == "slow":
        return slowed(settings, fault.factor)
    return None  # oom: it crashed; never-ready: it never opens its port


def warmup_oom_message(settings: EmulatorSettings) -> str:
    """What TGI's warm-up raises when the prefill it tries does not fit (flash_causal_lm.py)."""
    tokens = settings.resolved().prefill_budget
    advice = "You need to decrease `--max-batch-prefill-tokens`"
    return f"Not enough memory to handle {tokens} prefill tokens. {advice}"


def crashes(pod: Mapping[str, Any]) -> bool:
    """A Running pod whose TGI dies at warm-up (the sim reports its crash loop instead of serving it)."""
    fault = of_pod(pod)
    status = pod.get("status") or {}
    deleting = (pod.get("metadata") or {}).get("deletionTimestamp")
    return fault is not None and fault.kind == "oom" and status.get("phase") == "Running" and not deleting


def crash_schedule(elapsed: float) -> tuple[int, float, float]:
    """After `elapsed` seconds of a container that dies at once on every start: (restarts so far, when
    the last start was, the back-off now running), in seconds from the first start."""
    restarts, at, backoff = 0, 0.0, float(BACKOFF_SECONDS)
    while at + backoff <= elapsed:
        at += backoff
        restarts += 1
        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
    return restarts, at, backoff


def _time(value: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _rfc3339(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def crash_patch(pod: Mapping[str, Any], now: datetime.datetime) -> dict[str, Any] | None:
    """The pods/status patch a kubelet would write for a TGI container OOMKilled at every start, as of
    `now`; None when the pod already says so."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    start = _time(status.get("startTime"))
    statuses = status.get("containerStatuses") or []
    if start is None or not statuses:
        return None
    restarts, last_start, backoff = crash_schedule(max(0.0, (now - start).total_seconds()))
    started = _rfc3339(start + datetime.timedelta(seconds=last_start))
    pod_ref = f"{meta.get('name')}_{meta.get('namespace')}({meta.get('uid')})"
    new = []
    for cs in statuses:
        if cs.get("name") != TGI_CONTAINER:
            new.append(cs)
            continue
        new.append(
            {
                **{k: v for k, v in cs.items() if k not in ("state", "lastState")},
                "ready": False,
                "started": False,
                "restartCount": restarts + 1,
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off {int(backoff)}s restarting failed container={TGI_CONTAINER} "
                        f"pod={pod_ref}",
                    }
                },
                "lastState": {
                    "terminated": {
                        "exitCode": OOM_EXIT_CODE,
                        "reason": "OOMKilled",
                        "startedAt": started,
                        "finishedAt": started,
                    }
                },
            }
        )
    if new == statuses:
        return None
    conditions = [
        {
            "type": ctype,
            "status": "False",
            "reason": "ContainersNotReady",
            "message": f"containers with unready status: [{TGI_CONTAINER}]",
            "lastTransitionTime": _rfc3339(start),
        }
        for ctype in ("ContainersReady", "Ready")  # Ready last, as the sim's log reads it
    ]
    patch: dict[str, Any] = {"status": {"conditions": conditions, "containerStatuses": new}}
    if meta.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    return patch
