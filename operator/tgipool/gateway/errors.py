"""The gateway's own error answers, in the shape of the route that was asked.

TGI routes (`/generate`, `/generate_stream`, `/`, `/info`, `/health`, ...) get TGI's `{"error","error_type"}`;
OpenAI routes (`/v1/...`) get OpenAI's `{"error":{"message","type","param","code"}}`, where `code` is the
gateway's error type (`model_not_found`, `rate_limited`, ...) and `type` OpenAI's category for the status.
A stream that has started ends with the same error as its last event (`error_event`): TGI's shape, or on
`/v1` an error chunk followed by `data: [DONE]`. No answer names an upstream address.
"""

from __future__ import annotations

import json
import math

from aiohttp import web

POOL_HEADER = "X-TGIPool-Pool"
# RFC 6750: a 401 says which scheme to use.
WWW_AUTHENTICATE = 'Bearer realm="tgipool"'

_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


class Rejection(Exception):  # noqa: N818 - a response, not a failure of the gateway
    """A request the gateway answers itself; `reason` labels the rejections metric, `param` names the
    request field at fault (OpenAI's `param`)."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str,
        reason: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.reason = reason
        self.headers = headers or {}
        self.param = param


def is_openai(route: str) -> bool:
    return route.startswith("/v1/")


def openai_type(status: int) -> str:
    """OpenAI's error category for an HTTP status."""
    if status >= 500:
        return "server_error"
    return _OPENAI_TYPES.get(status, "invalid_request_error")


def error_payload(route: str, rej: Rejection) -> dict[str, object]:
    if is_openai(route):
        error = {"message": rej.message, "type": openai_type(rej.status), "param": rej.param}
        return {"error": {**error, "code": rej.error_type}}
    return {"error": rej.message, "error_type": rej.error_type}


def render(route: str, rej: Rejection, extra: dict[str, str] | None = None) -> web.Response:
    """The answer for `rej` on `route` (not counted: see `Gateway.reject`)."""
    body = json.dumps(error_payload(route, rej), separators=(",", ":")).encode()
    headers = {**rej.headers, **(extra or {})}
    if rej.status == 401:
        headers.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)
    return web.Response(status=rej.status, body=body, headers=headers, content_type="application/json")


def error_response(
    status: int, message: str, error_type: str, headers: dict[str, str] | None = None, route: str = ""
) -> web.Response:
    return render(route, Rejection(status, message, error_type, error_type, headers))


def error_event(route: str, rej: Rejection) -> bytes:
    """An error as the last event of a stream, with the route's end marker (`data: [DONE]` on /v1, whose
    error also carries the status as TGI's chat stream errors do: `http_status_code`)."""
    body = error_payload(route, rej)
    if is_openai(route):
        error = body["error"]
        assert isinstance(error, dict)
        payload = json.dumps({"error": {**error, "http_status_code": rej.status}}, separators=(",", ":"))
        return b"data: " + payload.encode() + b"\n\ndata: [DONE]\n\n"
    return b"data:" + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def overloaded(retry_after: float, reason: str) -> Rejection:
    return Rejection(
        429, "Model is overloaded", "overloaded", reason, {"Retry-After": str(max(1, math.ceil(retry_after)))}
    )


def unauthorized(given: bool) -> Rejection:
    challenge = WWW_AUTHENTICATE + (', error="invalid_token"' if given else "")
    message = "Invalid API key" if given else "Missing API key: send `Authorization: Bearer <key>`"
    return Rejection(401, message, "authentication", "unauthorized", {"WWW-Authenticate": challenge})


def bad_request(message: str, status: int = 400, param: str | None = None) -> Rejection:
    error_type = "validation" if status == 422 else "bad_request"
    return Rejection(status, message, error_type, "bad_request", param=param)
