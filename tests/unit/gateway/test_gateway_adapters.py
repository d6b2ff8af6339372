"""LoRA adapters by name, with the `openai` client against the gateway and emulated TGI on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from .conftest import stack

BACKENDS: dict[str, dict[str, Any]] = {
    # Hub adapters are known by their id, local ones (`name=/path`) by their name: as TGI parses the flag.
    "lora": {
        "model_id": "llama",
        "max_input_tokens": 2048,
        "max_total_tokens": 4096,
        "lora_adapters": ("org/legal-lora@v2", "medical=/data/adapters/medical"),
    },
    "plain": {"model_id": "llama", "max_input_tokens": 2048, "max_total_tokens": 4096},
}


def config(urls: dict[str, str]) -> dict[str, Any]:
    return {
        "pools": [
            {  # the smaller pool, but without adapters: base-model requests go here
                "name": "plain",
                "servedName": "llama3-8b-ru",
                "maxInputTokens": 1024,
                "maxTotalTokens": 2048,
                "endpoints": [urls["plain"]],
            },
            {
                "name": "lora",
                "servedName": "llama3-8b-ru",
                "profile": "short",
                "adapters": {"legal": "org/legal-lora", "medical": "medical"},
                "endpoints": [urls["lora"]],
            },
        ]
    }


def test_requests_naming_an_adapter_reach_the_pool_that_loaded_it_with_its_id() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, config) as st:
            used = st.backends["lora"].emulator.adapters_used
            client = openai.AsyncOpenAI(base_url=st.url + "/v1", api_key="unused", max_retries=0)
            msgs: Any = [{"role": "user", "content": "hello"}]
            # By the adapter's name alone, and as <servedName>/<adapter>.
            raw = await client.chat.completions.with_raw_response.create(
                model="legal", messages=msgs, max_tokens=3
            )
            assert raw.headers["X-TGIPool-Pool"] == "lora" and raw.parse().choices[0].message.content
            assert used[-1] == "org/legal-lora"
            raw2 = await client.completions.with_raw_response.create(
                model="llama3-8b-ru/medical", prompt="hi", max_tokens=3
            )
            assert raw2.headers["X-TGIPool-Pool"] == "lora" and used[-1] == "medical"
            # Streams too.
            stream = await client.chat.completions.create(
                model="llama3-8b-ru/legal", messages=msgs, max_tokens=3, stream=True
            )
            assert [c async for c in stream]
            assert used[-1] == "org/legal-lora"
            # The base model still goes by the routing rule (the smaller pool) and reaches TGI as "tgi".
            raw3 = await client.chat.completions.with_raw_response.create(
                model="llama3-8b-ru", messages=msgs, max_tokens=3
            )
            assert raw3.headers["X-TGIPool-Pool"] == "plain"
            # An adapter no pool loaded: the gateway says so (TGI itself would silently use the base model).
            with pytest.raises(openai.NotFoundError) as exc:
                await client.chat.completions.create(
                    model="llama3-8b-ru/finance", messages=msgs, max_tokens=3
                )
            assert exc.value.code == "model_not_found"
            # /v1/models lists the adapters under their model.
            ids = [m.id async for m in client.models.list()]
            assert ids == ["llama3-8b-ru", "llama3-8b-ru/legal", "llama3-8b-ru/medical"]
            await client.close()
            # TGI's own routes: X-Model names the adapter, TGI gets `parameters.adapter_id`.
            status, headers, _ = await st.generate("hi", headers={"X-Model": "medical"})
            assert (status, headers["X-TGIPool-Pool"], used[-1]) == (200, "lora", "medical")

    asyncio.run(scenario())


def test_emulator_serves_an_unknown_adapter_with_the_base_model_as_tgi_does() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, config) as st:
            emu = st.backends["lora"]
            body = {"inputs": "hi", "parameters": {"max_new_tokens": 2, "adapter_id": "org/unknown"}}
            async with st.session.post(emu.url + "/generate", json=body) as resp:
                assert resp.status == 200
            body["parameters"]["adapter_id"] = "org/legal-lora"
            async with st.session.post(emu.url + "/generate", json=body) as resp:
                assert resp.status == 200
            assert emu.emulator.adapters_used == [None, "org/legal-lora"]

    asyncio.run(scenario())
