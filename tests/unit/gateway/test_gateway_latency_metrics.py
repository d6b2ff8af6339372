"""What the gateway measures that TGI does not: time to first token and end-to-end latency per pool."""

from __future__ import annotations

import asyncio
import time

from .conftest import REFERENCE_BACKENDS, reference_config, stack


def test_ttft_for_streams_and_end_to_end_for_every_answer() -> None:
    async def scenario() -> None:
        # decode_step_ms 30: 20 tokens take ~0.6 s end to end; the first arrives after one step.
        slow = {name: {**b, "decode_step_ms": 30.0} for name, b in REFERENCE_BACKENDS.items()}
        async with stack(slow, reference_config) as st:
            t0 = time.perf_counter()
            status, _, _ = await st.generate("Hi", max_new_tokens=20)
            whole = time.perf_counter() - t0
            assert status == 200
            body = {"inputs": "Hi", "parameters": {"max_new_tokens": 20}}
            async with st.session.post(st.url + "/generate_stream", json=body) as resp:
                assert resp.status == 200
                await resp.read()
            h = "tgipool_gateway_request_seconds"
            assert st.metric(h + "_count", pool="short") == 2
            assert st.metric("tgipool_gateway_ttft_seconds_count", pool="short") == 1  # streams only
            ttft = st.metric("tgipool_gateway_ttft_seconds_sum", pool="short")
            total = st.metric(h + "_sum", pool="short")
            # The non-stream answer took ~20 steps; the stream's first token ~1 step.
            assert whole > 0.4 and total > whole
            assert 0 < ttft < 0.3 < total / 2
            # Buckets reach past TGI's 145.6 s ceiling.
            assert (
                st.gateway.gateway.metrics.registry.get_sample_value(
                    h + "_bucket", {"pool": "short", "le": "1800.0"}
                )
                == 2
            )

    asyncio.run(scenario())
