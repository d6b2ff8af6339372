"""Tenants: 401 without a valid key, 403 outside its pools, 429 over a rate limit; keys stay secret."""

from __future__ import annotations

import asyncio
from typing import Any

from .conftest import REFERENCE_BACKENDS, reference_config, stack

KEY_A = "key-a-0123456789"
KEY_B = "key-b-0123456789"
KEY_C = "key-c-0123456789"


def _config(urls: dict[str, str]) -> dict[str, Any]:
    return reference_config(
        urls,
        tenants=[
            {"name": "team-a", "apiKey": KEY_A, "pools": ["short", "long"], "priority": 5},
            {"name": "team-b", "apiKey": KEY_B, "requestsPerMinute": 2},
            {"name": "team-c", "apiKey": KEY_C, "tokensPerMinute": 100},
        ],
    )


def test_tenant_auth_pools_and_limits() -> None:
    async def scenario() -> None:
        async with stack(REFERENCE_BACKENDS, _config) as st:
            # No key, a wrong key, a malformed header: 401 in TGI's error shape.
            for headers in ({}, {"Authorization": "Bearer wrong-key-000"}, {"Authorization": KEY_A}):
                status, _, body = await st.generate("hi", headers=headers)
                assert status == 401, headers
                assert body["error_type"] == "authentication" and set(body) == {"error", "error_type"}
            auth_a = {"Authorization": f"Bearer {KEY_A}"}
            status, headers, _ = await st.generate("hi", headers=auth_a)
            assert (status, headers["X-TGIPool-Pool"]) == (200, "short")
            # team-a may not use the code pool.
            status, _, body = await st.generate("def f():", headers={**auth_a, "X-Model": "code-7b"})
            assert status == 403 and body["error_type"] == "forbidden"
            chat = {"model": "code-7b", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
            status, _, body = await st.post("/v1/chat/completions", chat, headers=auth_a)
            assert status == 403
            # team-b may, but only twice a minute.
            auth_b = {"Authorization": f"bearer {KEY_B}"}
            for _ in range(2):
                status, headers, _ = await st.generate("def f():", headers={**auth_b, "X-Model": "code-7b"})
                assert (status, headers["X-TGIPool-Pool"]) == (200, "code")
            status, headers, body = await st.generate("def f():", headers={**auth_b, "X-Model": "code-7b"})
            assert status == 429 and body["error_type"] == "rate_limited"
            assert "requestsPerMinute" in body["error"] and int(headers["Retry-After"]) >= 1
            # team-c: 100 tokens a minute, a request costs input + max_new_tokens.
            auth_c = {"Authorization": f"Bearer {KEY_C}"}
            status, _, _ = await st.generate("hello there", max_new_tokens=50, headers=auth_c)
            assert status == 200
            status, headers, body = await st.generate("hello there", max_new_tokens=50, headers=auth_c)
            assert status == 429 and "tokensPerMinute" in body["error"] and "Retry-After" in headers
            # /metrics (it names tenants) needs a key like generation does; keys never show in metrics.
            async with st.session.get(st.url + "/metrics") as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
            async with st.session.get(st.url + "/metrics", headers=auth_c) as resp:
                metrics = await resp.text()
            assert 'tgipool_gateway_tenant_requests_total{tenant="team-b"} 3.0' in metrics
            for key in (KEY_A, KEY_B, KEY_C):
                assert key not in metrics
            assert st.metric("tgipool_gateway_rejections_total", reason="unauthorized") == 3
            assert st.metric("tgipool_gateway_rejections_total", reason="forbidden") == 2
            assert st.metric("tgipool_gateway_rejections_total", reason="rate_limited") == 2

    asyncio.run(scenario())


def test_tenant_priority_caps_the_priority_header() -> None:
    from tgipool.gateway.parsing import priority
    from tgipool.gateway.tenants import Tenant

    def header(value: str | None) -> dict[str, str]:
        return {} if value is None else {"X-Priority": value}

    tenant = Tenant(name="t", pools=None, priority=5)
    assert priority(header(None), tenant) == 5
    assert priority(header("9"), tenant) == 5
    assert priority(header("1"), tenant) == 1
    assert priority(header("7"), None) == 7
    assert priority(header("x"), None) == 0


def test_prometheus_scrapes_the_metrics_port_without_a_key() -> None:
    """With tenants the main port's /metrics needs a key; the metrics port serves Prometheus without."""
    import urllib.request

    from tgipool.gateway.cli import serve_metrics

    from .conftest import free_port

    async def scenario() -> None:
        async with stack(REFERENCE_BACKENDS, _config) as st:
            async with st.session.get(st.url + "/metrics") as resp:
                assert resp.status == 401
            port = free_port()
            serve_metrics(st.gateway, "127.0.0.1", port)
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            )
            assert "tgipool_gateway_requests_total" in text

    asyncio.run(scenario())
