"""The gateway's upstream client (`upstream.py`): keep-alive connections are reused, dead ones are not."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiohttp import web

from tgipool.gateway import GatewayServer, parse_config
from tgipool.gateway.upstream import KEEPALIVE_SECONDS, UpstreamClient, UpstreamConnectError

from .conftest import free_port


class CountingUpstream:
    """A TGI-like `/generate` that records each request's client port (one per upstream connection)."""

    def __init__(self) -> None:
        self.ports: list[int] = []

    def app(self) -> web.Application:
        async def generate(request: web.Request) -> web.StreamResponse:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            self.ports.append(peer[1] if peer else -1)
            await request.read()
            return web.json_response({"generated_text": " ok"}, headers={"X-Seen-Host": request.host})

        application = web.Application()
        application.router.add_post("/generate", generate)

        async def info(request: web.Request) -> web.StreamResponse:
            return web.json_response({"max_concurrent_requests": 8})

        application.router.add_get("/info", info)
        return application


def test_connections_are_kept_alive_and_a_closed_one_is_not_reused() -> None:
    async def scenario() -> None:
        upstream = CountingUpstream()
        runner = web.AppRunner(upstream.app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        config: dict[str, Any] = {
            "defaultPool": "p",
            "pools": [
                {"name": "p", "maxInputTokens": 100, "maxTotalTokens": 200,
                 "endpoints": [f"http://127.0.0.1:{port}"]}
            ],
        }  # fmt: skip
        gw = GatewayServer(parse_config(config))
        await gw.start()
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(3):
                    async with session.post(gw.url + "/generate", json={"inputs": "Hi"}) as resp:
                        assert resp.status == 200
                        assert resp.headers["X-Seen-Host"] == f"127.0.0.1:{port}"
                        await resp.read()
                assert len(set(upstream.ports)) == 1, upstream.ports  # one kept-alive connection
                # The upstream closes its connections (a restart): the next request opens a new one.
                for conn in list(runner.server.connections if runner.server else []):
                    conn.force_close()
                    conn.close()
                await asyncio.sleep(0.05)
                async with session.post(gw.url + "/generate", json={"inputs": "Hi"}) as resp:
                    assert resp.status == 200
                assert len(set(upstream.ports)) == 2, upstream.ports
            # A connection idle for longer than the keep-alive time is closed.
            client = gw.gateway.upstream
            assert client.idle_connections() == 1
            client.sweep(time.monotonic() + KEEPALIVE_SECONDS - 1)
            assert client.idle_connections() == 1
            client.sweep(time.monotonic() + KEEPALIVE_SECONDS + 1)
            assert client.idle_connections() == 0
            # Not by a retry after a failed try on the dead connection: none was tried.
            retries = gw.gateway.metrics.registry.get_sample_value(
                "tgipool_gateway_retries_total", {"pool": "p", "reason": "connect_error"}
            )
            assert not retries
        finally:
            await gw.stop()
            await runner.cleanup()

    asyncio.run(scenario())


def test_an_endpoint_that_refuses_is_a_connect_error() -> None:
    async def scenario() -> None:
        client = UpstreamClient()
        try:
            await client.request("POST", f"http://127.0.0.1:{free_port()}", "/generate", b"{}", [], 1.0)
        except UpstreamConnectError:
            pass
        else:
            raise AssertionError("a refused connection must raise UpstreamConnectError")
        finally:
            client.close()

    asyncio.run(scenario())
