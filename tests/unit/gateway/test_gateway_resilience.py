"""Failures and live changes: dead endpoints, 5xx before the first byte, broken streams, table updates."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tgipool.gateway import parse_config

from .conftest import free_port, serve_app, stack, wait_until

LLAMA = {"model_id": "llama", "max_input_tokens": 2048, "max_total_tokens": 4096}


def _pool(name: str, endpoints: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "profile": "short", "endpoints": endpoints, **extra}


def test_connect_refused_retries_on_another_endpoint() -> None:
    async def scenario() -> None:
        dead = f"http://127.0.0.1:{free_port()}"

        def cfg(urls: dict[str, str]) -> dict[str, Any]:
            return {"defaultPool": "p", "pools": [_pool("p", [dead, urls["live"]], maxConcurrentRequests=8)]}

        async with stack({"live": LLAMA}, cfg) as st:
            for _ in range(3):
                status, headers, body = await st.generate("hello")
                assert (status, headers["X-TGIPool-Pool"]) == (200, "p"), body
            assert st.metric("tgipool_gateway_retries_total", pool="p", reason="connect_error") >= 1
            dead_ep = st.gateway.gateway.table.endpoints[dead]
            assert dead_ep.in_flight == 0 and dead_ep.down_until > 0
            # Streams too.
            dead_ep.down_until = 0.0
            body = {"inputs": "hi", "parameters": {"max_new_tokens": 3}}
            async with st.session.post(st.url + "/generate_stream", json=body) as resp:
                assert resp.status == 200
                assert (await resp.read()).count(b'data:{"index"') == 3

        # Every endpoint dead: a TGI-shaped 502 after one retry.
        def all_dead(urls: dict[str, str]) -> dict[str, Any]:
            return {"defaultPool": "p", "pools": [_pool("p", [dead, f"http://127.0.0.1:{free_port()}"])]}

        async with stack({}, all_dead) as st:
            status, headers, body = await st.generate("hello")
            assert status == 502 and set(body) == {"error", "error_type"}
            assert headers["X-TGIPool-Pool"] == "p"

    asyncio.run(scenario())


def test_5xx_before_first_byte_retries_once() -> None:
    async def scenario() -> None:
        hits: list[str] = []

        async def broken(request: web.Request) -> web.StreamResponse:
            hits.append(request.path)
            return web.json_response({"error": "boom", "error_type": "incomplete_generation"}, status=500)

        app = web.Application()
        app.router.add_post("/generate", broken)
        app.router.add_post("/generate_stream", broken)
        async with stack({"live": LLAMA}, lambda urls: {"pools": []}) as st:
            bad = await serve_app(st, app)
            cfg = {"defaultPool": "p", "pools": [_pool("p", [bad, st.urls["live"]], maxConcurrentRequests=4)]}
            st.gateway.gateway.apply(parse_config(cfg))
            status, _, body = await st.generate("hello")
            assert status == 200 and "generated_text" in body
            assert hits == ["/generate"]
            assert st.metric("tgipool_gateway_retries_total", pool="p", reason="status_5xx") == 1
            # Only bad endpoints: retried once, then the backend's 5xx passes through.
            st.gateway.gateway.apply(parse_config({"defaultPool": "p", "pools": [_pool("p", [bad])]}))
            status, _, body = await st.generate("hello")
            assert status == 500 and body["error_type"] == "incomplete_generation"
            assert hits == ["/generate"] * 3

    asyncio.run(scenario())


def test_mid_stream_failure_ends_with_tgi_error_event() -> None:
    async def scenario() -> None:
        async def dies(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(
                b'data:{"index":1,"token":{"id":1,"text":" a","logprob":-0.1,"special":false}}\n\n'
            )
            assert request.transport is not None
            request.transport.abort()  # the backend dies mid-stream
            return resp

        app = web.Application()
        app.router.add_post("/generate_stream", dies)
        async with stack({}, lambda urls: {"pools": []}) as st:
            url = await serve_app(st, app)
            st.gateway.gateway.apply(parse_config({"defaultPool": "p", "pools": [_pool("p", [url])]}))
            body = {"inputs": "hi", "parameters": {"max_new_tokens": 5}}
            async with st.session.post(st.url + "/generate_stream", json=body) as resp:
                assert resp.status == 200
                raw = await resp.read()
            events = [e for e in raw.split(b"\n\n") if e]
            assert events[0].startswith(b'data:{"index":1')
            assert events[-1].startswith(b'data:{"error":')
            assert b'"error_type":"incomplete_generation_stream"' in events[-1]
            assert st.gateway.gateway.table.endpoints[url].in_flight == 0

    asyncio.run(scenario())


def test_pools_added_and_removed_while_traffic_runs() -> None:
    async def scenario() -> None:
        backends = {"a": LLAMA, "b": LLAMA, "c": {**LLAMA, "model_id": "other"}}

        def cfg(urls: dict[str, str]) -> dict[str, Any]:
            return {"pools": [_pool("main", [urls["a"]], servedName="m")]}

        async with stack(backends, cfg) as st:
            gw = st.gateway.gateway
            urls = st.urls
            statuses: dict[str, list[int]] = {"m": [], "new": []}
            stop = asyncio.Event()

            async def traffic(model: str) -> None:
                while not stop.is_set():
                    body = {"inputs": "x", "parameters": {"max_new_tokens": 20}}
                    status, _, _ = await st.post("/generate", body, headers={"X-Model": model})
                    statuses[model].append(status)

            workers = [asyncio.create_task(traffic("m")) for _ in range(4)]
            await wait_until(lambda: len(statuses["m"]) >= 10, "traffic")
            ep_a = gw.table.endpoints[urls["a"]]
            status, _, _ = await st.generate("x", headers={"X-Model": "new"})
            assert status == 404
            # Add a pool, and a second endpoint to the running one.
            gw.apply(
                parse_config(
                    {
                        "pools": [
                            _pool("main", [urls["a"], urls["b"]], servedName="m"),
                            _pool("fresh", [urls["c"]], servedName="new"),
                        ]
                    }
                )
            )
            assert gw.table.endpoints[urls["a"]] is ep_a  # same object: in-flight counters kept
            workers.append(asyncio.create_task(traffic("new")))
            seen = len(statuses["m"])
            await wait_until(
                lambda: len(statuses["new"]) >= 5 and len(statuses["m"]) >= seen + 10, "more traffic"
            )
            assert st.backends["b"].emulator.metrics.render().count("tgi_request_success") >= 1
            status, headers, _ = await st.generate("x", headers={"X-Model": "new"})
            assert (status, headers["X-TGIPool-Pool"]) == (200, "fresh")
            # Remove the new pool and endpoint a, while both are busy.
            gw.apply(parse_config({"pools": [_pool("main", [urls["b"]], servedName="m")]}))
            assert ep_a.removed
            seen = len(statuses["m"])
            await wait_until(lambda: len(statuses["m"]) >= seen + 10, "traffic after removal")
            stop.set()
            await asyncio.gather(*workers)
            assert set(statuses["m"]) == {200}
            assert 200 in statuses["new"] and set(statuses["new"]) <= {200, 404}
            assert statuses["new"][-1] == 404
            await wait_until(lambda: ep_a.in_flight == 0, "a to drain")
            assert all(e.in_flight == 0 for e in gw.table.endpoints.values())

    asyncio.run(scenario())
