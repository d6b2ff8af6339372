"""Backends that stall, clients that leave, a backend killed mid-stream: every wait is bounded, every slot
comes back, and the upstream request is closed so TGI stops generating for nobody."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
from aiohttp import web

from tgipool.gateway import parse_config

from .conftest import Stack, free_port, serve_app, stack, wait_until

TOKEN = b'data:{"index":1,"token":{"id":1,"text":" a","logprob":-0.1,"special":false}}\n\n'
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


class StallingBackend:
    """Accepts every request; `/generate` and the OpenAI routes never answer, `/generate_stream` (and
    streamed OpenAI requests) send one token and then nothing. Records requests that were cancelled."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    async def _hang(self) -> None:
        self.started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if request.path == "/generate_stream" or body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(TOKEN)
            await self._hang()
            return resp
        await self._hang()
        return web.Response()

    async def info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"max_concurrent_requests": 2})

    def app(self) -> web.Application:
        app = web.Application(handler_args={"handler_cancellation": True})
        for path in ("/generate", "/generate_stream", "/v1/chat/completions"):
            app.router.add_post(path, self.generate)
        app.router.add_get("/info", self.info)
        return app


def _config(url: str, **timeouts: Any) -> dict[str, Any]:
    pool = {
        "name": "p",
        "servedName": "m",
        "profile": "short",
        "endpoints": [url],
        "maxConcurrentRequests": 2,
    }
    return {"defaultPool": "p", "queueTimeoutSeconds": 0.2, "pools": [pool], **timeouts}


async def _stalling_stack(st: Stack, **timeouts: Any) -> tuple[StallingBackend, str]:
    backend = StallingBackend()
    url = await serve_app(st, backend.app())
    st.gateway.gateway.apply(parse_config(_config(url, **timeouts)))
    return backend, url


def test_a_backend_that_never_answers_gets_504_within_response_timeout() -> None:
    async def scenario() -> None:
        async with stack({}, lambda urls: {"pools": []}) as st:
            backend, url = await _stalling_stack(st, responseTimeoutSeconds=0.3)
            t0 = time.monotonic()
            status, headers, body = await st.generate("hi")
            assert time.monotonic() - t0 < 5  # the bound is 0.3 s; the slack is for a loaded machine
            assert status == 504 and body["error_type"] == "timeout", body
            assert "responseTimeoutSeconds" in body["error"] and headers["X-TGIPool-Pool"] == "p"
            status, _, body = await st.post("/v1/chat/completions", CHAT)
            assert (
                status == 504
                and body["error"]["code"] == "timeout"
                and body["error"]["type"] == "server_error"
            )
            # The slots came back, and the backend saw both requests go away.
            ep = st.gateway.gateway.table.endpoints[url]
            assert ep.in_flight == 0
            await wait_until(lambda: backend.cancelled == 2, "the backend to see its requests closed")

    asyncio.run(scenario())


def test_a_stream_that_stalls_after_one_token_ends_with_an_error_event() -> None:
    async def scenario() -> None:
        async with stack({}, lambda urls: {"pools": []}) as st:
            backend, url = await _stalling_stack(st, streamIdleTimeoutSeconds=0.3)
            t0 = time.monotonic()
            body = {"inputs": "hi", "parameters": {"max_new_tokens": 5}}
            async with st.session.post(st.url + "/generate_stream", json=body) as resp:
                assert resp.status == 200
                raw = await resp.read()
            assert time.monotonic() - t0 < 5  # the bound is 0.3 s; the slack is for a loaded machine
            events = [e for e in raw.split(b"\n\n") if e]
            assert events[0] == TOKEN.strip()
            assert events[-1].startswith(b'data:{"error":') and b'"error_type":"timeout"' in events[-1]
            assert b"streamIdleTimeoutSeconds" in events[-1]
            # On /v1: OpenAI's error chunk, then the end marker.
            async with st.session.post(
                st.url + "/v1/chat/completions", json={**CHAT, "stream": True}
            ) as resp:
                raw = await resp.read()
            assert raw.endswith(b"data: [DONE]\n\n")
            last = [e for e in raw.split(b"\n\n") if e][-2]
            assert last.startswith(b'data: {"error":{') and b'"code":"timeout"' in last
            assert st.gateway.gateway.table.endpoints[url].in_flight == 0
            await wait_until(lambda: backend.cancelled == 2, "the backend to see its streams closed")

    asyncio.run(scenario())


