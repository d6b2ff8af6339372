"""Routing rules of the reference example, through real HTTP: model, size, default pool, errors."""

from __future__ import annotations

import asyncio

import pytest
import text_generation  # type: ignore[import-untyped]

from .conftest import REFERENCE_BACKENDS, long_prompt, reference_config, stack

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # text_generation uses pydantic v1 API


def test_reference_routing_rules() -> None:
    async def scenario() -> None:
        async with stack(REFERENCE_BACKENDS, reference_config) as st:
            # Short prompt, no model: the default pool's model, smallest pool that fits -> short.
            status, headers, body = await st.generate("Why is the sky blue?")
            assert status == 200, body
            assert headers["X-TGIPool-Pool"] == "short"
            assert "generated_text" in body
            # The same model by name on the TGI route.
            status, headers, _ = await st.generate("Hi", headers={"X-Model": "llama3-8b-ru"})
            assert (status, headers["X-TGIPool-Pool"]) == (200, "short")
            # A prompt longer than short's 2048 input tokens -> long.
            status, headers, body = await st.generate(long_prompt(3000))
            assert status == 200, body
            assert headers["X-TGIPool-Pool"] == "long"
            # Fits short's input limit, but input + max_new_tokens exceeds its 4096 total -> long.
            status, headers, body = await st.generate(long_prompt(1000), max_new_tokens=3500)
            assert (status, headers["X-TGIPool-Pool"]) == (200, "long"), body
            # max_new_tokens absent: TGI defaults it per pool, so input <= maxInputTokens fits -> short.
            status, headers, body = await st.post("/generate", {"inputs": long_prompt(2000)})
            assert (status, headers["X-TGIPool-Pool"]) == (200, "short"), body
            # The code pool by model name, on the TGI route (X-Model) and the OpenAI routes (model field).
            status, headers, _ = await st.generate("def f():", headers={"X-Model": "code-7b"})
            assert (status, headers["X-TGIPool-Pool"]) == (200, "code")
            chat = {
                "model": "code-7b",
                "messages": [{"role": "user", "content": "Sort a list"}],
                "max_tokens": 4,
            }
            status, headers, body = await st.post("/v1/chat/completions", chat)
            assert (status, headers["X-TGIPool-Pool"]) == (200, "code"), body
            assert body["object"] == "chat.completion"
            # Chat input is estimated from the concatenated message contents.
            chat = {
                "model": "llama3-8b-ru",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": long_prompt(2500)},
                ],
                "max_tokens": 4,
            }
            status, headers, _ = await st.post("/v1/chat/completions", chat)
            assert (status, headers["X-TGIPool-Pool"]) == (200, "long")
            comp = {"model": "llama3-8b-ru", "prompt": "Once upon a time", "max_tokens": 4}
            status, headers, body = await st.post("/v1/completions", comp)
            assert (status, headers["X-TGIPool-Pool"]) == (200, "short"), body
            # Compat route `POST /`.
            status, headers, body = await st.post("/", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
            assert (status, headers["X-TGIPool-Pool"]) == (200, "short"), body
            assert isinstance(body, list)
            # "tgi" (TGI's name for its base model) goes to the default pool's model; an unknown model is 404.
            status, headers, _ = await st.generate("Hi", headers={"X-Model": "tgi"})
            assert (status, headers["X-TGIPool-Pool"]) == (200, "short")
            status, headers, body = await st.generate("Hi", headers={"X-Model": "nope"})
            assert (status, body["error_type"]) == (404, "model_not_found")
            # /info goes to the X-Model's (smallest) pool.
            async with st.session.get(st.url + "/info", headers={"X-Model": "code-7b"}) as resp:
                assert resp.status == 200
                assert resp.headers["X-TGIPool-Pool"] == "code"
                assert (await resp.json())["model_id"] == "qwen-coder"
            async with st.session.get(st.url + "/health") as resp:
                assert resp.status == 200
            async with st.session.get(st.url + "/metrics") as resp:
                text = await resp.text()
            assert 'tgipool_gateway_routed_total{pool="long"}' in text
            assert st.metric("tgipool_gateway_routed_total", pool="code") == 2

    asyncio.run(scenario())


def test_error_shapes_422_404() -> None:
    async def scenario() -> None:
        async with stack(REFERENCE_BACKENDS, reference_config) as st:
            backend_before = st.backends["long-a"].emulator.metrics.render()
            status, headers, body = await st.generate(long_prompt(9000))
            assert status == 422
            assert body == {
                "error": "Input validation error: `inputs` must have less than 8192 tokens. Given: 9000",
                "error_type": "validation",
            }
            assert "X-TGIPool-Pool" not in headers
            # No backend saw it.
            assert st.backends["long-a"].emulator.metrics.render() == backend_before
            status, _, body = await st.generate(long_prompt(7000), headers={"X-Model": "code-7b"})
            assert status == 422
            assert "less than 6144 tokens. Given: 7000" in body["error"]
            async with st.session.post(
                st.url + "/generate", data=b"not json", headers={"Content-Type": "application/json"}
            ) as resp:
                assert resp.status == 400
                body = await resp.json()
                assert body["error"].startswith("Failed to parse the request body as JSON")
                assert body["error_type"] == "bad_request"

        def no_default(urls: dict[str, str]) -> dict[str, object]:
            cfg = reference_config(urls)
            del cfg["defaultPool"]
            return cfg

        async with stack(REFERENCE_BACKENDS, no_default) as st:
            status, _, body = await st.generate("Hi", headers={"X-Model": "gpt-4"})
            assert status == 404
            assert set(body) == {"error", "error_type"}
            assert "gpt-4" in body["error"]
            status, _, body = await st.generate("Hi")
            assert status == 404
            chat = {"model": "llama3-8b-ru", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            status, headers, _ = await st.post("/v1/chat/completions", chat)
            assert (status, headers["X-TGIPool-Pool"]) == (200, "short")

    asyncio.run(scenario())


def test_streaming_through_gateway_with_text_generation_client() -> None:
    async def scenario() -> None:
        async with stack(REFERENCE_BACKENDS, reference_config) as st:
            client = text_generation.AsyncClient(st.url, headers={"X-Model": "code-7b"})
            events = [e async for e in client.generate_stream("Tell me a story", max_new_tokens=6)]
            assert len(events) == 6
            assert all(e.generated_text is None for e in events[:-1])
            assert events[-1].details is not None and events[-1].details.generated_tokens == 6
            assert events[-1].generated_text == "".join(e.token.text for e in events)
            resp = await client.generate("Hello", max_new_tokens=4)
            assert resp.details.generated_tokens == 4
            # Raw: the SSE framing and headers pass through, plus the pool header.
            body = {"inputs": "Stream me", "parameters": {"max_new_tokens": 3}}
            async with st.session.post(st.url + "/generate_stream", json=body) as r:
                assert r.headers["Content-Type"].startswith("text/event-stream")
                assert r.headers["X-TGIPool-Pool"] == "short"
                raw = await r.read()
            chunks = [c for c in raw.split(b"\n\n") if c]
            assert len(chunks) == 3 and all(c.startswith(b"data:{") for c in chunks)
            # OpenAI streaming ends with [DONE], untouched.
            chat = {
                "model": "llama3-8b-ru",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
                "stream": True,
            }
            async with st.session.post(st.url + "/v1/chat/completions", json=chat) as r:
                raw = await r.read()
            assert raw.rstrip().endswith(b"data: [DONE]")
            # A too-long stream request is refused with a real 422 before any stream starts.
            with_client = text_generation.AsyncClient(st.url)
            try:
                async for _ in with_client.generate_stream(long_prompt(9000), max_new_tokens=2):
                    pass
            except text_generation.errors.ValidationError as exc:
                assert "8192" in str(exc)
            else:
                raise AssertionError("expected a validation error")

    asyncio.run(scenario())


def test_served_name_becomes_tgi_upstream() -> None:
    """TGI takes any OpenAI `model` other than "tgi" for a LoRA adapter id."""
    import asyncio

    from aiohttp import web

    from tgipool.gateway.app import GatewayServer
    from tgipool.gateway.config import parse_config

    seen: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append((await request.json())["model"])
        return web.json_response({"object": "chat.completion", "choices": []})

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        cfg = parse_config(
            {
                "pools": [
                    {
                        "name": "p",
                        "servedName": "llama3",
                        "maxInputTokens": 100,
                        "maxTotalTokens": 200,
                        "maxConcurrentRequests": 4,
                        "endpoints": [f"http://127.0.0.1:{port}"],
                    }
                ]
            }
        )
        gw = GatewayServer(cfg, "127.0.0.1", 0)
        await gw.start()
        try:
            import aiohttp

            async with aiohttp.ClientSession() as s:
                body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
                async with s.post(f"http://127.0.0.1:{gw.port}/v1/chat/completions", json=body) as r:
                    assert r.status == 200
                    assert r.headers["X-TGIPool-Pool"] == "p"
        finally:
            await gw.stop()
            await runner.cleanup()

    asyncio.run(scenario())
    assert seen == ["tgi"]
