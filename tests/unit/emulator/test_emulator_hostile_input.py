"""Hostile input to the emulator: what TGI refuses, the emulator refuses the same way, and never with a 500.

serde_json refuses as syntax errors (axum: 400 "Failed to parse the request body as JSON: ...") a lone
surrogate escape, a number beyond f64 such as 1e400, NaN, bytes that are not UTF-8 and nesting deeper than
128; a value of the wrong type is a 422 "Failed to deserialize ...". The fuzz test sends generated bodies
and headers to every route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tgipool.emulator import EmulatorServer, EmulatorSettings

from ..fuzz_http import BODIES, FUZZ, RawResponse, body_bytes, header_lists, raw_request
from .conftest import FAST

JSON = [(b"Content-Type", b"application/json")]
PARSE = "Failed to parse the request body as JSON: "
DESERIALIZE = "Failed to deserialize the JSON body into the target type: "


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[asyncio.AbstractEventLoop, EmulatorServer]]:
    loop = asyncio.new_event_loop()
    server = EmulatorServer(EmulatorSettings(**FAST))
    loop.run_until_complete(server.start())
    try:
        yield loop, server
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


def send(
    emu: tuple[asyncio.AbstractEventLoop, EmulatorServer],
    path: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> RawResponse:
    loop, server = emu
    return loop.run_until_complete(
        raw_request(server.url, "POST", path, JSON if headers is None else headers, body)
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"inputs":"\\ud800 hi","parameters":{"max_new_tokens":2}}',
            "lone leading surrogate in hex escape",
        ),
        (
            b'{"inputs":"hi \\udc00","parameters":{"max_new_tokens":2}}',
            "lone leading surrogate in hex escape",
        ),
        (b'{"inputs":"hi","parameters":{"temperature":1e400}}', "number out of range"),
        (b'{"inputs":"hi","parameters":{"top_p":NaN}}', "expected value"),
        (b'{"inputs":"hi \xff"}', "invalid unicode code point"),
        (b'{"inputs":' + b"[" * 129 + b"]" * 129 + b"}", "recursion limit exceeded"),
        (b"[" * 100_000, "recursion limit exceeded"),
    ],
)
def test_bodies_serde_refuses_are_400s_not_500s(
    emulator: tuple[asyncio.AbstractEventLoop, EmulatorServer], body: bytes, message: str
) -> None:
    for path in ("/generate", "/generate_stream", "/v1/chat/completions", "/tokenize"):
        resp = send(emulator, path, body)
        assert resp.status == 400, (path, resp.status, resp.body[:200])
        assert resp.body.decode().startswith(PARSE) and message in resp.body.decode()


def test_a_valid_surrogate_pair_is_text() -> None:
    from tgipool import strict_json

    assert strict_json.loads(b'{"inputs":"\\ud83d\\ude00"}') == {"inputs": "\U0001f600"}


def test_wrong_types_in_openai_bodies_are_422s(
    emulator: tuple[asyncio.AbstractEventLoop, EmulatorServer],
) -> None:
    chat = b'{"messages":[{"role":"user","content":[{"type":"text","text":5}]}],"max_tokens":2}'
    resp = send(emulator, "/v1/chat/completions", chat)
    assert resp.status == 422 and resp.body.decode().startswith(DESERIALIZE)
    chat = b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"stream_options":[1]}'
    resp = send(emulator, "/v1/chat/completions", chat)
    assert resp.status == 422 and "stream_options" in resp.body.decode()


def test_max_completion_tokens_null_falls_back_to_max_tokens(
    emulator: tuple[asyncio.AbstractEventLoop, EmulatorServer],
) -> None:
    """TGI: `max_completion_tokens.or(max_tokens)`."""
    chat = b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":3,"max_completion_tokens":null}'
    resp = send(emulator, "/v1/chat/completions", chat)
    assert resp.status == 200 and resp.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("expect", [b"\xff", b"bogus", b"100-continue"])
def test_expect_headers_are_never_a_500(
    emulator: tuple[asyncio.AbstractEventLoop, EmulatorServer], expect: bytes
) -> None:
    """hyper ignores expectations it does not know."""
    body = b'{"inputs":"hi","parameters":{"max_new_tokens":2}}'
    for path in ("/generate", "/nowhere"):
        resp = send(emulator, path, body, [*JSON, (b"Expect", expect)])
        assert resp.status == (200 if path == "/generate" else 404), (path, resp.status, resp.body[:200])


@FUZZ
@given(data=st.data())
def test_fuzz_every_route_never_answers_500(
    emulator: tuple[asyncio.AbstractEventLoop, EmulatorServer], data: st.DataObject
) -> None:
    route = data.draw(st.sampled_from([*sorted(BODIES), "/invocations", "/tokenize"]))
    body = data.draw(body_bytes(data.draw(st.sampled_from(sorted(BODIES))) if route not in BODIES else route))
    resp = send(emulator, route, body, data.draw(header_lists()))
    assert resp.status < 500, (route, resp.status, resp.body[:300])
    if resp.status >= 400 and resp.headers.get("content-type", "").startswith("application/json"):
        assert set(resp.json()) == {"error", "error_type"}, resp.body[:300]
