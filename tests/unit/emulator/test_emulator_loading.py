"""The cold start: /health and generation answer 503 for `load_seconds` after start, then serve."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import pytest
import requests
from aiohttp.test_utils import TestClient, TestServer

from tgipool.emulator import EmulatorSettings
from tgipool.emulator import cli as emulator_cli
from tgipool.emulator.engine import Emulator
from tgipool.emulator.server import EMULATOR_KEY, build_app
from tgipool.emulator.settings import SettingsError

from .conftest import FAST, ThreadedEmulator


class StepClock:
    """Time moves only when the test says (and to a sleep's deadline, so generation still finishes)."""

    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        self.t = max(self.t, deadline)
        await asyncio.sleep(0)


def test_health_and_generation_answer_503_until_loaded() -> None:
    clock = StepClock()
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 2}}

    async def go() -> None:
        app = build_app(EmulatorSettings(**{**FAST, "load_seconds": 30.0}), clock)
        async with TestClient(TestServer(app)) as client:
            for path in ("/health", "/", "/ping"):
                r = await client.get(path)
                assert r.status == 503, path
                assert await r.json() == {"error": "unhealthy", "error_type": "healthcheck"}
            r = await client.post("/generate", json=body)
            assert r.status == 503 and r.headers["Retry-After"] == "30"
            assert await r.json() == {"error": "Model is loading: ready in 30.0s", "error_type": "loading"}
            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            assert (await client.post("/v1/chat/completions", json=chat)).status == 503
            # What the server is, it knows before loading: /info and /metrics answer.
            assert (await client.get("/info")).status == 200
            assert (await client.get("/metrics")).status == 200

            clock.t += 29.5
            r = await client.get("/health")
            assert r.status == 503
            assert (await client.post("/generate", json=body)).headers["Retry-After"] == "1"

            clock.t += 0.5  # 30 s after start: loaded
            assert (await client.get("/health")).status == 200
            r = await client.post("/generate", json=body)
            assert r.status == 200 and r.headers["x-generated-tokens"] == "2"
            # The 503s were not requests TGI's router saw: no failure was counted.
            assert "tgi_request_failure" not in app[EMULATOR_KEY].metrics.render()

    asyncio.run(go())


def test_loading_starts_when_the_server_starts() -> None:
    clock = StepClock()

    async def go() -> None:
        emu = Emulator(EmulatorSettings(load_seconds=5.0), clock)
        clock.t += 60  # built long before it starts: loading has not begun
        emu.start()
        try:
            assert emu.load.loading and emu.load.seconds_left == 5.0
            clock.t += 5
            assert not emu.load.loading and emu.load.error() is None
        finally:
            await emu.stop()

    asyncio.run(go())


def test_a_short_load_in_real_time(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    t0 = time.monotonic()
    emu = emulator_factory(load_seconds=0.6)
    assert requests.get(emu.url + "/health", timeout=5).status_code == 503
    while requests.get(emu.url + "/health", timeout=5).status_code != 200:
        assert time.monotonic() - t0 < 5, "never loaded"
        time.sleep(0.05)
    assert time.monotonic() - t0 >= 0.6
    assert requests.post(emu.url + "/generate", json={"inputs": "x"}, timeout=5).status_code == 200


def test_no_load_by_default(shared_emulator: ThreadedEmulator) -> None:
    assert requests.get(shared_emulator.url + "/health", timeout=5).status_code == 200


def test_cli_flag_env_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser(prog="tgipool")
    emulator_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["emulate", "--load-seconds", "12.5"])
    assert emulator_cli.settings_from_args(args).load_seconds == 12.5
    monkeypatch.setenv("LOAD_SECONDS", "3")
    parser = argparse.ArgumentParser(prog="tgipool")
    emulator_cli.add_parser(parser.add_subparsers(dest="command"))
    assert emulator_cli.settings_from_args(parser.parse_args(["emulate"])).load_seconds == 3.0
    with pytest.raises(SettingsError, match="`load_seconds` must be >= 0"):
        EmulatorSettings(load_seconds=-1).resolved()
