"""Overload policies under load: an emulated TGI with one slot, held by a long generation, and each policy
(spill, cap, spare, reject) deciding what the next request gets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .conftest import FAST, Stack, stack, wait_until

# One request at a time, 10 ms a token: a 200-token holder keeps the slot for about 2 s.
SLOW = {**FAST, "decode_step_ms": 10.0, "max_concurrent_requests": 1, "max_batch_size": 1}
BACKENDS: dict[str, dict[str, Any]] = {
    "main": {**SLOW, "model_id": "llama", "max_input_tokens": 2048, "max_total_tokens": 4096},
    "long": {"model_id": "llama-long", "max_input_tokens": 8192, "max_total_tokens": 12288},
    "small": {"model_id": "qwen-small", "max_input_tokens": 2048, "max_total_tokens": 4096},
}


def config(urls: dict[str, str], **overload: Any) -> dict[str, Any]:
    return {
        "defaultPool": "main",
        "queueTimeoutSeconds": 10,
        "pools": [
            {
                "name": "main",
                "servedName": "llama3-8b-ru",
                "profile": "short",
                "maxConcurrentRequests": 1,
                "fallbackPool": "long",
                "endpoints": [urls["main"]],
                **overload,
            },
            {"name": "long", "servedName": "llama3-8b-ru", "profile": "long", "endpoints": [urls["long"]]},
            {"name": "small", "servedName": "qwen-small", "profile": "short", "endpoints": [urls["small"]]},
        ],
    }


async def saturate(st: Stack) -> asyncio.Task[Any]:
    """A long generation that holds main's only slot."""
    holder = asyncio.create_task(st.generate("hold", max_new_tokens=200))
    ep = st.gateway.gateway.table.pools["main"].endpoints[0]
    await wait_until(lambda: ep.in_flight == 1, "main to be saturated")
    return holder


def test_spill_goes_to_the_fallback_pool() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, lambda u: config(u, overload="spill")) as st:
            holder = await saturate(st)
            status, headers, _ = await st.generate("next", max_new_tokens=5)
            assert (status, headers["X-TGIPool-Pool"], headers["X-TGIPool-Overload"]) == (
                200,
                "long",
                "spill",
            )
            assert not holder.done()
            assert (await holder)[0] == 200

    asyncio.run(scenario())


def test_cap_shortens_the_generation_while_saturated_and_says_so() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, lambda u: config(u, overload="cap", capMaxNewTokens=4)) as st:
            holder = await saturate(st)
            # Waits for main (no spill under cap), then generates 4 tokens instead of 100.
            status, headers, body = await st.generate("next", max_new_tokens=100)
            assert (status, headers["X-TGIPool-Pool"]) == (200, "main"), body
            assert headers["X-TGIPool-Capped-Max-New-Tokens"] == "4"
            assert headers["X-TGIPool-Overload"] == "cap"
            assert headers["x-generated-tokens"] == "4"
            assert (await holder)[0] == 200
            # The OpenAI route too, on a stream: max_tokens is what TGI gets.
            holder = await saturate(st)
            chat = {
                "model": "llama3-8b-ru",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 50,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            async with st.session.post(st.url + "/v1/chat/completions", json=chat) as resp:
                raw = await resp.read()
                assert resp.headers["X-TGIPool-Capped-Max-New-Tokens"] == "4"
            assert b'"completion_tokens":4' in raw, raw[-300:]
            await holder
            # With room again, nothing is capped.
            status, headers, _ = await st.generate("free", max_new_tokens=10)
            assert headers["x-generated-tokens"] == "10" and "X-TGIPool-Capped-Max-New-Tokens" not in headers

    asyncio.run(scenario())


def test_spare_serves_from_the_spare_model() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, lambda u: config(u, overload="spare", sparePool="small")) as st:
            holder = await saturate(st)
            status, headers, _ = await st.generate("next", max_new_tokens=5)
            assert (status, headers["X-TGIPool-Pool"], headers["X-TGIPool-Overload"]) == (
                200,
                "small",
                "spare",
            )
            assert st.metric("tgipool_gateway_fallbacks_total", pool="main", fallback="small") == 1
            await holder
            status, headers, _ = await st.generate("free", max_new_tokens=5)
            assert headers["X-TGIPool-Pool"] == "main" and "X-TGIPool-Overload" not in headers

    asyncio.run(scenario())


def test_reject_answers_429_with_retry_after_at_once() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, lambda u: config(u, overload="reject")) as st:
            holder = await saturate(st)
            started = time.monotonic()
            status, headers, body = await st.generate("next", max_new_tokens=5)
            assert status == 429 and body["error_type"] == "overloaded"
            assert int(headers["Retry-After"]) >= 1 and headers["X-TGIPool-Pool"] == "main"
            assert time.monotonic() - started < 1.0 and not holder.done()  # no wait in the queue
            assert st.metric("tgipool_gateway_rejections_total", reason="rejected") == 1
            assert (await holder)[0] == 200

    asyncio.run(scenario())
