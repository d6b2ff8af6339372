"""Tenant quotas that cannot be gamed: the charge covers every token the backend may generate, it is checked
before it is taken, a refused request takes (and gives back) nothing, and a request that can never fit a
bucket says so instead of asking to retry forever. The auth surface: WWW-Authenticate on 401, and the
routing surface behind the same keys."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tgipool.gateway.tenants import Tenant, TokenBucket

from .conftest import REFERENCE_BACKENDS, Stack, reference_config, stack

KEY = "key-quota-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER = "key-other-0123456789"


def _config(tokens_per_minute: float) -> Any:
    def cfg(urls: dict[str, str]) -> dict[str, Any]:
        return reference_config(
            urls,
            tenants=[
                {"name": "t", "apiKey": KEY, "tokensPerMinute": tokens_per_minute},
                {"name": "code-only", "apiKey": OTHER, "pools": ["code"]},
            ],
        )

    return cfg


def _level(st: Stack) -> float:
    tenant = next(t for t in st.gateway.gateway.tenants.tenants if t.name == "t")
    assert tenant.tokens is not None
    return tenant.tokens.level


def test_a_negative_max_new_tokens_is_refused_and_refills_nothing() -> None:
    """It used to reset a drained bucket to full: the charge was input + (-N)."""

    async def scenario() -> None:
        async with stack(REFERENCE_BACKENDS, _config(100)) as st:
            status, _, _ = await st.generate("hi", max_new_tokens=90, headers=AUTH)
            assert status == 200
            drained = _level(st)
            assert drained < 15
            for value in (-1_000_000, -1, 2**32, 1.5, True, "5"):
                body = {"inputs": "hi", "parameters": {"max_new_tokens": value}}
                status, _, answer = await st.post("/generate", body, AUTH)
                assert status == 422 and answer["error_type"] == "validation", (value, answer)
                chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": value}
                status, _, answer = await st.post("/v1/chat/completions", chat, AUTH)
                assert status == 422 and answer["error"]["param"] == "max_tokens", (value, answer)
            assert _level(st) <= drained + 1  # time refills a little; a refusal never does
            status, headers, answer = await st.generate("hi", max_new_tokens=90, headers=AUTH)
            assert status == 429 and answer["error_type"] == "rate_limited" and "Retry-After" in headers

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("route", "body"),
    [
        # TGI generates max_completion_tokens when both are given; charging max_tokens let 90 tokens through
        # for the price of 1.
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "max_completion_tokens": 90},
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "n": 9}),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 10, "best_of": 9}),
        ("/v1/completions", {"prompt": ["a", "b", "c"], "max_tokens": 30}),
        (
            "/generate",
            {"inputs": "hi", "parameters": {"max_new_tokens": 30, "best_of": 3, "do_sample": True}},
        ),
    ],
)
def test_the_charge_covers_all_the_backend_may_generate(route: str, body: dict[str, Any]) -> None:
    async def scenario() -> None:
        async with stack(REFERENCE_BACKENDS, _config(100)) as st:
            before = _level(st)
            await st.post(route, body, AUTH)
            assert before - _level(st) >= 90, "charged less than the request may generate"

    asyncio.run(scenario())


def test_a_request_that_can_never_fit_the_bucket_gets_413_not_retry_after() -> None:
    async def scenario() -> None:
        async with stack(REFERENCE_BACKENDS, _config(1000)) as st:
            before = _level(st)
            # Over the whole bucket: it would never pass, whatever the wait.
            status, headers, body = await st.generate("hi", max_new_tokens=2000, headers=AUTH)
            assert status == 413 and body["error_type"] == "request_too_large", body
            assert "Retry-After" not in headers and "tokensPerMinute" in body["error"]
            # No max_new_tokens: TGI generates up to the context (4096 on the short pool): that is the charge.
            status, _, body = await st.post("/generate", {"inputs": "hi"}, AUTH)
            assert status == 413 and "max_new_tokens" in body["error"], body
            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}
            status, _, body = await st.post("/v1/chat/completions", chat, AUTH)
            assert status == 413 and body["error"]["code"] == "request_too_large", body
            assert _level(st) >= before - 1  # nothing taken
            status, _, _ = await st.generate("hi", max_new_tokens=100, headers=AUTH)
            assert status == 200

    asyncio.run(scenario())


def test_buckets_never_take_a_negative_charge() -> None:
    bucket = TokenBucket(100)
    with pytest.raises(ValueError, match="never negative"):
        bucket.take(-5)
    tenant = Tenant(name="t", pools=None, priority=0, tokens=bucket)
    with pytest.raises(ValueError, match="never negative"):
        tenant.check(-5)
    assert bucket.level == 100
    refusal = tenant.check(101)
    assert refusal is not None and refusal.never and bucket.level == 100


def test_401_says_how_to_authenticate_and_the_routing_surface_needs_a_key() -> None:
    async def scenario() -> None:
        async with stack(REFERENCE_BACKENDS, _config(100_000)) as st:
            status, headers, body = await st.generate("hi")
            assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="tgipool"'
            status, headers, _ = await st.generate("hi", headers={"Authorization": "Bearer wrong-key-000"})
            assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            status, headers, body = await st.post("/v1/chat/completions", chat)
            assert status == 401 and body["error"]["type"] == "authentication_error"
            assert headers["WWW-Authenticate"].startswith("Bearer")
            for path in ("/metrics", "/v1/models", "/info"):
                async with st.session.get(st.url + path) as resp:
                    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer"), path
                async with st.session.get(st.url + path, headers=AUTH) as resp:
                    assert resp.status == 200, path
            # A tenant sees only the models it may use.
            async with st.session.get(
                st.url + "/v1/models", headers={"Authorization": f"Bearer {OTHER}"}
            ) as resp:
                assert [m["id"] for m in (await resp.json())["data"]] == ["code-7b"]
            async with st.session.get(st.url + "/health") as resp:
                assert resp.status == 200  # probes need no key

    asyncio.run(scenario())
