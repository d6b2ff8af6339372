"""Saturation: fallback pools, the priority queue, 429s, learned and backend-reported limits."""

from __future__ import annotations

import asyncio
from typing import Any

from tgipool.gateway import parse_config as _parse

from .conftest import GatedBackend, serve_app, stack, wait_until

LLAMA = {"model_id": "llama", "max_input_tokens": 2048, "max_total_tokens": 4096}
LONG = {"model_id": "llama-long", "max_input_tokens": 8192, "max_total_tokens": 12288}


def _two_pools(short_url: str, long_url: str, **top: Any) -> dict[str, Any]:
    return {
        "defaultPool": "short",
        "pools": [
            {
                "name": "short",
                "servedName": "llama3-8b-ru",
                "profile": "short",
                "maxConcurrentRequests": 1,
                "fallbackPool": "long",
                "endpoints": [short_url],
            },
            {"name": "long", "servedName": "llama3-8b-ru", "profile": "long", "endpoints": [long_url]},
        ],
        **top,
    }


def test_saturated_pool_spills_to_fallback() -> None:
    async def scenario() -> None:
        async with stack({"long": LONG}, lambda urls: {"pools": []}) as st:
            gated = GatedBackend()
            short_url = await serve_app(st, gated.app())
            st.gateway.gateway.apply(_parse(_two_pools(short_url, st.urls["long"])))
            holder = asyncio.create_task(st.generate("first"))
            await wait_until(lambda: gated.seen == ["first"], "the holder to reach the short pool")
            # short is at its limit (1): the next request spills to long at once.
            status, headers, body = await st.generate("second")
            assert (status, headers["X-TGIPool-Pool"]) == (200, "long"), body
            assert st.metric("tgipool_gateway_fallbacks_total", pool="short", fallback="long") == 1
            gated.gate.set()
            status, headers, _ = await holder
            assert (status, headers["X-TGIPool-Pool"]) == (200, "short")
            # With room again, short is used.
            status, headers, _ = await st.generate("third")
            assert (status, headers["X-TGIPool-Pool"]) == (200, "short")

    asyncio.run(scenario())


def test_priority_queue_serves_high_priority_first() -> None:
    async def scenario() -> None:
        async with stack({}, lambda urls: {"pools": []}) as st:
            gated = GatedBackend()
            url = await serve_app(st, gated.app())
            cfg = {
                "defaultPool": "only",
                "queueTimeoutSeconds": 30,
                "pools": [
                    {"name": "only", "profile": "short", "maxConcurrentRequests": 1, "endpoints": [url]}
                ],
            }
            st.gateway.gateway.apply(_parse(cfg))
            pool = st.gateway.gateway.table.pools["only"]
            holder = asyncio.create_task(st.generate("holder"))
            await wait_until(lambda: gated.seen == ["holder"], "the holder")
            low = asyncio.create_task(st.generate("low-1", headers={"X-Priority": "1"}))
            await wait_until(lambda: len(pool.waiters) == 1, "low-1 to queue")
            low2 = asyncio.create_task(st.generate("low-2", headers={"X-Priority": "1"}))
            await wait_until(lambda: len(pool.waiters) == 2, "low-2 to queue")
            high = asyncio.create_task(st.generate("high", headers={"X-Priority": "5"}))
            await wait_until(lambda: len(pool.waiters) == 3, "high to queue")
            assert st.metric("tgipool_gateway_queue_depth", pool="only") == 3
            gated.gate.set()
            results = await asyncio.gather(holder, low, low2, high)
            assert [r[0] for r in results] == [200, 200, 200, 200]
            # The later high-priority waiter went first; FIFO within priority 1.
            assert gated.seen == ["holder", "high", "low-1", "low-2"]
            assert st.metric("tgipool_gateway_queue_depth", pool="only") == 0
            assert st.metric("tgipool_gateway_queue_wait_seconds_count", pool="only") == 3

    asyncio.run(scenario())


