"""The gateway's HTTP server below the routes: client timeouts, malformed requests, clients that leave.

* `clientTimeoutSeconds`: a connection must complete a request's headers within it (counted from the
  connection's start, or from the previous answer on a keep-alive connection), else it is closed; so an
  idle keep-alive connection closes after it too. This is aiohttp's keep-alive timer, set for each new
  connection from the live configuration. The handler reads the body under the same bound (`app.py`),
  and after an early answer the rest of a body is awaited (lingering) at most that long, 2 s at most.
* A request aiohttp's parser refuses (a malformed request line or header line, a line over 8 KiB...) gets
  a 400 in TGI's error shape instead of aiohttp's text, which echoes the offending line, and the log says
  only what kind of problem it was: a malformed `Authorization` line never reaches a log with its key.
* A client that goes away cancels its handler (`handler_cancellation`): its slot frees and the upstream
  request closes at once (`proxy.py`).
* Each request carries its arrival time (`arrival(request)`): when the bytes completing its headers
  reached the connection, before aiohttp parsed them, so the gateway's latency metrics count parsing too.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from tgipool.gateway.errors import Rejection, render

log = logging.getLogger("tgipool.gateway.http")
ARRIVED = web.RequestKey("tgipool_arrived", float)

_KINDS = {
    "LineTooLong": "a request or header line is too long",
    "BadStatusLine": "malformed request line",
    "BadHttpMethod": "malformed request method",
    "InvalidHeader": "malformed header",
    "InvalidURLError": "malformed URL",
    "ContentLengthError": "invalid Content-Length",
    "TransferEncodingError": "invalid Transfer-Encoding",
}


class GatewayProtocol(RequestHandler):
    """One client connection: aiohttp's, with the gateway's timeout and error answers."""

    def __init__(self, manager: web.Server, *, client_timeout: float, **kwargs: Any) -> None:
        kwargs["keepalive_timeout"] = client_timeout
        # After an early answer (408, 413, 401 before the body), aiohttp reads the rest of the body for
        # this long so the client sees the answer rather than a reset: bounded like the client itself.
        kwargs["lingering_time"] = min(client_timeout, 2.0)
        super().__init__(manager, **kwargs)
        self.arrivals: deque[float] = deque()  # one per parsed request not yet handled, in order

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        queued = len(self._messages)
        super().data_received(data)
        for _ in range(len(self._messages) - queued):
            self.arrivals.append(now)

    def arrived(self) -> float:
        """The arrival of the request being made now (start() has just taken it off the queue)."""
        while len(self.arrivals) > len(self._messages) + 1:  # messages queued some other way: realign
            self.arrivals.popleft()
        return self.arrivals.popleft() if self.arrivals else time.perf_counter()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's error answer (parser errors, unhandled exceptions), without the client's bytes."""
        kind = type(exc).__name__ if exc is not None else "unknown"
        if status >= 500:
            log.error("error handling a request from %s: %s", request.remote, kind, exc_info=exc)
            rej = Rejection(status, "Internal gateway error", "internal", "internal")
        else:
            # `message` and `exc` quote the offending line, which may hold a key: only its kind is said.
            log.info("refused a malformed request from %s: %s", request.remote, kind)
            text = _KINDS.get(kind, "malformed HTTP request")
            rej = Rejection(status, f"Bad request: {text}", "bad_request", "bad_request")
        if request.writer.output_size > 0:
            raise ConnectionError("the answer has started: no error answer can follow")
        resp = render("", rej)
        resp.force_close()
        return resp


class _Server(web.Server):
    def __init__(self, *args: Any, client_timeout: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_timeout = client_timeout
        make = self.request_factory

        def stamped(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> BaseRequest:
            request = make(message, payload, protocol, writer, task)
            if isinstance(protocol, GatewayProtocol):
                request[ARRIVED] = protocol.arrived()
            return request

        self.request_factory = stamped

    def __call__(self) -> RequestHandler:
        kwargs = {k: v for k, v in self._kwargs.items() if k != "keepalive_timeout"}
        return GatewayProtocol(self, loop=self._loop, client_timeout=self.client_timeout(), **kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections are `GatewayProtocol`s and whose handlers a disconnect cancels."""

    def __init__(self, app: web.Application, client_timeout: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(app, handler_cancellation=True, **kwargs)
        self._client_timeout = client_timeout

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()  # runs the app's startup
        return _Server(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            client_timeout=self._client_timeout,
            **base._kwargs,
        )


def arrival(request: BaseRequest) -> float:
    """When the request reached the gateway (`perf_counter`); now, outside a `GatewayRunner`."""
    arrived = request.get(ARRIVED)
    return arrived if arrived is not None else time.perf_counter()
