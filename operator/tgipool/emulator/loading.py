"""The cold start: an emulated TGI is "loading its weights" for `load_seconds` after it starts.

Real TGI does not answer at all while it loads: the launcher starts the router only once every shard
has loaded its weights and warmed up, so until then the pod's port refuses connections and the kubelet's
probes fail. The emulator listens from the start instead (a sim binds every pod's address at once) and
answers 503 to `/health` (TGI's own unhealthy body) and to the generation routes (TGI's error shape, a
`Retry-After` with the seconds left). A readiness probe sees not-ready either way, so the pod is not
Ready and nothing routes to it. `/info` and `/metrics` answer as soon as the server listens: the
configuration is known up front, and an empty scrape is harmless.
"""

from __future__ import annotations

import math

from tgipool.emulator.errors import InferError
from tgipool.emulator.scheduler import Clock

# What TGI's `/health` answers when its backend is down (router/src/server.rs, `health`).
UNHEALTHY = {"error": "unhealthy", "error_type": "healthcheck"}


class LoadingError(InferError):
    """The emulator's own error while loading (TGI's router would not be listening yet)."""

    status = 503
    error_type = "loading"

    def __init__(self, seconds_left: float) -> None:
        super().__init__(f"Model is loading: ready in {seconds_left:.1f}s")
        self.retry_after = str(max(1, math.ceil(seconds_left)))


class LoadPhase:
    """Loading from `begin()` until `load_seconds` later, on the emulator's clock."""

    def __init__(self, load_seconds: float, clock: Clock) -> None:
        self.load_seconds = load_seconds
        self.clock = clock
        self.ready_at = clock.now() + load_seconds

    def begin(self) -> None:
        """The process starts: loading begins now."""
        self.ready_at = self.clock.now() + self.load_seconds

    @property
    def seconds_left(self) -> float:
        return max(0.0, self.ready_at - self.clock.now())

    @property
    def loading(self) -> bool:
        return self.seconds_left > 0

    def error(self) -> LoadingError | None:
        """The answer to a generation request now: a `LoadingError` while loading, else None."""
        left = self.seconds_left
        return LoadingError(left) if left > 0 else None
