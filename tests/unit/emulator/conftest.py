"""Emulators on loopback ports, each in its own event-loop thread, for tests that use real (sync) clients."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tgipool.emulator import EmulatorServer, EmulatorSettings

# Fast model knobs: a decode step of 1 ms keeps every test well under a second.
FAST: dict[str, Any] = {
    "hostname": "127.0.0.1",
    "port": 0,
    "max_total_tokens": 512,
    "decode_step_ms": 1.0,
    "decode_step_growth_ms": 0.0,
    "prefill_tokens_per_second": 1_000_000.0,
}


class ThreadedEmulator:
    def __init__(self, settings: EmulatorSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._call(self._make(settings))
        self._call(self.server.start())

    @staticmethod
    async def _make(settings: EmulatorSettings) -> EmulatorServer:
        return EmulatorServer(settings)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self._call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., ThreadedEmulator]]:
    started: list[ThreadedEmulator] = []

    def make(**overrides: Any) -> ThreadedEmulator:
        emu = ThreadedEmulator(EmulatorSettings(**{**FAST, **overrides}))
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.close()


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[ThreadedEmulator]:
    emu = ThreadedEmulator(EmulatorSettings(**FAST))
    yield emu
    emu.close()
