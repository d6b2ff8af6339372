"""Slow clients: half-sent requests are dropped at clientTimeoutSeconds and hold no slot and no descriptor;
idle keep-alive connections close; legitimate requests are served meanwhile."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from .conftest import stack, wait_until

LLAMA = {"model_id": "llama", "max_input_tokens": 2048, "max_total_tokens": 4096}
BODY = b'{"inputs":"hi","parameters":{"max_new_tokens":2}}'


def _config(urls: dict[str, str]) -> dict[str, Any]:
    pool = {"name": "p", "profile": "short", "endpoints": [urls["a"]], "maxConcurrentRequests": 4}
    return {"defaultPool": "p", "clientTimeoutSeconds": 0.5, "pools": [pool]}


def _descriptors() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


async def _open(url: str, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    return reader, writer


def test_half_sent_requests_are_dropped_at_client_timeout() -> None:
    async def scenario() -> None:
        async with stack({"a": LLAMA}, _config) as st:
            gw = st.gateway
            await st.generate("warm up")  # the client session's connection and the backend's
            baseline = _descriptors()
            head = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            half_headers = [await _open(st.url, head) for _ in range(100)]
            half_bodies = [
                await _open(st.url, head + f"Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY[:10])
                for _ in range(100)
            ]
            idle = [await _open(st.url, b"") for _ in range(50)]
            t0 = time.monotonic()
            assert gw.connections >= 250
            # A legitimate request is served while they hang.
            status, _, body = await st.generate("hello")
            assert status == 200, body
            # Dropped at the client timeout: headers never completed or nothing sent: closed without a word.
            for reader, _ in half_headers + idle:
                assert await asyncio.wait_for(reader.read(), 6) == b""
            # A body that never completed: 408 in TGI's shape, and the connection closed.
            for reader, _ in half_bodies:
                answer = await asyncio.wait_for(reader.read(), 6)
                assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
                assert b'"error_type":"timeout"' in answer and b"clientTimeoutSeconds" in answer
            assert 0.4 < time.monotonic() - t0 < 6  # the bound is 0.5 s; the slack is for a loaded machine
            for _, writer in half_headers + half_bodies + idle:
                writer.close()
            await wait_until(lambda: gw.connections <= 1, "the gateway to drop the connections")
            assert all(ep.in_flight == 0 for ep in gw.gateway.table.endpoints.values())
            await asyncio.sleep(0.05)
            assert _descriptors() <= baseline + 5
            assert st.metric("tgipool_gateway_rejections_total", reason="client_timeout") == 100

    asyncio.run(scenario())


def test_idle_keep_alive_connections_close_after_client_timeout() -> None:
    async def scenario() -> None:
        async with stack({"a": LLAMA}, _config) as st:
            reader, writer = await _open(
                st.url,
                b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
                + BODY,
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(
                next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
            )
            await reader.readexactly(length)
            t0 = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 6) == b""  # the server closed the idle connection
            assert 0.3 < time.monotonic() - t0 < 5
            writer.close()

    asyncio.run(scenario())
