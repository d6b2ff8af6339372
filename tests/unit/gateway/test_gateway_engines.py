"""The gateway in front of vLLM and SGLang pools (emulated, on loopback): OpenAI routes reach every
engine with the model name it answers to; TGI's own routes reach TGI pools only, else a clear 400."""

from __future__ import annotations

import asyncio
from typing import Any

from .conftest import stack

BACKENDS: dict[str, dict[str, Any]] = {
    "tgi-a": {"model_id": "org/llama", "max_input_tokens": 2048, "max_total_tokens": 4096},
    "vllm-a": {
        "engine": "vllm",
        "model_id": "org/llama",
        "served_model_name": "llama3",
        "max_total_tokens": 4096,
    },
    "vllm-b": {
        "engine": "vllm",
        "model_id": "org/mistral",
        "served_model_name": "mistral",
        "max_total_tokens": 4096,
    },
    "sglang-a": {
        "engine": "sglang",
        "model_id": "org/qwen",
        "served_model_name": "qwen",
        "max_total_tokens": 4096,
    },
}


def config(urls: dict[str, str]) -> dict[str, Any]:
    limits = {"maxInputTokens": 2048, "maxTotalTokens": 4096}
    vllm, sglang = {"engine": "vllm", **limits}, {"engine": "sglang", **limits}
    return {
        "pools": [
            # A migration: the same served name on a TGI pool and, preferred, a vLLM pool.
            {"name": "old", "servedName": "llama3", "priority": 1, "endpoints": [urls["tgi-a"]], **limits},
            {"name": "new", "servedName": "llama3", "engine": "vllm", "priority": 5, **limits,
             "endpoints": [urls["vllm-a"]]},
            {"name": "mis", "servedName": "mistral", **vllm, "endpoints": [urls["vllm-b"]]},
            {"name": "qw", "servedName": "qwen", **sglang, "endpoints": [urls["sglang-a"]]},
        ]
    }  # fmt: skip


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, **extra}


def test_openai_routes_reach_every_engine_with_its_model_name() -> None:
    async def go() -> None:
        async with stack(BACKENDS, config) as st:
            for model, pool in (("mistral", "mis"), ("qwen", "qw"), ("llama3", "new")):
                status, headers, body = await st.post("/v1/chat/completions", chat(model))
                assert status == 200, body
                assert headers["X-TGIPool-Pool"] == pool and body["model"] == model
                assert body["id"].startswith("chatcmpl-")  # the engine's answer, not TGI's empty id
            status, headers, body = await st.post("/v1/completions", {"model": "mistral", "prompt": "a b"})
            assert status == 200 and headers["X-TGIPool-Pool"] == "mis"
            # Streams too.
            status, _, text = await st.post("/v1/chat/completions", chat("qwen", stream=True))
            assert status == 200 and text.rstrip().endswith("data: [DONE]")
            # vLLM endpoints have no /info: the gateway does not ask them for a limit.
            for name in ("vllm-a", "vllm-b", "sglang-a"):
                ep = st.gateway.gateway.table.endpoints[st.urls[name]]
                assert not ep.info_requested and ep.learned_limit is None

    asyncio.run(go())


def test_tgi_routes_go_to_tgi_pools_only() -> None:
    async def go() -> None:
        async with stack(BACKENDS, config) as st:
            # Served by TGI and vLLM: /generate goes to the TGI pool although vLLM's has priority.
            status, headers, body = await st.generate("hello", headers={"X-Model": "llama3"})
            assert status == 200 and headers["X-TGIPool-Pool"] == "old", body
            # Served by vLLM only: a clear refusal in TGI's shape, naming the pool and its engine.
            for path, model in (("/generate", "mistral"), ("/generate_stream", "qwen")):
                body_in = {"inputs": "hi", "parameters": {"max_new_tokens": 2}}
                status, _, body = await st.post(path, body_in, {"X-Model": model})
                assert status == 400 and body["error_type"] == "unsupported_route", body
                assert path in body["error"] and "/v1/chat/completions" in body["error"]
            _, _, body = await st.post("/generate", {"inputs": "hi"}, {"X-Model": "mistral"})
            assert "pool mis (vllm)" in body["error"] and "'mistral'" in body["error"]
            # GET /info is TGI's too: the TGI pool of a model both serve, else the same 400.
            async with st.session.get(st.url + "/info", headers={"X-Model": "llama3"}) as resp:
                info = await resp.json()
                assert resp.status == 200 and info["model_id"] == "org/llama", info
            async with st.session.get(st.url + "/info", headers={"X-Model": "mistral"}) as resp:
                info = await resp.json()
                assert resp.status == 400 and info["error_type"] == "unsupported_route", info
                assert "pool mis (vllm)" in info["error"] and "/info" in info["error"]
            # Nothing reached the vLLM server.
            assert st.backends["vllm-b"].emulator.metrics.request_count.value() == 0

    asyncio.run(go())


def test_other_engines_get_only_what_fits_whole() -> None:
    """vLLM refuses any n + max_new over its context (routing.py's rule 2 is TGI's alone), so the gateway
    answers (422, TGI's message) before a vLLM server sees it."""

    async def go() -> None:
        async with stack(BACKENDS, config) as st:
            body = {"model": "mistral", "prompt": "hello", "max_tokens": 5000}
            status, headers, out = await st.post("/v1/completions", body)
            assert status == 422 and out["error"]["code"] == "validation", out
            assert "X-TGIPool-Endpoint" not in headers  # no backend was asked
            assert st.backends["vllm-b"].emulator.metrics.request_count.value() == 0

    asyncio.run(go())
