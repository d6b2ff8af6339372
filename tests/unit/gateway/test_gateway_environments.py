"""Environments: staging pools serve only requests that ask for staging; prod traffic never reaches them."""

from __future__ import annotations

import asyncio
from typing import Any

from tgipool.gateway import parse_config as _parse

from .conftest import GatedBackend, serve_app, stack, wait_until

LLAMA = {"model_id": "llama", "max_input_tokens": 2048, "max_total_tokens": 4096}
STAGING = {"X-TGIPool-Environment": "staging"}


def _pools(prod_url: str, staging_url: str, **top: Any) -> dict[str, Any]:
    return {
        "defaultPool": "prod",
        "pools": [
            {
                "name": "prod",
                "servedName": "llama3-8b-ru",
                "profile": "short",
                "fallbackPool": "staging",  # across environments: never used
                "maxConcurrentRequests": 1,
                "endpoints": [prod_url],
            },
            {
                "name": "staging",
                "servedName": "llama3-8b-ru",
                "profile": "short",
                "environment": "staging",
                "endpoints": [staging_url],
            },
            {
                "name": "experiment",
                "servedName": "llama3-exp",
                "profile": "short",
                "environment": "staging",
                "endpoints": [staging_url],
            },
        ],
        **top,
    }


def test_requests_reach_staging_only_when_they_ask() -> None:
    async def scenario() -> None:
        tenants = {
            "tenants": [
                {"name": "app", "apiKey": "key-app-0001"},
                {"name": "qa", "apiKey": "key-qa-00001", "environment": "staging"},
                {"name": "live", "apiKey": "key-live-0001", "environment": "prod"},
            ]
        }
        backends = {"p": LLAMA, "s": LLAMA}
        async with stack(backends, lambda u: _pools(u["p"], u["s"], **tenants)) as st:
            app = {"Authorization": "Bearer key-app-0001"}
            qa = {"Authorization": "Bearer key-qa-00001"}
            live = {"Authorization": "Bearer key-live-0001"}
            # No header, unbound tenant: prod, by served name and by default pool.
            for headers in ({**app, "X-Model": "llama3-8b-ru"}, app):
                status, h, body = await st.generate("hi", headers=headers)
                assert (status, h["X-TGIPool-Pool"]) == (200, "prod"), body
            # The header asks for staging.
            status, h, _ = await st.generate("hi", headers={**app, **STAGING})
            assert (status, h["X-TGIPool-Pool"]) == (200, "staging")
            # A tenant bound to staging goes there without asking; OpenAI route too.
            chat = {"model": "llama3-8b-ru", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
            status, h, _ = await st.post("/v1/chat/completions", chat, qa)
            assert (status, h["X-TGIPool-Pool"]) == (200, "staging")
            # A model only staging serves does not exist for prod traffic.
            status, _, body = await st.generate("hi", headers={**app, "X-Model": "llama3-exp"})
            assert status == 404 and body["error_type"] == "model_not_found"
            status, h, _ = await st.generate("hi", headers={**app, **STAGING, "X-Model": "llama3-exp"})
            assert (status, h["X-TGIPool-Pool"]) == (200, "experiment")
            # A tenant bound to prod may not ask for staging; a bad value is refused.
            status, _, body = await st.generate("hi", headers={**live, **STAGING})
            assert status == 403, body
            status, _, body = await st.generate("hi", headers={**app, "X-TGIPool-Environment": "dev"})
            assert status == 400, body
            # The model list is the environment's.
            async with st.session.get(st.url + "/v1/models", headers=app) as resp:
                assert [m["id"] for m in (await resp.json())["data"]] == ["llama3-8b-ru"]
            async with st.session.get(st.url + "/v1/models", headers=qa) as resp:
                assert sorted(m["id"] for m in (await resp.json())["data"]) == ["llama3-8b-ru", "llama3-exp"]

    asyncio.run(scenario())


def test_saturated_prod_pool_never_spills_to_staging() -> None:
    async def scenario() -> None:
        async with stack({"s": LLAMA}, lambda urls: {"pools": []}) as st:
            gated = GatedBackend()
            prod_url = await serve_app(st, gated.app())
            st.gateway.gateway.apply(_parse(_pools(prod_url, st.urls["s"], queueTimeoutSeconds=0.3)))
            holder = asyncio.create_task(st.generate("first"))
            await wait_until(lambda: gated.seen == ["first"], "the holder to reach prod")
            # prod is full and names a staging fallback: the request waits for prod, then 429.
            status, headers, body = await st.generate("second")
            assert (status, headers["X-TGIPool-Pool"]) == (429, "prod"), body
            assert "Retry-After" in headers
            assert st.metric("tgipool_gateway_fallbacks_total", pool="prod", fallback="staging") == 0
            gated.gate.set()
            assert (await holder)[0] == 200

    asyncio.run(scenario())
