"""The upstream HTTP/1.1 client of generation requests: keep-alive connections per endpoint, one write each.

aiohttp's `ClientSession` builds a request object, resolves cookies, auth, proxies and auto headers, and
writes through a stream writer: about a fifth of the gateway's CPU per request. This client keeps what a
proxy to TGI needs: a pool of idle keep-alive connections per endpoint (host, port), the request line,
headers and body written in one `transport.write`, and aiohttp's own response protocol (`ResponseHandler`,
its C parser, its `StreamReader` body and its `ClientError`s), so `proxy.py` and `streaming.py` read the
answer as they read an aiohttp response. Bodies are not decompressed (bytes pass through, like the
session's `auto_decompress=False`). A connection goes back to its pool only once its answer was read to the
end and the endpoint keeps it alive; any other goes closed.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client_proto import ResponseHandler
from multidict import CIMultiDictProxy

MAX_IDLE_PER_ENDPOINT = 256
KEEPALIVE_SECONDS = 60.0  # an idle connection is closed after this (aiohttp's connector did the same)


class UpstreamConnectError(aiohttp.ClientConnectionError):
    """The endpoint could not be reached: refused, unreachable, or no connect within the timeout."""


@functools.lru_cache(maxsize=4096)
def _address(base: str) -> tuple[str, int, bytes]:
    """(host, port, Host header line) of an `http://host:port` endpoint."""
    parts = urlsplit(base)
    host = parts.hostname or "localhost"
    port = parts.port or 80
    return host, port, f"Host: {parts.netloc}\r\n".encode()


class UpstreamResponse:
    """An endpoint's answer: the parts of `aiohttp.ClientResponse` the proxy reads."""

    __slots__ = ("_client", "_key", "_proto", "content", "content_type", "headers", "status")

    def __init__(
        self,
        client: UpstreamClient,
        key: tuple[str, int],
        proto: ResponseHandler,
        message: object,
        body: object,
    ) -> None:
        self._client, self._key, self._proto = client, key, proto
        self.status: int = message.code  # type: ignore[attr-defined]
        self.headers: CIMultiDictProxy[str] = message.headers  # type: ignore[attr-defined]
        self.content: aiohttp.StreamReader = body  # type: ignore[assignment]
        ctype = self.headers.get("Content-Type", "application/octet-stream")
        self.content_type = ctype.partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        return await self.content.read()

    def release(self) -> None:
        """The answer was read to the end: the connection goes back to the pool if it stays alive."""
        self._client.put(self._key, self._proto)

    def close(self) -> None:
        self._proto.close()


class UpstreamClient:
    def __init__(self) -> None:
        # Idle connections per endpoint with when they became idle, oldest first (the newest is reused).
        self._idle: dict[tuple[str, int], list[tuple[ResponseHandler, float]]] = {}
        self._closed = False

    async def _connect(self, host: str, port: int, timeout: float) -> ResponseHandler:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, proto = await loop.create_connection(lambda: ResponseHandler(loop), host, port)
        except TimeoutError:
            raise UpstreamConnectError(f"no connection within {timeout:g} s") from None
        except OSError as exc:
            raise UpstreamConnectError(str(exc)) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return proto

    def put(self, key: tuple[str, int], proto: ResponseHandler) -> None:
        idle = self._idle.setdefault(key, [])
        if (
            self._closed
            or proto.should_close
            or not proto.is_connected()
            or len(idle) >= MAX_IDLE_PER_ENDPOINT
        ):
            proto.close()
        else:
            idle.append((proto, time.monotonic()))

    def sweep(self, now: float) -> None:
        """Close the connections idle for longer than KEEPALIVE_SECONDS (a removed endpoint's included)."""
        for key, idle in list(self._idle.items()):
            while idle and now - idle[0][1] > KEEPALIVE_SECONDS:
                idle.pop(0)[0].close()
            if not idle:
                del self._idle[key]

    async def sweep_forever(self, every: float = 10.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.sweep(time.monotonic())

    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def request(
        self,
        method: str,
        base: str,
        path: str,
        body: bytes,
        headers: Iterable[tuple[str, str]],
        connect_timeout: float,
    ) -> UpstreamResponse:
        """Send the request on an idle connection (else a new one) and wait for the answer's headers.
        Raises `UpstreamConnectError` when no connection could be made, else aiohttp's `ClientError`s."""
        host, port, host_line = _address(base)
        key = (host, port)
        idle = self._idle.get(key)
        proto = None
        while idle:
            candidate = idle.pop()[0]
            if candidate.is_connected() and not candidate.should_close:
                proto = candidate
                break
            candidate.close()
        if proto is None:
            proto = await self._connect(host, port, connect_timeout)
        try:
            head = [f"{method} {path} HTTP/1.1\r\n".encode(), host_line]
            head += [f"{k}: {v}\r\n".encode() for k, v in headers]
            head.append(b"Content-Length: %d\r\n\r\n" % len(body))
            proto.set_response_params(read_until_eof=True, auto_decompress=False)
            if proto.transport is None:  # cannot happen after the checks above; a retry if it does
                raise aiohttp.ServerDisconnectedError()
            proto.transport.write(b"".join(head) + body)
            message, payload = await proto.read()
        except BaseException:
            proto.close()
            raise
        return UpstreamResponse(self, key, proto, message, payload)

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for proto, _ in idle:
                proto.close()
        self._idle.clear()
