"""What each tier keeps at rest and how a pool at rest wakes: the activation defaults per tier.

warm: weights stay on the cache PVC, so a wake is scheduling + loading; cold: nothing stays, so a
wake also fetches the weights and may hold requests longer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class EffectiveActivation:
    idle_after_seconds: int
    hold_seconds: int
    max_pending_requests: int


ACTIVATION_DEFAULTS: dict[str, EffectiveActivation] = {
    "warm": EffectiveActivation(idle_after_seconds=900, hold_seconds=600, max_pending_requests=100),
    "cold": EffectiveActivation(idle_after_seconds=900, hold_seconds=1800, max_pending_requests=100),
}


class ActivationLike(Protocol):
    @property
    def idle_after_seconds(self) -> int | None: ...
    @property
    def hold_seconds(self) -> int | None: ...
    @property
    def max_pending_requests(self) -> int | None: ...


def effective_activation(tier: str, given: ActivationLike) -> EffectiveActivation | None:
    """None for hot pools: they never sleep and never hold."""
    base = ACTIVATION_DEFAULTS.get(tier)
    if base is None:
        return None
    return EffectiveActivation(
        idle_after_seconds=given.idle_after_seconds or base.idle_after_seconds,
        hold_seconds=given.hold_seconds or base.hold_seconds,
        max_pending_requests=given.max_pending_requests or base.max_pending_requests,
    )