def test_queue_bounds_give_429_overloaded_with_retry_after() -> None:
    async def scenario() -> None:
        async with stack({}, lambda urls: {"pools": []}) as st:
            gated = GatedBackend()
            url = await serve_app(st, gated.app())
            cfg = {
                "defaultPool": "only",
                "queueTimeoutSeconds": 0.2,
                "maxQueueLength": 1,
                "pools": [
                    {"name": "only", "profile": "short", "maxConcurrentRequests": 1, "endpoints": [url]}
                ],
            }
            st.gateway.gateway.apply(_parse(cfg))
            pool = st.gateway.gateway.table.pools["only"]
            holder = asyncio.create_task(st.generate("holder"))
            await wait_until(lambda: gated.seen == ["holder"], "the holder")
            waiting = asyncio.create_task(st.generate("waits"))
            await wait_until(lambda: len(pool.waiters) == 1, "a waiter")
            # The queue is full: refused at once.
            status, headers, body = await st.generate("refused")
            assert status == 429
            assert body == {"error": "Model is overloaded", "error_type": "overloaded"}
            assert int(headers["Retry-After"]) >= 1
            assert headers["X-TGIPool-Pool"] == "only"
            # The waiter's bound passes.
            status, headers, body = await waiting
            assert status == 429 and body["error_type"] == "overloaded" and "Retry-After" in headers
            assert st.metric("tgipool_gateway_rejections_total", reason="queue_full") == 1
            assert st.metric("tgipool_gateway_rejections_total", reason="overloaded") == 1
            assert not pool.waiters
            gated.gate.set()
            assert (await holder)[0] == 200
            assert gated.seen == ["holder"]  # the refused requests never reached a backend

    asyncio.run(scenario())


def test_backend_429_is_saturation_and_limit_is_learned_from_info() -> None:
    async def scenario() -> None:
        backends = {
            "full": {**LLAMA, "max_concurrent_requests": 0},  # answers 429 to everything
            "ok": {**LLAMA, "max_concurrent_requests": 3},
        }

        def cfg(urls: dict[str, str]) -> dict[str, Any]:
            return {
                "defaultPool": "p",
                "pools": [{"name": "p", "profile": "short", "endpoints": [urls["full"], urls["ok"]]}],
            }

        async with stack(backends, cfg) as st:
            table = st.gateway.gateway.table
            ok = table.endpoints[st.urls["ok"]]
            await wait_until(lambda: ok.limit == 3, "the limit learned from /info")
            for _ in range(4):
                status, headers, body = await st.generate("hello")
                assert (status, headers["X-TGIPool-Pool"]) == (200, "p"), body
            body = {"inputs": "stream", "parameters": {"max_new_tokens": 2}}
            table.endpoints[st.urls["full"]].busy_until = 0.0
            async with st.session.post(st.url + "/generate_stream", json=body) as resp:
                raw = await resp.read()
            assert b"overloaded" not in raw and raw.count(b"data:") == 2
            assert st.metric("tgipool_gateway_retries_total", pool="p", reason="overloaded") >= 1

    asyncio.run(scenario())


def test_a_saturated_short_pool_spills_to_the_wider_pool_without_a_fallback_but_never_back() -> None:
    async def scenario() -> None:
        async with stack({}, lambda urls: {"pools": []}) as st:
            short_gate, long_gate = GatedBackend(), GatedBackend()
            short_url, long_url = await serve_app(st, short_gate.app()), await serve_app(st, long_gate.app())
            cfg = _two_pools(short_url, long_url, queueTimeoutSeconds=30)
            del cfg["pools"][0]["fallbackPool"]
            cfg["pools"][1]["maxConcurrentRequests"] = 1
            st.gateway.gateway.apply(_parse(cfg))
            holder = asyncio.create_task(st.generate("first"))
            await wait_until(lambda: short_gate.seen == ["first"], "the holder to reach the short pool")
            # short is full: a short request spills to the wider long pool, which has room.
            spilled = asyncio.create_task(st.generate("second"))
            await wait_until(lambda: long_gate.seen == ["second"], "the spill to reach the long pool")
            assert st.metric("tgipool_gateway_fallbacks_total", pool="short", fallback="long") == 1
            # Both full now: a long request waits for the long pool; it never goes to the short pool.
            long_pool = st.gateway.gateway.table.pools["long"]
            waiting = asyncio.create_task(st.generate("x " * 3000, max_new_tokens=10))
            await wait_until(lambda: len(long_pool.waiters) == 1, "the long request to queue on long")
            short_gate.gate.set()
            status, headers, _ = await holder
            assert (status, headers["X-TGIPool-Pool"]) == (200, "short")
            assert not waiting.done() and short_gate.seen == ["first"]
            long_gate.gate.set()
            for task, pool in ((spilled, "long"), (waiting, "long")):
                status, headers, body = await task
                assert (status, headers["X-TGIPool-Pool"]) == (200, pool), body

    asyncio.run(scenario())
