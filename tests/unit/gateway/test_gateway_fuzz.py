"""Fuzzing the gateway: generated bodies and headers on every route, over raw sockets, against emulated TGI
backends. Whatever comes in, the gateway answers below 500, its errors are in the route's shape, a 401 says
how to authenticate, no answer names a backend's address, and no slot is left taken."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ..fuzz_http import BODIES, FUZZ, RawResponse, body_bytes, header_lists, raw_request
from .conftest import REFERENCE_BACKENDS, Stack, reference_config, stack

KEY = "key-fuzz-0123456789"


def assert_route_shape(route: str, resp: RawResponse) -> None:
    """An error answer in the route's shape: OpenAI's on /v1, TGI's elsewhere."""
    assert resp.headers.get("content-type", "").startswith("application/json"), (resp.status, resp.body)
    body = resp.json()
    if route.startswith("/v1/"):
        assert set(body) == {"error"}, body
        assert {"message", "type", "param", "code"} <= set(body["error"]), body
        assert isinstance(body["error"]["message"], str) and isinstance(body["error"]["type"], str)
    else:
        assert set(body) == {"error", "error_type"}, body
        assert isinstance(body["error"], str) and isinstance(body["error_type"], str)


@pytest.fixture(scope="module")
def fuzz_stack() -> Iterator[tuple[asyncio.AbstractEventLoop, Stack]]:
    loop = asyncio.new_event_loop()

    def cfg(urls: dict[str, str]) -> dict[str, Any]:
        return reference_config(urls, tenants=[{"name": "fuzz", "apiKey": KEY}], queueTimeoutSeconds=2)

    cm = stack(REFERENCE_BACKENDS, cfg)
    st_ = loop.run_until_complete(cm.__aenter__())
    try:
        yield loop, st_
    finally:
        loop.run_until_complete(cm.__aexit__(None, None, None))
        loop.close()


def check(st_: Stack, route: str, resp: RawResponse) -> None:
    assert resp.status < 500, (route, resp.status, resp.body[:300])
    raw = resp.body + repr(resp.headers).encode()
    for url in st_.urls.values():
        assert url.removeprefix("http://").encode() not in raw, "a backend address leaked"
    if resp.status == 401:
        assert resp.headers["www-authenticate"].startswith("Bearer")
    if resp.status >= 400:
        assert_route_shape(route, resp)


@FUZZ
@given(data=st.data())
def test_fuzz_bodies_and_headers_on_every_route(
    fuzz_stack: tuple[asyncio.AbstractEventLoop, Stack], data: st.DataObject
) -> None:
    loop, st_ = fuzz_stack
    route = data.draw(st.sampled_from(sorted(BODIES)))
    body = data.draw(body_bytes(route))
    headers = data.draw(header_lists(KEY))
    resp = loop.run_until_complete(raw_request(st_.url, "POST", route, headers, body))
    check(st_, route, resp)
    table = st_.gateway.gateway.table
    assert all(ep.in_flight == 0 for ep in table.endpoints.values())


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
    path=st.sampled_from(
        ["/", "/health", "/info", "/metrics", "/v1/models", "/generate", "/v1/chat/completions"]
    )
    | st.text(alphabet="/abcv1._%?=&", max_size=20).map(lambda p: "/" + p),
    data=st.data(),
)
def test_fuzz_methods_and_paths(
    fuzz_stack: tuple[asyncio.AbstractEventLoop, Stack], method: str, path: str, data: st.DataObject
) -> None:
    loop, st_ = fuzz_stack
    headers = data.draw(header_lists(KEY))
    body = b"" if method in ("GET", "HEAD") else b'{"inputs":"hi","parameters":{"max_new_tokens":2}}'
    resp = loop.run_until_complete(raw_request(st_.url, method, path, headers, body))
    assert resp.status < 500, (method, path, resp.status, resp.body[:200])
    if method != "HEAD":  # a HEAD answer has no body
        check(st_, path.split("?", maxsplit=1)[0], resp)
