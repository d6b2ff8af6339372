"""Requests for a resting pool are held, bounded, while it wakes; demand goes out once, not per request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tgipool.gateway import parse_config
from tgipool.gateway.wake import Demand

from .conftest import stack

BACKENDS = {"warm-a": {"model_id": "m"}}


def config(urls: dict[str, str], endpoints: list[str], hold: int = 5, pending: int = 100) -> dict[str, Any]:
    return {
        "defaultPool": "warm",
        "pools": [
            {
                "name": "warm",
                "servedName": "m",
                "maxInputTokens": 1000,
                "maxTotalTokens": 2000,
                "endpoints": endpoints,
                "holdSeconds": hold,
                "maxPendingRequests": pending,
                "demandLease": "warm-demand",
            }
        ],
    }


class Recorder:
    """The API the gateway patches Leases with, recording what it asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, path: str, body: dict[str, Any]) -> None:
        self.calls.append((path, body))


def test_a_burst_at_zero_is_held_and_served_after_one_wake_signal() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, lambda urls: config(urls, [])) as st:
            api = Recorder()
            st.gateway.gateway.demand = Demand(api, "ml", "gw-0")

            async def wake_later() -> None:
                await asyncio.sleep(0.8)  # the operator scales 0 -> 1, the pod turns Ready
                st.gateway.gateway.apply(parse_config(config(st.urls, [st.urls["warm-a"]])))

            waker = asyncio.create_task(wake_later())
            t0 = time.monotonic()
            answers = await asyncio.gather(*(st.generate("Hi", 2) for _ in range(20)))
            await waker
            assert [a[0] for a in answers] == [200] * 20
            assert time.monotonic() - t0 >= 0.8
            for _, headers, _ in answers:
                assert 0.7 <= float(headers["X-TGIPool-Cold-Start"]) < 5
            # One demand write for the whole burst: acquireTime marks the start of the wake.
            assert len(api.calls) == 1, api.calls
            path, body = api.calls[0]
            assert path == "/apis/coordination.k8s.io/v1/namespaces/ml/leases/warm-demand"
            assert body["spec"]["holderIdentity"] == "gw-0"
            assert body["spec"]["acquireTime"] == body["spec"]["renewTime"]
            assert st.metric("tgipool_gateway_cold_start_wait_seconds_count", pool="warm") == 20
            # Awake: no hold, no header.
            status, headers, _ = await st.generate("Hi", 2)
            assert status == 200 and "X-TGIPool-Cold-Start" not in headers

    asyncio.run(scenario())


def test_holds_end_with_503_and_retry_after_on_time_and_past_max_pending() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, lambda urls: config(urls, [], hold=1, pending=2)) as st:
            t0 = time.monotonic()
            answers = await asyncio.gather(*(st.generate("Hi", 2) for _ in range(3)))
            took = time.monotonic() - t0
            statuses = sorted(a[0] for a in answers)
            assert statuses == [503, 503, 503]
            full = [
                a for a in answers if a[2]["error_type"] == "unavailable" and "already holds" in a[2]["error"]
            ]
            timed_out = [a for a in answers if "did not wake within 1 s" in a[2]["error"]]
            assert len(full) == 1 and len(timed_out) == 2
            assert all(a[1]["Retry-After"] == "1" for a in answers)
            assert 1.0 <= took < 3  # bounded: never a hang

    asyncio.run(scenario())


def test_streaming_clients_get_comments_while_held_then_the_stream() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, lambda urls: config(urls, [])) as st:

            async def wake_later() -> None:
                await asyncio.sleep(0.5)
                st.gateway.gateway.apply(parse_config(config(st.urls, [st.urls["warm-a"]])))

            waker = asyncio.create_task(wake_later())
            body = {"inputs": "Hi", "parameters": {"max_new_tokens": 3}}
            async with st.session.post(st.url + "/generate_stream", json=body) as resp:
                assert resp.status == 200 and resp.headers["X-TGIPool-Pool"] == "warm"
                text = (await resp.read()).decode()
            await waker
            assert text.startswith(": pool warm is waking\n\n")
            assert ": cold start " in text and text.count("data:") == 3
            # A stream whose pool never wakes ends with an error event, not a hang.
            st.gateway.gateway.apply(parse_config(config(st.urls, [], hold=1)))
            async with st.session.post(
                st.url + "/v1/completions", json={"prompt": "Hi", "stream": True}
            ) as resp:
                text = (await resp.read()).decode()
            assert '"code":"unavailable"' in text and '"http_status_code":503' in text
            assert text.endswith("data: [DONE]\n\n")

    asyncio.run(scenario())
