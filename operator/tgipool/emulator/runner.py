"""Run one or many emulated TGI servers inside the current event loop.

`tgipool emulate` runs one; `tgipool sim` will run one per simulated pod, each on its own host:port
with its own scheduler, permits and metrics registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from tgipool.emulator.engine import Emulator
from tgipool.emulator.scheduler import Clock
from tgipool.emulator.server import EMULATOR_KEY, build_app
from tgipool.emulator.settings import EmulatorSettings
from tgipool.serving import ListeningApp


class EmulatorServer(ListeningApp):
    """An emulator bound to a listening socket. `port=0` picks a free port (see `.port` after start)."""

    def __init__(self, settings: EmulatorSettings, clock: Clock | None = None) -> None:
        super().__init__(build_app(settings, clock), settings.hostname, settings.port)
        self.emulator: Emulator = self.app[EMULATOR_KEY]


async def start_emulators(
    settings: Iterable[EmulatorSettings], clock: Clock | None = None
) -> list[EmulatorServer]:
    """Start several emulators concurrently in this loop; stop them with `stop_emulators`."""
    servers = [EmulatorServer(s, clock) for s in settings]
    await asyncio.gather(*(s.start() for s in servers))
    return servers


async def stop_emulators(servers: Iterable[EmulatorServer]) -> None:
    await asyncio.gather(*(s.stop() for s in servers))


async def serve_forever(settings: EmulatorSettings) -> None:
    server = EmulatorServer(settings)
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