def test_a_client_that_leaves_frees_its_slot_and_cancels_upstream_at_once() -> None:
    """Six abandoned requests used to keep every slot of the pool: all later requests got 429."""

    async def scenario() -> None:
        async with stack({}, lambda urls: {"pools": []}) as st:
            backend, url = await _stalling_stack(st)
            ep = st.gateway.gateway.table.endpoints[url]
            for path, body in (
                ("/generate", {"inputs": "hi"}),
                ("/generate_stream", {"inputs": "hi"}),
                ("/v1/chat/completions", CHAT),
            ) * 2:
                started = backend.started
                with_timeout = aiohttp.ClientTimeout(total=0.3)
                try:
                    async with st.session.post(st.url + path, json=body, timeout=with_timeout) as resp:
                        await resp.read()
                except TimeoutError:
                    pass  # the client gives up and closes its connection
                assert backend.started == started + 1
                await wait_until(lambda: ep.in_flight == 0, "the slot to come back", seconds=3)
            await wait_until(lambda: backend.cancelled == 6, "the backend to see every request go", seconds=3)
            # The pool (2 slots) still takes requests: they reach the backend, none is refused with 429.
            task = asyncio.create_task(st.generate("hi"))
            await wait_until(lambda: backend.started == 7, "a new request to reach the backend")
            task.cancel()

    asyncio.run(scenario())


def test_a_backend_killed_mid_stream_ends_the_stream_with_an_error_event() -> None:
    """A real emulator process, SIGKILLed while it streams: the client gets the route's error event and end
    marker, the slot comes back, and the next request goes to the other endpoint."""

    async def scenario() -> None:
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tgipool.cli",
                "emulate",
                "--hostname",
                "127.0.0.1",
                "--port",
                str(port),
                "--model-id",
                "m",
                "--max-total-tokens",
                "4096",
                "--decode-step-ms",
                "20",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        doomed = f"http://127.0.0.1:{port}"
        try:
            async with stack({"live": {"model_id": "m"}}, lambda urls: {"pools": []}) as st:
                pool = {
                    "name": "p",
                    "servedName": "m",
                    "profile": "short",
                    "endpoints": [doomed],
                    "maxConcurrentRequests": 8,
                }
                st.gateway.gateway.apply(parse_config({"defaultPool": "p", "pools": [pool]}))

                async def up() -> bool:
                    try:
                        async with st.session.get(doomed + "/health") as r:
                            return r.status == 200
                    except aiohttp.ClientError:
                        return False

                for _ in range(200):
                    if await up():
                        break
                    await asyncio.sleep(0.05)
                body = {"inputs": "hi", "parameters": {"max_new_tokens": 500}}
                chat = {**CHAT, "max_tokens": 500, "stream": True}
                async with (
                    st.session.post(st.url + "/generate_stream", json=body) as tgi_resp,
                    st.session.post(st.url + "/v1/chat/completions", json=chat) as openai_resp,
                ):
                    first = await tgi_resp.content.readuntil(b"\n\n")
                    assert first.startswith(b'data:{"index":1')
                    await openai_resp.content.readuntil(b"\n\n")
                    os.kill(proc.pid, signal.SIGKILL)
                    tgi_raw = first + await tgi_resp.read()
                    openai_raw = await openai_resp.read()
                tgi_last = [e for e in tgi_raw.split(b"\n\n") if e][-1]
                assert b'"error_type":"incomplete_generation_stream"' in tgi_last
                assert openai_raw.endswith(b"data: [DONE]\n\n")
                assert b'"code":"incomplete_generation_stream"' in openai_raw
                assert st.gateway.gateway.table.endpoints[doomed].in_flight == 0
                # The next request: the dead endpoint is retried once, then the live one answers.
                pool["endpoints"] = [doomed, st.urls["live"]]
                st.gateway.gateway.apply(parse_config({"defaultPool": "p", "pools": [pool]}))
                for _ in range(3):
                    status, _, body = await st.generate("hi")
                    assert status == 200, body
        finally:
            proc.kill()
            proc.wait(timeout=10)

    asyncio.run(scenario())
