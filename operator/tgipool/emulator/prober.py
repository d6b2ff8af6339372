"""A kubelet's readiness prober, for the pods `tgipool sim` serves (KWOK runs no prober of its own).

Like the kubelet: an HTTP GET on each container's readinessProbe, 200-399 is a success, anything
else (503 while the emulator loads, a refused connection, a timeout) a failure; a container turns
ready after `successThreshold` successes in a row and unready after `failureThreshold` failures.
A ready container is probed every `periodSeconds` (10 s for TGI pods), as the kubelet does; unlike
it, a container not ready yet is probed at every sim sync (`--interval`), so readiness follows sooner
than on a real node. (Every container at every sync was a probe per Ready pod every 0.5 s, work that
grows with the pods and shares the machine with the API server in the operator bench; the saving is
not measured.) A startup probe is not run separately (its first success is the readiness probe's), and
nothing is restarted.
At most `PARALLEL` probes are in flight, and a probe's timeout starts when it is sent: the emulators
answer from the sim's own event loop, so a thousand probes at once made them miss their timeouts and
flipped Ready pods back (a kubelet's probes of one node are spread over their periods).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from tgipool.emulator.readiness import Probe, readiness_probes

PARALLEL = 32


@dataclass
class _Streak:
    ready: bool
    successes: int = 0
    failures: int = 0
    due: float = 0.0  # (event loop time) a ready container's next probe

    def record(self, ok: bool, probe: Probe) -> bool:
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= probe.success_threshold:
                self.ready = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= probe.failure_threshold:
                self.ready = False
        return self.ready


def _container_ready(pod: Mapping[str, Any], name: str) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return any(cs.get("name") == name and cs.get("ready") for cs in statuses)


class ReadinessProber:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        # (pod uid, container) -> streak; starts from what the pod says, so a restarted sim does not
        # flip Ready pods to unready before a single probe has failed.
        self._streaks: dict[tuple[str, str], _Streak] = {}
        self._slots = asyncio.Semaphore(PARALLEL)

    async def _get(self, probe: Probe) -> bool:
        async with self._slots:
            try:
                timeout = aiohttp.ClientTimeout(total=probe.timeout_seconds)
                async with self.session.get(probe.url, timeout=timeout, allow_redirects=False) as r:
                    return 200 <= r.status < 400
            except (aiohttp.ClientError, TimeoutError, OSError):
                return False

    async def verdicts(self, pod: Mapping[str, Any]) -> dict[str, bool]:
        """Probe the pod's containers that are due; container -> ready, after the thresholds."""
        uid, now = pod["metadata"]["uid"], asyncio.get_running_loop().time()
        out, due = {}, []
        for probe in readiness_probes(pod):
            key = (uid, probe.container)
            streak = self._streaks.setdefault(key, _Streak(ready=_container_ready(pod, probe.container)))
            if streak.ready and now < streak.due:
                out[probe.container] = True
            else:
                due.append((probe, streak))
        results = await asyncio.gather(*(self._get(p) for p, _ in due))
        for (probe, streak), ok in zip(due, results, strict=True):
            out[probe.container] = streak.record(ok, probe)
            streak.due = now + probe.period_seconds
        return out

    def forget(self, live_uids: Iterable[str]) -> None:
        """Drop the streaks of pods that are gone."""
        live = set(live_uids)
        self._streaks = {k: v for k, v in self._streaks.items() if k[0] in live}
