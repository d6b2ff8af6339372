"""The gateway's own error answers, in TGI's `{"error","error_type"}` shape (OpenAI clients read it too)."""

from __future__ import annotations

import json
import math

from aiohttp import web

POOL_HEADER = "X-TGIPool-Pool"


class Rejection(Exception):  # noqa: N818 - a response, not a failure of the gateway
    """A request the gateway answers itself; `reason` labels the rejections metric."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str,
        reason: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.reason = reason
        self.headers = headers or {}


def error_response(
    status: int, message: str, error_type: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = json.dumps({"error": message, "error_type": error_type}, separators=(",", ":")).encode()
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


def overloaded(retry_after: float, reason: str) -> Rejection:
    return Rejection(
        429, "Model is overloaded", "overloaded", reason, {"Retry-After": str(max(1, math.ceil(retry_after)))}
    )
