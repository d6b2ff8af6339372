"""An asyncio event loop whose clock jumps to the next timer instead of waiting for it.

The emulator's scheduler sleeps until absolute deadlines (`RealClock.sleep_until`); on this loop the same
code runs minutes of modelled GPU time in a fraction of a second, with identical ordering of events. The loop
does no I/O: its selector never waits, it only advances the clock by the timeout the loop asked to wait.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            # Nothing is scheduled and nothing is ready: every task waits for something that cannot come.
            raise RuntimeError("virtual time: every task is blocked and no timer is pending")
        self._loop.now += max(timeout, 0.0)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self.now


class LoopClock:
    """The emulator's `Clock` on whatever loop runs it (virtual here, real in `tgipool emulate`)."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(deadline - self.now(), 0.0))


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion in virtual time."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()
