"""`tgipool_gateway_added_latency_seconds` is what the client waits for minus the upstream's own time.

A hand-written upstream answers after a known delay and records how long it took; a gateway step made slow
on purpose (the answer's `on_response_prepare` hook, which runs while the answer is written, after the
upstream's last byte) must show in the metric, which must match client-measured minus upstream-measured
time. The old metric ended when the upstream answer was read, before the answer was written (and for
streams counted the whole relay as upstream time): it said about 1 ms here.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tgipool.gateway import GatewayServer, app, parse_config

UPSTREAM_DELAY = 0.03
SLOW_STEP = 0.05
CHAT = {"model": "tgi", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
EVENTS = b'data:{"choices":[{"delta":{"content":" ok"}}]}\n\ndata: [DONE]\n\n'


class TimedUpstream:
    """A TGI-like upstream that answers `/v1/chat/completions` after UPSTREAM_DELAY, timing itself."""

    def __init__(self) -> None:
        self.own: list[float] = []

    def app(self) -> web.Application:
        async def chat(request: web.Request) -> web.StreamResponse:
            t = time.perf_counter()
            data = await request.json()
            await asyncio.sleep(UPSTREAM_DELAY)
            # One write with a Content-Length, streamed or not: the gateway reads it all at once.
            if data.get("stream"):
                resp = web.Response(body=EVENTS, content_type="text/event-stream")
            else:
                resp = web.json_response({"choices": [{"message": {"content": " ok"}}]})
            await resp.prepare(request)
            await resp.write_eof()
            self.own.append(time.perf_counter() - t)
            return resp

        async def info(request: web.Request) -> web.StreamResponse:
            return web.json_response({"max_concurrent_requests": 8})

        application = web.Application()
        application.router.add_post("/v1/chat/completions", chat)
        application.router.add_get("/info", info)
        return application


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_added_latency_is_what_the_client_waits_minus_the_upstream(
    stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = app.add_headers

    async def slow_prepare(request: web.Request, response: web.StreamResponse) -> None:
        await asyncio.sleep(SLOW_STEP)  # a gateway step while the answer is written
        await original(request, response)

    monkeypatch.setattr(app, "add_headers", slow_prepare)

    async def scenario() -> None:
        upstream = TimedUpstream()
        runner = web.AppRunner(upstream.app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        config: dict[str, Any] = {
            "defaultPool": "p",
            "pools": [{"name": "p", "maxInputTokens": 100, "maxTotalTokens": 200, "endpoints": [url]}],
        }
        gw = GatewayServer(parse_config(config))
        await gw.start()
        registry = gw.gateway.metrics.registry
        try:
            async with aiohttp.ClientSession() as session:
                body = json.dumps({**CHAT, "stream": stream}).encode()
                headers = {"Content-Type": "application/json"}
                t = time.perf_counter()
                async with session.post(gw.url + "/v1/chat/completions", data=body, headers=headers) as r:
                    await r.read()
                client = time.perf_counter() - t
                assert r.status == 200
        finally:
            await gw.stop()
            await runner.cleanup()
        added = registry.get_sample_value("tgipool_gateway_added_latency_seconds_sum", {"pool": "p"})
        count = registry.get_sample_value("tgipool_gateway_added_latency_seconds_count", {"pool": "p"})
        upstream_seen = registry.get_sample_value("tgipool_gateway_upstream_seconds_sum", {"pool": "p"})
        assert count == 1 and added is not None and upstream_seen is not None
        (own,) = upstream.own
        # The slow step shows, and the metric is the client's wait minus the upstream's own time
        # (what remains: a loopback connect to the upstream, well under the tolerance).
        assert added >= SLOW_STEP * 0.9, (added, client, own)
        assert abs(added - (client - own)) < 0.015, (added, client, own)
        assert own <= upstream_seen < own + 0.015

    asyncio.run(scenario())
