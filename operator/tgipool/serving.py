"""An aiohttp app on a listening socket, shared by the emulator and the gateway."""

from __future__ import annotations

from aiohttp import web


class ListeningApp:
    """Serves `app` on host:port; `port=0` picks a free port (read `.port` after `start()`)."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        backlog: int = 128,
        runner: web.AppRunner | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._backlog = backlog
        self._runner = runner or web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=1.0
        )

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=self._backlog)
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
