"""Real loopback servers for gateway tests: emulated TGI backends (the emulator's runner) and the gateway.

Each test runs one scenario with `asyncio.run`; backends and gateway share that event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tgipool.emulator import EmulatorServer, EmulatorSettings
from tgipool.emulator.runner import start_emulators, stop_emulators
from tgipool.gateway import GatewayServer, parse_config

# A decode step of 0.05 ms keeps even 3000-token generations short; prefill is practically free.
FAST: dict[str, Any] = {
    "hostname": "127.0.0.1",
    "port": 0,
    "decode_step_ms": 0.05,
    "decode_step_growth_ms": 0.0,
    "prefill_tokens_per_second": 10_000_000.0,
}

# The reference example: a short and a long pool serving llama3-8b-ru, a code pool, short as default.
REFERENCE_BACKENDS: dict[str, dict[str, Any]] = {
    "short-a": {"model_id": "llama-short", "max_input_tokens": 2048, "max_total_tokens": 4096},
    "short-b": {"model_id": "llama-short", "max_input_tokens": 2048, "max_total_tokens": 4096},
    "long-a": {"model_id": "llama-long", "max_input_tokens": 8192, "max_total_tokens": 12288},
    "code-a": {"model_id": "qwen-coder", "max_input_tokens": 6144, "max_total_tokens": 8192},
}


def reference_config(urls: dict[str, str], **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "defaultPool": "short",
        "queueTimeoutSeconds": 5,
        "pools": [
            {
                "name": "short",
                "servedName": "llama3-8b-ru",
                "maxInputTokens": 2048,
                "maxTotalTokens": 4096,
                "priority": 10,
                "fallbackPool": "long",
                "endpoints": [urls["short-a"], urls["short-b"]],
            },
            {
                "name": "long",
                "servedName": "llama3-8b-ru",
                "profile": "long",
                "endpoints": [urls["long-a"]],
            },
            {
                "name": "code",
                "servedName": "code-7b",
                "maxInputTokens": 6144,
                "maxTotalTokens": 8192,
                "endpoints": [urls["code-a"]],
            },
        ],
    }
    cfg.update(overrides)
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    gateway: GatewayServer
    backends: dict[str, EmulatorServer]
    session: aiohttp.ClientSession
    extra: list[web.AppRunner] = field(default_factory=list)
    core_url: str | None = None  # the compiled core in front of the gateway, when it runs

    @property
    def url(self) -> str:
        return self.core_url or self.gateway.url

    @property
    def urls(self) -> dict[str, str]:
        return {name: b.url for name, b in self.backends.items()}

    async def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        async with self.session.post(self.url + path, json=body, headers=headers) as resp:
            raw = await resp.read()
            try:
                data: Any = await resp.json(content_type=None)
            except ValueError:
                data = raw.decode()
            return resp.status, dict(resp.headers), data

    async def generate(
        self, inputs: str, max_new_tokens: int = 3, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        body = {"inputs": inputs, "parameters": {"max_new_tokens": max_new_tokens}}
        return await self.post("/generate", body, headers)

    def metric(self, name: str, **labels: str) -> float:
        value = self.gateway.gateway.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


CORE_ENV = "TGIPOOL_TEST_CORE"


async def until_listening(session: aiohttp.ClientSession, url: str, seconds: float = 10.0) -> None:
    """The core listens once it has its first snapshot; bounded."""
    for _ in range(int(seconds / 0.01)):
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with session.get(url + "/health") as resp:
                await resp.read()
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the core at {url} did not listen within {seconds:g} s")


@contextlib.asynccontextmanager
async def stack(
    backends: dict[str, dict[str, Any]],
    config: Callable[[dict[str, str]], dict[str, Any]],
    core_link: bool = False,
) -> AsyncIterator[Stack]:
    names = list(backends)
    servers = await start_emulators(EmulatorSettings(**{**FAST, **backends[n]}).resolved() for n in names)
    by_name = dict(zip(names, servers, strict=True))
    core = os.environ.get(CORE_ENV)  # set by test_through_core.py: the same tests, the core in front
    gw = GatewayServer(
        parse_config(config({n: s.url for n, s in by_name.items()})), core_link=core_link or bool(core)
    )
    await gw.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    st = Stack(gw, by_name, session)
    proc = None
    if core:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            core, "--listen", f"127.0.0.1:{port}", "--python", gw.url, "--report-interval", "20ms"
        )
        st.core_url = f"http://127.0.0.1:{port}"
        await until_listening(session, st.core_url)
    try:
        yield st
    finally:
        if proc is not None:
            proc.terminate()
            await proc.wait()
        await session.close()
        await gw.stop()
        for runner in st.extra:
            await runner.cleanup()
        await stop_emulators(servers)


async def serve_app(st: Stack, app: web.Application) -> str:
    """Run a hand-written backend (for failure modes the emulator does not have) on a free port."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    st.extra.append(runner)
    return f"http://127.0.0.1:{runner.addresses[0][1]}"


def long_prompt(tokens: int) -> str:
    """`tokens` tokens in the emulator's approximation: ' word' is one piece."""
    return "word" + " word" * (tokens - 1)


class GatedBackend:
    """A TGI-like backend whose `/generate` answers only once `gate` is set; it records arrival order."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.seen: list[str] = []

    def app(self) -> web.Application:
        async def generate(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            self.seen.append(body["inputs"])
            await self.gate.wait()
            return web.json_response({"generated_text": " ok"})

        async def info(request: web.Request) -> web.StreamResponse:
            return web.json_response({"max_concurrent_requests": 1})

        app = web.Application()
        app.router.add_post("/generate", generate)
        app.router.add_get("/info", info)
        return app


async def wait_until(predicate: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    """Poll a condition (state, not timing, is asserted; the bound only stops a hung test)."""
    for _ in range(int(seconds / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")
