"""How vLLM and SGLang answer where TGI answers differently: error bodies, ids, model listings.

vLLM (`vllm/entrypoints/openai/protocol.py` `ErrorResponse`): `{"error":{"message","type","param","code"}}`
with `type` the exception class (`BadRequestError`, `NotFoundError`, ...) and `code` the HTTP status.
SGLang (`sglang/srt/entrypoints/openai/protocol.py`): the flat form `{"object":"error","message","type",
"param","code"}`. Both are FastAPI apps: an unknown path is `{"detail":"Not Found"}`, and invalid bodies
are 400 in the error shape (both replace FastAPI's 422 handler).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from tgipool.api.modelpool import EngineKind

_TYPES = {
    400: "BadRequestError",
    401: "Unauthorized",
    404: "NotFoundError",
    413: "BadRequestError",
    429: "TooManyRequestsError",
    503: "ServiceUnavailableError",
}


@dataclass(frozen=True)
class Dialect:
    engine: EngineKind
    nested_errors: bool  # vLLM nests the error under "error"; SGLang does not
    strict_model: bool  # vLLM answers 404 for a `model` it does not serve; SGLang ignores the field

    def error(self, status: int, message: str) -> dict[str, Any]:
        body: dict[str, Any] = {"message": message, "type": _TYPES.get(status, "InternalServerError")}
        body.update(param=None, code=status)
        return {"error": body} if self.nested_errors else {"object": "error", **body}

    def response_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex}"


DIALECTS: dict[EngineKind, Dialect] = {
    "vllm": Dialect("vllm", nested_errors=True, strict_model=True),
    "sglang": Dialect("sglang", nested_errors=False, strict_model=False),
}
