"""Continuous batching and the latency model: exact under a virtual clock, orderings in real time."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tgipool.emulator.engine import Emulator
from tgipool.emulator.settings import EmulatorSettings
from tgipool.emulator.validation import GenerateRequest, parse_parameters

from .conftest import ThreadedEmulator


class VirtualClock:
    """Time jumps straight to each deadline, so timings are exact and tests take no wall time."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        self.t = max(self.t, deadline)
        await asyncio.sleep(0)


def request(n_input: int, max_new: int) -> GenerateRequest:
    return GenerateRequest(inputs=" a" * n_input, parameters=parse_parameters({"max_new_tokens": max_new}))


async def run_batch(settings: EmulatorSettings, reqs: list[GenerateRequest]) -> list[dict[str, str]]:
    emu = Emulator(settings, VirtualClock())
    emu.start()
    try:
        results = await asyncio.gather(*(emu.generate(r) for r in reqs))
    finally:
        await emu.stop()
    return [headers for headers, _ in results]


def test_single_request_latency_is_exact() -> None:
    settings = EmulatorSettings(prefill_tokens_per_second=1000, decode_step_ms=10, decode_step_growth_ms=2)
    (h,) = asyncio.run(run_batch(settings, [request(100, 11)]))
    # 100 tokens / 1000 tok/s = 100 ms prefill (gives token 1), then 10 decode steps of 10 + 2*1 ms.
    assert h["x-total-time"] == "220"
    assert h["x-queue-time"] == "0"
    assert h["x-time-per-token"] == "20"


def test_batch_budget_makes_requests_queue() -> None:
    # Each request reserves 10 + 10 = 20 tokens; a 40-token budget runs two at a time.
    settings = EmulatorSettings(
        max_total_tokens=40, max_batch_total_tokens=40, max_batch_prefill_tokens=40,
        prefill_tokens_per_second=1e9, decode_step_ms=10, decode_step_growth_ms=0,
    )  # fmt: skip
    headers = asyncio.run(run_batch(settings, [request(10, 10) for _ in range(4)]))
    queue = sorted(int(h["x-queue-time"]) for h in headers)
    assert queue[:2] == [0, 0]
    assert queue[2] == queue[3] >= 90  # the second pair waits for the first to finish (9 steps)


def test_decode_step_grows_with_batch_size() -> None:
    settings = EmulatorSettings(prefill_tokens_per_second=1e9, decode_step_ms=1, decode_step_growth_ms=1)
    alone = asyncio.run(run_batch(settings, [request(4, 21)]))[0]
    crowd = asyncio.run(run_batch(settings, [request(4, 21) for _ in range(16)]))
    assert int(alone["x-total-time"]) == 40  # 20 steps of 1 + 1*1 ms
    assert all(int(h["x-total-time"]) == 20 * 17 for h in crowd)  # 20 steps of 1 + 1*16 ms


def test_chunked_prefill_bounds_each_forward() -> None:
    settings = EmulatorSettings(max_batch_prefill_tokens=64, prefill_tokens_per_second=1000, decode_step_ms=0)
    (h,) = asyncio.run(run_batch(settings, [request(200, 1)]))
    assert h["x-total-time"] == "200"  # 4 chunks (64+64+64+8 tokens) = 200 tokens at 1000 tok/s


async def _timed_generate(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    async with session.post(url + "/generate", json=body) as resp:
        assert resp.status == 200
        await resp.read()
    return time.perf_counter() - start


async def _load(url: str, concurrency: int, body: dict[str, Any]) -> list[float]:
    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(_timed_generate(session, url, body) for _ in range(concurrency))))


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[-1] if len(xs) > 1 else xs[0]


def test_real_time_load_raises_queue_time_and_p95(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    emu = emulator_factory(
        max_total_tokens=64, max_batch_total_tokens=64, max_batch_prefill_tokens=64,
        decode_step_ms=2.0, decode_step_growth_ms=0.5,
    )  # fmt: skip
    body = {"inputs": " a a", "parameters": {"max_new_tokens": 20}}  # 22 tokens: two fit the batch
    light = asyncio.run(_load(emu.url, 1, body))
    heavy = asyncio.run(_load(emu.url, 12, body))
    assert p95(heavy) > 3 * p95(light)
    metrics = asyncio.run(_metrics(emu.url))
    assert _hist_sum(metrics, "tgi_request_queue_duration") > 0.1


def test_real_time_prefill_grows_with_input(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    emu = emulator_factory(prefill_tokens_per_second=4000.0, decode_step_ms=1.0)
    short = asyncio.run(_load(emu.url, 1, {"inputs": " a" * 8, "parameters": {"max_new_tokens": 1}}))[0]
    long = asyncio.run(_load(emu.url, 1, {"inputs": " a" * 400, "parameters": {"max_new_tokens": 1}}))[0]
    assert long > 0.09  # 400 / 4000 = 100 ms of prefill
    assert long > 4 * short


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        return await resp.text()


def _hist_sum(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{name}_sum"))


@pytest.mark.parametrize("scale", [10.0])
def test_time_scale_speeds_up_the_model(scale: float) -> None:
    from tgipool.emulator.scheduler import RealClock

    async def go() -> tuple[float, dict[str, str]]:
        emu = Emulator(EmulatorSettings(decode_step_ms=10, prefill_tokens_per_second=1e9), RealClock(scale))
        emu.start()
        start = time.perf_counter()
        headers, _ = await emu.generate(request(4, 21))
        await emu.stop()
        return time.perf_counter() - start, headers

    wall, headers = asyncio.run(go())
    assert int(headers["x-total-time"]) >= 200  # model time: 20 steps of 10 ms
    assert wall < 0.15  # wall time: ~20 ms
