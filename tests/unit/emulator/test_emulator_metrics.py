"""Prometheus exposition as TGI renders it, per emulator, and several emulators in one process."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import aiohttp
import requests
from prometheus_client.parser import text_string_to_metric_families

from tgipool.emulator import EmulatorSettings, start_emulators, stop_emulators
from tgipool.emulator.metrics import duration_buckets

from .conftest import FAST, ThreadedEmulator


def types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))


def test_series_appear_lazily_and_counters_have_no_total(
    emulator_factory: Callable[..., ThreadedEmulator],
) -> None:
    emu = emulator_factory(max_input_tokens=200, max_total_tokens=300)
    idle = requests.get(emu.url + "/metrics", timeout=5).text
    assert types(idle) == {
        "tgi_queue_size": "gauge",
        "tgi_batch_current_size": "gauge",
        "tgi_batch_current_max_tokens": "gauge",
    }
    requests.post(
        emu.url + "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 3}}, timeout=5
    )
    requests.post(emu.url + "/generate", json={"inputs": "hi", "parameters": {"top_k": 0}}, timeout=5)
    text = requests.get(emu.url + "/metrics", timeout=5).text
    t = types(text)
    for name in (
        "tgi_request_count",
        "tgi_request_success",
        "tgi_request_failure",
        "tgi_batch_inference_count",
    ):
        assert t[name] == "counter"
    for name in (
        "tgi_request_duration", "tgi_request_queue_duration", "tgi_request_validation_duration",
        "tgi_request_inference_duration", "tgi_request_mean_time_per_token_duration",
        "tgi_request_input_length", "tgi_request_generated_tokens", "tgi_request_max_new_tokens",
        "tgi_batch_next_size",
    ):  # fmt: skip
        assert t[name] == "histogram", name
    assert "_total" not in text and "_created" not in text and "# HELP" not in text
    lines = text.splitlines()
    assert "tgi_request_count 2" in lines
    assert "tgi_request_success 1" in lines
    assert 'tgi_request_failure{err="validation"} 1' in lines
    assert "tgi_request_generated_tokens_count 1" in lines
    buckets = [ln for ln in lines if ln.startswith("tgi_request_duration_bucket")]
    assert len(buckets) == 36 and buckets[-1].startswith('tgi_request_duration_bucket{le="+Inf"}')
    assert buckets[0].startswith('tgi_request_duration_bucket{le="0.00015')
    input_buckets = [ln for ln in lines if ln.startswith("tgi_request_input_length_bucket")]
    assert len(input_buckets) == 101 and input_buckets[0].startswith(
        'tgi_request_input_length_bucket{le="2"}'
    )
    assert 'tgi_request_max_new_tokens_bucket{le="300"}' in text
    # Standard parsers read it.
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"tgi_request_count", "tgi_request_duration", "tgi_queue_size"} <= names


def test_duration_buckets_match_tgi() -> None:
    b = duration_buckets()
    assert len(b) == 35
    assert abs(b[0] - 0.00015) < 1e-12 and 145 < b[-1] < 146


def test_many_emulators_in_one_loop_are_independent() -> None:
    async def go() -> list[str]:
        servers = await start_emulators([EmulatorSettings(**{**FAST, "model_id": f"m{i}"}) for i in range(5)])
        try:
            async with aiohttp.ClientSession() as session:
                for i, server in enumerate(servers):
                    for _ in range(i):
                        body = {"inputs": "x", "parameters": {"max_new_tokens": 2}}
                        async with session.post(server.url + "/generate", json=body) as resp:
                            assert resp.status == 200
                infos = []
                for server in servers:
                    async with session.get(server.url + "/info") as resp:
                        infos.append((await resp.json())["model_id"])
                assert infos == [f"m{i}" for i in range(5)]
                texts = []
                for server in servers:
                    async with session.get(server.url + "/metrics") as resp:
                        texts.append(await resp.text())
                return texts
        finally:
            await stop_emulators(servers)

    texts = asyncio.run(go())
    assert "tgi_request_count" not in texts[0]
    for i in range(1, 5):
        assert f"tgi_request_count {i}" in texts[i].splitlines()


def _sample(text: str, name: str) -> float:
    return next(f.samples[0].value for f in text_string_to_metric_families(text) if f.name == name)


def _p95_seconds(text: str) -> float:
    """p95 from the exported histogram, computed the way Prometheus' histogram_quantile does."""
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "tgi_request_duration"]
    buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
    total = buckets[-1][1]
    rank, lower, below = 0.95 * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def test_queue_grows_when_the_batch_is_full_and_p95_follows() -> None:
    """A full batch (KV budget) leaves requests in tgi_queue_size; their queueing shows in the p95."""

    async def go() -> tuple[list[float], str, str]:
        # Each request reserves its prompt + 100 new tokens of a 256-token budget: two run, the rest wait.
        settings = EmulatorSettings(
            **{
                **FAST,
                "max_input_tokens": 27,
                "max_total_tokens": 128,
                "max_batch_prefill_tokens": 256,
                "max_batch_total_tokens": 256,
                "decode_step_ms": 2.0,
            }
        )
        (server,) = await start_emulators([settings])
        try:
            async with aiohttp.ClientSession() as session:

                async def one() -> None:
                    body = {"inputs": "a b c d", "parameters": {"max_new_tokens": 100}}
                    async with session.post(server.url + "/generate", json=body) as resp:
                        assert resp.status == 200

                async def metrics() -> str:
                    async with session.get(server.url + "/metrics") as resp:
                        return await resp.text()

                await one()
                alone = await metrics()
                burst = [asyncio.create_task(one()) for _ in range(10)]
                queues = []
                for _ in range(20):
                    await asyncio.sleep(0.02)
                    queues.append(_sample(await metrics(), "tgi_queue_size"))
                await asyncio.gather(*burst)
                return queues, alone, await metrics()
        finally:
            await stop_emulators([server])

    queues, alone, after = asyncio.run(go())
    assert max(queues) >= 6, queues  # 10 arrive, at most 2 fit in the batch
    assert _sample(after, "tgi_queue_size") == 0
    # One request alone: ~100 decode steps of 2 ms. Ten behind a 2-wide batch: the last ones wait ~4 rounds.
    assert _p95_seconds(after) > 2.5 * _p95_seconds(alone)
