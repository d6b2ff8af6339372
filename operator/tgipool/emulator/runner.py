"""Run one or many emulated TGI servers inside the current event loop.

`tgipool emulate` runs one; `tgipool sim` will run one per simulated pod, each on its own host:port
with its own scheduler, permits and metrics registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiohttp import web

from tgipool.emulator.engine import Emulator
from tgipool.emulator.scheduler import Clock
from tgipool.emulator.server import EMULATOR_KEY, build_app
from tgipool.emulator.settings import EmulatorSettings


class EmulatorServer:
    """An emulator bound to a listening socket. `port=0` picks a free port (see `.port` after start)."""

    def __init__(self, settings: EmulatorSettings, clock: Clock | None = None) -> None:
        self.app = build_app(settings, clock)
        self.emulator: Emulator = self.app[EMULATOR_KEY]
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        self.host = settings.hostname
        self.port = settings.port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in {"0.0.0.0", ""} else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


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
