"""What a generation request asks for: its model, prompts, `max_new_tokens` and priority."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tgipool.gateway.routing import Pool
from tgipool.gateway.tenants import Tenant
from tgipool.gateway.tokens import chat_text, count_tokens

TGI_ROUTES = ("/generate", "/generate_stream", "/")
OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions")


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(slots=True)
class ParsedRequest:
    model: str | None
    texts: list[str]
    max_new: int | None


def parse_request(path: str, data: dict[str, Any], header_model: str | None) -> ParsedRequest:
    """The OpenAI `model` field on `/v1/*` (else `X-Model`), `X-Model` on TGI routes."""
    if path == "/v1/chat/completions":
        model = data.get("model")
        max_new = int_or_none(data.get("max_tokens", data.get("max_completion_tokens")))
        return ParsedRequest(
            model if isinstance(model, str) else header_model, [chat_text(data.get("messages"))], max_new
        )
    if path == "/v1/completions":
        model = data.get("model")
        prompt = data.get("prompt")
        texts = [p for p in prompt if isinstance(p, str)] if isinstance(prompt, list) else [str(prompt or "")]
        return ParsedRequest(
            model if isinstance(model, str) else header_model,
            texts or [""],
            int_or_none(data.get("max_tokens")),
        )
    params = data.get("parameters")
    max_new = int_or_none(params.get("max_new_tokens")) if isinstance(params, dict) else None
    inputs = data.get("inputs")
    return ParsedRequest(header_model, [inputs if isinstance(inputs, str) else ""], max_new)


async def measure(pool: Pool, texts: list[str]) -> tuple[int, int]:
    """(longest, total) input tokens of the request's prompts with the pool's tokenizer."""
    if len(texts) == 1:
        n = await count_tokens(pool.counter, texts[0])
        return n, n
    counts = [await count_tokens(pool.counter, t) for t in texts]
    return max(counts), sum(counts)


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
