"""What a generation request asks for: its model, prompts, and how many tokens the backend may generate.

The body is read as TGI reads it (`tgipool.strict_json`: 400 for what serde_json refuses). The fields that
decide routing and the tenant's charge are checked with TGI's types before anything is charged (422 in the
route's shape otherwise), so a request cannot buy a cheap charge with a value TGI would refuse or read
differently:

| route | generation per prompt (`max_new`) | sequences per prompt |
|---|---|---|
| `/generate`, `/generate_stream`, `/` | `parameters.max_new_tokens` (u32) | `parameters.best_of` (usize) |
| `/v1/chat/completions` | `max_completion_tokens`, else `max_tokens` (u32; TGI's order) | `n` (u32) |
| `/v1/completions` | `max_tokens` (u32) | the larger of `n` and `best_of` (u32) |

No `max_new`: TGI generates up to the context (`maxTotalTokens - input`), and that is what is charged.
`n` and `best_of` are charged wherever the OpenAI API honours them, even where TGI ignores them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tgipool.api.routing import ENVIRONMENTS
from tgipool.gateway.errors import Rejection
from tgipool.gateway.routing import Pool
from tgipool.gateway.tenants import Tenant
from tgipool.gateway.tokens import chat_text, count_tokens

TGI_ROUTES = ("/generate", "/generate_stream", "/")
OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions")
U32 = 2**32 - 1
U64 = 2**64 - 1


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def invalid(param: str, message: str) -> Rejection:
    return Rejection(422, f"Input validation error: {message}", "validation", "bad_request", param=param)


def _count(data: Mapping[str, Any], name: str, path: str, high: int = U32) -> int | None:
    """An optional unsigned integer field, with TGI's type (a float, a bool or a negative is refused)."""
    value = data.get(name)
    if value is None:
        return None
    n = int_or_none(value)
    if n is None or not 0 <= n <= high:
        shown = str(value)[:40]
        raise invalid(path, f"`{path}` must be an integer from 0 to {high}. Given: {shown}")
    return n


@dataclass(slots=True)
class ParsedRequest:
    model: str | None  # the served name asked for; None (or "tgi"): the default pool's
    texts: list[str]
    max_new: int | None  # max_new_tokens as TGI takes it; None: TGI's default (up to the context)
    sequences: int = 1  # sequences generated per prompt (best_of / n)
    route: str = ""  # the path asked for: TGI's own routes go to TGI pools only

    @property
    def tgi_route(self) -> bool:
        return self.route in TGI_ROUTES

    def cost(self, pool: Pool, counts: list[int]) -> int:
        """Tokens the request may use on `pool`: each prompt's input plus all it may generate."""
        total = 0
        for n in counts:
            new = self.max_new if self.max_new is not None else max(pool.total_limit - n, 0)
            total += n + self.sequences * new
        return total


def _model(data: Mapping[str, Any], header_model: str | None) -> str | None:
    model = data.get("model")
    if model is None:
        return header_model
    if not isinstance(model, str):
        raise invalid("model", "`model` must be a string")
    return model


def parse_request(path: str, data: dict[str, Any], header_model: str | None) -> ParsedRequest:
    """The OpenAI `model` field on `/v1/*` (else `X-Model`), `X-Model` on TGI routes."""
    if path == "/v1/chat/completions":
        mct = _count(data, "max_completion_tokens", "max_completion_tokens")
        mt = _count(data, "max_tokens", "max_tokens")
        n = _count(data, "n", "n") or 1
        texts = [chat_text(data.get("messages"))]
        max_new = mct if mct is not None else mt
        return ParsedRequest(_model(data, header_model), texts, max_new, max(n, 1), path)
    if path == "/v1/completions":
        prompt = data.get("prompt")
        texts = [p for p in prompt if isinstance(p, str)] if isinstance(prompt, list) else []
        if isinstance(prompt, str):
            texts = [prompt]
        sequences = max(_count(data, "n", "n") or 1, _count(data, "best_of", "best_of") or 1)
        max_new = _count(data, "max_tokens", "max_tokens")
        return ParsedRequest(_model(data, header_model), texts or [""], max_new, sequences, path)
    params = data.get("parameters")
    params = params if isinstance(params, dict) else {}
    max_new = _count(params, "max_new_tokens", "parameters.max_new_tokens")
    best_of = _count(params, "best_of", "parameters.best_of", U64) or 1
    inputs = data.get("inputs")
    text = inputs if isinstance(inputs, str) else ""
    return ParsedRequest(header_model, [text], max_new, max(best_of, 1), path)


def adapter_body(route: str, data: dict[str, Any], adapter_id: str) -> bytes:
    """The body naming the LoRA adapter as TGI reads it: the OpenAI `model` field on `/v1/*`, the
    `adapter_id` parameter on TGI's routes (without `parameters` TGI samples: that stays so)."""
    if route.startswith("/v1/"):
        data = {**data, "model": adapter_id}
    else:
        params = data.get("parameters")
        params = dict(params) if isinstance(params, dict) else {"do_sample": True}
        data = {**data, "parameters": {**params, "adapter_id": adapter_id}}
    return json.dumps(data, separators=(",", ":")).encode()


def upstream_body(route: str, data: dict[str, Any], pool: Pool, adapter_id: str | None) -> bytes | None:
    """The body the pool's servers get, or None to send the client's bytes as they are: a LoRA adapter
    by its id; on `/v1/*` the model name the pool's engine answers to (`Pool.upstream_model`: TGI's
    "tgi", since TGI takes any other name for an adapter id; the served name on vLLM and SGLang)."""
    if adapter_id is not None:
        return adapter_body(route, data, adapter_id)
    model = data.get("model")
    if not route.startswith("/v1/") or model == pool.upstream_model:
        return None
    if pool.tgi_api and not isinstance(model, str):  # absent: TGI's base model already
        return None
    return json.dumps({**data, "model": pool.upstream_model}, separators=(",", ":")).encode()


async def measure(pool: Pool, texts: list[str]) -> list[int]:
    """Input tokens of each of the request's prompts with the pool's tokenizer."""
    return [await count_tokens(pool.counter, t) for t in texts]


ENVIRONMENT_HEADER = "X-TGIPool-Environment"


def environment(headers: Mapping[str, str], tenant: Tenant | None) -> str:
    """`prod` unless the request asks for staging: `X-TGIPool-Environment: staging`, or a tenant bound to
    staging. A tenant bound to an environment may not ask for the other one (403)."""
    raw = headers.get(ENVIRONMENT_HEADER)
    asked = raw.strip().lower() if raw is not None else None
    if asked is not None and asked not in ENVIRONMENTS:
        raise Rejection(
            400,
            f"{ENVIRONMENT_HEADER} must be one of {', '.join(ENVIRONMENTS)}",
            "bad_request",
            "bad_request",
        )
    bound = tenant.environment if tenant is not None else None
    if bound is not None and asked is not None and asked != bound:
        message = f"Tenant {tenant.name if tenant else ''} is bound to {bound}; it may not ask for {asked}"
        raise Rejection(403, message, "forbidden", "forbidden")
    return bound or asked or "prod"


def priority(headers: Mapping[str, str], tenant: Tenant | None) -> int:
    """`X-Priority`, which a tenant may use to lower but not raise its own priority."""
    raw = headers.get("X-Priority")
    value: int | None = None
    if raw is not None:
        try:
            value = int(raw)
        except ValueError:
            value = None
    if tenant is None:
        return value if value is not None else 0
    return tenant.priority if value is None else min(value, tenant.priority)
